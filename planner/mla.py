"""Multi-head latent attention (MLA): DeepSeek-V2, arXiv 2405.04434 §2.1 (and DeepSeek-V3).

Names (a heads, h hidden, d_c = ``kv_lora_rank``, d_c' = ``q_lora_rank``, d_R =
``qk_rope_head_dim``, d_n = head_dim - d_R the non-rotary query/key part, d_v =
``v_head_dim``); torch shapes (out, in), as ``transformers``' ``DeepseekV3Attention`` holds them:

* queries: with d_c' > 0 a down-projection ``q_a (d_c' x h)``, its RMSNorm ``(d_c')`` and an
  up-projection ``q_b (a (d_n + d_R) x d_c')`` (eq. 12-13); with d_c' = 0 (DeepSeek-V2-Lite)
  one ``q_proj (a (d_n + d_R) x h)``;
* keys and values: ``kv_a (d_c + d_R x h)`` gives the latent c^KV and the shared rotary key
  k^R (eq. 9, 14), the latent's RMSNorm ``(d_c)``, and ``kv_b (a (d_n + d_v) x d_c)``
  expands every head's non-rotary key and value (eq. 10-11);
* output ``o (h x a d_v)`` (eq. 19). ``attention_bias`` puts biases on q_a, kv_a and o only.

Under tensor parallelism the per-head maps (q_b or q_proj, kv_b, o) split over t by heads;
the latent down-projections q_a and kv_a and their norms are replicated (every rank needs the
whole latent), as are o's bias and the KV latent cache (SGLang's "DP attention" exists
because TP cannot shard it: lmsys.org/blog/2024-12-04-sglang-v0-4).

Cache (§2.1.3, Table 1): ``(d_c + d_R)`` elements per token per layer -- the compressed latent
and the shared rotary key -- instead of ``2 g d``; transformers' cache holds exactly these
two tensors (``cache.update(kv_nope, k_rot)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.config import ModelConfig

Shape = tuple[int, ...]


def _norm(cfg: "ModelConfig", width: int) -> list[tuple[str, Shape]]:
    return [("norms", (width,))] * (2 if cfg.norm == "layernorm" else 1)


def mla_tensors(cfg: "ModelConfig", tp: int = 1) -> list[tuple[str, Shape]]:
    """(breakdown part, shape) of one MLA block's parameters on one TP rank (module
    docstring); the latent norms are "norms", everything else "attention"."""
    h, a_r = cfg.hidden_size, cfg.num_heads // tp
    dqk, dr, dv = cfg.head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    rq, rkv = cfg.q_lora_rank, cfg.kv_lora_rank
    bias = cfg.bias == "attention"
    out: list[tuple[str, Shape]] = []
    if rq:
        out += [("attention", (rq, h))] + ([("attention", (rq,))] if bias else [])
        out += _norm(cfg, rq) + [("attention", (a_r * dqk, rq))]
    else:
        out += [("attention", (a_r * dqk, h))]
    out += [("attention", (rkv + dr, h))] + ([("attention", (rkv + dr,))] if bias else [])
    out += _norm(cfg, rkv) + [("attention", (a_r * (dqk - dr + dv), rkv))]
    out += [("attention", (h, a_r * dv))] + ([("attention", (h,))] if bias else [])
    return out


def mla_linears(cfg: "ModelConfig") -> list[tuple[str, int, int]]:
    """(name, in, out) of each linear map of one MLA block, named as transformers' DeepSeek
    models name them: ``q_proj`` (or ``q_a_proj`` / ``q_b_proj`` with a query latent),
    ``kv_a_proj_with_mqa``, ``kv_b_proj``, ``o_proj``."""
    h, a = cfg.hidden_size, cfg.num_heads
    dqk, dr, dv = cfg.head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    rq, rkv = cfg.q_lora_rank, cfg.kv_lora_rank
    q = [("q_a_proj", h, rq), ("q_b_proj", rq, a * dqk)] if rq else [("q_proj", h, a * dqk)]
    return q + [("kv_a_proj_with_mqa", h, rkv + dr), ("kv_b_proj", rkv, a * (dqk - dr + dv)),
                ("o_proj", a * dv, h)]


def mla_projection_flops_per_token(cfg: "ModelConfig") -> tuple[int, int]:
    """(q/kv projections, output projection) forward FLOPs per token of one MLA layer,
    2 per multiply-add: ``2h d_c' + 2 d_c' a(d_n + d_R)`` (or ``2 h a (d_n + d_R)``) for the
    queries, ``2 h (d_c + d_R)`` for the latent, ``2 d_c a (d_n + d_v)`` to expand it, and
    ``2 a d_v h`` out: the training / prefill form transformers runs (the latent expanded for
    every token)."""
    h, a = cfg.hidden_size, cfg.num_heads
    dqk, dr, dv = cfg.head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    rq, rkv = cfg.q_lora_rank, cfg.kv_lora_rank
    q = 2 * h * rq + 2 * rq * a * dqk if rq else 2 * h * a * dqk
    return q + 2 * h * (rkv + dr) + 2 * rkv * a * (dqk - dr + dv), 2 * a * dv * h


def mla_decode_flops(cfg: "ModelConfig", keys: int) -> int:
    """Forward FLOPs of one MLA layer generating one token against ``keys`` cached latents,
    with the up-projections absorbed (DeepSeek-V2 §2.1.2: W^UK into the query, W^UV into the
    output): the query projections, ``2 a d_n d_c`` to map the non-rotary query into latent
    space, scores over the latent and rotary key ``2 a (d_c + d_R)`` per key, values in latent
    space ``2 a d_c`` per key, ``2 a d_c d_v`` back out of it and the output projection."""
    h, a = cfg.hidden_size, cfg.num_heads
    dqk, dr, dv = cfg.head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    rq, rkv = cfg.q_lora_rank, cfg.kv_lora_rank
    q = 2 * h * rq + 2 * rq * a * dqk if rq else 2 * h * a * dqk
    latent = 2 * h * (rkv + dr)
    absorb = 2 * a * (dqk - dr) * rkv + 2 * a * rkv * dv
    per_key = 2 * a * (rkv + dr) + 2 * a * rkv
    return q + latent + absorb + per_key * keys + 2 * a * dv * h


def mla_cache_elements_per_token(cfg: "ModelConfig") -> int:
    """Cached elements per token of one MLA layer: ``d_c + d_R`` (§2.1.3)."""
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim
