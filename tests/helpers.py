"""Shared test helpers (importable as `helpers`: tests/ is on sys.path via conftest.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch_refused(*args: str) -> str:
    """`llmplan launch ...` that must be refused before any process starts: exit 2 and one
    line; that line."""
    _, proc = launch(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (proc.returncode, proc.stderr)
    return proc.stderr


def launch(*args: str, env: dict | None = None, check: bool = True, timeout: int = 600,
           device: str = "cpu"):
    """Run `llmplan launch ... --json --device cpu` and return (events, process)."""
    cmd = [sys.executable, "-m", "tui.cli", "launch", *args, "--device", device, "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if check:
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return events, proc


def cli(*args: str, env: dict | None = None):
    """``llmplan ARGS`` in-process (Typer's runner on the invoked command alone, as the
    console script builds it): never a traceback, never an exception but ``SystemExit``."""
    from typer.testing import CliRunner

    from tui.cli import build

    result = CliRunner().invoke(build([args[0]]), list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    return result


def cli_error(*args: str) -> str:
    """The one ``llmplan: error:`` line (exit 2) of ``llmplan ARGS``, without its prefix."""
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.stderr)
    assert lines[0].startswith("llmplan: error: ")
    return lines[0].removeprefix("llmplan: error: ")
