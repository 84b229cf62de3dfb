"""Per-GPU training memory: weights, gradients, optimizer states, activations, and the peak
of the step's timeline, for every pipeline stage of a layout.

Ψ, the parameters of one rank, is counted exactly: TP splits every matrix (vocab-parallel
embedding and LM head, ceil(V/t) rows), replicates norms, row-parallel biases and KV heads
when tp > kv heads; PP gives stage 0 the embedding and the last stage the final norm and LM
head (a tied head is a second copy there when pp > 1, as in Megatron). Model states per
recipe and ZeRO stage: ``planner.states``; activations: ``planner.activations``; the
per-GPU total is the peak of the step's memory timeline (``planner.peak``), not the sum of
each category's largest value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace as dataclass_replace

from planner import layout
from planner.activations import (ceil_div, carries_gradients, in_flight_layers,
                                 layer_activation_bytes, layer_activation_terms,
                                 rope_table_bytes, tail_bytes)
from planner.config import ModelConfig
from planner import ep_cp, fp8
from planner.setup import Parallel, TrainSetup
from planner.params import norm_params
from planner.peak import PHASES, StepBytes
from planner.stage_params import layer_params_per_rank, stage_params_per_rank
from planner.states import RECIPE_BYTES, States, model_state_bytes, runtime_states
from planner import tensors as T


CATEGORIES = {
    "parameters": "weights_bytes",
    "frozen_base": "frozen_base_bytes",
    "gradients": "gradients_bytes",
    "optimizer_states": "optimizer_bytes",
    "activations": "activations_bytes",
}
"""The memory categories a run measures and the planner predicts, by name (the runtime's
``done`` event, the run comparison, calibration) -> the :class:`StageMemory` field."""
OPTIONAL_CATEGORIES = ("frozen_base",)
"""Categories only some runs have (adapter fine-tuning's frozen base): shown when present."""

@dataclass(frozen=True, kw_only=True, slots=True)
class StageMemory:
    """One rank of a pipeline stage. Each category is its largest value in the step
    (gradients and optimizer states resident, activations as many as are ever alive);
    ``total_bytes`` is the peak of the step's timeline, in phase ``peak_phase``, where
    ``transient_bytes`` of temporaries are alive (``planner.peak``)."""

    stage: int
    params: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    transient_bytes: int
    total_bytes: int
    peak_phase: str = "backward_start"
    activations_recompute_bytes: int = 0  # of activations: only while a layer is recomputed
    expert_params: int = 0  # of params: the routed experts this rank holds (E/ep per layer)
    fp8_weight_bytes: int = 0  # of weights (or, ZeRO-3, of transients): the linears' fp8 copies
    all_to_all_bytes: int = 0  # of transients: expert parallelism's dispatch buffers
    ring_bytes: int = 0  # of transients: context parallelism's K/V blocks in flight
    frozen_base_bytes: int = 0  # adapter fine-tuning: the frozen base (weights: the adapters)
    phases: dict[str, int] = field(default_factory=dict)
    at_peak: dict[str, int] = field(default_factory=dict)
    """What ``total_bytes`` is made of: weights, optimizer states and the gradients,
    activations and temporaries alive in the peak phase."""

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "params": self.params, "weights_bytes": self.weights_bytes,
                "gradients_bytes": self.gradients_bytes, "optimizer_bytes": self.optimizer_bytes,
                "activations_bytes": self.activations_bytes,
                "activations_recompute_bytes": self.activations_recompute_bytes,
                "frozen_base_bytes": self.frozen_base_bytes,
                "expert_params": self.expert_params, "fp8_weight_bytes": self.fp8_weight_bytes,
                "all_to_all_bytes": self.all_to_all_bytes, "ring_bytes": self.ring_bytes,
                "transient_bytes": self.transient_bytes, "total_bytes": self.total_bytes,
                "peak_phase": self.peak_phase, "phases_bytes": dict(self.phases),
                "at_peak_bytes": dict(self.at_peak)}


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryReport:
    stages: tuple[StageMemory, ...]

    @property
    def per_gpu(self) -> StageMemory:
        """The most loaded rank (the stage with the largest total)."""
        return max(self.stages, key=lambda st: st.total_bytes)

    def to_dict(self) -> dict[str, object]:
        return {"per_gpu": self.per_gpu.to_dict(), "stages": [s.to_dict() for s in self.stages]}


