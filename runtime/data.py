"""Training data: deterministic synthetic sequences, or a prepared local dataset
(``runtime.dataset``: text, JSONL, Parquet, tokenised and packed).

The global batch of step n is a pure function of (seed, n): every layout sees the same
tokens, each data-parallel rank takes its contiguous slice, and a resumed run continues
with exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import torch



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


def make_data(prepared: str | None, vocab_size: int, seq_len: int, seed: int):
    """A prepared data stream (``runtime.dataset.prepare``, done before the ranks start),
    DPO's preference pairs (``runtime.preferences``), else the synthetic sequences."""
    if prepared and prepared.endswith(".pairs"):
        from runtime.preferences import PairData

        return PairData(prepared, seq_len, seed)
    if prepared:
        from runtime.dataset import PackedData

        return PackedData(prepared, seq_len, seed)
    return SyntheticData(vocab_size, seq_len, seed)


def local_slice(batch: torch.Tensor, dp_rank: int, dp: int) -> torch.Tensor:
    per = batch.shape[0] // dp
    return batch[dp_rank * per:(dp_rank + 1) * per]
