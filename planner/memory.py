"""Per-GPU training memory: weights, gradients, optimizer states, activations, transients.

Model states (Rajbhandari et al. 2020, "ZeRO", §3 and Figure 1): with Ψ parameters per
model-parallel rank, mixed-precision AdamW holds 2Ψ (bf16 weights) + 2Ψ (grads) + 12Ψ (fp32
master, m, v) = 16Ψ bytes. ZeRO-1 shards the 12Ψ over dp, ZeRO-2 the gradients too, ZeRO-3
the weights too: 16Ψ, 4Ψ + 12Ψ/dp, 2Ψ + 14Ψ/dp, 16Ψ/dp. Ψ is counted exactly per rank: TP
splits every matrix (vocab-parallel embedding and LM head, ceil(V/t) rows), replicates norms,
row-parallel biases and KV heads when tp > kv heads; PP gives stage 0 the embedding and the
last stage the final norm and LM head (a tied head is a second copy there when pp > 1, as in
Megatron). Where tools disagree: EleutherAI's ``transformer-math`` script divides ZeRO-3 by t*p
twice; accelerate's ``estimate-memory`` takes the max of the states instead of their sum.

Activations follow Korthikanti et al. 2022 (arXiv 2205.05198, §4 and Table 2), generalised
per saved tensor (see :func:`layer_activation_terms`). With their setting (MHA, GELU 4h MLP,
LayerNorm, dropout, eager attention, 16-bit) the per-layer bytes reduce exactly to
``sbh(34 + 5as/h)``, ``sbh(10 + 24/t + 5as/(ht))`` with TP, that divided by t with SP,
``34sbh/t`` with selective recompute and ``2sbh`` (÷t with SP) with full recompute.

At its peak a stage keeps the saved tensors of every in-flight layer but one, and the layer
running (or re-running, under recompute) holds its whole working set: ``(n - 1) * kept +
full`` for n in-flight layer-micro-batches. So selective recompute still pays one layer's s^2
scores and full recompute one layer's complete activations (Korthikanti §5: "2sbhL + one
layer's working set"), and more recompute never costs more.

Pipeline: under 1F1B stage i holds ``min(p - i, m)`` micro-batches in flight; interleaved
stage i holds ``min(2(p - i - 1) + (v - 1)p + 1, m v)`` model chunks in flight (Megatron's
warm-up count), which for stage 0 is Korthikanti's factor ``1 + (p - 1)/(p v)``; GPipe holds
all m. The last stage also holds the log-softmax output of cross-entropy in fp32 and, in 16-bit
runs, the 16-bit logits beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner import layout
from planner.config import ModelConfig, Parallel, TrainSetup
from planner.params import norm_params

CATEGORIES = {
    "parameters": "weights_bytes",
    "gradients": "gradients_bytes",
    "optimizer_states": "optimizer_bytes",
    "activations": "activations_bytes",
}
"""The memory categories a run measures and the planner predicts, by name (the runtime's
``done`` event, the run comparison, calibration) -> the :class:`StageMemory` field."""

# (weights, grads, master) bytes per parameter for each precision recipe.
RECIPE_BYTES = {
    "mixed": (2, 2, 4),            # ZeRO paper: bf16 weights + bf16 grads + fp32 master
    "mixed_fp32_grads": (2, 4, 4),  # Megatron/DeepSpeed: fp32 main grads (18 bytes with AdamW)
    "fp32": (4, 4, 0),             # pure fp32: the weights are the master copy
    "runtime": (4, 4, 0),          # llmplan's runtime: fp32 sharded params and grads (FSDP2
                                   # MixedPrecisionPolicy computes in bf16 from fp32 storage)
}
# Optimizer state bytes per parameter (besides any master copy).
OPTIMIZER_STATE_BYTES = {
    "adamw": 8,         # fp32 m and v
    "adam8bit": 2,      # int8 m and v (Dettmers et al. 2022); block statistics ignored (<1%)
    "sgd_momentum": 4,  # fp32 momentum buffer
    "adafactor": 0,     # factored second moment, see adafactor_state_bytes
}


def adafactor_state_bytes(params: int, hidden: int) -> int:
    """Adafactor without momentum (Shazeer & Stern 2018, §3): an r x c matrix keeps r + c fp32
    second-moment factors, about ``2/h`` per parameter when both sides are O(h)."""
    return (4 * 2 * params) // hidden


def kv_heads_per_rank(cfg: ModelConfig, tp: int) -> int:
    """KV heads each TP rank holds: g/t, or 1 (replicated) when t > g."""
    g = cfg.num_kv_heads
    return g // tp if g >= tp else 1


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_params_per_rank(cfg: ModelConfig, tp: int, *, moe: bool) -> int:
    """Parameters of one transformer layer on one TP rank (exact, see module docstring)."""
    h, d, t = cfg.hidden_size, cfg.head_dim, tp
    q_rank = cfg.q_width // t
    kv_rank = kv_heads_per_rank(cfg, t) * d
    attn = h * q_rank + 2 * h * kv_rank + q_rank * h
    if cfg.qkv_bias:
        attn += q_rank + 2 * kv_rank
    if cfg.out_bias:
        attn += h  # row-parallel bias: replicated
    if cfg.position == "relative":
        attn += q_rank * h

    def mlp(ffn: int) -> int:
        f_rank = ffn // t
        n = (3 if cfg.gated else 2) * h * f_rank
        if cfg.mlp_bias:
            n += (2 if cfg.gated else 1) * f_rank + h
        return n

    if moe:
        ffn_part = (cfg.num_experts + cfg.num_shared_experts) * mlp(cfg.moe_ffn_hidden_size)
        ffn_part += h * cfg.num_experts  # router, replicated
    else:
        ffn_part = mlp(cfg.ffn_hidden_size)
    return attn + ffn_part + cfg.norms_per_layer * norm_params(cfg)


def stage_params_per_rank(cfg: ModelConfig, par: Parallel) -> list[int]:
    """Parameters on one rank of each pipeline stage (before any ZeRO sharding)."""
    t, p = par.tp, par.pp
    per_stage = cfg.num_layers // p
    dense = layer_params_per_rank(cfg, t, moe=False)
    moe = layer_params_per_rank(cfg, t, moe=True) if cfg.is_moe else 0
    vocab_rank = ceil_div(cfg.vocab_size, t) * cfg.hidden_size
    one_norm = norm_params(cfg)
    chunk = cfg.num_layers // (p * par.vpp)
    out = []
    for stage in range(p):
        # Stage `stage` owns chunks stage, stage + p, ... (interleaved round-robin).
        layers = [c * chunk + j for c in range(stage, p * par.vpp, p) for j in range(chunk)]
        assert len(layers) == per_stage
        n = sum(moe if (cfg.is_moe and i >= cfg.first_dense_layers) else dense for i in layers)
        if stage == 0:
            n += vocab_rank
            if cfg.position == "learned":
                n += (cfg.max_context + cfg.position_offset) * cfg.hidden_size
            if cfg.embedding_norm:
                n += one_norm
        if stage == p - 1:
            if cfg.final_norm:
                n += one_norm
            if not cfg.tie_embeddings or p > 1:
                n += vocab_rank
        out.append(n)
    return out


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


def layer_activation_terms(cfg: ModelConfig, setup: TrainSetup, tp: int, *, moe: bool) -> ActivationTerms:
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
    * dropout (when on): 1-byte masks of ``sbh`` after attention and after the MLP.

    RoPE multiplies by constant cos/sin tables, which keeps no extra per-token tensor.
    """
    B, s, b, h, d, t = setup.activation_bytes, setup.seq_len, setup.micro_batch, cfg.hidden_size, cfg.head_dim, tp
    sb = s * b
    a_r = cfg.num_heads // t
    g_r = kv_heads_per_rank(cfg, t)
    drop = setup.dropout

    norms = cfg.norms_per_layer
    mlp_input_shared = cfg.block == "parallel" and cfg.parallel_norms == 1
    replicated = norms * B * sb * h + B * sb * h + (0 if mlp_input_shared else B * sb * h)
    if drop:
        replicated += 2 * sb * h
    sharded = B * sb * d * (2 * a_r + 2 * g_r)
    quadratic = 0.0
    if setup.attention == "flash":
        sharded += 4 * sb * a_r
    else:
        quadratic = (B + ((1 + B) if drop else 0)) * a_r * s * s * b

    def mlp_tensors(ffn: int) -> float:
        return (4 if cfg.gated else 2) * B * sb * (ffn // t)

    if moe:
        k = cfg.experts_per_token
        replicated += 4 * sb * cfg.num_experts + 2 * k * B * sb * h
        sharded += (k + cfg.num_shared_experts) * mlp_tensors(cfg.moe_ffn_hidden_size)
    else:
        sharded += mlp_tensors(cfg.ffn_hidden_size)
    return ActivationTerms(replicated=replicated, sharded=sharded, quadratic=quadratic,
                           layer_input=B * sb * h,
                           gathered=B * sb * h * (1 if mlp_input_shared else 2))


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
    return replicated + terms.sharded + quadratic


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


@dataclass(frozen=True, kw_only=True, slots=True)
class StageMemory:
    stage: int
    params: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    transient_bytes: int
    activations_recompute_bytes: int = 0  # of activations: only while a layer is recomputed

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes
                + self.activations_bytes + self.transient_bytes)

    def to_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "params": self.params, "weights_bytes": self.weights_bytes,
                "gradients_bytes": self.gradients_bytes, "optimizer_bytes": self.optimizer_bytes,
                "activations_bytes": self.activations_bytes,
                "activations_recompute_bytes": self.activations_recompute_bytes,
                "transient_bytes": self.transient_bytes, "total_bytes": self.total_bytes}


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryReport:
    stages: tuple[StageMemory, ...]

    @property
    def per_gpu(self) -> StageMemory:
        """The most loaded rank (the stage with the largest total)."""
        return max(self.stages, key=lambda st: st.total_bytes)

    def to_dict(self) -> dict[str, object]:
        return {"per_gpu": self.per_gpu.to_dict(), "stages": [s.to_dict() for s in self.stages]}