class Estimator:
    """Memory of one model under one training setup, fast across many layouts.

    Everything that does not depend on the layout is computed once; per-TP terms, per-(tp,
    pp, vpp) stage parameter counts and per-(layout, stage) model states are cached.
    Activation terms are linear in the micro-batch, so they are cached for b = 1 and scaled.
    ``stage_memory`` is the one place the per-stage formula lives: :func:`memory_report` and
    the layout search both use it.
    """

    def __init__(self, cfg: ModelConfig, setup: TrainSetup) -> None:
        self.cfg, self.setup = cfg, setup
        self.unit = TrainSetup(seq_len=setup.seq_len, micro_batch=1, dtype=setup.dtype,
                               attention=setup.attention, dropout=setup.dropout)
        self._units: dict[int, TrainSetup] = {1: self.unit}
        self.compute_w_bytes = 4 if setup.dtype == "fp32" else 2
        self.runtime = setup.recipe == "runtime"
        self.uniform = not cfg.is_moe or cfg.first_dense_layers == 0
        self._tp: dict[tuple, tuple[int, float, float]] = {}
        self._stages: dict[tuple[int, int, int], list[int]] = {}
        self._tail: dict[tuple, float] = {}
        self._states: dict[tuple, States] = {}
        self._fixed: dict[tuple, dict] = {}
        self.rope_tables = rope_table_bytes(cfg, setup.seq_len)  # one pair per forward
        self.adapters = None
        if setup.adapters is not None:
            from planner.finetune import adapter_memory

            self.adapters = adapter_memory(cfg, setup.adapters, seq_len=setup.seq_len,
                                           act_bytes=setup.activation_bytes,
                                           dtype_bytes=self.compute_w_bytes)

    def local_unit(self, cp: int) -> TrainSetup:
        """The b = 1 setup of one context-parallel rank: ``s/cp`` tokens of each sequence."""
        hit = self._units.get(cp)
        if hit is None:
            hit = self._units[cp] = dataclass_replace(self.unit, seq_len=self.setup.seq_len // cp)
        return hit

    def autocast(self, dp: int, zero: int) -> bool:
        """llmplan's runtime casts to bf16 by autocast unless FSDP's mixed precision does."""
        return self.runtime and self.setup.dtype != "fp32" and not (zero >= 2 and dp > 1)

    def tp_terms(self, tp: int, sp: bool, recompute: str,
                 autocast: bool = False, cp: int = 1) -> tuple[int, float, float]:
        """(layer params per rank, kept bytes per layer, running layer's bytes) at b = 1, for
        one context-parallel rank's ``s/cp`` tokens (``planner.ep_cp``)."""
        key = (tp, sp, recompute, autocast, cp)
        hit = self._tp.get(key)
        if hit is None:
            cfg, unit = self.cfg, self.local_unit(cp)
            # The layer kinds this model has (dense, MoE, or both with leading dense layers);
            # the larger per-layer figure bounds a mix of them in flight.
            kinds = [self.layer_terms(unit, tp, moe=moe, autocast=autocast, cp=cp)
                     for moe in ((False,) if not cfg.is_moe else
                                 (True,) if cfg.first_dense_layers == 0 else (False, True))]
            gathered = self.runtime
            kept = max(layer_activation_bytes(k, tp=tp, sp=sp, recompute=recompute,
                                              sp_keeps_gathered=gathered) for k in kinds)
            running = max(layer_activation_bytes(k, tp=tp, sp=sp, recompute="none",
                                                 sp_keeps_gathered=gathered) for k in kinds)
            if self.adapters is not None:  # what the adapters save (tp = 1)
                extra = max(self.adapters.layer_activation_bytes.values())
                kept += 0 if recompute == "full" else extra
                running += extra
            hit = (layer_params_per_rank(cfg, tp, moe=cfg.is_moe), kept, running)
            self._tp[key] = hit
        return hit

    def layer_terms(self, unit: TrainSetup, tp: int, *, moe: bool, autocast: bool, cp: int):
        """One layer's saved tensors at b = 1 for ``unit``'s tokens: under context
        parallelism (``planner.ep_cp``), with fp8 linears (``planner.fp8``)."""
        cfg = self.cfg
        terms = ep_cp.context_terms(
            layer_activation_terms(cfg, unit, tp, moe=moe, runtime=self.runtime,
                                   autocast=autocast),
            cfg, local_seq=unit.seq_len, micro_batch=1, act_bytes=unit.activation_bytes,
            tp=tp, cp=cp, runtime=self.runtime)
        if self.setup.dtype == "fp8" and not self.runtime:  # torchao saves bf16 inputs
            terms = fp8.fp8_terms(terms, cfg, local_seq=unit.seq_len,
                                  act_bytes=unit.activation_bytes, tp=tp, moe=moe,
                                  scaling=self.setup.fp8_scaling)
        return terms

    def stage_params(self, tp: int, pp: int, vpp: int, ep: int = 1) -> list[int]:
        key = (tp, pp, vpp, ep)
        hit = self._stages.get(key)
        if hit is None:
            hit = stage_params_per_rank(self.cfg, Parallel(tp=tp, pp=pp, vpp=vpp, dp=ep, ep=ep))
            self._stages[key] = hit
        return hit

    def expert_params(self, tp: int, pp: int, vpp: int, ep: int, stage: int) -> int:
        """The routed experts' parameters among a stage rank's (E/ep per MoE layer)."""
        par = Parallel(tp=tp, pp=pp, vpp=vpp, dp=ep, ep=ep)
        return sum(n * T.numel(shape)
                   for shape, n in T.stage_expert_tensors(self.cfg, par, stage).items())

    def states(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, stage: int,
               cp: int = 1, ep: int = 1) -> States:
        """A stage rank's model states. ZeRO shards the dense weights over the dp x cp ranks
        holding them, and the routed experts over the dp x cp / ep holding theirs."""
        key = (tp, pp, vpp, dp, zero, stage, cp, ep)
        hit = self._states.get(key)
        if hit is None and (cp > 1 or ep > 1):
            par = Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, cp=cp, ep=ep, zero=zero)
            hit = ep_cp.split_states(self.cfg, self.setup, par, stage, runtime=self.runtime,
                                     params=self.stage_params(tp, pp, vpp, ep)[stage],
                                     experts=self.expert_params(tp, pp, vpp, ep, stage),
                                     compute_bytes=self.compute_w_bytes)
            self._states[key] = hit
        if hit is None:
            cfg, setup = self.cfg, self.setup
            params = self.stage_params(tp, pp, vpp)[stage]
            par = Parallel(tp=tp, pp=pp, vpp=vpp)
            if self.adapters is not None and self.runtime:  # fp32 base, tensor by tensor
                base = runtime_states(T.stage_tensors(cfg, par, stage, runtime=True),
                                      optimizer=setup.optimizer, zero=zero, dp=dp).weights
                if setup.adapters.base_bits == 4:  # NF4 of fp32 weights, unsharded (zero <= 1)
                    from planner.frozen_base import frozen_base

                    # stored as the runtime stores (fp32 besides the NF4 weights); the
                    # estimator's base_bytes is in the compute dtype, what FSDP gathers
                    base = frozen_base(cfg, bits=4, double_quant=True, dtype_bytes=4).bytes
                ad = runtime_states(self.adapters.tensors, optimizer=setup.optimizer,
                                    zero=zero, dp=dp)
                hit = States(params=params, weights=ad.weights, gradients=ad.gradients,
                             optimizer=ad.optimizer, optimizer_temp=ad.optimizer_temp,
                             frozen=base)
            elif self.adapters is not None:  # the frozen base as held, states for adapters
                a = self.adapters
                w, g, o = model_state_bytes(a.trainable, recipe=setup.recipe,
                                            optimizer=setup.optimizer, zero=zero, dp=dp)
                base = ceil_div(a.base_bytes, dp) if zero >= 3 else a.base_bytes
                hit = States(params=params, weights=w, gradients=g, optimizer=o, frozen=base)
            elif self.runtime:
                hit = runtime_states(T.stage_tensors(cfg, par, stage, runtime=True),
                                     optimizer=setup.optimizer, zero=zero, dp=dp)
            else:
                factored = 0
                if setup.optimizer == "adafactor":
                    factored = sum(n * T.adafactor_elements(shape)
                                   for shape, n in T.stage_tensors(cfg, par, stage).items())
                w, g, o = model_state_bytes(params, recipe=setup.recipe,
                                            optimizer=setup.optimizer, zero=zero, dp=dp,
                                            adafactor_elements=factored)
                hit = States(params=params, weights=w, gradients=g, optimizer=o)
            if setup.reference_copy:  # DPO's frozen reference, held as the policy's weights
                ref = hit.weights if self.runtime else (
                    self.compute_w_bytes * (ceil_div(params, dp) if zero >= 3 else params))
                hit = dataclass_replace(hit, frozen=hit.frozen + ref)
            self._states[key] = hit
        return hit

    def tail(self, tp: int, sp: bool, autocast: bool, cp: int = 1) -> float:
        key = (tp, sp, autocast, cp)
        if key not in self._tail:
            a = self.adapters
            self._tail[key] = tail_bytes(self.cfg, self.local_unit(cp), tp, sp, autocast=autocast,
                                         frozen_head=a is not None and not a.head_adapted) \
                + (a.head_activation_bytes if a is not None else 0)
        return self._tail[key]

    def fixed(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, stage: int,
              cp: int = 1, ep: int = 1) -> dict:
        """The timeline's terms that depend on the layout and stage only (cached): model
        states, the LM head's gradient, the tied embedding's backward, FSDP's unsharded
        parameters and gradients, autocast's weight copies. FSDP shards over the dp x cp
        ranks holding a weight (``dp`` below is that group)."""
        key = (tp, pp, vpp, dp, zero, stage, cp, ep)
        hit = self._fixed.get(key)
        if hit is not None:
            return hit
        cfg, setup = self.cfg, self.setup
        st = self.states(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, stage=stage, cp=cp, ep=ep)
        dp *= cp
        layer_params = T.layer_params(cfg, tp, moe=cfg.is_moe, runtime=self.runtime, ep=ep)
        n_layers = cfg.num_layers // pp
        first, last = stage == 0, stage == pp - 1
        vocab_rows = ceil_div(cfg.vocab_size, tp) * cfg.hidden_size
        grad_b = RECIPE_BYTES[setup.recipe][1]
        fsdp = zero >= 2 and dp > 1
        c = self.compute_w_bytes
        tied_here = cfg.tie_embeddings and pp == 1
        out = dict(weights=st.weights + st.frozen, gradients=st.gradients, optimizer=st.optimizer,
                   optimizer_temp=st.optimizer_temp, head_grad=0, embedding_end=0,
                   unsharded_start=0, unsharded_block=0, unsharded_end=0, partial_block=0)
        root = st.params - n_layers * layer_params  # embedding, final norm, head
        if setup.dtype == "fp8" and not self.runtime:
            # the linears' fp8 copies: cached, or while a layer is gathered (torchao, the
            # runtime's, casts each weight at each GEMM: a transient, not a copy kept)
            copies = fp8.weight_copy_bytes(
                fp8.linear_weights_per_layer(cfg, tp, moe=cfg.is_moe, ep=ep),
                setup.fp8_scaling)
            if zero >= 3 and dp > 1:
                out["fp8_copies"] = min(2, n_layers) * copies
                out["unsharded_start"] += out["fp8_copies"]
            else:
                out["fp8_copies"] = n_layers * copies
                out["weights"] += out["fp8_copies"]
        if setup.dtype == "fp8" and self.runtime:  # one weight cast to fp8 at a time
            out["block_temp"] = fp8.RUNTIME_CAST_BYTES * fp8.largest_linear_weight(
                cfg, tp, moe=cfg.is_moe)
        if self.adapters is not None:
            out.update(self.adapters.timeline_terms(
                num_layers=cfg.num_layers, dp=dp, zero=zero, root_params=root,
                grad_bytes=grad_b, compute_bytes=c, fsdp_runtime=fsdp and self.runtime))
            self._fixed[key] = out
            return out
        if last:
            out["head_grad"] = vocab_rows * (c if fsdp and self.runtime else grad_b)
        if fsdp and self.runtime:
            # FSDP2 (module docstring of planner.peak): the block phase is the backward of the
            # block before last (ZeRO-3: the running block and the next one's all-gather; its
            # gradients; the previous block's fp32 reduce-scatter input; the sharded
            # gradients of the blocks done), ZeRO-2 every block not yet resharded
            shard = ceil_div(4 * layer_params, dp)
            if zero >= 3:
                gathered = min(2, n_layers) * layer_params * c
                block = layer_params * (c + 4)
                out["partial_block"] = max(0, n_layers - 2) * shard
            else:
                gathered = n_layers * layer_params * c
                block = layer_params * (4 if n_layers > 1 else c)
                out["partial_block"] = shard if n_layers > 1 else 0
            out.update(unsharded_start=root * c + gathered, unsharded_block=block,
                       unsharded_end=root * (c + 4))
        elif zero >= 3 and dp > 1:  # the frameworks' ZeRO-3: the running and prefetched layer
            out.update(unsharded_start=min(2, n_layers) * layer_params * c,
                       unsharded_block=layer_params * grad_b)
        if first and tied_here and not fsdp:
            # autograd holds the head's half of the tied gradient until the embedding's
            # arrives, then sums the two
            out["embedding_end"] = 2 * vocab_rows * grad_b
        if self.autocast(dp, zero):  # bf16 copies of the weights linears cast, kept to the end
            embedding = vocab_rows if first and not tied_here else 0
            positions = (cfg.max_context + cfg.position_offset) * cfg.hidden_size \
                if first and cfg.position == "learned" else 0
            norms = norm_params(cfg) * (n_layers * cfg.norms_per_layer
                                        + (cfg.final_norm if last else 0)
                                        + (cfg.embedding_norm if first else 0))
            # torchao's fp8 linears cast their fp32 weights to fp8 at each GEMM, not to bf16
            fp8_weights = n_layers * fp8.linear_weights_per_layer(
                cfg, tp, moe=cfg.is_moe, ep=ep) if setup.dtype == "fp8" else 0
            cache = 2 * (st.params - embedding - positions - norms - fp8_weights)
            out["unsharded_start"] += cache
            out["unsharded_end"] += cache
        self._fixed[key] = out
        return out

    def step_bytes(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                   recompute: str, mbs: int, m: int, schedule: str, stage: int,
                   cp: int = 1, ep: int = 1) -> StepBytes:
        """What one rank of pipeline stage ``stage`` holds, by kind, for the timeline. The
        layout is assumed valid (see ``planner.layout``); a DPO example is two sequences;
        a context-parallel rank holds ``s/cp`` tokens of each."""
        cfg, setup = self.cfg, self.setup
        mbs *= setup.sequences_per_example
        fixed = self.fixed(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, stage=stage, cp=cp, ep=ep)
        autocast = self.autocast(dp * cp, zero)
        _, kept, running = self.tp_terms(tp, sp, recompute, autocast, cp)
        local_seq = setup.seq_len // cp
        n_layers = cfg.num_layers // pp
        first, last = stage == 0, stage == pp - 1
        in_flight = in_flight_layers(cfg.num_layers, pp=pp, vpp=vpp, m=m, stage=stage,
                                     schedule=schedule)
        tail = self.tail(tp, sp, autocast, cp) * mbs if last else 0.0
        rope = self.rope_tables // cp
        acts = in_flight * kept * mbs + tail + ceil_div(in_flight, n_layers) * rope
        if setup.dropout and first:  # embedding dropout mask per in-flight micro-batch
            acts += min(pp, m) * local_seq * mbs * cfg.hidden_size / (tp if sp else 1)
        buffers = self.comm_buffers(tp=tp, cp=cp, ep=ep, mbs=mbs)
        carry = (not self.runtime) or carries_gradients(pp=pp, vpp=vpp, m=m, stage=stage,
                                                        schedule=schedule)
        return StepBytes(
            weights=fixed["weights"], gradients=fixed["gradients"],
            optimizer=fixed["optimizer"], optimizer_temp=fixed["optimizer_temp"],
            activations=int(acts), tail=int(tail), carry=carry,
            running_extra=int((running - kept) * mbs) if recompute != "none" else 0,
            loss_temp=8 * local_seq * mbs * ceil_div(cfg.vocab_size, tp) if last else 0,
            head_grad=fixed["head_grad"], embedding_end=fixed["embedding_end"],
            unsharded_start=fixed["unsharded_start"],
            unsharded_block=fixed["unsharded_block"] + (0 if carry else fixed["partial_block"]),
            unsharded_end=fixed["unsharded_end"],
            block_temp=fixed.get("block_temp", 0) + sum(buffers))

    def comm_buffers(self, *, tp: int, cp: int, ep: int, mbs: int) -> tuple[int, int]:
        """(all-to-all buffers, ring K/V blocks) alive while a layer runs (``planner.ep_cp``)."""
        unit = self.local_unit(cp)
        common = dict(local_seq=unit.seq_len, micro_batch=mbs, act_bytes=unit.activation_bytes)
        a2a = ep_cp.all_to_all_buffer_bytes(self.cfg, ep=ep, **common) if self.cfg.is_moe else 0
        return a2a, ep_cp.ring_buffer_bytes(self.cfg, tp=tp, cp=cp, **common)

    def stage_memory(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                     recompute: str, mbs: int, m: int, schedule: str, stage: int,
                     cp: int = 1, ep: int = 1) -> StageMemory:
        step = self.step_bytes(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp,
                               recompute=recompute, mbs=mbs, m=m, schedule=schedule,
                               stage=stage, cp=cp, ep=ep)
        phases = step.phases()
        peak, phase = step.peak()
        grads, acts, temps = step.parts()[PHASES.index(phase)]
        most_acts = max(step.activations, step.activations - step.tail + step.running_extra)
        st = self.states(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, stage=stage, cp=cp, ep=ep)
        a2a, ring = self.comm_buffers(tp=tp, cp=cp, ep=ep,
                                      mbs=mbs * self.setup.sequences_per_example)
        at_peak = {"weights": step.weights - st.frozen}
        if st.frozen:
            at_peak["frozen_base"] = st.frozen
        return StageMemory(
            stage=stage, params=st.params, frozen_base_bytes=st.frozen,
            weights_bytes=step.weights - st.frozen, gradients_bytes=step.gradients,
            optimizer_bytes=step.optimizer, activations_bytes=most_acts,
            activations_recompute_bytes=most_acts - step.activations,
            all_to_all_bytes=a2a, ring_bytes=ring,
            fp8_weight_bytes=self.fixed(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, stage=stage,
                                        cp=cp, ep=ep).get("fp8_copies", 0),
            expert_params=self.expert_params(tp, pp, vpp, ep, stage) if self.cfg.is_moe else 0,
            transient_bytes=temps, total_bytes=peak, peak_phase=phase, phases=phases,
            at_peak={**at_peak, "optimizer": step.optimizer, "gradients": grads,
                     "activations": acts, "temporaries": temps})

    def peak_bytes(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                   recompute: str, mbs: int, m: int, schedule: str, cp: int = 1,
                   ep: int = 1) -> tuple[int, int]:
        """(total bytes, stage) of the most loaded rank. With uniform layers a middle stage
        never exceeds stage 0 (same layers, no embedding, fewer micro-batches in flight), so
        only the first and last stages are evaluated."""
        stages = (0, pp - 1) if self.uniform and pp > 2 else range(pp)
        best, where = -1, 0
        for i in stages:
            total = self.step_bytes(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp,
                                    recompute=recompute, mbs=mbs, m=m, schedule=schedule,
                                    stage=i, cp=cp, ep=ep).peak()[0]
            if total > best:
                best, where = total, i
        return best, where

    def report(self, par: Parallel) -> MemoryReport:
        layout.check(self.cfg, self.setup, par, runtime="any")
        s = self.setup
        return MemoryReport(stages=tuple(
            self.stage_memory(tp=par.tp, pp=par.pp, vpp=par.vpp, dp=par.dp, zero=par.zero,
                              sp=par.sp, recompute=s.recompute, mbs=s.micro_batch,
                              m=s.grad_accum, schedule=par.schedule, stage=i, cp=par.cp,
                              ep=par.ep)
            for i in range(par.pp)))


def memory_report(cfg: ModelConfig, setup: TrainSetup, par: Parallel) -> MemoryReport:
    """Per-rank memory of every pipeline stage for ``cfg`` trained with ``setup`` on ``par``."""
    return Estimator(cfg, setup).report(par)
