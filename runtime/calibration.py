"""Closed loop: run short real jobs, compare them with the planner, fit its constants.

A *case* is one `llmplan launch` of a small model (layout, micro-batch, recompute); its
``done`` event carries measured and predicted memory per category and step time. ``fit``
chooses the CostModel constants in :data:`FITTED` (matmul efficiency; framework time per
layer, per step, per TP and SP layer, per FSDP step; the fixed cost of a collective call)
that minimise the squared log error of predicted vs measured step time (Nelder-Mead in
log space), with the host's core count so ranks that share cores are modelled as sharing
them. Standard library only: torch runs in the launched processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from planner.accuracy import Accuracy
from planner.config import ModelConfig, Parallel, TrainSetup
from planner.cost import Cluster, CostEstimator, CostModel

ROOT = Path(__file__).resolve().parent.parent
BASE = ("tiny", "--steps", "12", "--seq", "64", "--dtype", "fp32")

# The sweep the constants are fitted to, and layouts kept out of the fit to judge it: each
# held-out case differs from every fitted one in layout or in micro-batch count.
FIT_CASES: dict[str, tuple[str, ...]] = {
    "single-b1-m4": ("--gbs", "4", "--mbs", "1"),
    "single-b4-m1": ("--gbs", "4", "--mbs", "4"),
    "single-full-recompute": ("--gbs", "4", "--mbs", "2", "--recompute", "full"),
    "single-selective-b1": ("--gbs", "4", "--mbs", "1", "--recompute", "selective"),
    "dp2-zero0": ("--gbs", "4", "--mbs", "2", "--dp", "2"),
    "dp2-zero2": ("--gbs", "4", "--mbs", "2", "--dp", "2", "--zero", "2"),
    "dp2-zero3": ("--gbs", "4", "--mbs", "1", "--dp", "2", "--zero", "3"),
    "tp2-sp": ("--gbs", "4", "--mbs", "2", "--tp", "2", "--sp"),
    "tp2-b4": ("--gbs", "4", "--mbs", "4", "--tp", "2"),
    "pp2": ("--gbs", "4", "--mbs", "1", "--pp", "2"),
    "pp2-dp2": ("--gbs", "8", "--mbs", "1", "--pp", "2", "--dp", "2"),
}
HELD_OUT: dict[str, tuple[str, ...]] = {
    "single-selective": ("--gbs", "4", "--mbs", "2", "--recompute", "selective"),
    "dp2-zero2-b1": ("--gbs", "4", "--mbs", "1", "--dp", "2", "--zero", "2"),
    "tp2": ("--gbs", "4", "--mbs", "1", "--tp", "2"),
    "pp2-b2": ("--gbs", "4", "--mbs", "2", "--pp", "2"),
    "tp2-dp2": ("--gbs", "8", "--mbs", "2", "--tp", "2", "--dp", "2"),
}
CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations")


@dataclass
class Case:
    """One measured run: what was planned and what its ``done`` event reported."""

    name: str
    cfg: ModelConfig
    setup: TrainSetup
    par: Parallel
    done: dict[str, Any]
    plan: dict[str, Any] = field(default_factory=dict)  # the run's plan file, as read

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "plan": self.plan, "done": self.done}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Case":
        from planner.planfile import plan_objects

        cfg, setup, par = plan_objects(data["plan"], where=f"run {data['name']}")
        return cls(name=data["name"], cfg=cfg, setup=setup, par=par, done=data["done"],
                   plan=data["plan"])

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

    def memory_ratios(self) -> list[float]:
        """``measured / predicted`` per rank for the sum of the four categories (tensor bytes,
        the same on every device; a small model's allocator peak on CUDA is dominated by
        library workspaces and says nothing about a large one)."""
        out = []
        for r in self.done["ranks"]:
            predicted = sum(r.get(f"predicted_{c}_bytes") or 0 for c in CATEGORIES)
            if predicted:
                out.append(sum(r.get(f"measured_{c}_bytes") or 0 for c in CATEGORIES) / predicted)
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


def world_size(args: tuple[str, ...]) -> int:
    """Ranks a case's launch arguments ask for (tp x pp x dp)."""
    world = 1
    for flag in ("--tp", "--pp", "--dp"):
        if flag in args:
            world *= int(args[args.index(flag) + 1])
    return world


def runnable(cases: dict[str, tuple[str, ...]], device: str) -> dict[str, tuple[str, ...]]:
    """The cases this host can run: any on CPU (ranks time-share the cores); on CUDA, those
    with no more ranks than visible GPUs (NCCL runs one rank per GPU)."""
    if device == "cpu":
        return dict(cases)
    gpus = cuda_device_count()
    return {name: args for name, args in cases.items() if world_size(args) <= gpus}


