"""The run screen: launch through the runtime's event stream, watch it, cancel it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, DataTable, Input, Log, ProgressBar, Sparkline, Static

from runtime import events
from tui.output import comparison_rows


@dataclass
class RunState:
    """What the run screen shows, rebuilt from events (pure; the app owns it)."""

    steps: int = 0
    done_steps: int = 0
    losses: list[float] | None = None
    tokens_per_s: list[float] | None = None
    mfu: list[float] | None = None
    eval_losses: list[float] | None = None
    status: str = "idle"
    comparison: list[tuple[str, str, str, str]] | None = None

    def apply(self, ev: events.Event) -> "RunState":
        losses, tps, mfu = list(self.losses or []), list(self.tokens_per_s or []), list(self.mfu or [])
        held = list(self.eval_losses or [])
        out = RunState(steps=self.steps, done_steps=self.done_steps, losses=losses,
                       tokens_per_s=tps, mfu=mfu, eval_losses=held, status=self.status,
                       comparison=self.comparison)
        if isinstance(ev, events.Start):
            out.steps = ev.steps
            out.done_steps = ev.start_step
            out.status = f"running {ev.model} on {ev.world} x {ev.device}"
        elif isinstance(ev, events.Step):
            out.done_steps = ev.step
            losses.append(ev.loss)
            tps.append(ev.tokens_per_s)
            mfu.append(ev.mfu or 0.0)
        elif isinstance(ev, events.Eval):
            held.append(ev.loss)
        elif isinstance(ev, events.Done):
            out.status = "done"
            out.done_steps = out.steps
            out.comparison = comparison_rows(ev, _mib)
        elif isinstance(ev, events.Error):
            out.status = f"error: {ev.message}"
        elif ev.KIND == "cancelled":
            out.status = "cancelled"
        return out

    def with_status(self, status: str) -> "RunState":
        return replace(self, status=status)


def says_cancelled(line: str, ev: events.Event | None) -> bool:
    """The launcher's ``cancelled`` event: typed, or (from a reader whose schema does not
    know the kind yet) the raw line."""
    if ev is not None:
        return ev.KIND == "cancelled"
    if not line.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("event") == "cancelled"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


class RunPane(Vertical):
    @dataclass
    class LaunchRequested(Message):
        args: list[str]

    class CancelRequested(Message):
        pass

    state: reactive[RunState] = reactive(RunState, init=False)
    """The run as seen through its events (pushed down by the app)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="run-controls"):
            yield Input("tiny --steps 20 --seq 64 --gbs 8 --mbs 2 --dtype fp32 --device cpu",
                        id="run-args", compact=True)
            yield Button("Launch", id="launch", variant="success", compact=True)
            yield Button("Cancel", id="cancel", variant="error", compact=True)
        yield Static("idle", id="run-status")
        yield ProgressBar(id="progress", show_eta=True)
        with Horizontal(id="sparks"):
            with Vertical():
                yield Static("loss", classes="spark-label")
                yield Sparkline([], id="loss-spark")
            with Vertical():
                yield Static("tokens/s", classes="spark-label")
                yield Sparkline([], id="tps-spark")
            with Vertical():
                yield Static("MFU", classes="spark-label")
                yield Sparkline([], id="mfu-spark")
            with Vertical():
                yield Static("held-out loss", classes="spark-label")
                yield Sparkline([], id="eval-spark")
        yield DataTable(id="comparison", show_cursor=False)
        yield Log(id="run-log", max_lines=5000)

    def on_mount(self) -> None:
        self.query_one("#comparison", DataTable).add_columns("quantity", "predicted", "measured", "error")

    @on(Button.Pressed, "#launch")
    @on(Input.Submitted, "#run-args")
    def _launch(self) -> None:
        self.post_message(self.LaunchRequested(self.query_one("#run-args", Input).value.split()))

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.post_message(self.CancelRequested())

    def watch_state(self, state: RunState) -> None:
        self.query_one("#run-status", Static).update(state.status)
        bar = self.query_one("#progress", ProgressBar)
        if state.steps:
            bar.update(total=state.steps, progress=state.done_steps)
        self.query_one("#loss-spark", Sparkline).data = state.losses or []
        self.query_one("#tps-spark", Sparkline).data = state.tokens_per_s or []
        self.query_one("#mfu-spark", Sparkline).data = state.mfu or []
        self.query_one("#eval-spark", Sparkline).data = state.eval_losses or []
        table = self.query_one("#comparison", DataTable)
        table.clear()
        for row in state.comparison or []:
            table.add_row(*row)

    def log_line(self, line: str) -> None:
        self.query_one("#run-log", Log).write_line(line)
