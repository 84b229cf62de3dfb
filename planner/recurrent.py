"""Recurrent token mixers: Mamba (selective SSM), Mamba-2 (SSD) and RWKV-4 -- parameters,
forward FLOPs per token and the fixed state each sequence holds.

Names: h hidden, d = ``recurrent_width`` (Mamba's d_inner = expand x h; RWKV's
attention_hidden_size), N = ``ssm_state_size``, K = ``ssm_conv_kernel``, R = ``ssm_dt_rank``,
H = ``ssm_heads`` and P = d / H (Mamba-2), G = ``ssm_groups``, Q = ``ssm_chunk_size``.
Shapes are torch's, as ``transformers`` holds them (``MambaMixer``, ``Mamba2Mixer``,
``JambaMambaMixer``, ``RwkvSelfAttention`` / ``RwkvFeedForward``):

* Mamba (Gu & Dao 2023, arXiv 2312.00752, Algorithm 2 / Fig. 3): ``in_proj (2d x h)`` (x and
  the gate z), a depthwise ``conv1d (d x 1 x K)`` (+ bias), ``x_proj (R + 2N x d)`` (Δ, B, C
  from x), ``dt_proj (d x R)`` + bias, ``A_log (d x N)``, ``D (d)``, ``out_proj (h x d)``;
  biases on in/out with ``ssm_proj_bias``; Jamba adds RMSNorms on Δ (R), B and C (N each)
  (Lieber et al. 2024, arXiv 2403.19887 §2).
* Mamba-2 (Dao & Gu 2024, arXiv 2405.21060 §7): one ``in_proj (2d + 2GN + H x h)`` (z, x, B,
  C, Δ), a depthwise conv over x, B, C ``(d + 2GN x 1 x K)``, per-head ``dt_bias``, ``A_log``
  and ``D`` (H each), the gated RMSNorm ``(d)`` and ``out_proj (h x d)``.
* RWKV-4 (Peng et al. 2023, arXiv 2305.13048 §4.1): time mix ``key, value, receptance
  (d x h)``, ``output (h x d)``, ``time_decay`` and ``time_first`` (d) and three token-shift
  mixes ``(1 x 1 x h)``; channel mix (the block's FFN, ``mlp = "rwkv"``) ``key (f x h)``,
  ``value (h x f)``, ``receptance (h x h)`` and two token-shift mixes.

Tensor parallelism (Megatron-LM's Mamba layers split d_inner, the heads and the groups over
t): every d-, H- or G-sized dimension divides by t (groups are replicated when t > G);
``x_proj``, ``dt_proj``'s input and the hidden-sized vectors are replicated; RWKV's matrices
split along their d or f dimension and the channel mix's receptance by its rows. llmplan
does not plan training of these layers (``planner.layout``: layers_not_modelled); the split
only sizes weights per rank for serving.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.config import ModelConfig

Shape = tuple[int, ...]

SELECTIVE_SCAN_FLOPS_PER_STATE = 9
"""Mamba's selective scan: 9 FLOPs per (token, channel, state) element -- discretising
exp(ΔA) and ΔB·x, the state update and the C readout -- plus one per (token, channel) for the
D skip and one for the z gate: the authors' count (state-spaces/mamba issue #110)."""
SSD_STEP_FLOPS_PER_STATE = 5
"""Mamba-2's recurrence at decode (one token, arXiv 2405.21060 §3.1: h = a h + B x, y = C h
with a scalar a per head): per state element a multiply for B x, one for a h, their add, and
the C readout's multiply-add."""


def _split(n: int, tp: int, what: str) -> int:
    if n % tp:
        from planner.config import ConfigError

        raise ConfigError(f"tp({tp}) does not divide {what}({n})")
    return n // tp


def _groups(cfg: "ModelConfig", tp: int) -> int:
    """Mamba-2's B/C groups on one TP rank: G/t, or one replicated group when t > G (as kv
    heads are replicated)."""
    G = cfg.ssm_groups
    if G >= tp:
        return _split(G, tp, "ssm_groups")
    if tp % G:
        from planner.config import ConfigError

        raise ConfigError(f"tp({tp}) and ssm_groups({G}) must divide one another")
    return 1


