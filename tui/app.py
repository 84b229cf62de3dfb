"""The llmplan TUI: edit a model and see every number update, plan a cluster, run and watch.

State flows down: the app owns ``spec`` (the model), ``choices`` (accelerator, GPUs, seq),
``search_result`` and ``run_state`` as reactives, and each pane binds to what it shows.
Typed messages flow up (``SpecEdited``, ``SearchRequested``, ``LaunchRequested`` ...).
Workers (the layout search, the run's event stream) never touch widgets: they return a
result or post messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.validation import Integer
from textual.widgets import Footer, Header, Input, Label, Select, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from planner.accuracy import DEFAULT_ACCURACY, Accuracy
from planner.config import LlmplanError, ModelConfig
from planner.search import SearchResult
from presets import canonical_hardware, load_accuracy, load_hardware, load_model, preset_files
from runtime.events import Error, Event
from tui import settings as user_settings
from tui.compare_pane import ComparePane, comparison_rows
from tui.model_pane import ModelForm, ModelPane, ResultsView
from tui.plan_pane import ClusterInputs, PlanPane
from tui.plan_actions import export_plan, save_plan
from tui.serve_pane import ServePane
from planner.serving import ServeResult
from tui.results import Choices, Results, compute

TUI_METHODS = ("full", "lora", "qlora", "dpo")
"""The top bar's methods: full training, LoRA / QLoRA (r 16, every projection), DPO."""
from tui.palette import PresetCommands
from tui.run_pane import RunPane, RunState, says_cancelled

DEFAULT_PRESET = "llama-3-8b"
DEFAULT_HARDWARE = "h100-sxm"


@dataclass
class RunEvent(Message):
    """One line of the run's output (an event, or a log line)."""

    line: str
    event: Event | None


@dataclass
class RunEnded(Message):
    code: int
    cancelled: bool = False
    """The user cancelled the run (whatever code the signal left)."""


TAB_KEYS = {"f1": "model", "f2": "plan", "f3": "run", "f4": "compare", "f5": "serve"}
SCREEN_ACTIONS = frozenset({"show_tab", "search", "save_plan", "launch", "cancel_run"})
"""The app's keys act on the main screen; while a dialog or the palette is on top they are
that screen's own."""
CONFIRM_S = 10.0
"""How long a second ctrl+s (or Save) confirms an overwrite."""