def cuda_device_count() -> int:
    """Visible CUDA devices, asked of torch in a child process (this module stays torch-free)."""
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True, timeout=300)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def measure(cases: dict[str, tuple[str, ...]], device: str = "cpu", *, rounds: int = 1,
            deadline: float | None = None,
            progress: Callable[[str], None] = lambda _: None) -> list[Case]:
    """Run every case ``rounds`` times, one round after another, and keep each case's median
    run (the lower one of two): a shared host's speed drifts both ways over minutes, so a
    slow or a fast spell then moves one round of a case, not its result. Rounds after the
    first stop at ``deadline`` (``time.monotonic()``)."""
    import time

    runs: dict[str, list[Case]] = {}
    for r in range(rounds):
        if r and deadline is not None and time.monotonic() > deadline:
            progress(f"budget reached after {r} round(s)")
            break
        for name, args in cases.items():
            progress(f"round {r + 1}/{rounds}: {name}")
            runs.setdefault(name, []).append(run_case(name, args, device))
    return [sorted(rs, key=lambda c: c.measured_step_s)[(len(rs) - 1) // 2] for rs in runs.values()]


def _run_case(name: str, args: tuple[str, ...], device: str) -> Case:
    from planner.planfile import plan_objects, read_plan

    with tempfile.TemporaryDirectory(prefix=f"llmplan-cal-{name}-") as folder:
        cmd = [sys.executable, "-m", "tui.cli", "launch", *BASE, *args, "--device", device,
               "--run-dir", folder, "--json"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        done = next((e for e in events if e["event"] == "done"), None)
        if proc.returncode or done is None:
            last = (events[-1].get("message") if events else None) or proc.stderr[-300:]
            raise RuntimeError(f"case {name} failed: {last}")
        plan = read_plan(Path(folder) / "run.toml")
    cfg, setup, par = plan_objects(plan)
    return Case(name=name, cfg=cfg, setup=setup, par=par, done=done, plan=plan)


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


FITTED = ("matmul_efficiency", "layer_overhead_s", "step_overhead_s",
          "tp_layer_overhead_s", "sp_layer_overhead_s", "fsdp_step_overhead_s",
          "collective_call_s")


def fit(cases: list[Case], hardware, base: CostModel) -> CostModel:
    """CostModel constants minimising the squared log error of step time over ``cases``.

    Fitted (in log space, so each stays positive): the names in :data:`FITTED`. Link
    bandwidth and latency stay the preset's: a small model's messages are too short to
    measure them, and with the two-rank groups a sweep on one host can run, a ring step and
    a call's fixed cost cannot be told apart (``collective_call_s`` holds both)."""
    cores = os.cpu_count() or 1

    def model_from(x: list[float]) -> CostModel:
        values = {name: math.exp(v) for name, v in zip(FITTED, x)}
        values["matmul_efficiency"] = min(1.0, values["matmul_efficiency"])
        return base.replace(**values, host_cores=cores)

    def loss(x: list[float]) -> float:
        model = model_from(x)
        return sum(math.log(predict_step_s(c, model, hardware) / c.measured_step_s) ** 2
                   for c in cases)

    starts = [{"matmul_efficiency": e, "layer_overhead_s": o, "step_overhead_s": 1e-3,
               "tp_layer_overhead_s": 5 * o, "sp_layer_overhead_s": 5 * o,
               "fsdp_step_overhead_s": 1e-2, "collective_call_s": c}
              for e in (0.05, 0.5) for o in (1e-4, 1e-3) for c in (1e-4, 2e-3)]
    best = min((nelder_mead(loss, [math.log(start[name]) for name in FITTED], steps=300)
                for start in starts), key=loss)
    return model_from(best)


def errors(cases: list[Case], model: CostModel, hardware) -> list[dict[str, Any]]:
    rows = []
    for c in cases:
        predicted = predict_step_s(c, model, hardware)
        mem = c.memory_errors()
        rows.append({"case": c.name, "predicted_step_time_s": predicted,
                     "measured_step_time_s": c.measured_step_s,
                     "step_time_error": (predicted - c.measured_step_s) / c.measured_step_s,
                     "memory_error": max(mem.values()), "memory_errors": mem,
                     "memory_ratios": c.memory_ratios()})
    return rows


def accuracy(rows: list[dict[str, Any]], source: str) -> Accuracy:
    """The accuracy record of a table of :func:`errors` rows."""
    return Accuracy.from_runs(
        (r["measured_step_time_s"] / r["predicted_step_time_s"] for r in rows),
        (x for r in rows for x in r["memory_ratios"]), source=source)