def sharded_states(zero: int, recipe: str) -> tuple[bool, bool, bool]:
    """Which of (weights, gradients, optimizer states) ZeRO stage ``zero`` shards over dp
    (ZeRO paper §5.1-5.3). FSDP2, which runs llmplan's ZeRO-2 and -3 (``runtime`` recipe),
    always stores sharded parameters; its ZeRO-2 keeps the unsharded copy from forward to
    backward instead (counted as transient by the Estimator)."""
    return (zero >= 3 or (zero == 2 and recipe == "runtime"), zero >= 2, zero >= 1)


def model_state_bytes(params: int, *, recipe: str, optimizer: str, zero: int, dp: int,
                      hidden: int = 0) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one rank holding ``params`` parameters of a
    model-parallel shard, with ZeRO stage ``zero`` over ``dp`` ranks (ZeRO paper §5.1-5.3).
    Sharded states are padded up to a multiple of dp (as FSDP does)."""
    w, g, master = RECIPE_BYTES[recipe]
    shard = ceil_div(params, dp)
    w_sharded, g_sharded, o_sharded = sharded_states(zero, recipe)
    opt_params = shard if o_sharded else params
    if optimizer == "adafactor":
        states = adafactor_state_bytes(opt_params, hidden)
    else:
        states = OPTIMIZER_STATE_BYTES[optimizer] * opt_params
    optimizer_bytes = master * opt_params + states
    gradients = g * (shard if g_sharded else params)
    weights = w * (shard if w_sharded else params)
    return weights, gradients, optimizer_bytes


class Estimator:
    """Memory of one model under one training setup, fast across many layouts.

    Everything that does not depend on the layout is computed once; per-TP terms and per-
    (tp, pp, vpp) stage parameter counts are cached. Activation terms are linear in the
    micro-batch, so they are cached for b = 1 and scaled. ``stage_parts`` is the one place
    the per-stage formula lives: :func:`memory_report` and the layout search both use it.
    """

    def __init__(self, cfg: ModelConfig, setup: TrainSetup) -> None:
        self.cfg, self.setup = cfg, setup
        self.unit = TrainSetup(seq_len=setup.seq_len, micro_batch=1, dtype=setup.dtype,
                               attention=setup.attention, dropout=setup.dropout)
        self.compute_w_bytes = 4 if setup.dtype == "fp32" else 2
        self.uniform = not cfg.is_moe or cfg.first_dense_layers == 0
        self._tp: dict[tuple[int, bool, str], tuple[int, float, float]] = {}
        self._stages: dict[tuple[int, int, int], list[int]] = {}
        self._tail: dict[tuple[int, bool], float] = {}
        self._states: dict[tuple, tuple[int, int, int, int, int]] = {}

    def tp_terms(self, tp: int, sp: bool, recompute: str) -> tuple[int, float, float]:
        """(layer params per rank, kept bytes per layer, running layer's bytes) at b = 1."""
        key = (tp, sp, recompute)
        hit = self._tp.get(key)
        if hit is None:
            cfg = self.cfg
            # The layer kinds this model has (dense, MoE, or both with leading dense layers);
            # the larger per-layer figure bounds a mix of them in flight.
            kinds = [layer_activation_terms(cfg, self.unit, tp, moe=moe)
                     for moe in ((False,) if not cfg.is_moe else
                                 (True,) if cfg.first_dense_layers == 0 else (False, True))]
            gathered = self.setup.recipe == "runtime"
            kept = max(layer_activation_bytes(k, tp=tp, sp=sp, recompute=recompute,
                                              sp_keeps_gathered=gathered) for k in kinds)
            running = max(layer_activation_bytes(k, tp=tp, sp=sp, recompute="none",
                                                 sp_keeps_gathered=gathered) for k in kinds)
            hit = (layer_params_per_rank(cfg, tp, moe=cfg.is_moe), kept, running)
            self._tp[key] = hit
        return hit

    def stage_params(self, tp: int, pp: int, vpp: int) -> list[int]:
        key = (tp, pp, vpp)
        hit = self._stages.get(key)
        if hit is None:
            hit = stage_params_per_rank(self.cfg, Parallel(tp=tp, pp=pp, vpp=vpp))
            self._stages[key] = hit
        return hit

    def stage_parts(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                    recompute: str, mbs: int, m: int, schedule: str, stage: int,
                    recipe: str | None = None, optimizer: str | None = None
                    ) -> tuple[int, int, int, int, int, int]:
        """(params, weights, gradients, optimizer, activations, transient) bytes of one rank of
        pipeline stage ``stage``. The layout is assumed valid (see ``planner.layout``)."""
        cfg, setup = self.cfg, self.setup
        key = (tp, pp, vpp, dp, zero, stage, recipe, optimizer)
        states = self._states.get(key)
        if states is None:  # model states repeat across sp / recompute / micro-batch choices
            params = self.stage_params(tp, pp, vpp)[stage]
            weights, grads, opt = model_state_bytes(
                params, recipe=recipe or setup.recipe, optimizer=optimizer or setup.optimizer,
                zero=zero, dp=dp, hidden=cfg.hidden_size)
            transient = 0
            if zero >= 3 and dp > 1:
                # FSDP all-gathers the running layer and prefetches the next (compute dtype).
                layer_params = self.tp_terms(tp, sp, recompute)[0]
                transient = min(2, cfg.num_layers // pp) * layer_params * self.compute_w_bytes
            elif zero == 2 and dp > 1 and (recipe or setup.recipe) == "runtime":
                # FSDP2 without resharding keeps every unsharded layer from forward to backward.
                transient = params * self.compute_w_bytes
            states = self._states[key] = (params, weights, grads, opt, transient)
        params, weights, grads, opt, transient = states
        _, kept, running = self.tp_terms(tp, sp, recompute)
        in_flight = in_flight_layers(cfg.num_layers, pp=pp, vpp=vpp, m=m, stage=stage,
                                     schedule=schedule)
        acts = ((in_flight - 1) * kept + running) * mbs
        if setup.dropout and stage == 0:  # embedding dropout mask per in-flight micro-batch
            acts += min(pp, m) * setup.seq_len * mbs * cfg.hidden_size / (tp if sp else 1)
        if stage == pp - 1:
            acts += self.last_stage_bytes(tp, sp) * mbs
        return params, weights, grads, opt, int(acts), transient

    def last_stage_bytes(self, tp: int, sp: bool) -> float:
        """Per sequence of the micro-batch: the final-norm and LM-head inputs, the logits and
        their fp32 copy for cross-entropy."""
        key = (tp, sp)
        hit = self._tail.get(key)
        if hit is None:
            cfg, s, B = self.cfg, self.setup.seq_len, self.setup.activation_bytes
            hit = 2 * B * s * cfg.hidden_size / (tp if sp else 1)
            # log-softmax keeps its fp32 output; 16-bit logits are alive beside it
            hit += (4 + (B if B != 4 else 0)) * s * ceil_div(cfg.vocab_size, tp)
            self._tail[key] = hit
        return hit

    def peak_bytes(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                   recompute: str, mbs: int, m: int, schedule: str) -> tuple[int, int]:
        """(total bytes, stage) of the most loaded rank. With uniform layers a middle stage
        never exceeds stage 0 (same layers, no embedding, fewer micro-batches in flight), so
        only the first and last stages are evaluated."""
        stages = (0, pp - 1) if self.uniform and pp > 2 else range(pp)
        best, where = -1, 0
        for i in stages:
            parts = self.stage_parts(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp,
                                     recompute=recompute, mbs=mbs, m=m, schedule=schedule, stage=i)
            total = parts[1] + parts[2] + parts[3] + parts[4] + parts[5]
            if total > best:
                best, where = total, i
        return best, where

    def report(self, par: Parallel) -> MemoryReport:
        layout.check(self.cfg, self.setup, par, runtime="any")
        s = self.setup
        stages = []
        for i in range(par.pp):
            params, w, g, o, a, t = self.stage_parts(
                tp=par.tp, pp=par.pp, vpp=par.vpp, dp=par.dp, zero=par.zero, sp=par.sp,
                recompute=s.recompute, mbs=s.micro_batch, m=s.grad_accum,
                schedule=par.schedule, stage=i)
            _, kept, running = self.tp_terms(par.tp, par.sp, s.recompute)
            recomputed = int((running - kept) * s.micro_batch) if s.recompute != "none" else 0
            stages.append(StageMemory(stage=i, params=params, weights_bytes=w, gradients_bytes=g,
                                      optimizer_bytes=o, activations_bytes=a, transient_bytes=t,
                                      activations_recompute_bytes=recomputed))
        return MemoryReport(stages=tuple(stages))


def memory_report(cfg: ModelConfig, setup: TrainSetup, par: Parallel) -> MemoryReport:
    """Per-rank memory of every pipeline stage for ``cfg`` trained with ``setup`` on ``par``."""
    return Estimator(cfg, setup).report(par)
