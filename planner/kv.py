"""KV cache: bytes per token, per sequence, per batch, and what fits next to the weights.

Each layer caches K and V for every token: ``2 * L * g * d * bytes`` per token (g kv heads of
d dims; 2 for K and V). Per token in bf16: Llama-2-7B 524,288 B (512 KiB, MHA g=32),
Llama-3-8B 131,072 B (128 KiB, GQA g=8), Falcon-7B 8,192 B (MQA g=1). Under tensor
parallelism each rank holds ``g/t`` heads, or one replicated head when t > g (the KV heads
cannot be split further), so the per-rank cache is ``max(g/t, 1)``/g of the whole. A sliding
window caps the cached tokens at the window. EleutherAI's calculator omits the 2 and the g/a
ratio (2x off both ways); gpu_poor ignores GQA (8x high for Llama-3-8B;
RahulSChand/gpu_poor).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig
from planner.activations import ceil_div, kv_heads_per_rank

KV_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}


def kv_bits(kv_dtype: str) -> int:
    if kv_dtype not in KV_BITS:
        raise ConfigError(f"kv dtype({kv_dtype!r}) is not one of {', '.join(KV_BITS)}")
    return KV_BITS[kv_dtype]


@dataclass(frozen=True, kw_only=True, slots=True)
class KvReport:
    bytes_per_token: int          # whole model, all ranks together
    bytes_per_token_per_rank: int
    cached_tokens: int            # per sequence, after the sliding window
    total_bytes: int              # per rank, for the whole batch
    total_bytes_all_ranks: int

    def to_dict(self) -> dict[str, int]:
        return {"bytes_per_token": self.bytes_per_token,
                "bytes_per_token_per_rank": self.bytes_per_token_per_rank,
                "cached_tokens": self.cached_tokens, "total_bytes": self.total_bytes,
                "total_bytes_all_ranks": self.total_bytes_all_ranks}


def kv_bytes_per_token(cfg: ModelConfig, kv_dtype: str = "bf16", tp: int = 1) -> int:
    """``2 * L * g_r * d * bits / 8`` with g_r the kv heads on one rank (g when tp = 1)."""
    heads = kv_heads_per_rank(cfg, tp) if tp > 1 else cfg.num_kv_heads
    return ceil_div(2 * cfg.num_layers * heads * cfg.head_dim * kv_bits(kv_dtype), 8)


def cached_tokens(cfg: ModelConfig, seq_len: int) -> int:
    return min(seq_len, cfg.sliding_window) if cfg.sliding_window else seq_len


def kv_report(cfg: ModelConfig, *, seq_len: int, batch: int = 1, kv_dtype: str = "bf16",
              tp: int = 1) -> KvReport:
    if seq_len < 1 or batch < 1 or tp < 1:
        raise ConfigError(f"seq({seq_len}), batch({batch}) and tp({tp}) must be positive")
    g = cfg.num_kv_heads
    if g % tp and tp % g:
        raise ConfigError(f"tp({tp}) and kv heads({g}) must divide one another "
                          "(kv heads are replicated when tp > kv heads)")  # as config.tp_problem
    whole = kv_bytes_per_token(cfg, kv_dtype)
    per_rank = kv_bytes_per_token(cfg, kv_dtype, tp)
    tokens = cached_tokens(cfg, seq_len)
    return KvReport(bytes_per_token=whole, bytes_per_token_per_rank=per_rank,
                    cached_tokens=tokens, total_bytes=per_rank * tokens * batch,
                    total_bytes_all_ranks=per_rank * tokens * batch * tp)


def weight_bytes_per_rank(cfg: ModelConfig, *, weight_bits: int = 16, tp: int = 1) -> int:
    """Inference weights on one TP rank (pp = 1)."""
    from planner.stage_params import stage_params_per_rank
    from planner.setup import Parallel

    (params,) = stage_params_per_rank(cfg, Parallel(tp=tp))
    return ceil_div(params * weight_bits, 8)


def max_batch(cfg: ModelConfig, *, memory_bytes: int, seq_len: int, kv_dtype: str = "bf16",
              weight_bits: int = 16, tp: int = 1, reserve_bytes: int = 0) -> int:
    """Largest batch of ``seq_len``-token sequences whose cache fits beside the weights."""
    free = memory_bytes - reserve_bytes - weight_bytes_per_rank(cfg, weight_bits=weight_bits, tp=tp)
    per_seq = kv_bytes_per_token(cfg, kv_dtype, tp) * cached_tokens(cfg, seq_len)
    return max(free // per_seq, 0)


def max_context(cfg: ModelConfig, *, memory_bytes: int, batch: int = 1, kv_dtype: str = "bf16",
                weight_bits: int = 16, tp: int = 1, reserve_bytes: int = 0) -> int:
    """Longest context (capped at the model's maximum) for ``batch`` sequences."""
    free = memory_bytes - reserve_bytes - weight_bytes_per_rank(cfg, weight_bits=weight_bits, tp=tp)
    per_token = kv_bytes_per_token(cfg, kv_dtype, tp) * batch
    tokens = max(free // per_token, 0)
    if cfg.sliding_window and tokens >= cfg.sliding_window:
        return cfg.max_context
    return min(tokens, cfg.max_context)
