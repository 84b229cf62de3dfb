"""Activation memory: what each layer saves for backward, and how many layers are in flight.

Korthikanti et al. 2022 (arXiv 2205.05198, §4 and Table 2), generalised per saved tensor
(:func:`layer_activation_terms`). With their setting (MHA, GELU 4h MLP, LayerNorm, dropout,
eager attention, 16-bit) the per-layer bytes reduce exactly to ``sbh(34 + 5as/h)``,
``sbh(10 + 24/t + 5as/(ht))`` with TP, that divided by t with SP, ``34sbh/t`` with selective
recompute and ``2sbh`` (÷t with SP) with full recompute.

A stage keeps the saved tensors of every in-flight layer; a recomputed layer re-creates its
whole working set when its backward comes (Korthikanti §5: "2sbhL + one layer's working
set"), after the loss's tensors are gone (``planner.peak`` places each in its phase).

Pipeline: under 1F1B stage i holds ``min(p - i, m)`` micro-batches in flight; interleaved
stage i holds ``min(2(p - i - 1) + (v - 1)p + 1, m v)`` model chunks in flight (Megatron's
warm-up count), which for stage 0 is Korthikanti's factor ``1 + (p - 1)/(p v)``; GPipe holds
all m. The last stage also holds the final norm's and LM head's inputs and the fp32
log-probabilities of the cross-entropy (the 16-bit logits are not saved: ``.float()`` and
the head keep no reference to them).

Mixed precision by autocast (llmplan's runtime in bf16 without FSDP) saves more than a
model computed in 16 bits throughout: the residual stream stays fp32, so every norm saves an
fp32 input, and each linear saves its own 16-bit cast of its input (q, k and v three copies
of the attention input; gate and up two of the MLP's). Measured against
``MemTracker``/saved-tensor hooks on llmplan's model: +10 s b h bytes per Llama layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ModelConfig

from planner.setup import TrainSetup


def kv_heads_per_rank(cfg: ModelConfig, tp: int) -> int:
    """KV heads each TP rank holds: g/t, or 1 (replicated) when t > g."""
    g = cfg.num_kv_heads
    return g // tp if g >= tp else 1


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivationTerms:
    """Bytes one layer saves for backward, per micro-batch, on one TP rank, split by how TP
    and SP divide them: ``replicated`` h-sized tensors at block boundaries (÷t only with SP),
    ``sharded`` tensors inside attention/MLP (already per rank), ``quadratic`` s² tensors of
    eager attention (dropped by selective recompute), ``layer_input`` (what full recompute
    keeps, ÷t with SP)."""

    replicated: float
    sharded: float
    quadratic: float
    layer_input: float
    gathered: float = 0.0  # the attention and MLP inputs (part of ``replicated``)
    cast_copies: float = 0.0  # autocast: the extra 16-bit input copies (full size per rank)


def linear_inputs(cfg: ModelConfig) -> tuple[int, int]:
    """(linears reading the attention input, linears reading the MLP input): q, k, v; gate
    and up (gated) or up."""
    return 3, (2 if cfg.gated else 1)


def layer_activation_terms(cfg: ModelConfig, setup: TrainSetup, tp: int, *, moe: bool,
                           runtime: bool = False, autocast: bool = False) -> ActivationTerms:
    """Saved tensors of one layer (Korthikanti et al. 2022 §4.1, generalised per tensor):

    * norms: each norm's input, ``B*sbh`` (two per sequential block);
    * attention: its input ``B*sbh``; Q ``B*sb*a_r*d``, K and V ``B*sb*g_r*d`` (a_r, g_r heads
      on this rank); the output ``B*sb*a_r*d`` (input of the output projection);
      flash/SDPA keeps an fp32 log-sum-exp ``4*sb*a_r``; eager keeps the softmax output
      ``B*a_r*s^2*b`` (+ a 1-byte dropout mask and the dropout output ``B*a_r*s^2*b``);
    * MLP: its input ``B*sbh`` (shared with attention in a one-norm parallel block); two-matrix
      ``2*B*sb*f_r`` (activation input and output), gated ``4*B*sb*f_r`` (gate, up,
      act(gate), product); MoE: router probabilities ``4*sb*E`` (fp32), the k dispatched copies
      of each token in and out ``2*k*B*sbh``, and k (+ shared) experts' MLP tensors;
    * dropout (when on): 1-byte masks of ``sbh`` after attention and after the MLP;
    * under autocast (module docstring): norm inputs at 4 bytes, and one more 16-bit copy of
      an input per further linear reading it (the router's and each expert's included);
    * llmplan's runtime (``runtime``): ALiBi as an additive ``B*a_r*s^2*b`` bias that SDPA
      saves (a fused kernel would not; it goes with the s^2 terms under recompute), and each
      expert's weighted output kept once more by ``index_add`` (``k*B*sbh``).

    RoPE multiplies by constant cos/sin tables, which keeps no extra per-token tensor.

    Layer variants: per-head q/k norms (Qwen3, Gemma 3) save their inputs ``B*sb*(a_r +
    g_r)*d``; sandwich norms (Gemma 2/3) are four norms, each saving its input; eager
    attention with soft-capped scores keeps tanh's output ``B*a_r*s^2*b`` too (flash kernels
    cap inside the kernel). MLA and recurrent layers are not modelled (``planner.layout``).
    """
    B, s, b, h, d, t = setup.activation_bytes, setup.seq_len, setup.micro_batch, cfg.hidden_size, cfg.head_dim, tp
    sb = s * b
    a_r = cfg.num_heads // t
    g_r = kv_heads_per_rank(cfg, t)
    drop = setup.dropout

    norms = cfg.norms_per_layer
    mlp_input_shared = cfg.block == "parallel" and cfg.parallel_norms == 1
    replicated = norms * (4 if autocast else B) * sb * h + B * sb * h \
        + (0 if mlp_input_shared else B * sb * h)
    if drop:
        replicated += 2 * sb * h
    sharded = B * sb * d * (2 * a_r + 2 * g_r)
    if cfg.qk_norm:  # each q/k norm saves its input, the projection's output
        sharded += B * sb * d * (a_r + g_r)
    quadratic = 0.0
    if setup.attention == "flash":
        sharded += 4 * sb * a_r
    else:
        quadratic = (B + ((1 + B) if drop else 0)) * a_r * s * s * b
        if cfg.attn_logit_softcap:  # c tanh(scores / c): tanh keeps its output
            quadratic += B * a_r * s * s * b
    if runtime and cfg.position == "alibi":
        quadratic += B * a_r * s * s * b

    def mlp_tensors(ffn: int) -> float:
        return (4 if cfg.gated else 2) * B * sb * (ffn // t)

    attention_in, mlp_in = linear_inputs(cfg)
    copies = (attention_in - 1) + (mlp_in - (0 if mlp_input_shared else 1))
    if moe:
        k = cfg.experts_per_token
        replicated += 4 * sb * cfg.num_experts + (3 if runtime else 2) * k * B * sb * h
        sharded += (k + cfg.num_shared_experts) * mlp_tensors(cfg.moe_ffn_hidden_size)
        # the router reads the MLP input too; each expert casts its tokens per linear
        copies += 1 + (mlp_in - 1) * (k + cfg.num_shared_experts)
    else:
        sharded += mlp_tensors(cfg.ffn_hidden_size)
    return ActivationTerms(replicated=replicated, sharded=sharded, quadratic=quadratic,
                           layer_input=(4 if autocast else B) * sb * h,
                           gathered=B * sb * h * (1 if mlp_input_shared else 2),
                           cast_copies=copies * B * sb * h if autocast else 0.0)


def layer_activation_bytes(terms: ActivationTerms, *, tp: int, sp: bool, recompute: str,
                           sp_keeps_gathered: bool = False) -> float:
    """Bytes one layer keeps per micro-batch between its forward and backward."""
    if recompute == "full":
        return terms.layer_input / tp if sp else terms.layer_input
    replicated = terms.replicated / tp if sp else terms.replicated
    if sp and sp_keeps_gathered:
        # DTensor SP (llmplan's runtime) saves the all-gathered inputs of the attention and
        # MLP matmuls whole; Megatron re-gathers them in backward (Korthikanti §4.2.2).
        replicated += terms.gathered * (1 - 1 / tp)
    quadratic = 0.0 if recompute == "selective" else terms.quadratic
    return replicated + terms.sharded + quadratic + terms.cast_copies


def rope_table_bytes(cfg: ModelConfig, seq_len: int) -> int:
    """The cos and sin tables of one forward, fp32 ``s x rotary dims`` each, which every
    layer's RoPE multiplication saves (one copy, shared by the layers)."""
    if cfg.position != "rope":
        return 0
    return 2 * 4 * seq_len * (int(cfg.head_dim * cfg.rope_fraction) // 2 * 2)


def tail_bytes(cfg: ModelConfig, setup: TrainSetup, tp: int, sp: bool, *,
               autocast: bool = False, frozen_head: bool = False) -> float:
    """The last stage, per sequence of a micro-batch: the final norm's input (fp32 under
    autocast), the LM head's input and the fp32 log-probabilities of the cross-entropy. A
    frozen head saves no input (autograd keeps a matmul's input only for its weight's
    gradient). Soft-capped logits (``c tanh(z / c)``, Gemma 2) keep tanh's output too."""
    s, B, h = setup.seq_len, setup.activation_bytes, cfg.hidden_size
    norm_in = (4 if autocast else B) * s * h / (tp if sp else 1) if cfg.final_norm else 0.0
    head_in = 0.0 if frozen_head else B * s * h / (tp if sp else 1)
    # soft-capped logits (Gemma 2): tanh keeps its 16-bit output
    capped = B * s * ceil_div(cfg.vocab_size, tp) if cfg.final_logit_softcap else 0
    return norm_in + head_in + 4 * s * ceil_div(cfg.vocab_size, tp) + capped


def in_flight_layers(num_layers: int, *, pp: int, vpp: int, m: int, stage: int,
                     schedule: str) -> int:
    """Layer-micro-batches whose activations stage ``stage`` holds at its peak (module
    docstring: 1F1B ``min(p - i, m)`` micro-batches, interleaved Megatron's warm-up count of
    chunks, GPipe all m)."""
    if schedule == "gpipe":
        return m * (num_layers // pp)
    if vpp == 1:
        return min(pp - stage, m) * (num_layers // pp)
    return min(2 * (pp - stage - 1) + (vpp - 1) * pp + 1, m * vpp) * (num_layers // (pp * vpp))


def carries_gradients(*, pp: int, vpp: int, m: int, stage: int, schedule: str) -> bool:
    """Whether a stage's gradients from earlier micro-batches exist when it holds the most
    activations: it runs more forwards than it holds in flight (accumulation without
    pipelining; 1F1B's and interleaving's steady state), never under GPipe (every forward
    comes first)."""
    if pp == 1:
        return m > 1
    if schedule == "gpipe":
        return False
    if vpp == 1:
        return m > pp - stage
    return m * vpp > 2 * (pp - stage - 1) + (vpp - 1) * pp + 1
