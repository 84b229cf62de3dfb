"""Training data: deterministic synthetic sequences, or a local text file as bytes.

The global batch of step n is a pure function of (seed, n): every layout sees the same
tokens, each data-parallel rank takes its contiguous slice, and a resumed run continues
with exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from pathlib import Path

import torch

from planner.config import ConfigError


class SyntheticData:
    """Learnable synthetic sequences: arithmetic progressions mod V with a random start and
    stride per sequence, so the loss falls as the model learns the rule."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
        self.V, self.s, self.seed = vocab_size, seq_len, seed

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        start = torch.randint(0, self.V, (batch, 1), generator=gen)
        stride = torch.randint(1, max(2, min(self.V, 17)), (batch, 1), generator=gen)
        return (start + stride * torch.arange(self.s + 1)) % self.V


class ByteData:
    """A local text file read as bytes (a byte-level tokenizer: V must be at least 256);
    windows are sampled at positions drawn from (seed, step)."""

    def __init__(self, path: str, vocab_size: int, seq_len: int, seed: int) -> None:
        if vocab_size < 256:
            raise ConfigError(f"byte-level data needs vocab >= 256, the model has vocab({vocab_size})")
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise ConfigError(f"--data {path}: cannot read ({err.strerror})") from None
        if len(raw) < seq_len + 2:
            raise ConfigError(f"--data {path}: {len(raw)} bytes is shorter than seq({seq_len}) + 1")
        self.tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        self.s, self.seed = seq_len, seed

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tokens) - self.s - 1, (batch,), generator=gen)
        return torch.stack([self.tokens[i:i + self.s + 1] for i in starts.tolist()])


def make_data(path: str | None, vocab_size: int, seq_len: int, seed: int):
    return ByteData(path, vocab_size, seq_len, seed) if path else SyntheticData(vocab_size, seq_len, seed)


def local_slice(batch: torch.Tensor, dp_rank: int, dp: int) -> torch.Tensor:
    per = batch.shape[0] // dp
    return batch[dp_rank * per:(dp_rank + 1) * per]
