"""KV cache: bytes per token, per sequence, per batch, and what fits next to the weights.

Each layer caches K and V for every token: ``2 * L * g * d * bytes`` per token (g kv heads of
d dims; 2 for K and V). Per token in bf16: Llama-2-7B 524,288 B (512 KiB, MHA g=32),
Llama-3-8B 131,072 B (128 KiB, GQA g=8), Falcon-7B 8,192 B (MQA g=1). Under tensor
parallelism each rank holds ``g/t`` heads, or one replicated head when t > g (the KV heads
cannot be split further), so the per-rank cache is ``max(g/t, 1)``/g of the whole. A sliding
window caps the cached tokens at the window. EleutherAI's calculator omits the 2 and the g/a
ratio (2x off both ways); gpu_poor ignores GQA (8x high for Llama-3-8B;
RahulSChand/gpu_poor).

Beyond K and V, per layer kind: MLA caches ``kv_lora_rank + qk_rope_head_dim`` elements per
token (the latent and the shared rotary key, DeepSeek-V2 §2.1.3; ``planner.mla``), the same
on every TP rank; layers with local attention (Gemma 2/3) cache at most their window; Mamba,
Mamba-2 and RWKV layers hold a fixed state per sequence whatever its length
(``planner.recurrent.state_bytes``: the convolution's inputs at the cache dtype, the
recurrent state in fp32 as transformers keeps it), so a hybrid (Jamba) holds its attention
layers' KV per token plus its Mamba layers' state. What fits (``max_batch``,
``max_context``) uses both. The cached tokens of a sliding layer are ``min(s, window)``
(transformers keeps window - 1 past tokens and the new one completes the window).
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
    total_bytes: int              # per rank, for the whole batch (KV and recurrent state)
    total_bytes_all_ranks: int
    state_bytes_per_sequence: int = 0  # recurrent layers' fixed state, whole model
    state_bytes_per_sequence_per_rank: int = 0
    bytes_per_sequence_per_rank: int = 0  # KV of the cached tokens + state, one sequence
    cache_kind: str = "kv"        # kv, mla_latent, recurrent_state, or kv+recurrent_state
    attention_layers: int = 0
    sliding_layers: int = 0       # of them, those caching at most the window
    recurrent_layers: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"bytes_per_token": self.bytes_per_token,
                "bytes_per_token_per_rank": self.bytes_per_token_per_rank,
                "cached_tokens": self.cached_tokens, "total_bytes": self.total_bytes,
                "total_bytes_all_ranks": self.total_bytes_all_ranks,
                "state_bytes_per_sequence": self.state_bytes_per_sequence,
                "state_bytes_per_sequence_per_rank": self.state_bytes_per_sequence_per_rank,
                "bytes_per_sequence_per_rank": self.bytes_per_sequence_per_rank,
                "cache_kind": self.cache_kind, "attention_layers": self.attention_layers,
                "sliding_layers": self.sliding_layers,
                "recurrent_layers": self.recurrent_layers}


def _elements_per_token_per_layer(cfg: ModelConfig, tp: int) -> int:
    """One attention layer's cached elements per token on one TP rank."""
    if cfg.attention == "mla":
        from planner.mla import mla_cache_elements_per_token

        return mla_cache_elements_per_token(cfg)  # replicated over the tp ranks
    heads = kv_heads_per_rank(cfg, tp) if tp > 1 else cfg.num_kv_heads
    return 2 * heads * cfg.head_dim


def kv_bytes_per_token(cfg: ModelConfig, kv_dtype: str = "bf16", tp: int = 1, *,
                       layers: int | None = None) -> int:
    """``2 * L * g_r * d * bits / 8`` with g_r the kv heads on one rank (g when tp = 1), over
    the attention layers (or ``layers`` of them); MLA ``L (d_c + d_R) bits / 8``."""
    n = cfg.num_attention_layers if layers is None else layers
    return ceil_div(n * _elements_per_token_per_layer(cfg, tp) * kv_bits(kv_dtype), 8)


def state_bytes_per_sequence(cfg: ModelConfig, kv_dtype: str = "bf16", tp: int = 1) -> int:
    """The recurrent layers' fixed state for one sequence, on one TP rank (0 without)."""
    total = 0
    for (mixer, _), n in cfg.layer_kinds().items():
        if mixer != "attention":
            from planner.recurrent import state_bytes

            total += n * state_bytes(cfg, mixer, bits=kv_bits(kv_dtype), tp=tp)
    return total


