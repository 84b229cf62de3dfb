"""Closed-loop commands: ``calibrate`` fits the cost model to real runs on this machine;
``validate`` prints the planner's accuracy against them (and gates memory at 10%)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from planner.accuracy import NOISE_LIMIT
from tui import output
from tui.options import Amount, Count, DeviceOpt, JsonOpt

ProfileHwOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset the profile is for (default: cpu, or h100-sxm on cuda).")]
RoundsOpt = Annotated[int, typer.Option(callback=Count(1, 100).callback, help="Runs per case; the median counts.")]
MaxNoiseOpt = Annotated[float, typer.Option("--max-noise", callback=Amount(100.0, low=0.01).callback, help="Refuse to save the profile when a case's step times spread more than this (interquartile range or rounds' range over the median; default 0.75).")]


def _accuracy_table(title: str, rows: list[dict[str, Any]]) -> Any:
    return output.table(title, ["case", "step predicted", "step measured", "step error",
                                "worst memory error"],
                        [(r["case"], f"{r['predicted_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['measured_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['step_time_error']:+.1%}", f"{r['memory_error']:.1%}") for r in rows])


def calibrate_cmd(
    device: DeviceOpt = "cpu",
    hardware: ProfileHwOpt = "",
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", callback=Amount(1e6, positive=True).callback, help="Start no further round after this long.")] = 10.0,
    rounds: RoundsOpt = 3,
    runs: Annotated[Optional[str], typer.Option(help="Refit the runs a previous calibrate saved (its .runs.json) instead of running.")] = None,
    max_noise: MaxNoiseOpt = NOISE_LIMIT,
    json_mode: JsonOpt = False,
) -> None:
    """Run a sweep of short real runs, fit the planner's constants, save a hardware profile."""
    from presets import default_hardware
    from runtime import calibration as cal

    cal.check_device(device)  # before anything is measured or written
    hardware = hardware or default_hardware(device)
    cal.check_calibratable(device, hardware)
    data = cal.calibrate(device=device, hardware=hardware, rounds=rounds,
                         budget_s=budget_minutes * 60, runs=runs, progress=output.warn,
                         max_noise=max_noise)

    def human() -> None:
        output.show(_accuracy_table(f"Held-out runs, before calibration ({data['before_label']})",
                                    data["held_out_before"]),
                    _accuracy_table("Held-out runs, after calibration", data["held_out_after"]),
                    f"saved {data['profile']}: worst held-out step-time error "
                    f"{data['after']['worst_step_time_error']:.1%}, worst memory error "
                    f"{data['after']['worst_memory_error']:.1%}")

    output.render(json_mode, data, human)


def validate_cmd(
    device: DeviceOpt = "cpu",
    hardware: ProfileHwOpt = "",
    out: Annotated[str, typer.Option(help="Folder for validation.md and validation.json.")] = ".",
    rounds: RoundsOpt = 1,
    cases: Annotated[Optional[list[str]], typer.Option("--case", help="Run only these cases (repeatable; default: all).")] = None,
    published: Annotated[bool, typer.Option("--published", help="Check the cost model against published GPU runs (presets/runs), each held out of the fit.")] = False,
    serving: Annotated[bool, typer.Option("--serving", help="Generation runs here (batch, TP, two models) against the serving model; fit and save its constants.")] = False,
    write: Annotated[bool, typer.Option("--write", help="With --published: write the fitted constants and held-out error into the hardware presets.")] = False,
    max_noise: MaxNoiseOpt = NOISE_LIMIT,
    json_mode: JsonOpt = False,
) -> None:
    """The accuracy table: planner vs real runs; exits 1 if a memory error exceeds 10%.
    With --published: predicted vs measured step time of published GPU runs, leave-one-out."""
    if published:
        return _published(write=write, json_mode=json_mode)
    if serving:
        return _serving(device=device, hardware=hardware, json_mode=json_mode)
    if write:
        from planner.config import LlmplanError

        raise LlmplanError("--write needs --published")
    from presets import default_hardware
    from runtime import calibration as cal

    hardware = hardware or default_hardware(device)
    cal.check_calibratable(device, hardware)
    data = cal.validate(device=device, hardware=hardware, rounds=rounds, folder=out,
                        names=cases or None, progress=output.warn, max_noise=max_noise)
    acc = data["accuracy"]
    output.render(json_mode, data, lambda: output.show(
        _accuracy_table(f"Validation on {hardware}", data["cases"]),
        f"bands from now on: step time x{acc['step_time_ratio'][0]:.2f}-"
        f"{acc['step_time_ratio'][1]:.2f}, memory x{acc['memory_ratio'][0]:.3f}-"
        f"{acc['memory_ratio'][1]:.3f} (saved in {data['profile']})"))
    if data["worst_memory_error"] > cal.MEMORY_GATE:
        output.warn(f"memory error {data['worst_memory_error']:.1%} exceeds "
                    f"{cal.MEMORY_GATE:.0%}")
        raise typer.Exit(1)


