"""Closed loop: run short real jobs, compare them with the planner, fit its constants.

A *case* is one `llmplan launch` of a small model (layout, micro-batch, recompute); its
``done`` event carries measured and predicted memory per category and step time. ``fit``
chooses the CostModel constants (matmul efficiency, per-layer and per-step overheads,
link efficiency, collective latency) that minimise the squared log error of predicted vs measured step time
(Nelder-Mead in log space), with the host's core count so ranks that share cores are
modelled as sharing them. Standard library only: torch runs in the launched processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from planner.config import ModelConfig, Parallel, TrainSetup
from planner.cost import Cluster, CostEstimator, CostModel

ROOT = Path(__file__).resolve().parent.parent
BASE = ("tiny", "--steps", "6", "--seq", "64", "--dtype", "fp32")

FIT_CASES: dict[str, tuple[str, ...]] = {
    "single-b1-m4": ("--gbs", "4", "--mbs", "1"),
    "single-b4-m1": ("--gbs", "4", "--mbs", "4"),
    "single-full-recompute": ("--gbs", "4", "--mbs", "2", "--recompute", "full"),
    "dp2-zero3": ("--gbs", "4", "--mbs", "1", "--dp", "2", "--zero", "3"),
    "dp2-zero0": ("--gbs", "4", "--mbs", "2", "--dp", "2"),
    "tp2-sp": ("--gbs", "4", "--mbs", "2", "--tp", "2", "--sp"),
    "pp2": ("--gbs", "4", "--mbs", "1", "--pp", "2"),
}
HELD_OUT: dict[str, tuple[str, ...]] = {
    "dp2-zero2": ("--gbs", "4", "--mbs", "2", "--dp", "2", "--zero", "2"),
    "tp2": ("--gbs", "4", "--mbs", "1", "--tp", "2"),
    "pp2-dp2": ("--gbs", "8", "--mbs", "1", "--pp", "2", "--dp", "2"),
    "single-selective": ("--gbs", "4", "--mbs", "2", "--recompute", "selective"),
}
CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations")


@dataclass
class Case:
    name: str
    cfg: ModelConfig
    setup: TrainSetup
    par: Parallel
    done: dict[str, Any]

    @property
    def measured_step_s(self) -> float:
        return float(self.done["measured_step_time_s"])

    def memory_errors(self) -> dict[str, float]:
        """Worst relative error over ranks, per category."""
        out = {}
        for cat in CATEGORIES:
            errs = [abs(r[f"measured_{cat}_bytes"] - r[f"predicted_{cat}_bytes"]) / r[f"predicted_{cat}_bytes"]
                    for r in self.done["ranks"] if r.get(f"predicted_{cat}_bytes")]
            out[cat] = max(errs) if errs else 0.0
        return out


def run_case(name: str, args: tuple[str, ...], device: str = "cpu", *, tries: int = 2) -> Case:
    """One measured run; a run that fails is retried once (a shared host can drop a gloo
    connection), and a second failure is reported with its message."""
    for attempt in range(tries):
        try:
            return _run_case(name, args, device)
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _run_case(name: str, args: tuple[str, ...], device: str) -> Case:
    from planner.planfile import plan_objects, read_plan

    folder = Path(tempfile.mkdtemp(prefix=f"llmplan-cal-{name}-"))
    cmd = [sys.executable, "-m", "tui.cli", "launch", *BASE, *args, "--device", device,
           "--run-dir", str(folder), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = next((e for e in events if e["event"] == "done"), None)
    if proc.returncode or done is None:
        last = (events[-1].get("message") if events else None) or proc.stderr[-300:]
        raise RuntimeError(f"case {name} failed: {last}")
    cfg, setup, par = plan_objects(read_plan(folder / "run.toml"))
    return Case(name=name, cfg=cfg, setup=setup, par=par, done=done)


def predict_step_s(case: Case, model: CostModel, hardware) -> float:
    setup = TrainSetup(**{**{f: getattr(case.setup, f) for f in case.setup.__slots__},
                          "recipe": "runtime"})
    from planner.memory import memory_report

    cost = CostEstimator(case.cfg, setup, Cluster(hardware=hardware, gpus=case.par.world), model)
    params = max(s.params for s in memory_report(case.cfg, setup, case.par).stages)
    p = case.par
    return cost.step_time(tp=p.tp, pp=p.pp, vpp=p.vpp, dp=p.dp, zero=p.zero, sp=p.sp,
                          recompute=setup.recompute, mbs=setup.micro_batch, m=setup.grad_accum,
                          params_per_rank=params).total_s


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


def fit(cases: list[Case], hardware, base: CostModel) -> CostModel:
    """CostModel constants minimising the squared log error of step time over ``cases``."""
    cores = os.cpu_count() or 1

    def model_from(x: list[float]) -> CostModel:
        return base.replace(matmul_efficiency=min(1.0, math.exp(x[0])),
                            layer_overhead_s=math.exp(x[1]), step_overhead_s=math.exp(x[2]),
                            link_efficiency=min(1.0, math.exp(x[3])),
                            latency_scale=math.exp(x[4]), host_cores=cores)

    def loss(x: list[float]) -> float:
        model = model_from(x)
        return sum(math.log(predict_step_s(c, model, hardware) / c.measured_step_s) ** 2
                   for c in cases)

    starts = [[math.log(e), math.log(o), math.log(1e-3), math.log(0.5), math.log(lat)]
              for e in (0.05, 0.5) for o in (1e-4, 1e-3) for lat in (1.0, 30.0)]
    best = min((nelder_mead(loss, x0, steps=300, scale=1.0) for x0 in starts), key=loss)
    return model_from(best)


def errors(cases: list[Case], model: CostModel, hardware) -> list[dict[str, Any]]:
    rows = []
    for c in cases:
        predicted = predict_step_s(c, model, hardware)
        mem = c.memory_errors()
        rows.append({"case": c.name, "predicted_step_time_s": predicted,
                     "measured_step_time_s": c.measured_step_s,
                     "step_time_error": (predicted - c.measured_step_s) / c.measured_step_s,
                     "memory_error": max(mem.values()), "memory_errors": mem})
    return rows
