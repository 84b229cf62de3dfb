"""The model screen: a form for every architecture field, and the results it drives."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Label, Select, Static, Switch
from textual_plotext import PlotextPlot

from planner import config as C
from planner.accuracy import DEFAULT_ACCURACY, Accuracy, fmt_band
from planner.config import ConfigError, ModelConfig
from presets import preset_files
from tui.output import PHASES
from tui.results import Results

CHOICES = {"mlp": C.MLP_KINDS, "gelu_approximate": C.GELU_FORMS, "norm": C.NORMS, "block": C.BLOCKS, "position": C.POSITIONS,
           "rope_scaling": C.ROPE_SCALINGS, "bias": C.BIASES, "attention": C.ATTENTIONS,
           "mixer": C.MIXERS}
SKIP = {"name", "family", "source"}
VARIANT_GROUPS = {
    "mla": ("attention", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim"),
    "gemma": ("qk_norm", "sandwich_norms", "attention_scale_dim", "attn_logit_softcap",
              "final_logit_softcap", "sliding_window_pattern"),
    "moe": ("moe_layer_period", "moe_layer_offset", "mlp_only_layers"),
    "recurrent": ("mixer", "attention_layer_period", "attention_layer_offset",
                  "recurrent_width", "ssm_state_size", "ssm_conv_kernel", "ssm_dt_rank",
                  "ssm_heads", "ssm_groups", "ssm_chunk_size", "ssm_conv_bias",
                  "ssm_proj_bias", "ssm_inner_norms"),
    "mtp": ("mtp_layers", "count_mtp_layers"),
}
"""Fields of the layer variants: their rows are shown only for a model that uses the group
(or sets the field), so the form of a plain transformer keeps its rows."""
VARIANT_FIELD = {name: group for group, names in VARIANT_GROUPS.items() for name in names}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def _groups_in_use(spec: ModelConfig) -> set[str]:
    return {g for g, on in (("mla", spec.attention == "mla"),
                            ("gemma", spec.qk_norm or spec.sandwich_norms),
                            ("moe", spec.is_moe), ("recurrent", spec.mixer != "attention"),
                            ("mtp", spec.mtp_layers > 0)) if on}


def _shown(value: object) -> str:
    """A field's text in its input (a tuple of layers as comma-separated integers)."""
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
LABELS = {"vocab_size": "vocab V", "hidden_size": "hidden h", "num_layers": "layers L",
          "num_heads": "query heads a", "num_kv_heads": "kv heads g", "head_dim": "head dim d",
          "ffn_hidden_size": "ffn f", "num_experts": "experts E",
          "experts_per_token": "experts/token k"}


def _gib1(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f}"


def _bar(parts: list[tuple[str, int, str]], capacity: int, width: int = 40) -> str:
    """A stacked bar (rich markup) of byte parts against a capacity."""
    total = sum(n for _, n, _ in parts)
    scale = max(total, capacity) or 1
    cells = []
    for _, n, colour in parts:
        cells.append(f"[{colour}]" + "█" * round(width * n / scale) + f"[/{colour}]")
    free = max(0, width - sum(round(width * n / scale) for _, n, _ in parts))
    return "".join(cells) + "[dim]" + "░" * free + "[/dim]"


EDITED = "-edited"


def edited(origin: ModelConfig | None, spec: ModelConfig) -> ModelConfig:
    """``spec`` named apart from the model it was edited from (``llama-3-8b-edited``), so a
    plan saved from the TUI never passes an edited model off under a preset's name; edited
    back to ``origin`` exactly, it takes ``origin``'s name again. (A suffix, not
    "(edited)": the name also becomes a Slurm job name and file names.)"""
    if origin is None:
        return spec
    if spec.replace(name=origin.name) == origin:
        return origin
    return spec.replace(name=origin.name.removesuffix(EDITED) + EDITED)


