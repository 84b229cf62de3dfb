"""Train a byte-level BPE tokenizer with ``tokenizers`` (GPT-2's scheme: every byte is a base
token, so any text encodes; ``<|endoftext|>`` is the one special token and the EOS), on the
documents ``runtime.dataset`` reads from the same files training does."""

from __future__ import annotations

import json
import os
from pathlib import Path

from planner.config import ConfigError

EOS = "<|endoftext|>"


def train_tokenizer(paths: list[str], *, vocab_size: int, out: str) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from runtime.dataset import data_files, documents
    from runtime.tokenizer import ByteTokenizer

    base = 256 + 1  # the byte alphabet and the EOS
    if vocab_size < base:
        raise ConfigError(f"--vocab({vocab_size}) must be at least {base} (256 bytes + EOS)")
    folder = Path(out)
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: no such folder")
    files = [f for p in paths for f in data_files(p)]
    texts = ["".join(text for text, _ in segments)
             for f in files for segments, _ in documents(f, ByteTokenizer())]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    path = folder / "tokenizer.json"
    tmp = folder / "tokenizer.json.tmp"
    tok.save(str(tmp))
    os.replace(tmp, path)
    settings = folder / "tokenizer_config.json"
    if not settings.exists():
        settings.write_text(json.dumps({"eos_token": EOS}, indent=2) + "\n")
    return {"path": str(path), "vocab_size": tok.get_vocab_size(), "documents": len(texts),
            "eos_token_id": tok.token_to_id(EOS)}
