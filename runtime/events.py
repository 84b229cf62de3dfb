"""The run event stream: one JSON object per line on rank 0's stdout (standard library only).

Kinds: ``start`` (layout, predictions), ``step`` (step, loss, grad_norm, lr, tokens_per_s,
mfu, mem_peak_bytes, step_time_s), ``eval``, ``checkpoint`` (step, path), ``token`` (generation),
``layout`` (one layout of a matrix run: losses, grad norms), ``done`` (measured next to
predicted), ``error`` (message). Every event has ``event`` and ``time``.
The TUI and ``llmplan launch --json`` parse the same lines; no torch is needed to read them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

KINDS = ("start", "step", "eval", "checkpoint", "token", "layout", "done", "error")


def event(kind: str, **fields: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return {"event": kind, "time": time.time(), **fields}


def emit(kind: str, stream: TextIO | None = None, **fields: Any) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(event(kind, **fields)) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """An event from one output line, or None for any other line (logs, warnings)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("event") in KINDS:
        return data
    return None
