"""The cost model checked against published runs: each run predicted in its published
layout, constants fitted per chip, and every run also predicted by constants fitted
without it (leave-one-out), which is the error a new job on that chip should expect.

Fitted, per chip (in log space, so each stays positive, efficiencies capped at 1):
:data:`FITTED`: the large-GEMM ceiling and the GEMM size at half of it (shape-dependent
matmul efficiency), the attention core's ceiling (flash kernels by sequence length and head
dim through the same shape rule), the achieved fraction of link bandwidth (exposed DP /
TP / PP communication) and the element-wise traffic per layer (memory-bound work). The
layout dimensions a source leaves out are searched with the constants of the moment; the
fit then holds those layouts fixed and is repeated once with layouts searched again.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from planner.cost import CostEstimator, CostModel, cluster_of
from planner.published import PublishedRun
from planner.search import Candidate, SearchResult, SearchSpace, search
from planner.setup import Parallel, TrainSetup

FITTED = ("matmul_efficiency", "matmul_half_dim", "attention_efficiency", "link_efficiency",
          "elementwise_traffic", "eager_elementwise_traffic")
CAPPED = ("matmul_efficiency", "attention_efficiency", "link_efficiency")
DEFAULTS_FROM = {"attention_efficiency": "matmul_efficiency",
                 "eager_elementwise_traffic": "elementwise_traffic"}


def run_model(run: PublishedRun, model: CostModel) -> CostModel:
    """``model`` with what the run's framework is stated to do (TP overlap, unfused
    element-wise kernels)."""
    overlap = model.overlap_tp if run.tp_comm_overlap is None else run.tp_comm_overlap
    return model.replace(overlap_tp=overlap, eager=run.eager)


def run_setup(run: PublishedRun) -> TrainSetup:
    return TrainSetup(seq_len=run.seq_len, dtype=run.dtype, attention=run.attention,
                      recompute=run.layout.get("recompute", "none"))


def run_search(run: PublishedRun, model: CostModel, *, free: bool = False) -> SearchResult:
    """The search for the run's job: within its stated layout, or over every layout
    (``free``: the planner's own best for the same model, GPUs, batch and sequence)."""
    pins = {} if free else dict(run.layout)
    cluster = cluster_of(run.hardware, gpus=run.gpus)
    return search(run.cfg, cluster, run_setup(run), global_batch=run.global_batch,
                  model=run_model(run, model), space=SearchSpace.pinned(**pins), runtime="any")


def published_layout(run: PublishedRun, model: CostModel) -> tuple[Candidate, bool]:
    """The fastest layout within what the run states, and whether the planner thinks it fits
    (a published run did fit: a ``False`` here is the memory model's miss, reported)."""
    result = run_search(run, model)
    if result.best is not None:
        return result.best, True
    if result.closest is None:
        from planner import layout

        stated = run.layout
        found = [*layout.tp_problems(run.cfg, stated.get("tp", 1)),
                 *layout.pp_problems(run.cfg, stated.get("pp", 1), stated.get("vpp", 1))]
        keys = [k for k, v in result.rejected.items() if v]
        why = found[0].message if found else "every layout rejected: " + ", ".join(keys)
        raise ValueError(f"the planner cannot represent its stated layout: {why}")
    return result.closest, False


class FixedLayout:
    """One run in one layout, re-timed fast under other constants (what a fit evaluates
    thousands of times)."""

    def __init__(self, run: PublishedRun, cand: Candidate, model: CostModel) -> None:
        self.run, self.cand = run, cand
        setup = replace(run_setup(run), micro_batch=cand.mbs, grad_accum=cand.grad_accum,
                        recompute=cand.recompute)
        self.par = Parallel(tp=cand.tp, pp=cand.pp, vpp=cand.vpp, dp=cand.dp, zero=cand.zero,
                            sp=cand.sp)
        self.estimator = CostEstimator(run.cfg, setup, cluster_of(run.hardware, gpus=run.gpus),
                                       run_model(run, model))
        self.measured_s = run.measured_step_time_s()

    def step_time_s(self, model: CostModel) -> float:
        return self.estimator.with_model(run_model(self.run, model)).layout_step_time(self.par).total_s


def nelder_mead(f: Callable[[list[float]], float], x0: list[float], *, steps: int = 400,
                scale: float = 1.0) -> list[float]:
    """Minimise f from x0 (the simplex method of Nelder & Mead 1965, standard coefficients)."""
    n = len(x0)
    simplex = [list(x0)] + [[x + (scale if i == j else 0.0) for j, x in enumerate(x0)] for i in range(n)]
    values = [f(p) for p in simplex]
    for _ in range(steps):
        order = sorted(range(n + 1), key=lambda i: values[i])
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflect = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(reflect)
        if fr < values[0]:
            expand = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(expand)
            simplex[-1], values[-1] = (expand, fe) if fe < fr else (reflect, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflect, fr
        else:
            contract = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(contract)
            if fc < values[-1]:
                simplex[-1], values[-1] = contract, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, p)] for p in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=lambda i: values[i])]


