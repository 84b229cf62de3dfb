"""The ``llmplan`` command line (Typer).

Every calculation takes ``--json`` (data on stdout, diagnostics on stderr). Bad input exits 2
with one line naming the problem. Heavy modules (rich, textual, torch, sympy) are imported
inside the commands that need them so ``llmplan params --json`` starts fast.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from planner.config import LlmplanError
from tui import output

DEFAULT_MODEL = "llama-3-8b"

app = typer.Typer(
    name="llmplan",
    help="Exact LLM calculator and 3D-parallel planner with a runnable backend.",
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArg = Annotated[
    str, typer.Argument(help="Preset name, TOML model file, or Hugging Face config.json.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a model field: key=value (repeatable; V,h,L,a,g,d,f,E,k accepted)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn llmplan's user-facing errors into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmplanError as err:
            sys.stderr.write(f"llmplan: error: {err}\n")
            raise typer.Exit(2) from None

    return wrapper


def _model(spec: str, sets: list[str] | None):
    from presets import load_model, parse_overrides

    return load_model(spec, parse_overrides(sets))


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context) -> None:
    """With no command on a terminal, open the TUI; otherwise print the default report."""
    if ctx.invoked_subcommand is not None:
        return
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            from tui.app import run_app  # deferred: textual.app costs ~130 ms
        except ImportError:
            pass
        else:
            run_app()
            return
    cli_errors(_params_report)(DEFAULT_MODEL, None, False)


@app.command("presets")
@cli_errors
def presets_cmd(
    kind: Annotated[str, typer.Option(help="model or hardware (default: both).")] = "",
    json_mode: JsonOpt = False,
) -> None:
    """List the model and hardware presets."""
    from presets import load_hardware, load_model, preset_files
    from planner.params import count_params

    if kind not in ("", "model", "hardware"):
        raise LlmplanError(f"--kind {kind!r}: use model or hardware")
    data: dict[str, list[dict[str, Any]]] = {}
    if kind in ("", "model"):
        rows = []
        for name in preset_files("models"):
            cfg = load_model(name)
            rows.append({"name": name, "family": cfg.family,
                         "params": count_params(cfg).total, "source": cfg.source})
        data["models"] = rows
    if kind in ("", "hardware"):
        hw_rows = []
        for name in preset_files("hardware"):
            hw = load_hardware(name)
            hw_rows.append({"name": name, "peak_tflops_bf16": hw.peak_tflops_bf16,
                            "memory_gib": hw.memory_gib,
                            "hbm_bandwidth_gbps": hw.hbm_bandwidth_gbps,
                            "gpus_per_node": hw.gpus_per_node, "source": hw.source})
        data["hardware"] = hw_rows

    def human() -> None:
        tables = []
        if "models" in data:
            tables.append(output.table(
                "Model presets", ["name", "family", "params"],
                [(r["name"], r["family"], output.fmt_count(r["params"])) for r in data["models"]]))
        if "hardware" in data:
            tables.append(output.table(
                "Hardware presets",
                ["name", "bf16 TFLOP/s", "memory GiB", "HBM GB/s", "GPUs/node"],
                [(r["name"], f"{r['peak_tflops_bf16']:g}", f"{r['memory_gib']:g}",
                  f"{r['hbm_bandwidth_gbps']:g}", r["gpus_per_node"]) for r in data["hardware"]]))
        output.show(*tables)

    output.render(json_mode, data, human)


@app.command("params")
@cli_errors
def params_cmd(model: ModelArg, set_: SetOpt = None, json_mode: JsonOpt = False) -> None:
    """Exact parameter count with a breakdown (total, active per token, non-embedding)."""
    _params_report(model, set_, json_mode)


def _params_report(model: str, sets: list[str] | None, json_mode: bool) -> None:
    from planner.params import count_params

    cfg = _model(model, sets)
    counts = count_params(cfg)
    data = {"model": cfg.name, **counts.to_dict()}

    def human() -> None:
        rows = [(name, output.fmt_int(n), f"{100 * n / counts.total:.2f}%")
                for name, n in counts.breakdown.items() if n]
        rows += [("total", output.fmt_int(counts.total), "100.00%"),
                 ("active per token", output.fmt_int(counts.active),
                  f"{100 * counts.active / counts.total:.2f}%"),
                 ("non-embedding", output.fmt_int(counts.non_embedding),
                  f"{100 * counts.non_embedding / counts.total:.2f}%")]
        output.show(output.table(f"Parameters of {cfg.name} ({output.fmt_count(counts.total)})",
                                 ["component", "parameters", "share"], rows))

    output.render(json_mode, data, human)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
