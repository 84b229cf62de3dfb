"""Closed-loop commands: ``calibrate`` fits the cost model to real runs on this machine;
``validate`` prints the planner's accuracy against them (and gates memory at 10%)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from tui import output
from tui.options import DeviceOpt, JsonOpt

ProfileHwOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset the profile is for (default: cpu, or h100-sxm on cuda).")]
RoundsOpt = Annotated[int, typer.Option(min=1, help="Runs per case; the median counts.")]


def _accuracy_table(title: str, rows: list[dict[str, Any]]) -> Any:
    return output.table(title, ["case", "step predicted", "step measured", "step error",
                                "worst memory error"],
                        [(r["case"], f"{r['predicted_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['measured_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['step_time_error']:+.1%}", f"{r['memory_error']:.1%}") for r in rows])


def calibrate_cmd(
    device: DeviceOpt = "cpu",
    hardware: ProfileHwOpt = "",
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="Start no further round after this long.")] = 10.0,
    rounds: RoundsOpt = 3,
    runs: Annotated[Optional[str], typer.Option(help="Refit the runs a previous calibrate saved (its .runs.json) instead of running.")] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Run a sweep of short real runs, fit the planner's constants, save a hardware profile."""
    from presets import default_hardware
    from runtime import calibration as cal

    hardware = hardware or default_hardware(device)
    cal.check_calibratable(device, hardware)
    data = cal.calibrate(device=device, hardware=hardware, rounds=rounds,
                         budget_s=budget_minutes * 60, runs=runs, progress=output.warn)

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
    json_mode: JsonOpt = False,
) -> None:
    """The accuracy table: planner vs real runs; exits 1 if a memory error exceeds 10%."""
    from presets import default_hardware
    from runtime import calibration as cal

    hardware = hardware or default_hardware(device)
    cal.check_calibratable(device, hardware)
    data = cal.validate(device=device, hardware=hardware, rounds=rounds, folder=out,
                        names=cases or None, progress=output.warn)
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


COMMANDS = {"calibrate": calibrate_cmd, "validate": validate_cmd}