def measured_ceiling(runs: Iterable[PublishedRun]) -> float:
    """The large-GEMM efficiency of the runs' chip, from a measured maximum achievable
    matmul FLOP/s where a preset of the chip has one (0: none; then it is fitted)."""
    for r in runs:
        hw = r.hardware
        if hw.mamf_tflops_bf16:
            return hw.mamf_tflops_bf16 / hw.peak_tflops_bf16
    return 0.0


def fit_fixed(layouts: list[FixedLayout], base: CostModel) -> CostModel:
    """Constants :data:`FITTED` minimising the squared log error of step time over
    ``layouts`` (their layouts held fixed); the large-GEMM ceiling is the chip's measured
    one where known, not fitted."""
    ceiling = measured_ceiling(f.run for f in layouts)
    names = [n for n in FITTED if not (ceiling and n == "matmul_efficiency")]
    if ceiling:
        base = base.replace(matmul_efficiency=ceiling)

    def model_from(x: list[float]) -> CostModel:
        values = {name: math.exp(v) for name, v in zip(names, x)}
        for name in CAPPED:
            if name in values:
                values[name] = min(1.0, values[name])
        return base.replace(**values)

    def loss(x: list[float]) -> float:
        model = model_from(x)
        return sum(math.log(f.step_time_s(model) / f.measured_s) ** 2 for f in layouts)

    start = [math.log(max(1e-3, getattr(base, n) or getattr(base, DEFAULTS_FROM.get(n, n))))
             for n in names]
    best = nelder_mead(loss, start, steps=500, scale=0.5)
    for scale in (0.25, 0.05):
        best = nelder_mead(loss, best, steps=300, scale=scale)
    return model_from(best)


def fit(runs: list[PublishedRun], base: CostModel, *, rounds: int = 2) -> CostModel:
    """Constants fitted to ``runs``: layouts searched, constants fitted with them fixed,
    ``rounds`` times."""
    model = base
    for _ in range(rounds):
        layouts = [FixedLayout(r, published_layout(r, model)[0], model) for r in runs]
        model = fit_fixed(layouts, model)
    return model


@dataclass(frozen=True, kw_only=True)
class Row:
    """One run: measured, predicted in its published layout (by constants fitted without
    it when ``held_out``), the planner's own best for the same job, and why they differ."""

    run: PublishedRun
    predicted_step_time_s: float
    measured_step_time_s: float
    layout: Candidate
    fits: bool
    best: Candidate | None
    held_out: bool

    @property
    def error(self) -> float:
        """(measured - predicted) / predicted (``planner.accuracy.relative_error``)."""
        from planner.accuracy import relative_error

        return relative_error(self.measured_step_time_s, self.predicted_step_time_s)

    def to_dict(self) -> dict[str, object]:
        world = self.run.gpus
        best = self.best
        return {"name": self.run.name, "source": self.run.source,
                "hardware": self.run.hardware.name, "chip": self.run.hardware.chip,
                "model": self.run.cfg.name, "gpus": world, "global_batch": self.run.global_batch,
                "seq_len": self.run.seq_len, "stated_layout": dict(self.run.layout),
                "predicted_step_time_s": self.predicted_step_time_s,
                "measured_step_time_s": self.measured_step_time_s, "error": self.error,
                "held_out": self.held_out, "fits": self.fits,
                "layout": self.layout.to_dict(world),
                "planner_best": best.to_dict(world) if best else None,
                "planner_best_faster": bool(best and best.step_time_s <= self.predicted_step_time_s * (1 + 1e-9))}


def evaluate(run: PublishedRun, model: CostModel, *, held_out: bool) -> Row:
    cand, fits = published_layout(run, model)
    best = run_search(run, model, free=True).best
    return Row(run=run, predicted_step_time_s=cand.step_time_s,
               measured_step_time_s=run.measured_step_time_s(), layout=cand, fits=fits,
               best=best, held_out=held_out)


