"""The serve screen: prompt / answer lengths and latency targets -> ranked serving layouts
(``planner.serving``, as ``llmplan serve-plan``), for the top bar's accelerator and GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, DataTable, Input, Label, Static

from planner.serving import ServeResult


@dataclass(frozen=True, kw_only=True)
class ServeInputs:
    prompt_tokens: int
    output_tokens: int
    ttft_ms: float
    tpot_ms: float


def serve(spec, hardware, gpus: int, inputs: ServeInputs) -> ServeResult:
    """The search ``llmplan serve-plan`` runs (the worker's body; touches no widget)."""
    from planner.serving import ServeJob, serve_plan
    from presets import load_cost_model

    job = ServeJob(prompt_tokens=inputs.prompt_tokens, output_tokens=inputs.output_tokens,
                   ttft_s=inputs.ttft_ms / 1e3, tpot_s=inputs.tpot_ms / 1e3,
                   price_per_gpu_hour=hardware.price_per_gpu_hour_usd)
    return serve_plan(spec, hardware, gpus=gpus, job=job,
                      model=load_cost_model(hardware.name, serving=True))


class ServePane(Vertical):
    @dataclass
    class ServeRequested(Message):
        inputs: ServeInputs

    result: reactive[ServeResult | None] = reactive(None, init=False)
    """The latest serving plan (pushed down by the app)."""
    error: reactive[str] = reactive("", init=False, always_update=True)
    """Why the latest serving plan did not run or failed (pushed down by the app)."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="serve-inputs"):
            for label, key, value in (("prompt tokens", "serve-prompt", "1024"),
                                      ("output tokens", "serve-output", "256"),
                                      ("TTFT ms", "serve-ttft", "0"), ("TPOT ms", "serve-tpot", "30")):
                yield Label(label)
                yield Input(value, id=key, type="number", compact=True)
            yield Button("Serve plan", id="serve-search", variant="primary", compact=True)
        yield Static("", id="serve-status")
        yield DataTable(id="serve-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#serve-table", DataTable).add_columns(
            "#", "tp", "replicas", "bits", "batch", "TTFT ms", "TPOT ms", "tok/s/GPU",
            "req/s", "max seqs", "GiB w/GPU", "GiB kv/GPU")

    def inputs(self) -> ServeInputs | None:
        get = {k: self.query_one(f"#serve-{k}", Input).value.strip()
               for k in ("prompt", "output", "ttft", "tpot")}
        try:
            return ServeInputs(prompt_tokens=int(get["prompt"]), output_tokens=int(get["output"]),
                               ttft_ms=float(get["ttft"] or 0), tpot_ms=float(get["tpot"] or 0))
        except ValueError:
            self.query_one("#serve-status", Static).update(
                "[red]token counts are integers, targets milliseconds (0: none)[/red]")
            return None

    @on(Button.Pressed, "#serve-search")
    @on(Input.Submitted, "#serve-prompt, #serve-output, #serve-ttft, #serve-tpot")
    def request(self) -> None:
        """Ask for a serving plan with this screen's inputs (the button, Enter, ctrl+r)."""
        inputs = self.inputs()
        if inputs is not None:
            self.query_one("#serve-status", Static).update("searching ...")
            self.post_message(self.ServeRequested(inputs))

    def watch_error(self, error: str) -> None:
        if error:
            self.query_one("#serve-status", Static).update(f"[red]{escape(error)}[/red]")

    def watch_result(self, result: ServeResult | None) -> None:
        table = self.query_one("#serve-table", DataTable)
        table.clear()
        if result is None:
            return
        shown = result.candidates[:50] or ([result.closest] if result.closest else [])
        for i, c in enumerate(shown):
            table.add_row(i + 1, c.tp, c.replicas, c.weight_bits, c.batch, f"{c.ttft_s * 1e3:,.1f}",
                          f"{c.tpot_s * 1e3:,.2f}", f"{c.tokens_per_s / c.gpus:,.0f}",
                          f"{c.requests_per_s:,.1f}", f"{c.max_concurrency:,}",
                          f"{c.weights_bytes_per_gpu / 2**30:.1f}", f"{c.kv_bytes_per_gpu / 2**30:.1f}")
        status = (f"{len(result.candidates):,} of {result.evaluated:,} meet the targets; "
                  "continuous batching in steady state")
        if not result.candidates:
            status = ("[red]no layout meets the targets[/red]; closest misses: "
                      + "; ".join(result.closest.misses) if result.closest else "[red]nothing fits[/red]")
        self.query_one("#serve-status", Static).update(status)
