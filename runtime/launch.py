"""Plan or flags -> the exact torchrun command, spawned as its own process group, with the
event stream relayed line by line. Standard library only (torch is never imported here).

Ctrl-C, SIGTERM (or ``cancel()``) terminates torchrun's process group and, explicitly, each
rank's: torchrun starts every rank in a session of its own (``start_new_session``), so
signalling torchrun's group alone reaches the ranks only through torchrun. A grace period
later whatever is left is killed, and the launcher says ``cancelled`` (exit 130 or 143). A
rank that dies makes torchrun end the others and exit non-zero; if the run printed no
``done`` the launcher adds an ``error`` event, so a consumer always sees how the run ended.
"""

from __future__ import annotations

import contextlib
import os
import shlex
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
        # glibc raises its mmap threshold to every large block freed, after which blocks that
        # size come from the heap and freed memory stays in the process: FSDP's gathered
        # layers, freed and re-made each micro-batch, then grow the RSS far past the live
        # bytes. A fixed threshold keeps large blocks mmapped, returned when freed (the
        # per-rank RSS of bench/meta_build.py fell from +12% to +5% of the planner's peak).
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
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

    def processes(self) -> list[int]:
        """The PIDs of this run: the launched command and every process below it (torchrun's
        agent and its ranks)."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cancel(self) -> None:
        """SIGTERM to the run's process group and to each of its processes' own groups (the
        ranks'), SIGKILL to whatever is left after the grace period."""
        pids = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                _signal_group(pid, sig)
            try:
                self.proc.wait(GRACE_S if sig == signal.SIGTERM else None)
            except subprocess.TimeoutExpired:
                pass
            pids = [p for p in pids if _alive(p)]
            if not pids:
                break

    def wait(self) -> int:
        rc = self.proc.wait()
        self._stderr.join(timeout=2)
        return rc


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (``ps`` is POSIX: Linux and macOS alike)."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group ``pid`` leads, else to the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Stopped(Exception):
    """The launcher was asked to stop (SIGTERM, or SIGINT where Python's own handler is not
    installed): raised in the main thread so the run is cancelled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While a run is followed from the main thread, SIGTERM (a service manager, ``kill``,
    Slurm) and SIGHUP (the terminal closed) raise :class:`Stopped` as Ctrl-C raises
    ``KeyboardInterrupt``, so each cancels every rank; the previous handlers are restored
    after. Elsewhere (a TUI worker thread) signal handlers cannot be set and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Stopped(signum)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cancelled(signum: int) -> events.Cancelled:
    """The ``cancelled`` event of a run stopped on ``signum``, exit code 128 + its number."""
    name = signal.Signals(signum).name
    how = "Ctrl-C" if signum == signal.SIGINT else name
    return events.Cancelled(signal=name, exit_code=128 + signum,
                            message=f"cancelled ({how}): every rank was stopped")


def stream(spec: LaunchSpec, on_line: Callable[[str, events.Event | None], None]) -> int:
    """Run to the end, calling ``on_line(line, event_or_None)`` for every stdout line.
    Returns the exit code; an ``error`` event is synthesised when the run ended without
    ``done`` or ``error``; Ctrl-C or SIGTERM stops every rank and says ``cancelled`` (exit 130
    or 143)."""
    run = start(spec)
    ended = finished = False
    with stop_on_signals():
        try:
            for line in run.lines():
                ev = events.parse(line)
                if isinstance(ev, events.ENDINGS):
                    ended = True
                    finished = not isinstance(ev, events.Error)
                on_line(line.rstrip("\n"), ev)
            rc = run.wait()
        except (KeyboardInterrupt, Stopped) as stop:
            signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
            with _deferred(signal.SIGTERM, signal.SIGINT):  # a second signal waits its turn
                run.cancel()
                ev = cancelled(signum)
                on_line(ev.to_json(), ev)
            return ev.exit_code
    if rc != 0 and not ended:
        ev = failure(rc, run.stderr_tail)
        on_line(ev.to_json(), ev)
    elif rc != 0 and finished:
        # every step, checkpoint and measurement is in: a rank that fails while the process
        # group shuts down does not undo the run, so it is a warning, not a failure
        sys.stderr.write(f"llmplan: warning: a rank exited with code {rc} after the run finished: "
                         f"{first_error(run.stderr_tail)}\n")
        return 0
    if rc != 0:
        hint = export_hint(spec.plan_path)
        if hint:
            sys.stderr.write(f"llmplan: {hint}\n")
    return rc


@contextlib.contextmanager
def _deferred(*signums: int) -> Iterator[None]:
    """Ignore ``signums`` while the ranks are being stopped (main thread only), so a second
    Ctrl-C cannot leave them half-stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def export_hint(plan_path: Path) -> str:
    """After a failed training run that asked for ``--save-hf``: the ``llmplan export``
    command that writes the folder from the run's final checkpoint (``--ckpt-dir``, else the
    run folder), when that checkpoint is on disk; "" otherwise."""
    import tomllib

    try:
        run = tomllib.loads(Path(plan_path).read_text()).get("run", {})
    except (OSError, ValueError):
        return ""
    out, steps = run.get("save_hf", ""), run.get("steps")
    folder = Path(run.get("ckpt_dir") or Path(plan_path).parent)
    try:
        committed = (folder / "latest").read_text().strip() == str(steps)
    except OSError:
        return ""
    if not out or not committed or not (folder / "run.toml").exists():
        return ""
    return (f"the Hugging Face folder was not written; the trained model is kept in the "
            f"checkpoint {folder} (step {steps}): `llmplan export {shlex.quote(str(folder))} "
            f"{shlex.quote(str(out))}` writes it")


def start(spec: LaunchSpec) -> Run:
    """Start the run's torchrun command in its own process group."""
    return Run(torchrun_command(spec), child_env(spec))


def failure(rc: int, stderr_tail: list[str]) -> events.Error:
    """The ``error`` event of a run that exited ``rc`` without saying how it ended."""
    return events.Error(message=f"run failed with exit code {rc} (a rank exited): "
                                f"{first_error(stderr_tail)}", exit_code=rc)


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
