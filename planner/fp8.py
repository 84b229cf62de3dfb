"""FP8 training (``--dtype fp8``): which tensors are fp8, and what that changes per rank.

The recipe planned is Transformer Engine's and torchao float8's (Micikevicius et al. 2022,
"FP8 Formats for Deep Learning", arXiv 2209.05433; NVIDIA Transformer Engine's user guide;
torchao.float8), with DeepSeek-V3's block scaling as the alternative (arXiv 2412.19437
§3.3):

* fp8: the GEMMs of every transformer layer's linears (q, k, v, o; gate, up, down; each
  expert's): inputs and weights cast to E4M3 with a scale, gradients to E5M2, outputs in
  bf16, at the accelerator's fp8 peak (``Hardware.peak_tflops_fp8``).
* bf16: everything else: the attention core (scores, softmax, weighted values), norms,
  activations, residuals, the router, the embedding and the LM head (both recipes keep the
  head in bf16), and every all-reduce and all-gather.
* Model states: the mixed recipe's (bf16 weights, fp32 master, gradients, AdamW moments):
  fp8 adds no optimizer state. Each linear's weight also has an fp8 copy and its transpose
  (column-wise, for the input gradient on Hopper), cached across the step's micro-batches:
  2 bytes per linear weight; under ZeRO-3 a layer's copies exist while it is gathered.
* Saved activations: each linear saves its fp8 input for the weight gradient, 1 byte per
  element instead of 2: the attention input (read by q, k, v), the attention output (o's
  input), the MLP input (gate, up; each expert's tokens) and the down projection's input.
* Scaling: ``tensor``, one fp32 scale per tensor (delayed or current scaling; negligible), or
  ``block``: 1 x 128 tiles of activations and 128 x 128 blocks of weights with one fp32
  scale each (DeepSeek-V3 §3.3.2): 4/128 bytes more per fp8 activation element, 4/16,384
  per fp8 weight element.

llmplan's runtime (``recipe="runtime"``, ``runtime.fp8``) runs torchao's tensor-wise recipe,
which saves the linears' bf16 inputs and casts each weight at each GEMM: its saved
activations are the bf16 run's, autocast keeps no bf16 copy of an fp8 linear's weight, no
fp8 copy outlives its GEMM, and the cast itself is a transient of ``RUNTIME_CAST_BYTES``
per element of the weight being cast (checked against MemTracker, tests/oracle).

The casts themselves (read bf16, write fp8, one amax reduction per tensor) are element-wise
traffic of the tensors they read; the cost model counts them with the layer's activations.
llmplan's runtime casts eagerly, kernel by kernel: ``EAGER_CAST_BYTES`` per element, six
casts per linear per micro-batch (``runtime_cast_elements``), in the step's element-wise
time; on an H100 that outweighs the fp8 GEMMs' gain for Llama-3-8B at 4,096 tokens per
micro-batch (``plan --recipe runtime`` ranks it so).
"""

from __future__ import annotations

from dataclasses import replace

from planner.activations import ActivationTerms, kv_heads_per_rank
from planner.config import ModelConfig

SCALINGS = ("tensor", "block")
GEMM_ALIGN = 16
"""fp8 GEMMs (``torch._scaled_mm``, cuBLASLt) take weights whose both dimensions are
multiples of 16."""
BLOCK_ACTIVATION_TILE = 128
BLOCK_WEIGHT_TILE = 128 * 128


def scale_bytes_per_activation(scaling: str) -> float:
    return 4 / BLOCK_ACTIVATION_TILE if scaling == "block" else 0.0


def scale_bytes_per_weight(scaling: str) -> float:
    return 4 / BLOCK_WEIGHT_TILE if scaling == "block" else 0.0