def mixer_tensors(cfg: "ModelConfig", mixer: str, tp: int = 1) -> list[tuple[str, Shape]]:
    """(breakdown part, shape) of one recurrent mixer's parameters on one TP rank; every part
    is "recurrent" (its inner norms included: they split with it)."""
    h = cfg.hidden_size
    if mixer == "rwkv":
        d = _split(cfg.recurrent_width, tp, "recurrent_width")
        shapes = [(d, h), (d, h), (d, h), (h, d), (d,), (d,), (1, 1, h), (1, 1, h), (1, 1, h)]
        return [("recurrent", s) for s in shapes]
    N, K = cfg.ssm_state_size, cfg.ssm_conv_kernel
    d = _split(cfg.recurrent_width, tp, "recurrent_width")
    bias = cfg.ssm_proj_bias
    if mixer == "mamba":
        R = cfg.ssm_dt_rank
        shapes = [(2 * d, h)] + ([(2 * d,)] if bias else []) + [(d, 1, K)]
        shapes += [(d,)] if cfg.ssm_conv_bias else []
        shapes += [(R + 2 * N, d), (d, R), (d,), (d, N), (d,), (h, d)]
        shapes += [(h,)] if bias else []
        shapes += [(R,), (N,), (N,)] if cfg.ssm_inner_norms else []
        return [("recurrent", s) for s in shapes]
    H = _split(cfg.ssm_heads, tp, "ssm_heads")
    G = _groups(cfg, tp)
    conv = d + 2 * G * N
    shapes = [(d + conv + H, h)] + ([(d + conv + H,)] if bias else []) + [(conv, 1, K)]
    shapes += [(conv,)] if cfg.ssm_conv_bias else []
    shapes += [(H,), (H,), (H,), (d,), (h, d)] + ([(h,)] if bias else [])
    return [("recurrent", s) for s in shapes]


def channel_mix_tensors(cfg: "ModelConfig", ffn: int, tp: int = 1) -> list[Shape]:
    """RWKV-4's channel mix (the FFN of its block) on one TP rank."""
    h, f = cfg.hidden_size, _split(ffn, tp, "ffn hidden")
    return [(f, h), (h, f), (_split(h, tp, "hidden"), h), (1, 1, h), (1, 1, h)]


def mixer_linears(cfg: "ModelConfig", mixer: str) -> list[tuple[str, int, int]]:
    """(name, in, out) of each linear map of one recurrent mixer, named as transformers names
    them (the depthwise conv and the per-channel vectors are not linears)."""
    h, d, N = cfg.hidden_size, cfg.recurrent_width, cfg.ssm_state_size
    if mixer == "rwkv":
        return [("key", h, d), ("value", h, d), ("receptance", h, d), ("output", d, h)]
    if mixer == "mamba":
        R = cfg.ssm_dt_rank
        return [("in_proj", h, 2 * d), ("x_proj", d, R + 2 * N), ("dt_proj", R, d),
                ("out_proj", d, h)]
    return [("in_proj", h, 2 * d + 2 * cfg.ssm_groups * N + cfg.ssm_heads), ("out_proj", d, h)]