class ModelForm(VerticalScroll):
    """Validated inputs for every field; a bad value is marked at the field with the reason
    and never clears the others. Valid edits go up as ``SpecEdited``."""

    @dataclass
    class SpecEdited(Message):
        spec: ModelConfig

    spec: reactive[ModelConfig | None] = reactive(None, init=False)
    """The model being edited (pushed down by the app)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._errors: set[str] = set()
        # Edits posted up whose echo (the app's spec coming back down) has not arrived yet:
        # the inputs already show them, and maybe keys typed since, so an echo never rewrites
        # an input (a digit typed while the app recomputes is kept).
        self._sent: list[ModelConfig] = []
        # The model as it came from outside (a preset, a file): an edit is named apart from
        # it, and an edit back to it takes its name again.
        self._origin: ModelConfig | None = None

    def compose(self) -> ComposeResult:
        hints = typing.get_type_hints(ModelConfig)
        for f in dataclasses.fields(ModelConfig):
            if f.name in SKIP:
                continue
            kind = hints[f.name]
            label = LABELS.get(f.name, f.name.replace("_", " "))
            row = Horizontal(classes="field", id=f"row-{f.name}")
            row.display = f.name not in VARIANT_FIELD
            with row:
                yield Label(label, classes="field-label")
                if f.name in CHOICES:
                    yield Select([(v, v) for v in CHOICES[f.name]], allow_blank=False,
                                 id=f"f-{f.name}", compact=True)
                elif kind is bool:
                    yield Switch(id=f"f-{f.name}")
                else:
                    yield Input(id=f"f-{f.name}", compact=True,
                                type="integer" if kind is int else
                                "number" if kind is float else "text")
            yield Static("", id=f"err-{f.name}", classes="field-error")

    def watch_spec(self, spec: ModelConfig | None) -> None:
        if spec is None:
            return
        if spec in self._sent:  # our own edit coming back: the inputs are ahead of it
            del self._sent[:self._sent.index(spec) + 1]
            self._show_variant_rows(spec)
            return
        self._sent.clear()
        self._origin = spec
        self._show_variant_rows(spec)
        with self.prevent(Input.Changed, Select.Changed, Switch.Changed):
            for name, value in spec.to_dict().items():
                if name in SKIP:
                    continue
                widget = self.query_one(f"#f-{name}")
                if isinstance(widget, Input):
                    text = _shown(value)
                    if widget.value != text:
                        widget.value = text
                elif widget.value != value:
                    widget.value = value
                self._show_error(name, "")

    def _show_variant_rows(self, spec: ModelConfig) -> None:
        groups = _groups_in_use(spec)
        for name, value in spec.to_dict().items():
            if name in VARIANT_FIELD:
                row = self.query_one(f"#row-{name}")
                show = VARIANT_FIELD[name] in groups or value != DEFAULTS[name]
                if row.display != show:
                    row.display = show

    def _show_error(self, name: str, message: str) -> None:
        if not message and name not in self._errors:
            return  # nothing shown, nothing to clear (keeps edits from relaying out the form)
        error = self.query_one(f"#err-{name}", Static)
        error.update(f"[red]{escape(message)}[/red]" if message else "")
        error.display = bool(message)
        if message:
            self._errors.add(name)
        else:
            self._errors.discard(name)

    def _edit(self, name: str, raw: object) -> None:
        base = self._sent[-1] if self._sent else self.spec  # on top of edits not yet echoed
        if base is None:
            return
        try:
            value = C.parse_field(name, raw) if isinstance(raw, str) else raw
            new = edited(self._origin, base.replace(**{name: value}))
        except ConfigError as err:
            self._show_error(name, str(err))
            return
        self._show_error(name, "")
        if new != base:
            self._sent.append(new)
            self.post_message(self.SpecEdited(new))

    @on(Input.Changed)
    def _input(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id and event.input.id.startswith("f-") and event.value.strip():
            self._edit(event.input.id[2:], event.value)

    @on(Select.Changed)
    def _select(self, event: Select.Changed) -> None:
        event.stop()
        if event.select.id and event.select.id.startswith("f-"):
            self._edit(event.select.id[2:], event.value)

    @on(Switch.Changed)
    def _switch(self, event: Switch.Changed) -> None:
        event.stop()
        if event.switch.id and event.switch.id.startswith("f-"):
            self._edit(event.switch.id[2:], event.value)


EXPLAINABLE = ("params", "kv_bytes_per_token", "state_bytes_per_sequence",
               "train_flops_per_token", "model_states_bytes", "chinchilla_params")


class ResultsView(VerticalScroll):
    """Numbers that update on every edit: params, FLOPs, memory bar, KV cache, Chinchilla,
    and the formula behind any of them (explain)."""

    @dataclass
    class ExplainRequested(Message):
        quantity: str

    results: reactive[Results | None] = reactive(None, init=False)
    """Computed by the app from its spec and choices."""
    explanation: reactive[str] = reactive("", init=False)
    """The formula, values and result for the chosen quantity (from the app's worker)."""
    accuracy: reactive[Accuracy] = reactive(DEFAULT_ACCURACY, init=False)
    """The band put around each memory estimate (from the accelerator's profile)."""

    def compose(self) -> ComposeResult:
        yield Static(id="params-headline", classes="headline")
        yield DataTable(id="params-table", show_cursor=False)
        yield Static(id="flops")
        yield Static(id="memory")
        yield Static(id="kv")
        yield Static(id="chinchilla")
        yield PlotextPlot(id="loss-plot")
        yield Select([(q, q) for q in EXPLAINABLE], id="explain-pick", prompt="explain ...",
                     compact=True)
        yield Static(id="explain")

    @on(Select.Changed, "#explain-pick")
    def _explain(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.post_message(self.ExplainRequested(event.value))

    def watch_explanation(self, text: str) -> None:
        self.query_one("#explain", Static).update(text)

    def on_mount(self) -> None:
        table = self.query_one("#params-table", DataTable)
        table.add_column("component", key="component")
        table.add_column("parameters", key="parameters")

    def watch_accuracy(self) -> None:
        if self.results is not None:  # only the memory lines carry a band
            self.show_memory(self.results)

    def watch_results(self, res: Results | None) -> None:
        if res is None:
            return
        p = res.params
        self.query_one("#params-headline", Static).update(
            f"[b]{p.total:,}[/b] parameters  (active {p.active:,}; non-embedding {p.non_embedding:,})")
        table = self.query_one("#params-table", DataTable)
        rows = {name: f"{n:,}" for name, n in p.breakdown.items() if n}
        if set(rows) == {key.value for key in table.rows}:
            for name, value in rows.items():  # same components: update in place, no relayout
                table.update_cell(name, "parameters", value)
        else:
            table.clear()
            for name, value in rows.items():
                table.add_row(name, value, key=name)
        f = res.flops
        self.query_one("#flops", Static).update(
            "[b]Training FLOPs per token[/b]  "
            f"exact {f['exact'] / 1e9:,.2f} G   6N {f['six_n'] / 1e9:,.2f} G   "
            f"PaLM {f['palm'] / 1e9:,.2f} G")
        self.show_memory(res)
        kv = "  ".join(f"{c // 1024}k: {b / 2**30:,.2f}" for c, b in self.kv_curve(res))
        self.query_one("#kv", Static).update(
            f"[b]KV cache[/b] {res.kv_bytes_per_token:,} B/token ({res.kv_bytes_per_token / 1024:,.1f} KiB); "
            f"GiB per sequence by context  {kv}\nlargest batch beside the weights: "
            f"{res.max_batch_at_seq:,}{self.state_note()}")
        self.query_one("#chinchilla", Static).update(
            f"[b]Chinchilla[/b] (Hoffmann fit) optimal tokens for this size: "
            f"{res.chinchilla_tokens / 1e9:,.1f} B (loss {res.chinchilla_loss:.3f})")
        plot = self.query_one("#loss-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.plot([math.log10(n) for n, _ in res.loss_curve], [loss for _, loss in res.loss_curve])
        plt.title("loss vs log10 N at the same compute (N*/10 .. 10 N*)")
        plot.refresh()


    def _variant_spec(self) -> ModelConfig | None:
        """The app's model when its cache is more than K and V of every layer at one window
        (MLA, alternating windows, recurrent state), else None (``res`` says it all)."""
        spec = getattr(self.app, "spec", None)
        if spec is None or not (spec.attention == "mla" or spec.sliding_window_pattern
                                or spec.mixer != "attention"):
            return None
        return spec

    def kv_curve(self, res: Results) -> list[tuple[int, int]]:
        """(context, bytes of one sequence): per layer window and recurrent state
        (``planner.kv``) for a layer-variant model."""
        spec = self._variant_spec()
        if spec is None:
            return res.kv_by_context
        from planner.kv import kv_bytes_per_sequence

        kv_dtype = getattr(getattr(self.app, "choices", None), "kv_dtype", "bf16")
        return [(c, kv_bytes_per_sequence(spec, c, kv_dtype)) for c, _ in res.kv_by_context]

    def state_note(self) -> str:
        spec = self._variant_spec()
        if spec is None or spec.mixer == "attention":
            return ""
        from planner.kv import state_bytes_per_sequence

        kv_dtype = getattr(getattr(self.app, "choices", None), "kv_dtype", "bf16")
        state = state_bytes_per_sequence(spec, kv_dtype)
        return f"\n{spec.mixer} state: {state / 2**20:,.2f} MiB per sequence, whatever its length"

    def show_memory(self, res: Results) -> None:
        """Per-stage memory bars against the accelerator, each total with its band."""
        lines = ["[b]Per-GPU memory[/b] at the step's peak (GiB; [dark_green]frozen[/] "
                 "[green]weights[/] "
                 "[yellow]grads[/] [magenta]optimizer[/] [cyan]activations[/] "
                 "[blue]temporaries[/])"]
        if res.memory_error:
            lines.append(f"[red]{res.memory_error}[/red]")
        for st in res.memory_stages:
            peak = st["at_peak_bytes"]
            parts = [("f", peak.get("frozen_base", 0), "dark_green"),
                     ("w", peak["weights"], "green"), ("g", peak["gradients"], "yellow"),
                     ("o", peak["optimizer"], "magenta"), ("a", peak["activations"], "cyan"),
                     ("t", peak["temporaries"], "blue")]
            verdict = "fits" if st["total_bytes"] <= res.capacity_bytes else "[red]over[/red]"
            band = fmt_band(self.accuracy.memory(st["total_bytes"]), _gib1)
            lines.append(f"stage {st['stage']} {_bar(parts, res.capacity_bytes)} "
                         f"{band} / {res.capacity_bytes / 2**30:,.1f} {verdict} "
                         f"[dim]{PHASES[st['peak_phase']]}[/dim]")
        if res.memory_stages:
            lines.append(f"[dim]bands: {self.accuracy.source}[/dim]")
        self.query_one("#memory", Static).update("\n".join(lines))

class ModelPane(Horizontal):
    def __init__(self, preset: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.preset = preset

    def compose(self) -> ComposeResult:
        with Vertical(id="model-left"):
            yield Select([(n, n) for n in preset_files("models")], id="preset", prompt="preset",
                         allow_blank=False, value=self.preset)
            yield Input(placeholder="open a model folder, config.json or .toml, Enter", id="open-path")
            yield ModelForm(id="form")
        yield ResultsView(id="results")
