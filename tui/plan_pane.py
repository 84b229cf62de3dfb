"""The plan screen: cluster inputs -> ranked layouts, the chosen one's breakdown, rejections."""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from planner.accuracy import DEFAULT_ACCURACY, Accuracy, fmt_band
from planner.exports import FRAMEWORKS
from planner.search import SearchResult


@dataclass(frozen=True, kw_only=True)
class ClusterInputs:
    """What the plan screen adds to the top bar's accelerator, GPU count and sequence length
    (one place for those, so the two screens never disagree): nodes (0: the preset's GPUs
    per node, as ``llmplan plan`` does) and the global batch."""

    nodes: int
    gbs: int


class PlanPane(Vertical):
    @dataclass
    class SearchRequested(Message):
        inputs: ClusterInputs

    @dataclass
    class SaveRequested(Message):
        path: str

    @dataclass
    class ExportRequested(Message):
        """Write the highlighted layout's config for ``framework`` into ``folder``."""
        framework: str
        folder: str

    result: reactive[SearchResult | None] = reactive(None, init=False)
    """The latest search (pushed down by the app)."""
    accuracy: reactive[Accuracy] = reactive(DEFAULT_ACCURACY, init=False)
    """The band put around each time and memory estimate (from the accelerator's profile)."""
    error: reactive[str] = reactive("", init=False, always_update=True)
    """Why the latest search did not run or failed (pushed down by the app)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="cluster"):
            yield Label("nodes")
            yield Input("", id="nodes", type="integer", placeholder="auto", compact=True)
            yield Label("global batch (sequences)")
            yield Input("256", id="gbs", type="integer", compact=True)
            yield Button("Search", id="search", variant="primary", compact=True)
        yield Static("", id="plan-status")
        yield DataTable(id="layouts", cursor_type="row", zebra_stripes=True)
        yield Static("", id="layout-detail")
        with Horizontal(id="save-row"):
            yield Input("plan.toml", id="save-path", compact=True)
            yield Button("Save plan", id="save", compact=True)
            yield Select([(name, name) for name in FRAMEWORKS], value="torchtitan",
                         allow_blank=False, id="export-framework", compact=True)
            yield Input(".", id="export-dir", compact=True)
            yield Button("Export", id="export", compact=True)

    def on_mount(self) -> None:
        self.query_one("#layouts", DataTable).add_columns(
            "#", "tp", "cp", "pp", "v", "dp", "ep", "zero", "sp", "recompute", "b", "m", "GiB/GPU",
            "step s", "tok/s/GPU", "MFU")

    def inputs(self) -> ClusterInputs | None:
        nodes, gbs = (self.query_one(f"#{k}", Input).value.strip() for k in ("nodes", "gbs"))
        try:
            return ClusterInputs(nodes=int(nodes or 0), gbs=int(gbs))
        except ValueError:
            self.query_one("#plan-status", Static).update(
                "[red]nodes (empty: from the preset) and the batch must be integers[/red]")
            return None

    @on(Button.Pressed, "#search")
    @on(Input.Submitted, "#nodes, #gbs")
    def request(self) -> None:
        """Ask for a search with this screen's inputs (the button, Enter, ctrl+r)."""
        inputs = self.inputs()
        if inputs is not None:
            self.query_one("#plan-status", Static).update("searching ...")
            self.post_message(self.SearchRequested(inputs))

    def watch_error(self, error: str) -> None:
        if error:
            self.query_one("#plan-status", Static).update(f"[red]{escape(error)}[/red]")

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.post_message(self.SaveRequested(self.query_one("#save-path", Input).value))

    @on(Button.Pressed, "#export")
    def _export(self) -> None:
        self.post_message(self.ExportRequested(
            str(self.query_one("#export-framework", Select).value),
            self.query_one("#export-dir", Input).value))

    def watch_result(self, result: SearchResult | None) -> None:
        table = self.query_one("#layouts", DataTable)
        table.clear()
        status = self.query_one("#plan-status", Static)
        if result is None:
            return
        for i, c in enumerate(result.candidates[:50]):
            table.add_row(i + 1, c.tp, c.cp, c.pp, c.vpp, c.dp, c.ep, c.zero, "on" if c.sp else "off",
                          c.recompute, c.mbs, c.grad_accum, f"{c.memory_per_gpu_bytes / 2**30:.1f}",
                          f"{c.step_time_s:.3f}", f"{c.tokens_per_s / result.world:,.0f}",
                          f"{c.mfu:.1%}")
        rejected = ", ".join(f"{k} {v:,}" for k, v in result.rejected.items() if v)
        cluster = result.cluster
        head = (f"{cluster.gpus} x {cluster.hardware.name} on {cluster.nodes} node(s), "
                f"seq {result.setup.seq_len}: {len(result.candidates):,} layouts fit of "
                f"{result.total:,} ({result.evaluated:,} evaluated); rejected: {rejected}")
        if not result.candidates:
            head = "[red]no layout fits[/red]  " + head + "\n" + "\n".join(result.suggestions)
        status.update(head)
        self.show_detail(0)

    @on(DataTable.RowHighlighted, "#layouts")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail(event.cursor_row)

    def watch_accuracy(self) -> None:
        if self.result is not None:
            self.show_detail(self.query_one("#layouts", DataTable).cursor_row)

    def show_detail(self, index: int) -> None:
        detail = self.query_one("#layout-detail", Static)
        result = self.result
        if result is None or not result.candidates or index >= len(result.candidates):
            detail.update("")
            return
        c = result.candidates[index]
        step = c.step.to_dict()
        parts = "  ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v * 1e3:,.1f} ms"
                          for k, v in step.items() if k != "total_s")
        b = c.step.breakdown()
        kinds = "  ".join(f"{k.removesuffix('_s')} {v * 1e3:,.1f}" for k, v in b["compute"].items()
                          if k != "total_s")
        comm = "  ".join(f"{kind} {v['exposed_s'] * 1e3:,.1f} of {v['total_s'] * 1e3:,.1f}"
                         for kind, v in b["communication"].items() if v["total_s"])
        parts += f"\ncompute ms: {kinds}" + (f"; comm ms exposed of total: {comm}" if comm else "")
        why = result.runner_up_reason() if index == 0 else ""
        acc = self.accuracy
        step_band = fmt_band(acc.time(c.step_time_s), "{:.3f}".format, " s")
        mem_band = fmt_band(acc.memory(c.memory_per_gpu_bytes), lambda b: f"{b / 2**30:.2f}", " GiB")
        rate_band = fmt_band(acc.rate(c.tokens_per_s / result.world), "{:,.0f}".format)
        detail.update(f"[b]{c.label()}[/b]\nstep {step_band}: {parts}\n"
                      f"tokens/s/GPU {rate_band}; memory {mem_band} on stage {c.memory_stage}, "
                      f"margin {c.margin_bytes / 2**30:.2f} GiB\n"
                      f"[dim]bands: {acc.source}[/dim]\n{why or ''}")