def channel_mix_linears(cfg: "ModelConfig", ffn: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of RWKV's channel mix (``channel_mix_tensors``): key, receptance,
    value."""
    h = cfg.hidden_size
    return [("key", h, ffn), ("receptance", h, h), ("value", ffn, h)]


def mixer_flops_per_token(cfg: "ModelConfig", mixer: str) -> int:
    """Forward FLOPs per token of one recurrent mixer's projections and convolution (2 per
    multiply-add): Mamba ``2h 2d + 2dK + 2d(R + 2N) + 2Rd + 2dh``; Mamba-2 ``2h(2d + 2GN +
    H) + 2(d + 2GN)K + 2dh``; RWKV's time mix ``3 2hd + 2dh``. The causal depthwise
    convolution costs K multiply-adds per channel and token."""
    h, d, N, K = cfg.hidden_size, cfg.recurrent_width, cfg.ssm_state_size, cfg.ssm_conv_kernel
    if mixer == "rwkv":
        return 4 * 2 * h * d
    if mixer == "mamba":
        R = cfg.ssm_dt_rank
        return 2 * h * 2 * d + 2 * d * K + 2 * d * (R + 2 * N) + 2 * R * d + 2 * d * h
    conv = d + 2 * cfg.ssm_groups * N
    return 2 * h * (d + conv + cfg.ssm_heads) + 2 * conv * K + 2 * d * h


def scan_flops(cfg: "ModelConfig", mixer: str, seq_len: int) -> float:
    """Forward FLOPs per token of the sequence-mixing core at ``seq_len`` tokens.

    * Mamba: ``9 d N + 2 d`` (``SELECTIVE_SCAN_FLOPS_PER_STATE``), whatever the length.
    * Mamba-2, the SSD chunked algorithm (arXiv 2405.21060 §6, its Listing 1, as transformers'
      ``torch_forward`` runs it) on c = ceil(s / Q) chunks of Q tokens, per sequence:
      ``C B^T`` within chunks ``2 c Q^2 H N``, applied to x ``2 c Q^2 d``, chunk states
      ``2 c Q d N``, the inter-chunk recurrence as a ``(c + 1)^2`` decay matmul ``2 (c+1)^2 d
      N``, and states to outputs ``2 c Q d N``; divided by s. Elementwise work (discretising,
      exp of segment sums, the D skip, the gated norm) is not counted.
    * RWKV's WKV recurrence is elementwise (a few exp, multiply and add per channel and
      token, like a softmax) and is not counted.
    """
    d, N = cfg.recurrent_width, cfg.ssm_state_size
    if mixer == "mamba":
        return float(SELECTIVE_SCAN_FLOPS_PER_STATE * d * N + 2 * d)
    if mixer == "mamba2":
        Q, H = cfg.ssm_chunk_size, cfg.ssm_heads
        c = math.ceil(seq_len / Q)
        per_seq = 2 * c * Q * Q * (H * N + d) + 4 * c * Q * d * N + 2 * (c + 1) ** 2 * d * N
        return per_seq / seq_len
    return 0.0


def scan_decode_flops(cfg: "ModelConfig", mixer: str) -> float:
    """The core's FLOPs for one generated token (the recurrent form): Mamba as in prefill,
    Mamba-2 ``5 d N + d`` (``SSD_STEP_FLOPS_PER_STATE`` and the D skip), RWKV 0."""
    d, N = cfg.recurrent_width, cfg.ssm_state_size
    if mixer == "mamba":
        return scan_flops(cfg, mixer, 1)
    if mixer == "mamba2":
        return float(SSD_STEP_FLOPS_PER_STATE * d * N + d)
    return 0.0


def state_bytes(cfg: "ModelConfig", mixer: str, *, bits: int, tp: int = 1) -> int:
    """Bytes one layer holds per sequence, independent of its length, as transformers' caches
    hold them: Mamba ``d K`` (the convolution's last K inputs) at ``bits`` + ``d N`` (the SSM
    state) in fp32; Mamba-2 ``(d + 2GN) K`` at ``bits`` + ``H P N`` in fp32; RWKV-4 two
    hidden-sized token-shift vectors at ``bits`` and its WKV numerator, denominator and
    running maximum (d each) in fp32. The recurrent states stay fp32 whatever the model's
    dtype (transformers' scans accumulate in fp32 and cache the result; the RWKV-4 kernels
    too); mamba_ssm's own inference cache would hold the SSM state in the model dtype.
    Under tensor parallelism the d-, H- and G-sized parts split."""
    h, N, K = cfg.hidden_size, cfg.ssm_state_size, cfg.ssm_conv_kernel
    d = _split(cfg.recurrent_width, tp, "recurrent_width")
    if mixer == "rwkv":
        return -(-2 * h * bits // 8) + 3 * d * 4
    conv = d if mixer == "mamba" else d + 2 * _groups(cfg, tp) * N
    return -(-conv * K * bits // 8) + d * N * 4
