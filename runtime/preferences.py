"""Preference pairs for DPO (Rafailov et al. 2023, arXiv 2305.18290): JSONL rows of
``prompt``, ``chosen`` and ``rejected``, tokenised once and cached, each example two rows of
seq + 1 tokens (prompt + chosen, prompt + rejected, EOS after each completion, padded with
EOS), the mask marking the completion's tokens, the ones DPO scores.

The global batch of step n takes the next ``batch`` examples of a per-epoch permutation of
(seed, epoch), chosen and rejected of each side by side (rows 2i and 2i + 1): a pure function
of (seed, n), and any dp slice of an even number of rows keeps its pairs whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from planner.config import ConfigError

FIELDS = ("prompt", "chosen", "rejected")
CACHE_VERSION = 1


def read_pairs(path: str) -> list[dict[str, str]]:
    """The rows of a preference file, each with its three fields (one line per error)."""
    rows = []
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--data {path}: no readable file there")
    if file.suffix not in (".jsonl", ".json"):
        raise ConfigError(f"--data {path}: preference pairs are JSONL (prompt, chosen, rejected)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text: {err.reason}"
        raise ConfigError(f"--data {path}: cannot read ({reason})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--data {path}: line {n}: not JSON ({err.msg})") from None
        missing = [k for k in FIELDS if not isinstance(row.get(k) if isinstance(row, dict) else None, str)]
        if missing:
            raise ConfigError(f"--data {path}: line {n}: a preference needs 'prompt', 'chosen' "
                              f"and 'rejected' (no {', '.join(repr(k) for k in missing)})")
        rows.append({k: row[k] for k in FIELDS})
    if not rows:
        raise ConfigError(f"--data {path}: no preference pairs in it")
    return rows


def prepare_pairs(path: str, tokenizer, *, vocab_size: int, seq_len: int) -> str:
    """Tokenise the pairs once (or find them cached); the cache prefix the ranks read."""
    import numpy as np

    from runtime.dataset import cache_dir

    rows = read_pairs(path)
    h = hashlib.sha256(f"pairs v{CACHE_VERSION} s={seq_len}".encode())
    h.update(Path(path).read_bytes())
    if getattr(tokenizer, "path", ""):
        h.update(Path(tokenizer.path).read_bytes())
    root = cache_dir()
    prefix = root / f"{h.hexdigest()[:24]}.pairs"
    if Path(f"{prefix}.tokens.npy").exists():
        return str(prefix)
    eos = list(tokenizer.eos[:1])
    pad = eos[0] if eos else 0
    width = seq_len + 1
    tokens = np.full((2 * len(rows), width), pad, dtype=np.int32)
    mask = np.zeros((2 * len(rows), width), dtype=np.bool_)
    for i, row in enumerate(rows):
        prompt = tokenizer.encode(row["prompt"], special=True)
        if len(prompt) >= width:
            raise ConfigError(f"--data {path}: line {i + 1}: the prompt's {len(prompt)} tokens "
                              f"leave no room for a completion in seq({seq_len}) + 1")
        for j, side in enumerate(("chosen", "rejected")):
            completion = (tokenizer.encode(row[side], special=False) + eos)[:width - len(prompt)]
            ids = prompt + completion
            tokens[2 * i + j, :len(ids)] = ids
            mask[2 * i + j, len(prompt):len(ids)] = True
    if tokens.max() >= vocab_size:
        raise ConfigError(f"--data {path}: token id {tokens.max()} exceeds the model's "
                          f"vocab({vocab_size})")
    root.mkdir(parents=True, exist_ok=True)
    for name, values in (("mask", mask), ("tokens", tokens)):  # tokens last: the marker
        tmp = Path(f"{prefix}.{name}.tmp.npy")
        np.save(tmp, values)
        os.replace(tmp, f"{prefix}.{name}.npy")
    return str(prefix)


class PairData:
    """The examples of a prepared preference set, shuffled per epoch from the seed."""

    def __init__(self, prefix: str, seq_len: int, seed: int) -> None:
        import numpy as np

        self.tokens = np.load(f"{prefix}.tokens.npy", mmap_mode="r")
        self.mask = np.load(f"{prefix}.mask.npy", mmap_mode="r")
        if self.tokens.shape[1] != seq_len + 1:
            raise ConfigError(f"prepared pairs hold {self.tokens.shape[1] - 1} tokens a row, "
                              f"not seq({seq_len})")
        self.pairs, self.seed = self.tokens.shape[0] // 2, seed
        self._perm: tuple[int, object] | None = None

    def order(self, epoch: int):
        import torch

        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (epoch + 1))
            self._perm = (epoch, torch.randperm(self.pairs, generator=gen))
        return self._perm[1]

    def global_batch(self, step: int, batch: int):
        """(tokens, mask), each (2 batch, seq + 1): chosen then rejected of each example."""
        import numpy as np
        import torch

        picked = []
        for k in range((step - 1) * batch, step * batch):
            example = int(self.order(k // self.pairs)[k % self.pairs])
            picked += [2 * example, 2 * example + 1]
        rows = np.asarray(picked)
        return (torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.int64)),
                torch.from_numpy(np.asarray(self.mask[rows])))