class PlanApp(App):
    TITLE = "llmplan"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {PresetCommands}
    # Priority: the app's keys come before the focused widget's, so they work from every
    # widget of every screen (an Input would take ctrl+k as delete-to-end).
    BINDINGS = [
        *(Binding(key, f"show_tab('{tab}')", tab.capitalize(), id=f"tab-{tab}", priority=True)
          for key, tab in TAB_KEYS.items()),
        Binding("ctrl+r", "search", "Search layouts", id="search", priority=True),
        Binding("ctrl+s", "save_plan", "Save plan", id="save-plan", priority=True),
        Binding("ctrl+l", "launch", "Launch", id="launch", priority=True),
        Binding("ctrl+k", "cancel_run", "Cancel run", id="cancel", priority=True),
    ]

    spec: reactive[ModelConfig | None] = reactive(None, init=False)
    """The model being edited."""
    choices: reactive[Choices | None] = reactive(None, init=False)
    """Accelerator, GPUs and sequence length the model screen assumes."""
    results: reactive[Results | None] = reactive(None, init=False)
    """Everything the model screen shows, recomputed on every change."""
    search_result: reactive[SearchResult | None] = reactive(None, init=False, always_update=True)
    """The latest layout search."""
    serve_result: reactive[ServeResult | None] = reactive(None, init=False, always_update=True)
    """The latest serving plan."""
    run_state: reactive[RunState] = reactive(RunState, init=False)
    """The latest run, as its events described it."""
    explanation: reactive[str] = reactive("", init=False)
    """The explain view's text for the chosen quantity."""
    accuracy: reactive[Accuracy] = reactive(DEFAULT_ACCURACY, init=False)
    """How far the planner has been from real runs on the chosen accelerator (its bands)."""
    search_error: reactive[str] = reactive("", init=False, always_update=True)
    """Why the latest layout search did not run or failed (shown on the plan screen)."""
    serve_error: reactive[str] = reactive("", init=False, always_update=True)
    """Why the latest serving plan did not run or failed (shown on the serve screen)."""
    top_errors: reactive[dict[str, str]] = reactive(dict, init=False)
    """The top bar's refused fields (gpus, seq_len) and why; searches wait for a fix."""

    def __init__(self, *, preset: str | None = None, save_settings: bool = True,
                 blink: bool = True) -> None:
        super().__init__()
        self.blink = blink  # off in snapshot tests: a blinking cursor is not deterministic
        self.settings = user_settings.load()
        self.save_settings = save_settings
        names = preset_files("models")
        start = preset or self.settings.preset
        self.start_preset = start if start in names else DEFAULT_PRESET
        hardware = self.settings.hardware
        hardware = canonical_hardware(hardware) if hardware else ""  # an alias: its preset
        self.start_hardware = hardware if hardware in preset_files("hardware") else DEFAULT_HARDWARE
        self._run = None
        self._cancel_requested = False  # the user cancelled the current run
        self._confirm: tuple[Path, float] | None = None  # an overwrite asked about, and when
        self.explain_quantity = ""

    # ---- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="topbar"):
            yield Label("accelerator")
            yield Select([(n, n) for n in preset_files("hardware")], id="hardware",
                         allow_blank=False, compact=True, value=self.start_hardware)
            yield Label("GPUs")
            yield Input(str(self.settings.gpus), id="top-gpus", type="integer", compact=True,
                        validators=[Integer(minimum=1)])
            yield Label("seq")
            yield Input("4096", id="top-seq", type="integer", compact=True,
                        validators=[Integer(minimum=1)])
            yield Label("method")
            yield Select([(m, m) for m in TUI_METHODS], id="method", allow_blank=False,
                         compact=True, value="full")
        yield Static("", id="top-error")
        with TabbedContent(initial="model", id="tabs"):
            with TabPane("Model", id="model"):
                yield ModelPane(self.start_preset)
            with TabPane("Plan", id="plan"):
                yield PlanPane(id="plan-pane").data_bind(result=PlanApp.search_result,
                                                         accuracy=PlanApp.accuracy,
                                                         error=PlanApp.search_error)
            with TabPane("Run", id="run"):
                yield RunPane(id="run-pane").data_bind(state=PlanApp.run_state)
            with TabPane("Compare", id="compare"):
                other = "llama-2-7b" if self.start_preset != "llama-2-7b" else "llama-3-8b"
                yield ComparePane(self.start_preset, other, id="compare-pane")
            with TabPane("Serve", id="serve"):
                yield ServePane(id="serve-pane").data_bind(result=PlanApp.serve_result,
                                                           error=PlanApp.serve_error)
        yield Footer()

    def on_mount(self) -> None:
        preset, hardware = self.start_preset, self.start_hardware
        if not self.blink:
            for field in self.query(Input):
                field.cursor_blink = False
        self.query_one("#form", ModelForm).data_bind(spec=PlanApp.spec)
        self.query_one("#results", ResultsView).data_bind(results=PlanApp.results,
                                                          explanation=PlanApp.explanation,
                                                          accuracy=PlanApp.accuracy)
        self.theme = self.settings.theme if self.settings.theme in self.available_themes else self.theme
        self.accuracy = self.accuracy_for(hardware)
        self.choices = Choices(hardware=load_hardware(hardware), gpus=self.settings.gpus)
        self.spec = load_model(preset)
        self.update_compare()

    # ---- state --------------------------------------------------------------------------
    def watch_spec(self) -> None:
        self.recompute()

    def watch_choices(self) -> None:
        self.recompute()

    def recompute(self) -> None:
        if self.spec is not None and self.choices is not None:
            self.results = compute(self.spec, self.choices)
            self.refresh_explanation()
            self.sub_title = f"{self.spec.name} on {self.choices.gpus} x {self.choices.hardware.name}"

    def accuracy_for(self, hardware: str) -> Accuracy:
        """The accelerator's accuracy record; a broken profile is reported, not fatal."""
        try:
            return load_accuracy(hardware)
        except LlmplanError as err:
            self.notify(str(err), severity="warning", title="calibration profile ignored")
            return DEFAULT_ACCURACY

    def remember(self, **changes) -> None:
        self.settings = self.settings.with_(**changes)
        if self.save_settings:
            user_settings.save(self.settings)

    def choose_preset(self, name: str) -> None:
        self.query_one("#preset", Select).value = name

    def choose_hardware(self, name: str) -> None:
        self.query_one("#hardware", Select).value = name

    # ---- messages up --------------------------------------------------------------------
    @on(Select.Changed, "#preset")
    def _preset(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.spec = load_model(event.value)
            self.remember(preset=event.value)

    @on(Select.Changed, "#hardware")
    def _hardware(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and self.choices is not None:
            self.accuracy = self.accuracy_for(event.value)
            self.choices = Choices(**{**self.choices_dict(), "hardware": load_hardware(event.value)})
            self.remember(hardware=event.value)

    @on(Select.Changed, "#method")
    def _method(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and self.choices is not None:
            self.choices = Choices(**{**self.choices_dict(), "method": event.value})

    @on(Input.Changed, "#top-gpus, #top-seq")
    def _top(self, event: Input.Changed) -> None:
        """A valid value reaches every screen; any other is refused where it was typed (the
        input marked invalid, a line under the top bar) and the searches wait for a fix,
        rather than quietly going on with the last good value."""
        key, label = ("gpus", "GPUs") if event.input.id == "top-gpus" else ("seq_len", "seq")
        errors = {k: v for k, v in self.top_errors.items() if k != key}
        try:
            value = int(event.value.strip())
        except ValueError:
            value = 0
        if value < 1:
            errors[key] = f"{label} {event.value.strip()!r} refused: a whole number, 1 or more"
        self.top_errors = errors
        if value < 1 or self.choices is None:
            return
        self.choices = Choices(**{**self.choices_dict(), key: value})
        if key == "gpus":
            self.remember(gpus=value)

    def watch_top_errors(self, errors: dict[str, str]) -> None:
        line = self.query_one("#top-error", Static)
        line.update(escape("; ".join(errors.values())))
        line.display = bool(errors)

    def top_bar_refusal(self) -> str:
        """Why a search must not run now (a refused top-bar field), or ''."""
        if self.top_errors:
            return "fix the top bar first: " + "; ".join(self.top_errors.values())
        return ""

    def choices_dict(self) -> dict:
        c = self.choices
        assert c is not None
        return {f: getattr(c, f) for f in c.__slots__}

    @on(Input.Submitted, "#open-path")
    def _open(self, event: Input.Submitted) -> None:
        try:
            self.spec = load_model(event.value.strip())
        except (LlmplanError, OSError) as err:
            self.notify(str(err), severity="error", title="cannot open")

    @on(ModelForm.SpecEdited)
    def _edited(self, event: ModelForm.SpecEdited) -> None:
        self.spec = event.spec

    @on(ResultsView.ExplainRequested)
    def _explain_requested(self, event: ResultsView.ExplainRequested) -> None:
        self.explain_quantity = event.quantity
        self.refresh_explanation()

    def refresh_explanation(self) -> None:
        if self.explain_quantity and self.spec is not None and self.choices is not None:
            self.run_explain(self.explain_quantity, self.spec, self.choices)

    @work(thread=True, exclusive=True, group="explain", exit_on_error=False)
    def run_explain(self, quantity: str, spec: ModelConfig, choices: Choices) -> str:
        from planner.setup import Parallel, TrainSetup
        from planner.explain import explain  # sympy loads here, off the UI thread (~0.3 s)

        dp = max(1, choices.gpus // (choices.tp * choices.pp))
        exp = explain(quantity, spec, setup=TrainSetup(seq_len=choices.seq_len),
                      par=Parallel(tp=choices.tp, pp=choices.pp, dp=dp,
                                   zero=choices.zero if dp > 1 else 0))
        values = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}"
                           for k, v in exp.values.items())
        verdict = "agrees" if exp.matches else "DIFFERS"
        return (f"[b]{exp.description}[/b]\n{exp.pretty}\nwith {values}\n= {exp.result:,.6g} "
                f"(planner {exp.planner_value:,.6g}, {verdict}); source: {exp.source}")

    @on(ComparePane.PairChosen)
    def _pair(self, event: ComparePane.PairChosen) -> None:
        self.update_compare(event.left, event.right)

    def update_compare(self, left: str | None = None, right: str | None = None) -> None:
        pane = self.query_one("#compare-pane", ComparePane)
        left = left or str(self.query_one("#left", Select).value)
        right = right or str(self.query_one("#right", Select).value)
        pane.show(comparison_rows(load_model(left), load_model(right)))

    # ---- keys ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in SCREEN_ACTIONS and len(self.screen_stack) > 1:
            return False  # the palette or a dialog is on top: the key is its own
        return True

    def action_show_tab(self, tab: str) -> None:
        """Show ``tab``. Focus inside the pane being hidden moves to the new pane first:
        left there, Textual passes it to the hidden pane's next widget, and a focused
        descendant switches the tabs straight back (F1-F5 did nothing from a button)."""
        tabs = self.query_one("#tabs", TabbedContent)
        if tabs.active == tab:
            return
        pane = self._pane_of(self.focused)
        if pane is not None and pane != tab:
            self.screen.set_focus(None)
            tabs.active = tab
            self.call_after_refresh(self._focus_first_in, tab)
        else:
            tabs.active = tab

    def _pane_of(self, widget) -> str | None:
        """The id of the tab pane ``widget`` is in (None: the top bar, the tab strip)."""
        for node in (widget.ancestors_with_self if widget is not None else ()):
            if isinstance(node, TabPane):
                return node.id
        return None

    def _focus_first_in(self, tab: str) -> None:
        if self.focused is not None:
            return
        for widget in self.screen.focus_chain:
            if self._pane_of(widget) == tab:
                widget.focus()
                return

    # ---- plan ---------------------------------------------------------------------------
    def action_search(self) -> None:
        """ctrl+r: the serving plan on the serve screen, the layout search elsewhere."""
        if self.query_one("#tabs", TabbedContent).active == "serve":
            self.query_one("#serve-pane", ServePane).request()
        else:
            self.query_one("#plan-pane", PlanPane).request()

    @on(PlanPane.SearchRequested)
    def _search(self, event: PlanPane.SearchRequested) -> None:
        if refusal := self.top_bar_refusal():
            self.search_error = refusal
        elif self.spec is not None and self.choices is not None:
            self.run_search(self.spec, self.choices, event.inputs)

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def run_search(self, spec: ModelConfig, choices: Choices, inputs: ClusterInputs) -> SearchResult:
        """The search ``llmplan plan`` runs for the top bar's accelerator, GPUs and sequence
        length and the plan screen's nodes and batch."""
        from planner.cost import cluster_of
        from planner.search import search
        from presets import load_cost_model

        cluster = cluster_of(choices.hardware, gpus=choices.gpus, nodes=inputs.nodes)
        return search(spec, cluster, choices.setup(), global_batch=inputs.gbs,
                      model=load_cost_model(choices.hardware.name))

    @on(ServePane.ServeRequested)
    def _serve(self, event: ServePane.ServeRequested) -> None:
        if refusal := self.top_bar_refusal():
            self.serve_error = refusal
        elif self.spec is not None and self.choices is not None:
            self.run_serve(self.spec, self.choices, event.inputs)

    @work(thread=True, exclusive=True, group="serve", exit_on_error=False)
    def run_serve(self, spec: ModelConfig, choices: Choices, inputs) -> ServeResult:
        from tui.serve_pane import serve

        return serve(spec, choices.hardware, choices.gpus, inputs)

    @on(Worker.StateChanged)
    def _worker(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "explain":
            if worker.state == WorkerState.SUCCESS:
                self.explanation = worker.result
            elif worker.state == WorkerState.ERROR:
                self.explanation = f"[red]{worker.error}[/red]"
        if worker.group == "serve":
            if worker.state == WorkerState.SUCCESS:
                self.serve_result = worker.result
            elif worker.state == WorkerState.ERROR:
                self.serve_error = f"serve plan failed: {worker.error}"
                self.notify(str(worker.error), severity="error", title="serve plan failed")
        if worker.group == "search":
            if worker.state == WorkerState.SUCCESS:
                self.search_result = worker.result
            elif worker.state == WorkerState.ERROR:
                self.search_error = f"search failed: {worker.error}"
                self.notify(str(worker.error), severity="error", title="search failed")
        if worker.group == "run" and worker.state == WorkerState.ERROR:
            self.run_state = self.run_state.with_status(f"error: {worker.error}")
        if worker.group == "cancel" and worker.state == WorkerState.ERROR:
            self.notify(str(worker.error), severity="error", title="cancel failed")

    def action_save_plan(self) -> None:
        self.post_message(PlanPane.SaveRequested(self.query_one("#save-path", Input).value))

    @on(PlanPane.SaveRequested)
    def _save(self, event: PlanPane.SaveRequested) -> None:
        """Write the plan; over an existing plan (or a Slurm script beside it) only when asked
        twice within CONFIRM_S: the first ctrl+s (or Save) says what would be replaced."""
        path = Path(event.path.strip()).expanduser()
        there = [str(p) for p in (path, path.with_suffix(".slurm")) if p.is_file()]
        asked = self._confirm
        self._confirm = None
        if there and self.search_result is not None and self.search_result.best is not None \
                and not (asked and asked[0] == path and time.monotonic() - asked[1] < CONFIRM_S):
            self._confirm = (path, time.monotonic())
            self.notify(f"{' and '.join(there)} exist: press ctrl+s (or Save) again to "
                        "overwrite", title="overwrite?", severity="warning", timeout=CONFIRM_S)
            return
        self._write(save_plan, str(path))

    @on(PlanPane.ExportRequested)
    def _export(self, event: PlanPane.ExportRequested) -> None:
        self._write(partial(export_plan, framework=event.framework), event.folder)

    def _write(self, writer, where: str) -> None:
        """The highlighted layout written by ``writer``; one notification either way."""
        result = self.search_result
        if result is None or result.best is None or self.spec is None:
            self.notify("search first: there is no layout to write", severity="warning")
            return
        table = self.query_one("#plan-pane", PlanPane).query_one("#layouts")
        index = min(getattr(table, "cursor_row", 0) or 0, len(result.candidates) - 1)
        try:
            title, message = writer(self.spec, result, result.candidates[index], Path(where))
        except LlmplanError as err:
            self.notify(str(err), severity="error", title="not written")
        except OSError as err:
            self.notify(f"{where}: {err.strerror}", severity="error")
        else:
            self.notify(message, title=title)

    # ---- run ----------------------------------------------------------------------------
    def action_launch(self) -> None:
        self.post_message(RunPane.LaunchRequested(self.query_one("#run-args", Input).value.split()))

    def action_cancel_run(self) -> None:
        self.post_message(RunPane.CancelRequested())

    def run_going(self) -> bool:
        return any(w.group == "run" and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in self.workers)

    @on(RunPane.LaunchRequested)
    def _launch(self, event: RunPane.LaunchRequested) -> None:
        if self.run_going():
            self.notify("a run is already going; cancel it first", severity="warning")
            return
        self._run = None
        self._cancel_requested = False
        self.run_state = RunState(status="starting ...")
        self.query_one("#run-log").clear()
        self.stream_run(list(event.args))

    @on(RunPane.CancelRequested)
    def _cancel(self) -> None:
        if not self.run_going() or self._cancel_requested:
            return
        self._cancel_requested = True  # the stream worker stops a run that starts from now on
        self.run_state = self.run_state.with_status("cancelling ...")
        if self._run is not None:
            self.stop_run(self._run)

    @work(thread=True, group="cancel", exit_on_error=False)
    def stop_run(self, run) -> None:
        """SIGTERM to every rank, SIGKILL after the grace period: seconds, off the UI thread."""
        run.cancel()

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def stream_run(self, args: list[str]) -> None:
        """Resolve the launch options as ``llmplan launch`` does (runtime.runspec), start the
        run in its own process group and relay its lines; a refused request is one error
        event, and nothing starts."""
        import typer

        from runtime import events
        from runtime.launch import failure, start
        from tui.commands.run import parse_launch_args

        try:
            from runtime.runspec import resolve

            resolved = resolve(parse_launch_args(args))
        except (typer.TyperException, LlmplanError) as err:  # Typer's vendored Click's too
            ev = events.Error(message=err.format_message()
                              if isinstance(err, typer.TyperException) else str(err))
            self.post_message(RunEvent(ev.to_json(), ev))
            self.post_message(RunEnded(2))
            return
        for said in resolved.overrides:
            self.post_message(RunEvent(f"llmplan: {said}", None))
        run = start(resolved.spec)
        self._run = run
        if self._cancel_requested:  # cancelled while the options were resolved
            run.cancel()
        ended = False
        for line in run.lines():
            ev = events.parse(line)
            ended = ended or isinstance(ev, events.ENDINGS) or says_cancelled(line, ev)
            self.post_message(RunEvent(line.rstrip("\n"), ev))
        code = run.wait()
        if self._cancel_requested:  # the signal's exit code and torchrun's traceback say nothing new
            self.post_message(RunEvent("llmplan: cancelled: every rank was stopped", None))
            self.post_message(RunEnded(code, cancelled=True))
            return
        for line in run.stderr_tail[-20:]:
            self.post_message(RunEvent(line, None))
        if code and not ended:
            ev = failure(code, run.stderr_tail)
            self.post_message(RunEvent(ev.to_json(), ev))
        self.post_message(RunEnded(code))

    @on(RunEvent)
    def _run_event(self, message: RunEvent) -> None:
        pane = self.query_one("#run-pane", RunPane)
        pane.log_line(message.line)
        ev = message.event
        if says_cancelled(message.line, ev):
            self.run_state = self.run_state.with_status("cancelled")
        elif ev is not None and not (self._cancel_requested and isinstance(ev, Error)):
            self.run_state = self.run_state.apply(ev)  # a rank dying of the cancel is no error

    @on(RunEnded)
    def _run_ended(self, message: RunEnded) -> None:
        if message.cancelled:
            if self.run_state.status != "done":  # unless it finished before the signal
                self.run_state = self.run_state.with_status("cancelled")
        elif message.code and not self.run_state.status.startswith(("error", "cancelled")):
            self.run_state = self.run_state.with_status(
                f"error: the run exited with code {message.code}")

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for tab in TAB_KEYS.values():
            yield SystemCommand(f"Show the {tab} screen", f"switch to the {tab} tab",
                                partial(self.action_show_tab, tab))
        yield SystemCommand("Search layouts", "run the layout search", self.action_search)
        yield SystemCommand("Launch run", "launch the run from the run screen", self.action_launch)

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme != self.settings.theme:
            self.remember(theme=theme)


def run_app(preset: str | None = None) -> None:
    PlanApp(preset=preset).run()