def _published(*, write: bool, json_mode: bool) -> None:
    from planner.cost import CostModel
    from planner.published_fit import report
    from presets import write_fit
    from presets.runs import load_runs

    runs, extra = load_runs(), load_runs(held_out=True)
    data = report(runs, extra, CostModel(), progress=lambda line: output.warn(f"fitting without {line}"))
    if write:
        written = []
        for chip, info in data["chips"].items():
            peak = next(r.hardware.peak_tflops_bf16 for r in runs if r.hardware.chip == chip)
            n = info["runs"]
            source = (f"held-out error of {n} published runs on {chip} (llmplan validate "
                      f"--published: each predicted by constants fitted without it)")
            accuracy = {"step_time_ratio": list(info["step_time_ratio"]),
                        "memory_ratio": [0.90, 1.10], "source": source, "runs": n}
            provenance = (f"fitted to {n} published runs on {chip} (presets/runs: "
                          + ", ".join(r.name for r in runs if r.hardware.chip == chip) + ")")
            written += [str(p) for p in write_fit(chip, peak, info["constants"], accuracy, provenance)]
        data["written"] = written

    def human() -> None:
        rows = [(r["name"], r["chip"], r["gpus"], _layout(r["layout"]),
                 f"{r['measured_step_time_s']:.3f}", f"{r['predicted_step_time_s']:.3f}",
                 f"{r['error']:+.1%}", "yes" if r["planner_best_faster"] else "NO")
                for r in data["runs"]]
        cols = ["run", "chip", "GPUs", "layout (searched where unstated)", "measured s",
                "predicted s", "error", "own best >= as fast"]
        s = data["summary"]
        held = data["held_out_set"]
        extra = [(r["name"], r["chip"], r["gpus"], _layout(r["layout"]), f"{r['measured_step_time_s']:.3f}",
                  f"{r['predicted_step_time_s']:.3f}", f"{r['error']:+.1%}",
                  "yes" if r["planner_best_faster"] else "NO") for r in held["runs"]]
        lines = [f"held-out (leave-one-out) median |error| {s['median_abs_error']:.1%}, worst "
                 f"{s['worst_abs_error']:.1%} over {s['runs']} runs (goal: 10% / 25%)"]
        lines += [f"{chip}: median {c['median_abs_error']:.1%}, worst {c['worst_abs_error']:.1%}; "
                  + ", ".join(f"{k} {v:.4g}" for k, v in c["constants"].items())
                  for chip, c in data["chips"].items()]
        lines += [f"not evaluable: {x['name']}: {x['reason']}" for x in held["not_evaluable"]]
        lines += [f"miss: {m}" for m in data["misses"]]
        lines += [f"wrote {p}" for p in data.get("written", [])]
        output.show(output.table("Published runs, each predicted by constants fitted without it",
                                 cols, rows),
                    output.table("Own held-out set (never fitted; constants fitted to every run of the chip)",
                                 cols, extra), *lines)

    output.render(json_mode, data, human)


def _serving(*, device: str, hardware: str, json_mode: bool) -> None:
    from presets import default_hardware
    from runtime.serving_validation import validate_serving

    hardware = hardware or default_hardware(device)
    data = validate_serving(device=device, hardware=hardware, progress=output.warn)

    def table(title: str, rows: list[dict[str, Any]]) -> Any:
        return output.table(title, ["case", "TTFT predicted", "TTFT measured", "error",
                                    "TPOT predicted", "TPOT measured", "error"],
                            [(r["case"] + (" (held out)" if r["case"] in data["held_out"] else ""),
                              f"{r['predicted_ttft_s'] * 1e3:,.2f} ms", f"{r['measured_ttft_s'] * 1e3:,.2f} ms",
                              f"{r['ttft_error']:+.1%}", f"{r['predicted_tpot_s'] * 1e3:,.2f} ms",
                              f"{r['measured_tpot_s'] * 1e3:,.2f} ms", f"{r['tpot_error']:+.1%}")
                             for r in rows])

    output.render(json_mode, data, lambda: output.show(
        table(f"Generation on {device} ({hardware}), before fitting", data["before"]),
        table("After fitting (held-out cases judge it)", data["after"]),
        f"worst held-out error {data['worst_held_out_error']:.1%} (goal 20%); constants "
        + ", ".join(f"{k} {v:.4g}" for k, v in data["constants"].items())
        + f"; saved in {data['profile']}"))


def _layout(d: dict[str, Any]) -> str:
    return (f"tp{d['tp']} pp{d['pp']} v{d['vpp']} dp{d['dp']} z{d['zero']}"
            f"{' sp' if d['sp'] else ''} {d['recompute']} b{d['mbs']}")


COMMANDS = {"calibrate": calibrate_cmd, "validate": validate_cmd}