def saved_fp8_elements(cfg: ModelConfig, *, local_seq: int, tp: int, moe: bool) -> tuple[float, float]:
    """(block-boundary, sharded) elements one layer saves in fp8 per sequence on one TP rank,
    each in place of a 16-bit tensor: the attention and MLP inputs (``2 s h``, one when a
    parallel block shares them; an MoE layer's k routed copies ``k s h`` instead of its input,
    which the bf16 router and any shared expert read), and the inputs of o and down (``s a_r d``
    and ``s f_r`` per MLP run: k routed plus shared experts for an MoE layer)."""
    s, h = local_seq, cfg.hidden_size
    shared = cfg.block == "parallel" and cfg.parallel_norms == 1
    if moe:
        runs, ffn = cfg.experts_per_token + cfg.num_shared_experts, cfg.moe_ffn_hidden_size
        boundary = s * h * (1 + cfg.experts_per_token)
    else:
        runs, ffn = 1, cfg.ffn_hidden_size
        boundary = s * h * (1 if shared else 2)
    sharded = s * (cfg.num_heads // tp) * cfg.head_dim + runs * s * (ffn // tp)
    return float(boundary), float(sharded)


def fp8_terms(terms: ActivationTerms, cfg: ModelConfig, *, local_seq: int, act_bytes: int,
              tp: int, moe: bool, scaling: str) -> ActivationTerms:
    """One layer's saved tensors (``planner.activations``, per sequence) with its linears'
    inputs saved in fp8: each such element costs 1 byte (+ its block scale) instead of
    ``act_bytes``."""
    boundary, sharded = saved_fp8_elements(cfg, local_seq=local_seq, tp=tp, moe=moe)
    saved = act_bytes - 1 - scale_bytes_per_activation(scaling)
    return replace(terms, replicated=terms.replicated - saved * boundary,
                   sharded=terms.sharded - saved * sharded)


def layer_gemms(cfg: ModelConfig, tp: int, *, moe: bool,
                ep: int = 1) -> list[tuple[int, int, int, int]]:
    """(in, out, copies held, runs per token) of each of one layer's fp8 GEMMs on one TP rank:
    q, k, v, o, then the MLP's gate (gated), up and down, or each expert's -- the rank's
    E/ep routed experts held, k of them run per token, every shared expert held and run
    (the router stays bf16)."""
    h, q_r, kv_r = cfg.hidden_size, cfg.q_width // tp, kv_heads_per_rank(cfg, tp) * cfg.head_dim
    attention = [(h, q_r, 1, 1), (h, kv_r, 1, 1), (h, kv_r, 1, 1), (q_r, h, 1, 1)]
    if moe:
        f_r = cfg.moe_ffn_hidden_size // tp
        shared = cfg.num_shared_experts
        held, runs = cfg.num_experts // ep + shared, cfg.experts_per_token + shared
    else:
        f_r, held, runs = cfg.ffn_hidden_size // tp, 1, 1
    mlp = [(h, f_r, held, runs)] * (2 if cfg.gated else 1) + [(f_r, h, held, runs)]
    return attention + mlp


def linear_weights_per_layer(cfg: ModelConfig, tp: int, *, moe: bool, ep: int = 1) -> int:
    """The weights of one layer's fp8 GEMMs on one TP rank (``layer_gemms``)."""
    return sum(i * o * held for i, o, held, _ in layer_gemms(cfg, tp, moe=moe, ep=ep))


RUNTIME_CAST_BYTES = 9
"""Bytes per element alive while torchao casts a weight to fp8 (its eager cast, torchao
0.18 ``float8_training_tensor``/``float8_utils``): ``w.to(float32) * scale`` (4) and its
clamp (4) both held as the fp8 copy (1) is written; the amax's ``abs`` is freed before."""


def largest_linear_weight(cfg: ModelConfig, tp: int, *, moe: bool) -> int:
    """The most elements one fp8 GEMM's weight has on a TP rank (``layer_gemms``)."""
    return max(i * o for i, o, _, _ in layer_gemms(cfg, tp, moe=moe))


EAGER_CAST_BYTES = 33
"""HBM bytes torchao's eager cast moves per element it casts (torchao 0.18, kernel by kernel):
for a bf16 tensor abs (read 2, write 2), its amax (read 2), ``to(float32)`` (2, 4), ``x scale``
(4, 4), the clamp (4, 4) and ``to(float8)`` (4, 1); an fp32 tensor skips the copy and reads 4
in abs and amax: 33 either way (counted op by op in tests/runtime/test_fp8_training.py). A
compiled or Transformer Engine cast fuses them into one read and one write."""


def runtime_cast_elements(cfg: ModelConfig, tp: int, *, moe: bool, ep: int, tokens: int,
                          recompute: str) -> int:
    """Elements torchao's eager recipe (llmplan's runtime) casts to fp8 in one micro-batch of
    ``tokens`` tokens, one layer, one TP rank. Each fp8 linear casts its input X and weight W
    in forward; in backward its output gradient G twice (for the input and for the weight
    gradient), W and X again: ``2 (W + X + G)``, and ``W + X`` more when full recompute redoes
    the forward. Per token X and G sum each linear's input and output widths on the rank
    (q, k, v, o; gate, up, down; an MoE layer's k routed and every shared expert's)."""
    gemms = layer_gemms(cfg, tp, moe=moe, ep=ep)
    w = sum(i * o * held for i, o, held, _ in gemms)
    x = sum(i * runs for i, _, _, runs in gemms)
    g = sum(o * runs for _, o, _, runs in gemms)
    once = w + tokens * x
    return 2 * (once + tokens * g) + (once if recompute == "full" else 0)


def weight_copy_bytes(linear_weights: int, scaling: str) -> int:
    """The fp8 copy and its transpose of ``linear_weights`` weights, with their scales."""
    return int(linear_weights * (2 + 2 * scale_bytes_per_weight(scaling)))
