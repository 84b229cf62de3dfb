"""The ``llmplan`` command line (Typer): the app, its error rule, and where each command lives.

Commands are grouped by topic in ``tui/commands/`` (models, calculate, plan, serve, run,
calibrate, data); each parses its options, calls one library function and renders the result.
Every calculation takes ``--json`` (data on stdout, diagnostics on stderr). Exit codes: 0 an
answer, 1 no answer (``plan`` finds no layout, ``serve-plan`` no split), 2 bad input (one
stderr line ``llmplan: error: ...``, whether the planner or the option parser found it),
130 interrupted (Ctrl-C; SIGTERM's 143 is the default signal exit). Heavy modules (rich, textual,
torch, sympy) are imported inside the commands that need them, and only the invoked
command's module is imported, so ``llmplan params --json`` starts fast.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Annotated, Any, Callable

import typer
from typer.core import TyperGroup

from planner.config import LlmplanError

DEFAULT_MODEL = "llama-3-8b"

COMMAND_MODULES = {
    "presets": "models", "params": "models",
    "flops": "calculate", "memory": "calculate", "kv": "calculate", "chinchilla": "calculate",
    "explain": "calculate",
    "plan": "plan", "serve-plan": "serve",
    "launch": "run", "generate": "run", "export": "run", "tokenizer": "data",
    "calibrate": "calibrate", "validate": "calibrate",
}
"""Command name -> its module in ``tui.commands`` (the order ``--help`` lists them in)."""

SETTINGS = {"help_option_names": ["-h", "--help"]}


class OneLineErrors(TyperGroup):
    """The command group, with Click's own errors (a value that is not a number, an unknown
    option or command, a missing argument, a value the option callbacks in ``tui.options``
    refuse) printed as one ``llmplan: error:`` line with exit 2, instead of Typer's usage
    box. Both places Click raises them are covered: parsing the group's own options, and
    invoking (which parses the subcommand's)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except typer.TyperException as err:  # Click's errors (typer vendors click)
            one_line(err)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as err:
            one_line(err)


def one_line(err: Exception) -> None:
    """A Click usage error as ``llmplan: error: [command: ]message``, then exit 2."""
    message = err.format_message()  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    if ctx is not None and ctx.info_name not in (None, "llmplan") and \
            not message.startswith("--"):
        message = f"{ctx.info_name}: {message}"
    from tui.output import stderr_line

    stderr_line(f"llmplan: error: {' '.join(str(message).splitlines())}")
    raise typer.Exit(2)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn llmplan's user-facing errors into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmplanError as err:
            from tui.output import stderr_line

            stderr_line(f"llmplan: error: {err}")
            raise typer.Exit(getattr(err, "exit_code", 2)) from None

    return wrapper


def root(ctx: typer.Context) -> None:
    """With no command on a terminal, open the TUI; otherwise print the default report."""
    if ctx.invoked_subcommand is not None:
        return
    if sys.stdin.isatty() and sys.stdout.isatty():
        from tui.app import run_app  # deferred: textual.app costs ~130 ms

        run_app()
        return
    from tui.commands.models import params_report

    cli_errors(params_report)(DEFAULT_MODEL, None, False)


def tui_cmd(preset: Annotated[str, typer.Option(help="Model preset to open.")] = "") -> None:
    """Open the Textual app (what `llmplan` with no arguments does on a terminal)."""
    from tui.app import run_app  # deferred: textual.app costs ~130 ms

    run_app(preset or None)


def build(names: list[str] | None = None) -> typer.Typer:
    """The Typer app with the commands ``names`` (default: all), each wrapped in the error
    rule. Typer builds a Click command for every registered command on each call, so a
    script call registers only the one it runs."""
    app = typer.Typer(name="llmplan",
                      help="Exact LLM calculator and 3D-parallel planner with a runnable backend.",
                      add_completion=False, no_args_is_help=False,
                      pretty_exceptions_show_locals=False, context_settings=SETTINGS,
                      cls=OneLineErrors)
    app.callback(invoke_without_command=True)(root)
    if names is None or "tui" in names:
        app.command("tui")(tui_cmd)
    for name in names if names is not None else list(COMMAND_MODULES):
        if name in COMMAND_MODULES:
            module = importlib.import_module(f"tui.commands.{COMMAND_MODULES[name]}")
            app.command(name)(cli_errors(module.COMMANDS[name]))
    return app


def main() -> None:
    """Console-script entry point: the invoked command alone, or every command for help."""
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    build([name] if name in COMMAND_MODULES or name == "tui" else None)()


if __name__ == "__main__":  # pragma: no cover
    main()
