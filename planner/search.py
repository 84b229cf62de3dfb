"""Layout search: every tensor x context x pipeline x data (expert, ZeRO) layout of a
cluster, ranked.

The space for N accelerators: tp, cp and pp over the divisors of N (dp = N / (tp cp pp)), ep
over the divisors of dp for an MoE model, virtual stages 1..max_vpp, ZeRO 0-3, sequence
parallel off/on, recompute none/selective/full, and a micro-batch from ``micro_batches`` (the gradient accumulation then follows from the global
batch). Each combination is either rejected for the first reason that applies, in the order
of ``REASONS``, or evaluated: per-GPU memory of the most loaded rank (planner.memory) against
the usable memory, and step time (planner.cost). Rejections are counted exactly; subtrees
that share a reason are counted in bulk, so the search stays fast on 16,384 GPUs while the
counts equal a one-by-one enumeration (tests/unit/test_search.py checks both).

Ranking: tokens/s, then memory margin. The Pareto front of memory vs throughput and the
reason the runner-up lost come with the result; no feasible layout is not an error: the
closest layout and what would make it fit are reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner import layout
from planner.config import ConfigError, ModelConfig
from planner.setup import TrainSetup, default_schedule
from planner.cost import Cluster, CostEstimator, CostModel, StepTime
from planner.memory import Estimator

REASONS = layout.KEYS
MAX_LAYOUTS = 4_000_000
"""The most layouts one search enumerates (each rejected in bulk or evaluated): beyond it a
search could take minutes, so it is refused up front, naming the count and how to shrink it
(Mixtral 8x7B on 131,072 GPUs has 2.3 M layouts, 176 k of them evaluated: ~10 s of CPU; on
2^20 GPUs, 4.1 M)."""
RECOMPUTES = ("none", "selective", "full")
ZEROS = (0, 1, 2, 3)
SPS = (False, True)


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSpace:
    """The values each dimension takes. ``tps``, ``pps``, ``dps`` and ``vpps`` left empty
    mean every divisor of the cluster (vpp: 1..max_vpp); a given tuple pins the dimension
    (``plan --tp 8`` is ``tps=(8,)``), and with every dimension pinned the search evaluates
    one layout."""

    max_vpp: int = 4
    micro_batches: tuple[int, ...] = (1, 2, 4, 8)
    zeros: tuple[int, ...] = ZEROS
    recomputes: tuple[str, ...] = RECOMPUTES
    sps: tuple[bool, ...] = SPS
    tps: tuple[int, ...] = ()
    pps: tuple[int, ...] = ()
    dps: tuple[int, ...] = ()
    vpps: tuple[int, ...] = ()
    cps: tuple[int, ...] = ()
    eps: tuple[int, ...] = ()

    @classmethod
    def pinned(cls, *, max_vpp: int = 4, tp: int | None = None, pp: int | None = None,
               vpp: int | None = None, dp: int | None = None, zero: int | None = None,
               sp: bool | None = None, recompute: str | None = None,
               mbs: int | None = None, cp: int | None = None,
               ep: int | None = None) -> "SearchSpace":
        """The full space with each given dimension pinned to its value (``plan --tp ...``,
        a published run's stated layout); values outside a dimension's range are one-line
        errors."""
        from planner.setup import RECOMPUTES

        if recompute is not None and recompute not in RECOMPUTES:
            raise ConfigError(f"recompute({recompute!r}) is not one of {', '.join(RECOMPUTES)}")
        if zero is not None and zero not in ZEROS:
            raise ConfigError(f"zero({zero}) must be 0, 1, 2 or 3")
        for label, value in (("tp", tp), ("pp", pp), ("dp", dp), ("vpp", vpp), ("mbs", mbs),
                             ("cp", cp), ("ep", ep)):
            if value is not None and value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
        base = cls(max_vpp=max_vpp)
        return cls(max_vpp=max_vpp, tps=(tp,) if tp else (), pps=(pp,) if pp else (),
                   dps=(dp,) if dp else (), vpps=(vpp,) if vpp else (),
                   cps=(cp,) if cp else (), eps=(ep,) if ep else (),
                   zeros=(zero,) if zero is not None else base.zeros,
                   sps=(sp,) if sp is not None else base.sps,
                   recomputes=(recompute,) if recompute else base.recomputes,
                   micro_batches=(mbs,) if mbs else base.micro_batches)

    def check(self, gpus: int) -> None:
        """A pinned size that cannot split ``gpus`` is a ConfigError naming the numbers."""
        for label, values in (("tp", self.tps), ("cp", self.cps), ("pp", self.pps),
                              ("dp", self.dps)):
            for v in values:
                if v < 1 or gpus % v:
                    raise ConfigError(f"{label}({v}) does not divide gpus({gpus})")
        if len(self.tps) == len(self.pps) == len(self.dps) == 1:
            # with cp searched, it is whatever the pinned three leave
            product = self.tps[0] * self.pps[0] * self.dps[0]
            cps = self.cps or ((gpus // product,) if gpus % product == 0 else ())
            if not cps or product * cps[0] != gpus:
                cp = f" x cp({self.cps[0]})" if self.cps else ""
                total = product * (self.cps[0] if self.cps else 1)
                raise ConfigError(f"tp({self.tps[0]}){cp} x pp({self.pps[0]}) x "
                                  f"dp({self.dps[0]}) = {total} is not the cluster's {gpus} GPUs")

    def tensor_sizes(self, gpus: int) -> list[int]:
        return [t for t in divisors(gpus) if not self.tps or t in self.tps]

    def context_sizes(self, gpus: int, tp: int) -> list[int]:
        """The cp values searched beside ``tp``."""
        return [c for c in divisors(gpus // tp) if not self.cps or c in self.cps]

    def pipeline_sizes(self, gpus: int, tp: int, cp: int = 1) -> list[int]:
        """The pp values searched beside ``tp`` and ``cp`` (dp = gpus / (tp cp pp) must be
        allowed too)."""
        return [p for p in divisors(gpus // (tp * cp)) if (not self.pps or p in self.pps)
                and (not self.dps or gpus // (tp * cp * p) in self.dps)]

    def expert_sizes(self, cfg: ModelConfig, dp: int) -> list[int]:
        """The ep values searched beside ``dp``: its divisors for an MoE model (1 for a dense
        one), or the pinned value."""
        if self.eps:
            return list(self.eps)
        return divisors(dp) if cfg.is_moe else [1]

    def virtual_stages(self) -> tuple[int, ...]:
        return self.vpps or tuple(range(1, self.max_vpp + 1))


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    tp: int
    pp: int
    vpp: int
    dp: int
    zero: int
    sp: bool
    recompute: str
    mbs: int
    grad_accum: int
    memory_per_gpu_bytes: int
    memory_stage: int
    margin_bytes: int
    step: StepTime
    tokens_per_s: float
    mfu: float
    hfu_tflops_per_gpu: float
    hfu: float = 0.0
    """Hardware FLOPs (recompute counted) per second over the dense peak."""
    cp: int = 1
    ep: int = 1
    mfu_bf16_peak: float = 0.0
    """fp8 training: MFU against the bf16 peak (``mfu`` is against the fp8 peak); else 0."""
    not_launchable: tuple[str, ...] = ()
    """Why llmplan's runtime does not run this layout (``--runtime any`` only); empty when it does."""

    @property
    def step_time_s(self) -> float:
        return self.step.total_s

    @property
    def schedule(self) -> str:
        return default_schedule(self.vpp)

    @property
    def launchable(self) -> bool:
        return not self.not_launchable

    def label(self) -> str:
        beyond = (f"cp={self.cp} " if self.cp > 1 else "") + (f"ep={self.ep} " if self.ep > 1 else "")
        return (f"tp={self.tp} {beyond}pp={self.pp} vpp={self.vpp} dp={self.dp} zero={self.zero} "
                f"sp={'on' if self.sp else 'off'} recompute={self.recompute} "
                f"mbs={self.mbs} m={self.grad_accum}")

    def to_dict(self, world: int) -> dict[str, object]:
        return {"tp": self.tp, "cp": self.cp, "pp": self.pp, "vpp": self.vpp, "dp": self.dp,
                "ep": self.ep, "zero": self.zero,
                "sp": self.sp, "recompute": self.recompute, "mbs": self.mbs,
                "grad_accum": self.grad_accum, "memory_per_gpu_bytes": self.memory_per_gpu_bytes,
                "memory_stage": self.memory_stage, "margin_bytes": self.margin_bytes,
                "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s,
                "tokens_per_s_per_gpu": self.tokens_per_s / world, "mfu": self.mfu,
                "hfu_tflops_per_gpu": self.hfu_tflops_per_gpu, "hfu": self.hfu,
                **({"mfu_bf16_peak": self.mfu_bf16_peak} if self.mfu_bf16_peak else {}),
                "launchable": self.launchable, "not_launchable": list(self.not_launchable),
                "step": self.step.to_dict(), "breakdown": self.step.breakdown()}


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    candidates: list[Candidate]          # feasible, best first
    rejected: dict[str, int]
    evaluated: int                        # layouts whose memory (and time) was computed
    usable_bytes: int
    world: int
    cluster: Cluster
    setup: TrainSetup                     # what every candidate trains (its b, m, recompute vary)
    closest: Candidate | None = None      # smallest memory among those that did not fit
    suggestions: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def total(self) -> int:
        return len(self.candidates) + sum(self.rejected.values())

    def pareto(self) -> list[Candidate]:
        """Layouts no other layout beats on both memory and throughput, by memory."""
        front: list[Candidate] = []
        for cand in sorted(self.candidates, key=lambda c: (c.memory_per_gpu_bytes, -c.tokens_per_s)):
            if not front or cand.tokens_per_s > front[-1].tokens_per_s:
                front.append(cand)
        return front

    def runner_up_reason(self) -> str | None:
        if len(self.candidates) < 2:
            return None
        best, second = self.candidates[0], self.candidates[1]
        a, b = best.step.to_dict(), second.step.to_dict()
        parts = {k: b[k] - a[k] for k in a if k != "total_s"}
        worst = max(parts, key=lambda k: parts[k])
        slower = second.step_time_s / best.step_time_s - 1
        if slower <= 1e-12:
            return (f"runner-up ({second.label()}) is as fast and keeps less memory margin "
                    f"({second.margin_bytes / 2**30:.2f} vs {best.margin_bytes / 2**30:.2f} GiB)")
        return (f"runner-up ({second.label()}) is {slower:.1%} slower per step, mostly "
                f"{worst.removesuffix('_s').replace('_', ' ')} (+{parts[worst] * 1e3:.2f} ms)")


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending (trial division up to sqrt(n): fast for any cluster)."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def search(cfg: ModelConfig, cluster: Cluster, setup: TrainSetup, *, global_batch: int,
           model: CostModel = CostModel(), space: SearchSpace = SearchSpace(),
           runtime: str = "llmplan") -> SearchResult:
    """Every layout of ``cluster`` for ``cfg`` at ``global_batch`` sequences of
    ``setup.seq_len`` (setup's dtype, recipe, optimizer and attention are kept; its
    micro-batch, accumulation and recompute are searched). ``runtime`` "llmplan" ranks only
    layouts llmplan's runtime runs; "any" ranks every valid layout and marks the others
    (``Candidate.not_launchable``). Each level applies the layout contract's rules for its
    dimension (``planner.layout``), rejecting a whole subtree for its first refusal."""
    N, seq = cluster.gpus, setup.seq_len
    usable = cluster.usable_bytes(model)
    memory = Estimator(cfg, setup)
    cost = CostEstimator(cfg, setup, cluster, model, memory=memory)
    model_flops = cost.model_flops_per_token()
    peak = cost.peak
    rejected = dict.fromkeys(REASONS, 0)
    feasible: list[Candidate] = []
    closest: Candidate | None = None
    evaluated = 0
    space.check(N)
    vpps = space.virtual_stages()
    n_mbs, n_rc = len(space.micro_batches), len(space.recomputes)
    # layouts below each level, for counting a rejected subtree in bulk
    per_zero = n_mbs * n_rc
    per_ep = len(space.zeros) * per_zero

    def per_pp(dp: int) -> int:
        return len(vpps) * len(space.sps) * len(space.expert_sizes(cfg, dp)) * per_ep

    def per_cp(tp: int, cp: int) -> int:
        return sum(per_pp(N // (tp * cp * pp)) for pp in space.pipeline_sizes(N, tp, cp))

    def per_tp(tp: int) -> int:
        return sum(per_cp(tp, cp) for cp in space.context_sizes(N, tp))

    tokens_per_step = global_batch * seq * setup.sequences_per_example
    layouts = sum(per_tp(tp) for tp in space.tensor_sizes(N))
    if layouts > MAX_LAYOUTS:
        raise ConfigError(f"the search has {layouts:,} layouts of {N:,} GPUs, more than "
                          f"{MAX_LAYOUTS:,}: pin a dimension (--tp, --pp, --dp, --ep, --zero, "
                          "--mbs) or lower --max-vpp")

    def refused(found: list[layout.Problem]) -> tuple[str | None, tuple[str, ...]]:
        """(the key that rejects, else None; the runtime-only reasons it is kept with)."""
        applying = layout.refusals(found, runtime)
        if applying:
            return min((p.key for p in applying), key=REASONS.index), ()
        return None, tuple(p.message for p in found)

    whole = layout.model_problems(cfg) + layout.setup_problems(setup, cfg)
    key, base_notes = refused(whole)
    if key:
        rejected[key] = sum(per_tp(tp) for tp in space.tensor_sizes(N))
        # no layout is tried: the rule that refuses them all is the answer
        return SearchResult(candidates=[], rejected=rejected, evaluated=0, usable_bytes=usable,
                            world=N, cluster=cluster, setup=setup,
                            suggestions=[p.message for p in layout.refusals(whole, runtime)])
    for tp in space.tensor_sizes(N):
        if tp > cluster.gpus_per_node:
            rejected["tp_crosses_node"] += per_tp(tp)
            continue
        key, tp_notes = refused(layout.tp_problems(cfg, tp) + layout.fp8_problems(cfg, setup, tp)
                                + layout.method_layout_problems(setup, tp, 1))
        if key:
            rejected[key] += per_tp(tp)
            continue
        for cp in space.context_sizes(N, tp):
            key, cp_notes = refused(layout.cp_problems(cp, seq)
                                    + layout.method_layout_problems(setup, 1, 1, cp))
            if key:
                rejected[key] += per_cp(tp, cp)
                continue
            for pp in space.pipeline_sizes(N, tp, cp):
                dp = N // (tp * cp * pp)
                eps = space.expert_sizes(cfg, dp)
                per_vpp = len(space.sps) * len(eps) * per_ep
                for vpp in vpps:
                    key, pp_notes = refused(layout.pp_problems(cfg, pp, vpp)
                                            + layout.method_layout_problems(setup, 1, pp))
                    if key:
                        rejected[key] += per_vpp
                        continue
                    schedule = default_schedule(vpp)
                    for sp in space.sps:
                        key, _ = refused(layout.sp_problems(tp, sp, seq // cp))
                        if key:
                            rejected[key] += len(eps) * per_ep
                            continue
                        for ep in eps:
                            key, ep_notes = refused(layout.ep_problems(cfg, ep, dp)
                                                    + layout.method_layout_problems(
                                                        setup, 1, 1, 1, ep))
                            if key:
                                rejected[key] += per_ep
                                continue
                            params, experts = cost.stage_params(tp=tp, pp=pp, vpp=vpp, ep=ep)
                            for zero in space.zeros:
                                key, zero_notes = refused(
                                    layout.zero_problems(dp * cp, zero, setup.optimizer, tp,
                                                         layout.base_bits(setup)))
                                if key:
                                    rejected[key] += per_zero
                                    continue
                                for mbs in space.micro_batches:
                                    key, batch_notes = refused(layout.batch_problems(
                                        pp=pp, vpp=vpp, schedule=schedule,
                                        global_batch=global_batch, dp=dp, mbs=mbs))
                                    if key:
                                        rejected[key] += n_rc
                                        continue
                                    m = global_batch // (dp * mbs)
                                    notes = (base_notes + tp_notes + cp_notes + pp_notes
                                             + ep_notes + zero_notes + batch_notes)
                                    shape = dict(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp,
                                                 mbs=mbs, m=m, cp=cp, ep=ep)
                                    for recompute in space.recomputes:
                                        evaluated += 1
                                        need, stage = memory.peak_bytes(
                                            **shape, recompute=recompute, schedule=schedule)
                                        fits = need <= usable
                                        if not fits:
                                            rejected["out_of_memory"] += 1
                                            if (closest is not None
                                                    and need >= closest.memory_per_gpu_bytes):
                                                continue
                                        step = cost.step_time(
                                            **shape, recompute=recompute, params_per_rank=params,
                                            expert_params_per_rank=experts)
                                        hfu_flops = cost.flops[recompute].hardware_flops_per_token
                                        tps = tokens_per_step / step.total_s
                                        cand = Candidate(
                                            tp=tp, cp=cp, pp=pp, vpp=vpp, dp=dp, ep=ep, zero=zero,
                                            sp=sp, recompute=recompute, mbs=mbs, grad_accum=m,
                                            memory_per_gpu_bytes=need, memory_stage=stage,
                                            margin_bytes=usable - need, step=step,
                                            tokens_per_s=tps, mfu=model_flops * tps / (N * peak),
                                            hfu_tflops_per_gpu=hfu_flops * tps / N / 1e12,
                                            hfu=hfu_flops * tps / (N * peak),
                                            mfu_bf16_peak=(model_flops * tps / (N * cost.bf16_peak)
                                                           if setup.dtype == "fp8" else 0.0),
                                            not_launchable=notes)
                                        if fits:
                                            feasible.append(cand)
                                        else:
                                            closest = cand
    feasible.sort(key=lambda c: (-c.tokens_per_s, -c.margin_bytes))
    result = SearchResult(candidates=feasible, rejected=rejected, evaluated=evaluated,
                          usable_bytes=usable, world=N, cluster=cluster, setup=setup,
                          closest=None if feasible else closest)
    if not feasible:
        result.suggestions.extend(_suggest(result, cluster, global_batch))
    return result


def _suggest(result: SearchResult, cluster: Cluster, global_batch: int) -> list[str]:
    out = []
    closest = result.closest
    if closest is not None:
        over = closest.memory_per_gpu_bytes / result.usable_bytes
        out.append(f"closest: {closest.label()} needs {closest.memory_per_gpu_bytes / 2**30:.1f} GiB "
                   f"per GPU, {over:.2f}x the usable {result.usable_bytes / 2**30:.1f} GiB")
        more = -(-int(cluster.gpus * over) // cluster.gpus_per_node) * cluster.gpus_per_node
        out.append(f"roughly {more} GPUs or more would spread it thin enough (ZeRO-3 over a "
                   "larger dp shards the model states)")
        if closest.mbs > 1:
            out.append("a smaller micro-batch lowers activation memory")
    total_batch = sum(v for k, v in result.rejected.items() if k == "batch_divisibility")
    if total_batch and not closest:
        out.append(f"global batch {global_batch} divides no dp x micro-batch of this cluster; "
                   "use a multiple of the data-parallel size")
    return out