def chips(runs: Iterable[PublishedRun]) -> dict[str, list[PublishedRun]]:
    out: dict[str, list[PublishedRun]] = {}
    for r in runs:
        out.setdefault(r.hardware.chip, []).append(r)
    return out


def leave_one_out(runs: list[PublishedRun], base: CostModel,
                  progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Each run predicted by constants fitted to the other runs of its chip."""
    rows = []
    for chip, group in chips(runs).items():
        for i, run in enumerate(group):
            progress(f"{chip}: {run.name} ({i + 1}/{len(group)})")
            others = group[:i] + group[i + 1:]
            model = fit(others, base) if others else base
            rows.append(evaluate(run, model, held_out=True))
    return rows


def summary(rows: list[Row]) -> dict[str, float]:
    errors = [abs(r.error) for r in rows]
    return {"runs": len(rows), "median_abs_error": statistics.median(errors) if errors else 0.0,
            "worst_abs_error": max(errors) if errors else 0.0}


FITTED_REPORTED = ("matmul_efficiency", *FITTED[1:])


def fitted_constants(model: CostModel) -> dict[str, float]:
    return {name: getattr(model, name) for name in FITTED_REPORTED}


def report(runs: list[PublishedRun], extra: list[PublishedRun], base: CostModel,
           progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """``validate --published``: every run of the fit set predicted held out (constants
    fitted without it), the constants fitted to all runs of each chip, and the runs of the
    separate held-out set (never fitted) predicted with those; runs the planner cannot
    represent are listed with the reason."""
    rows = leave_one_out(runs, base, progress)
    by_chip = chips(runs)
    models = {chip: fit(group, base) for chip, group in by_chip.items()}
    checked, skipped = [], []
    for run in extra:
        model = models.get(run.hardware.chip)
        if model is None:
            skipped.append({"name": run.name, "reason": f"no fitted runs on {run.hardware.chip}"})
            continue
        try:
            checked.append(evaluate(run, model, held_out=True))
        except ValueError as err:
            skipped.append({"name": run.name, "reason": str(err)})
    chip_rows = {chip: [r for r in rows if r.run.hardware.chip == chip] for chip in by_chip}
    return {
        "runs": [r.to_dict() for r in rows],
        "summary": summary(rows),
        "chips": {chip: {**summary(chip_rows[chip]), "constants": fitted_constants(models[chip]),
                         "step_time_ratio": ratio_range(chip_rows[chip])}
                  for chip in by_chip},
        "held_out_set": {"runs": [r.to_dict() for r in checked], "summary": summary(checked),
                         "not_evaluable": skipped},
        "misses": misses(rows),
    }


def ratio_range(rows: list[Row]) -> tuple[float, float]:
    """The range of measured / predicted step time over held-out rows."""
    ratios = [r.measured_step_time_s / r.predicted_step_time_s for r in rows]
    return (min(ratios), max(ratios)) if ratios else (1.0, 1.0)


def misses(rows: list[Row], limit: float = 0.10) -> list[str]:
    """For each row off by more than ``limit``: its largest step-time terms, so a reader sees
    which part of the model the miss sits in."""
    out = []
    for r in rows:
        if abs(r.error) <= limit:
            continue
        b = r.layout.step.breakdown()
        parts = {**{f"compute {k.removesuffix('_s')}": v for k, v in b["compute"].items() if k != "total_s"},
                 **{f"{k} comm": v["exposed_s"] for k, v in b["communication"].items()},
                 "bubble": b["bubble_s"], "optimizer": b["optimizer_s"]}
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
        out.append(f"{r.run.name}: {r.error:+.1%}, largest terms "
                   + ", ".join(f"{k} {v:.3g} s" for k, v in top))
    return out


def nearest(runs: Iterable[PublishedRun], *, chip: str, params: int, gpus: int, seq: int,
            count: int = 3) -> list[PublishedRun]:
    """The published runs closest to a job: same chip first, then by distance in log
    parameters, log GPUs and log sequence length."""
    from planner.params import count_params

    def distance(r: PublishedRun) -> tuple[int, float]:
        d = (abs(math.log(count_params(r.cfg).total / params)) + abs(math.log(r.gpus / gpus))
             + abs(math.log(r.seq_len / seq)))
        return (r.hardware.chip != chip, d)

    return sorted(runs, key=distance)[:count]
