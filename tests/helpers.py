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
