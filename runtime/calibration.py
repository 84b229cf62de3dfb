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

import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from planner.accuracy import NOISE_LIMIT, Accuracy, describe_change, relative_error, spread
from planner.config import ModelConfig
from planner.setup import Parallel, TrainSetup
from planner.cost import Cluster, CostEstimator, CostModel
from planner.published_fit import nelder_mead
from planner.memory import CATEGORIES

BASE: dict[str, Any] = {"target": "tiny", "steps": 12, "seq": 64, "dtype": "fp32"}
"""What every case shares (``runtime.runspec.TrainRequest`` fields)."""

# The sweep the constants are fitted to, and layouts kept out of the fit to judge it: each
# held-out case differs from every fitted one in layout or in micro-batch count.
FIT_CASES: dict[str, dict[str, Any]] = {
    "single-b1-m4": {"gbs": 4, "mbs": 1},
    "single-b4-m1": {"gbs": 4, "mbs": 4},
    "single-full-recompute": {"gbs": 4, "mbs": 2, "recompute": "full"},
    "single-selective-b1": {"gbs": 4, "mbs": 1, "recompute": "selective"},
    "dp2-zero0": {"gbs": 4, "mbs": 2, "dp": 2},
    "dp2-zero2": {"gbs": 4, "mbs": 2, "dp": 2, "zero": 2},
    "dp2-zero3": {"gbs": 4, "mbs": 1, "dp": 2, "zero": 3},
    "tp2-sp": {"gbs": 4, "mbs": 2, "tp": 2, "sp": True},
    "tp2-b4": {"gbs": 4, "mbs": 4, "tp": 2},
    "pp2": {"gbs": 4, "mbs": 1, "pp": 2},
    "pp2-dp2": {"gbs": 8, "mbs": 1, "pp": 2, "dp": 2},
}
HELD_OUT: dict[str, dict[str, Any]] = {
    "single-selective": {"gbs": 4, "mbs": 2, "recompute": "selective"},
    "dp2-zero2-b1": {"gbs": 4, "mbs": 1, "dp": 2, "zero": 2},
    "tp2": {"gbs": 4, "mbs": 1, "tp": 2},
    "pp2-b2": {"gbs": 4, "mbs": 2, "pp": 2},
    "tp2-dp2": {"gbs": 8, "mbs": 2, "tp": 2, "dp": 2},
}


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

    round_step_s: list[float] = field(default_factory=list)
    """The measured step time of each round of this case (``measure`` keeps the median run)."""

    @property
    def measured_step_s(self) -> float:
        return float(self.done["measured_step_time_s"])

    @property
    def noise(self) -> float:
        """How much this case's repeated measurements disagree (``planner.accuracy.spread``):
        the larger of its steady steps' spread (the steps after the first two, as the
        measured step time is taken) and its rounds' spread."""
        steps = self.done.get("step_times_s") or []
        steady = steps[2:] if len(steps) >= 5 else steps
        return max(spread(steady), spread(self.round_step_s))

    def memory_errors(self) -> dict[str, float]:
        """Worst relative error over ranks, per category."""
        out = {}
        for cat in CATEGORIES:
            errs = [abs(relative_error(r[f"measured_{cat}_bytes"], r[f"predicted_{cat}_bytes"]))
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


def run_case(name: str, args: dict[str, Any], device: str = "cpu", *, tries: int = 2) -> Case:
    """One measured run; a run that fails is retried once (a shared host can drop a gloo
    connection), and a second failure is reported with its message."""
    for attempt in range(tries):
        try:
            return _run_case(name, args, device)
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def world_size(args: dict[str, Any]) -> int:
    """Ranks a case asks for (tp x pp x dp)."""
    return args.get("tp", 1) * args.get("pp", 1) * args.get("dp", 1)


def calibratable(device: str, hardware: str) -> bool:
    """Whether runs on ``device`` here can calibrate the ``hardware`` preset: CPU processes
    only a CPU preset (their host terms must never reach an accelerator), CUDA runs only an
    accelerator's."""
    from presets import load_hardware

    return (load_hardware(hardware).kind == "cpu") == (device == "cpu")


def check_calibratable(device: str, hardware: str) -> None:
    from planner.config import ConfigError

    if not calibratable(device, hardware):
        kind = "a CPU preset" if device == "cpu" else "an accelerator preset"
        raise ConfigError(f"runs on --device {device} measure {kind}, not hardware({hardware}); "
                          f"use --hardware {'cpu' if device == 'cpu' else '<gpu preset>'}")


def runnable(cases: dict[str, dict[str, Any]], device: str) -> dict[str, dict[str, Any]]:
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


def measure(cases: dict[str, dict[str, Any]], device: str = "cpu", *, rounds: int = 1,
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
    kept = []
    for rs in runs.values():
        median = sorted(rs, key=lambda c: c.measured_step_s)[(len(rs) - 1) // 2]
        kept.append(replace(median, round_step_s=[c.measured_step_s for c in rs]))
    return kept


def _run_case(name: str, args: dict[str, Any], device: str) -> Case:
    from runtime import events
    from runtime.launch import stream
    from runtime.runspec import TrainRequest, resolve

    with tempfile.TemporaryDirectory(prefix=f"llmplan-cal-{name}-") as folder:
        resolved = resolve(TrainRequest(**BASE, **args, device=device, run_dir=folder))
        spec = replace(resolved.spec, env={"OMP_NUM_THREADS": "1"})
        seen: list[events.Event] = []
        rc = stream(spec, lambda _line, ev: seen.append(ev) if ev is not None else None)
    done = next((e for e in seen if isinstance(e, events.Done)), None)
    if rc or done is None:
        last = next((e.message for e in reversed(seen) if isinstance(e, events.Error)), f"exit {rc}")
        raise RuntimeError(f"case {name} failed: {last}")
    steps = [e.step_time_s for e in seen if isinstance(e, events.Step)]
    return Case(name=name, cfg=resolved.cfg, setup=resolved.setup, par=resolved.par,
                done={**done.to_dict(), "step_times_s": steps}, plan=resolved.plan)


def estimator(case: Case, model: CostModel, hardware) -> CostEstimator:
    """The cost model of a case's run: its setup with the runtime's own recipe."""
    setup = replace(case.setup, recipe="runtime")
    return CostEstimator(case.cfg, setup, Cluster(hardware=hardware, gpus=case.par.world), model)


def predict_step_s(case: Case, model: CostModel, hardware) -> float:
    return estimator(case, model, hardware).layout_step_time(case.par).total_s


FITTED = ("matmul_efficiency", "layer_overhead_s", "step_overhead_s",
          "tp_layer_overhead_s", "sp_layer_overhead_s", "fsdp_step_overhead_s",
          "collective_call_s")


def fit(cases: list[Case], hardware, base: CostModel, *, host_cores: int | None = None) -> CostModel:
    """CostModel constants minimising the squared log error of step time over ``cases``.

    Fitted (in log space, so each stays positive): the names in :data:`FITTED`. Link
    bandwidth and latency stay the preset's: a small model's messages are too short to
    measure them, and with the two-rank groups a sweep on one host can run, a ring step and
    a call's fixed cost cannot be told apart (``collective_call_s`` holds both). Eight
    starting points; the best is then restarted with a shrinking simplex until the loss
    stops falling, so noise-free step times give back their constants exactly (a test)."""
    cores = host_cores or os.cpu_count() or 1
    costs = [(c, estimator(c, base, hardware)) for c in cases]

    def model_from(x: list[float]) -> CostModel:
        values = {name: math.exp(v) for name, v in zip(FITTED, x)}
        values["matmul_efficiency"] = min(1.0, values["matmul_efficiency"])
        return base.replace(**values, host_cores=cores)

    def loss(x: list[float]) -> float:
        model = model_from(x)
        return sum(math.log(est.with_model(model).layout_step_time(c.par).total_s
                            / c.measured_step_s) ** 2 for c, est in costs)

    starts = [{"matmul_efficiency": e, "layer_overhead_s": o, "step_overhead_s": 1e-3,
               "tp_layer_overhead_s": 5 * o, "sp_layer_overhead_s": 5 * o,
               "fsdp_step_overhead_s": 1e-2, "collective_call_s": c}
              for e in (0.05, 0.5) for o in (1e-4, 1e-3) for c in (1e-4, 2e-3)]
    best = min((nelder_mead(loss, [math.log(start[name]) for name in FITTED], steps=300)
                for start in starts), key=loss)
    value, scale = loss(best), 1.0
    for _ in range(12):  # restarts: a collapsed simplex stalls; a fresh one moves on
        again = nelder_mead(loss, best, steps=600, scale=scale)
        new = loss(again)
        if new >= value * (1 - 1e-9):
            scale /= 4
            if scale < 1e-3:
                break
            continue
        best, value = again, new
    return model_from(best)


def errors(cases: list[Case], model: CostModel, hardware) -> list[dict[str, Any]]:
    rows = []
    for c in cases:
        predicted = predict_step_s(c, model, hardware)
        mem = c.memory_errors()
        rows.append({"case": c.name, "predicted_step_time_s": predicted,
                     "measured_step_time_s": c.measured_step_s,
                     "step_time_error": relative_error(c.measured_step_s, predicted),
                     "noise": c.noise,
                     "memory_error": max(mem.values()), "memory_errors": mem,
                     "memory_ratios": c.memory_ratios()})
    return rows


def accuracy(rows: list[dict[str, Any]], source: str) -> Accuracy:
    """The accuracy record of a table of :func:`errors` rows."""
    return Accuracy.from_runs(
        (r["measured_step_time_s"] / r["predicted_step_time_s"] for r in rows),
        (x for r in rows for x in r["memory_ratios"]), source=source)


def check_noise(cases: list[Case], limit: float = NOISE_LIMIT) -> None:
    """Refuse to fit or set bands from runs too noisy to say anything (a busy host): a case
    whose repeated step times spread more than ``limit`` (``NOISE_LIMIT`` unless the user
    says ``--max-noise``: interquartile range of its steady steps, or range of its rounds'
    medians, over their median) is a one-line error naming it (exit 1), and the profile is
    left as it was."""
    from planner.config import NoAnswer

    noisy = sorted(((c.noise, c.name) for c in cases if c.noise > limit), reverse=True)
    if noisy:
        worst, name = noisy[0]
        raise NoAnswer(
            f"profile not saved: {len(noisy)} of {len(cases)} case(s) too noisy to measure "
            f"(worst {name}: step times spread {worst:.0%} > {limit:.0%}, the "
            "interquartile range or rounds' range over the median); rerun on a quiet host "
            "or raise --max-noise")


def save_checked(hardware: str, record: Accuracy, cases: list[Case],
                 cost_model: dict[str, Any] | None = None,
                 progress: Callable[[str], None] = lambda _: None,
                 max_noise: float = NOISE_LIMIT) -> str:
    """Save ``record`` (and ``cost_model``) in ``hardware``'s profile unless the runs are
    too noisy (:func:`check_noise`), and say in one line how the bands moved."""
    from presets import PresetError, load_accuracy, load_profile, save_profile

    check_noise(cases, max_noise)
    try:
        old = load_accuracy(hardware) if load_profile(hardware).get("accuracy") else None
    except PresetError:
        old = None
    path = save_profile(hardware, record, cost_model)
    refit = "; cost model refitted" if cost_model is not None else ""
    progress(f"{hardware} profile: {describe_change(old, record)}{refit} ({path})")
    return str(path)


MEMORY_GATE = 0.10
"""``validate`` fails when a memory category is off by more than this."""


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    steps = [abs(r["step_time_error"]) for r in rows]
    mems = [r["memory_error"] for r in rows]
    return {"mean_step_time_error": sum(steps) / len(steps), "worst_step_time_error": max(steps),
            "mean_memory_error": sum(mems) / len(mems), "worst_memory_error": max(mems)}


CALIBRATION_DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """Calibration measures runs on ``cpu`` or ``cuda``; anything else is refused before
    anything runs or is written."""
    from planner.config import ConfigError

    if device not in CALIBRATION_DEVICES:
        raise ConfigError(f"--device {device!r}: calibrate runs on "
                          f"{' or '.join(CALIBRATION_DEVICES)}")


def sweep(device: str) -> dict[str, dict[str, Any]]:
    """The cases this host runs, refused before any run (and before the previous sweep's
    runs file is replaced) unless they hold both fitted and held-out cases."""
    from planner.config import ConfigError

    chosen = runnable({**FIT_CASES, **HELD_OUT}, device)
    fitted, held = [n for n in chosen if n in FIT_CASES], [n for n in chosen if n in HELD_OUT]
    if not fitted or not held:
        raise ConfigError(f"--device {device}: {len(fitted)} sweep and {len(held)} held-out "
                          f"case(s) run here, need both"
                          + (f" ({cuda_device_count()} CUDA GPU(s) visible)" if device != "cpu"
                             else ""))
    return chosen


def calibrate(*, device: str, hardware: str, rounds: int, budget_s: float,
              runs: str | None = None, progress: Callable[[str], None] = lambda _: None,
              max_noise: float = NOISE_LIMIT) -> dict[str, Any]:
    """Measure the sweep (or reread ``runs``, a previous sweep's file), fit the constants on
    the fitted cases, judge them on the held-out ones, and save the profile (constants and
    accuracy record) for ``hardware``; everything as one report."""
    import dataclasses
    import json
    import time
    from pathlib import Path

    from planner.config import ConfigError
    from planner.outputs import writable_file, write_text
    from presets import load_cost_model, load_hardware, load_profile, profile_path

    check_device(device)
    check_calibratable(device, hardware)
    hw = load_hardware(hardware)
    saved = profile_path(hardware).with_suffix(".runs.json")
    writable_file(profile_path(hardware), "calibration profile")
    if runs:
        try:
            cases = [Case.from_dict(d) for d in json.loads(Path(runs).read_text())]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{runs}: not a calibrate runs file ({err})") from None
    else:
        writable_file(saved, "calibration runs file")
        chosen = sweep(device)
        cases = measure(chosen, device, rounds=rounds,
                        deadline=time.monotonic() + budget_s, progress=progress)
        write_text(saved, json.dumps([c.to_dict() for c in cases]) + "\n",
                   "calibration runs file")
    fit_cases = [c for c in cases if c.name in FIT_CASES]
    held = [c for c in cases if c.name in HELD_OUT]
    if not fit_cases or not held:
        raise ConfigError(f"{len(fit_cases)} sweep and {len(held)} held-out runs: need both")
    check_noise(cases, max_noise)  # before a minute of fitting: a busy host's are refused
    before = load_cost_model(hardware)
    before_label = "the previous profile" if load_profile(hardware).get("cost_model") else "defaults"
    fitted = fit(fit_cases, hw, before)
    rows_before, rows_after = errors(held, before, hw), errors(held, fitted, hw)
    record = accuracy(rows_after, f"{len(held)} held-out runs, llmplan calibrate "
                                  f"{time.strftime('%Y-%m-%d')}")
    constants = dataclasses.asdict(fitted)
    return {"profile": save_checked(hardware, record, fit_cases + held, constants, progress,
                                    max_noise),
            "runs": runs or str(saved), "cost_model": constants,
            "fit_cases": [c.name for c in fit_cases],
            "before_label": before_label,
            "held_out_before": rows_before, "held_out_after": rows_after,
            "before": summary(rows_before), "after": summary(rows_after),
            "accuracy": record.to_dict()}


def validate(*, device: str, hardware: str, rounds: int, folder: str,
             names: list[str] | None = None, progress: Callable[[str], None] = lambda _: None,
             max_noise: float = NOISE_LIMIT) -> dict[str, Any]:
    """Run the cases (all, or ``names``) against the current constants; save the accuracy
    record in the profile and write ``validation.json`` / ``validation.md`` in ``folder``."""
    import json
    import time

    from planner.config import ConfigError
    from planner.outputs import writable_file, writable_folder, write_text
    from presets import load_cost_model, load_hardware, profile_path

    check_calibratable(device, hardware)
    out = writable_folder(folder, "--out")  # every output checked before any run
    for name in ("validation.json", "validation.md"):
        writable_file(out / name, "--out")
    writable_file(profile_path(hardware), "calibration profile")
    every = {**FIT_CASES, **HELD_OUT}
    unknown = sorted(set(names or ()) - set(every))
    if unknown:
        raise ConfigError(f"unknown validation case(s) {', '.join(unknown)} "
                          f"(known: {', '.join(every)})")
    chosen = runnable({k: v for k, v in every.items() if not names or k in names}, device)
    if not chosen:
        raise ConfigError(f"no validation case runs on {device} here")
    cases = measure(chosen, device, rounds=rounds, progress=progress)
    rows = errors(cases, load_cost_model(hardware), load_hardware(hardware))
    record = accuracy(rows, f"{len(rows)} runs, llmplan validate {time.strftime('%Y-%m-%d')}")
    data = {"hardware": hardware, "cases": rows, **summary(rows), "accuracy": record.to_dict(),
            "profile": save_checked(hardware, record, cases, progress=progress,
                                    max_noise=max_noise)}
    write_text(out / "validation.json", json.dumps(data, indent=2) + "\n", "--out")
    md = ["| case | step predicted (ms) | step measured (ms) | step error | worst memory error |",
          "|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['predicted_step_time_s'] * 1e3:.1f} | "
           f"{r['measured_step_time_s'] * 1e3:.1f} | {r['step_time_error']:+.1%} | "
           f"{r['memory_error']:.1%} |" for r in rows]
    md.append(f"\nworst memory error {data['worst_memory_error']:.1%}, worst step-time error "
              f"{data['worst_step_time_error']:.1%} ({hardware})")
    write_text(out / "validation.md", "\n".join(md) + "\n", "--out")
    return data