def cached_tokens(cfg: ModelConfig, seq_len: int) -> int:
    """Tokens the longest-caching attention layer keeps: ``min(s, window)`` when every layer
    is windowed, else s (a model whose global layers keep them all); 0 without attention."""
    if not cfg.num_attention_layers:
        return 0
    if cfg.sliding_window and not cfg.sliding_window_pattern:
        return min(seq_len, cfg.sliding_window)
    return seq_len


def kv_bytes_per_sequence(cfg: ModelConfig, seq_len: int, kv_dtype: str = "bf16",
                          tp: int = 1) -> int:
    """One sequence of ``seq_len`` tokens on one TP rank: each attention layer's cache of
    its cached tokens, plus the recurrent layers' state."""
    from planner.flops import attention_groups

    kv = sum(kv_bytes_per_token(cfg, kv_dtype, tp, layers=n)
             * (min(seq_len, window) if window else seq_len)
             for n, window in attention_groups(cfg))
    return kv + state_bytes_per_sequence(cfg, kv_dtype, tp)


def cache_kind(cfg: ModelConfig) -> str:
    attention = "mla_latent" if cfg.attention == "mla" else "kv"
    if cfg.mixer == "attention":
        return attention
    return attention + "+recurrent_state" if cfg.num_attention_layers else "recurrent_state"


def kv_report(cfg: ModelConfig, *, seq_len: int, batch: int = 1, kv_dtype: str = "bf16",
              tp: int = 1) -> KvReport:
    if seq_len < 1 or batch < 1 or tp < 1:
        raise ConfigError(f"seq({seq_len}), batch({batch}) and tp({tp}) must be positive")
    g = cfg.num_kv_heads
    if g and g % tp and tp % g:
        raise ConfigError(f"tp({tp}) and kv heads({g}) must divide one another "
                          "(kv heads are replicated when tp > kv heads)")  # as config.tp_problem
    whole = kv_bytes_per_token(cfg, kv_dtype)
    per_rank = kv_bytes_per_token(cfg, kv_dtype, tp)
    tokens = cached_tokens(cfg, seq_len)
    per_seq = kv_bytes_per_sequence(cfg, seq_len, kv_dtype, tp)
    return KvReport(bytes_per_token=whole, bytes_per_token_per_rank=per_rank,
                    cached_tokens=tokens, total_bytes=per_seq * batch,
                    total_bytes_all_ranks=per_seq * batch * tp,
                    state_bytes_per_sequence=state_bytes_per_sequence(cfg, kv_dtype),
                    state_bytes_per_sequence_per_rank=state_bytes_per_sequence(cfg, kv_dtype, tp),
                    bytes_per_sequence_per_rank=per_seq, cache_kind=cache_kind(cfg),
                    attention_layers=cfg.num_attention_layers,
                    sliding_layers=cfg.num_sliding_layers,
                    recurrent_layers=cfg.num_layers - cfg.num_attention_layers)


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
    per_seq = kv_bytes_per_sequence(cfg, seq_len, kv_dtype, tp)
    return max(free // per_seq, 0)


def max_context(cfg: ModelConfig, *, memory_bytes: int, batch: int = 1, kv_dtype: str = "bf16",
                weight_bits: int = 16, tp: int = 1, reserve_bytes: int = 0) -> int:
    """Longest context (capped at the model's maximum) for ``batch`` sequences: the largest
    s whose caches (KV of the cached tokens and the recurrent state) fit."""
    free = memory_bytes - reserve_bytes - weight_bytes_per_rank(cfg, weight_bits=weight_bits, tp=tp)
    if cfg.mixer != "attention" or cfg.sliding_window_pattern:  # KV and state, mixed windows
        if batch * kv_bytes_per_sequence(cfg, 1, kv_dtype, tp) > free:
            return 0
        low, high = 1, cfg.max_context  # bytes grow with s: the largest s that fits
        while low < high:
            mid = (low + high + 1) // 2
            if batch * kv_bytes_per_sequence(cfg, mid, kv_dtype, tp) <= free:
                low = mid
            else:
                high = mid - 1
        return low
    per_token = kv_bytes_per_token(cfg, kv_dtype, tp) * batch
    tokens = max(free // per_token, 0)
    if cfg.sliding_window and tokens >= cfg.sliding_window:
        return cfg.max_context
    return min(tokens, cfg.max_context)
