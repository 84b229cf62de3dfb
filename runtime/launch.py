"""Plan or flags -> the exact torchrun command, spawned as its own process group, with the
event stream relayed line by line. Standard library only (torch is never imported here).

Ctrl-C (or ``cancel()``) terminates the whole group, then kills it after a grace period. A rank
that dies makes torchrun end the others and exit non-zero; if the run printed no ``done`` the
launcher adds an ``error`` event, so a consumer always sees how the run ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from planner.config import ConfigError
from runtime import events

GRACE_S = 5.0


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    plan_path: Path
    nproc_per_node: int
    device: str                   # "cpu" or "cuda"
    nnodes: int = 1
    rdzv_endpoint: str = ""
    module: str = "runtime.train"  # or runtime.generate
    env: dict[str, str] = field(default_factory=dict)


def torchrun_command(spec: LaunchSpec) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) with --standalone on one node, or c10d
    rendezvous across nodes."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if spec.nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        if not spec.rdzv_endpoint:
            raise ConfigError(f"nnodes({spec.nnodes}) needs --rdzv-endpoint host:port")
        cmd += [f"--nnodes={spec.nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={spec.rdzv_endpoint}"]
    cmd += [f"--nproc-per-node={spec.nproc_per_node}", "-m", spec.module,
            "--plan", str(spec.plan_path)]
    return cmd


def child_env(spec: LaunchSpec) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if spec.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    else:
        env.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    env.update(spec.env)
    return env


class Run:
    """A launched command in its own process group: iterate ``lines()`` for its output;
    ``cancel()`` stops every process in it (all ranks, and torchrun)."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env, start_new_session=True)
        self.stderr_tail: list[str] = []
        self._stderr = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-200:]

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def cancel(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after the grace period."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        rc = self.proc.wait()
        self._stderr.join(timeout=2)
        return rc


def stream(spec: LaunchSpec, on_line: Callable[[str, dict | None], None]) -> int:
    """Run to the end, calling ``on_line(line, event_or_None)`` for every stdout line.
    Returns the exit code; an ``error`` event is synthesised when the run ended without
    ``done`` or ``error``."""
    run = Run(torchrun_command(spec), child_env(spec))
    ended = finished = False
    try:
        for line in run.lines():
            ev = events.parse(line)
            if ev and ev["event"] in ("done", "error"):
                ended = True
                finished = ev["event"] == "done"
            on_line(line.rstrip("\n"), ev)
        rc = run.wait()
    except KeyboardInterrupt:
        run.cancel()
        ev = events.event("error", message="cancelled (Ctrl-C): every rank was stopped")
        on_line(events_json(ev), ev)
        return 130
    if rc != 0 and not ended:
        detail = first_error(run.stderr_tail)
        ev = events.event("error", message=f"run failed with exit code {rc} (a rank exited): {detail}", exit_code=rc)
        on_line(events_json(ev), ev)
    elif rc != 0 and finished:
        # every step, checkpoint and measurement is in: a rank that fails while the process
        # group shuts down does not undo the run, so it is a warning, not a failure
        sys.stderr.write(f"llmplan: warning: a rank exited with code {rc} after the run finished: "
                         f"{first_error(run.stderr_tail)}\n")
        return 0
    return rc


def first_error(lines: list[str]) -> str:
    """The exception a rank died of, skipping torchrun's and gloo's follow-on noise."""
    import re

    noise = ("ChildFailedError", "Connection closed by peer", "Socket Timeout")
    for line in lines:
        if re.match(r"^\s*(\[rank\d+\]:?\s*)?[\w.]*(Error|Exception)\b.*:", line) and \
                not any(n in line for n in noise):
            return line.strip()[-400:]
    tail = [line.strip() for line in lines if line.strip()][-2:]
    return " | ".join(tail)[-400:]


def events_json(ev: dict) -> str:
    import json

    return json.dumps(ev)
