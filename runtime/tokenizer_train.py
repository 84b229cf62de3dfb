"""Train a byte-level BPE tokenizer with ``tokenizers`` (GPT-2's scheme: every byte is a base
token, so any text encodes; ``<|endoftext|>`` is the one special token and the EOS), on the
documents ``runtime.dataset`` reads from the same files training does."""

from __future__ import annotations

import json
from pathlib import Path

from planner.config import ConfigError

EOS = "<|endoftext|>"
BASE_VOCAB = 256 + 1  # the byte alphabet and the EOS
# ``tokenizers`` states no maximum, but its BPE trainer allocates about 70 bytes per
# requested token before it reads any text and aborts the process (a Rust allocation
# failure, no Python exception) when that fails: --vocab 1e9 asks for 71 GB. 2**24 tokens
# (about 1.2 GB up front) is 64x the largest published vocabulary (Gemma 3's 262,144).
MAX_VOCAB = 2**24
FLAG = "tokenizer train"


def check_vocab(vocab_size: int) -> None:
    """``--vocab`` between the byte alphabet + EOS and :data:`MAX_VOCAB`."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or not BASE_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"--vocab({vocab_size}) must be at least {BASE_VOCAB} (256 bytes + EOS) "
                          f"and at most {MAX_VOCAB:,} (2^24)")


def output_folder(out: str) -> Path:
    """``--out``: a folder llmplan can write in, or create (``planner.outputs``' one rule),
    checked before any text is read."""
    from planner.outputs import writable_folder

    return writable_folder(out, "--out")


def read_texts(paths: list[str]) -> list[str]:
    """Every document of ``paths`` as one string; refused when there is no text at all (a
    tokenizer of the bare byte alphabet would be written, trained on nothing)."""
    from runtime.dataset import data_files, documents
    from runtime.tokenizer import ByteTokenizer

    files = [f for p in paths for f in data_files(p, FLAG)]
    texts = ["".join(text for text, _ in segments)
             for f in files for segments, _ in documents(f, ByteTokenizer(), FLAG)]
    if not any(t.strip() for t in texts):
        raise ConfigError(f"{FLAG} {' '.join(paths)}: no text to train on")
    return texts


def train_tokenizer(paths: list[str], *, vocab_size: int, out: str) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from planner.outputs import write_text

    check_vocab(vocab_size)
    folder = output_folder(out)
    texts = read_texts(paths)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    path = write_text(folder / "tokenizer.json", tok.to_str(), "--out")
    settings = folder / "tokenizer_config.json"
    if not settings.exists():
        write_text(settings, json.dumps({"eos_token": EOS}, indent=2) + "\n", "--out")
    return {"path": str(path), "vocab_size": tok.get_vocab_size(), "documents": len(texts),
            "eos_token_id": tok.token_to_id(EOS)}
