"""Pilot tests from a hostile-input review: keys that must work from every widget, a cancel
that reads "cancelled", refused top-bar values, overwrite confirmation, edited-model names
and keys typed while the app recomputes."""

import json
import threading
import time

import pytest
from textual import events as tevents

from planner.planfile import read_plan, slurm_script
from textual.widgets import TabPane

from tui.app import PlanApp

SIZE = (100, 30)
TAB_KEYS = {"f1": "model", "f2": "plan", "f3": "run", "f4": "compare", "f5": "serve"}
KEY_OF = {tab: key for key, tab in TAB_KEYS.items()}


def pane_of(widget) -> str | None:
    """The tab pane a widget is in (None: the top bar, the tab strip, no widget)."""
    for node in (widget.ancestors_with_self if widget is not None else ()):
        if isinstance(node, TabPane):
            return node.id
    return None


def text(app, selector: str) -> str:
    return str(app.query_one(selector).render())


async def post_keys(pilot, *keys: str, settle: bool = True) -> None:
    """Keys as a terminal delivers them (the driver posts each to the app), then a pause
    (``settle``: a full one, layout and focus included), or only until every widget has
    handled what was queued: ``pilot.press`` waits for an idle process after every key,
    seconds on a busy machine for a sweep over a hundred widgets."""
    for key in keys:
        pilot.app.post_message(tevents.Key(key, None))
    if settle:
        await pilot.pause()
    else:
        await pilot._wait_for_screen()  # textual is pinned (8.2.8): this private wait holds


@pytest.mark.parametrize("switch_every", [
    False, pytest.param(True, marks=pytest.mark.extended)], ids=["switch-each-kind", "switch-every"])
async def test_app_keys_work_from_every_focusable_widget_of_every_screen(switch_every):
    """F1-F5, ctrl+k and ctrl+r reach the app from each widget of each screen's focus chain
    (an Input used to keep ctrl+k, and F1-F5 did nothing from a button); and F1-F5 really
    switch from each one, each widget trying one key in turn (focus inside the hidden pane
    used to switch the tabs straight back): in the suite one widget of each kind per screen
    (a real switch relays out the whole screen), every one (the model form by one field of
    each kind) in ``make test-extended``."""
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        tabs = app.query_one("#tabs")
        show_tab, seen, swept, tried = app.action_show_tab, [], 0, set()
        for screen in TAB_KEYS.values():
            show_tab(screen)
            await pilot.pause()
            chain = [w for w in app.screen.focus_chain if pane_of(w) in (screen, None)]
            assert chain
            others = [tab for tab in TAB_KEYS.values() if tab != screen]
            for i, widget in enumerate(chain):
                show_tab(screen)
                app.screen.set_focus(widget)
                where = f"{type(widget).__name__}#{widget.id} on {screen}"
                # every key reaches its action (recorded: nothing switches)
                app.action_show_tab = lambda tab: seen.append(tab)
                app.action_search = lambda: seen.append("search")
                app.action_cancel_run = lambda: seen.append("cancel")
                seen.clear()
                await post_keys(pilot, *TAB_KEYS, "ctrl+k", "ctrl+r", settle=False)
                assert seen == [*TAB_KEYS.values(), "cancel", "search"], where
                assert app.focused is widget, where
                del app.action_show_tab, app.action_search, app.action_cancel_run
                # and one of F1-F5 (each in turn) really switches from here; of the model
                # form's 33 fields, one of each kind (each switch relays out the whole form)
                in_form = app.query_one("#form") in widget.ancestors
                kind = (type(widget), in_form, None if switch_every else screen)
                if (in_form or not switch_every) and kind in tried:
                    continue
                tried.add(kind)
                for _ in range(2):  # focus's messages (widget, pane, tabs) settle, as between keys
                    await pilot._wait_for_screen()
                target = others[i % len(others)]
                await post_keys(pilot, KEY_OF[target])
                assert tabs.active == target, f"{KEY_OF[target]} from {where}"
                assert pane_of(app.focused) in (target, None), where
                swept += 1
        assert swept > (30 if switch_every else 10)


class FakeRun:
    """What ``runtime.launch.start`` returns, for a run that goes until it is cancelled and
    then dies the way torchrun does on SIGTERM (a signal's exit code, a traceback), or says
    ``cancelled`` first (the launcher's own event)."""

    def __init__(self, says_cancelled: bool) -> None:
        self.says_cancelled = says_cancelled
        self.stopped = threading.Event()
        self.stderr_tail: list[str] = []

    def lines(self):
        yield json.dumps({"event": "start", "time": 0, "mode": "train", "model": "tiny",
                          "layout": {}, "world": 4, "device": "cpu", "steps": 100000,
                          "global_batch": 4, "seq_len": 32, "micro_batch": 1, "grad_accum": 1,
                          "recompute": "none", "dtype": "fp32", "optimizer": "adamw",
                          "recipe": "runtime", "attention": "sdpa"}) + "\n"
        self.stopped.wait(20)
        if self.says_cancelled:
            yield json.dumps({"event": "cancelled", "time": 1, "step": 3}) + "\n"
        self.stderr_tail = ["Traceback (most recent call last):",
                            "torch.distributed.elastic.multiprocessing.api.SignalException: "
                            "Process 4242 got signal: 15"]

    def cancel(self) -> None:
        self.stopped.set()

    def wait(self) -> int:
        return 1 if self.says_cancelled else -15


@pytest.mark.parametrize("says_cancelled", [False, True], ids=["signal", "cancelled-event"])
async def test_a_cancelled_run_reads_cancelled(monkeypatch, says_cancelled):
    """ctrl+k from the focused args Input (Textual's delete-to-end there) cancels the run, and
    the screen says "cancelled", not the signal's "run failed" and a traceback."""
    import runtime.launch

    monkeypatch.setattr(runtime.launch, "start", lambda spec: FakeRun(says_cancelled))
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        args = app.query_one("#run-args")
        args.value = "tiny --steps 100000 --seq 32 --gbs 4 --dp 4 --device cpu"
        await pilot.press("ctrl+l")
        for _ in range(100):
            await pilot.pause(0.05)
            if app.run_state.status.startswith("running"):
                break
        assert app.run_state.status.startswith("running"), app.run_state.status
        args.focus()
        args.cursor_position = 0
        await pilot.press("ctrl+k")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert args.value.startswith("tiny --steps")  # the key cancelled, it deleted nothing
        assert app.run_state.status == "cancelled"
        assert text(app, "#run-status") == "cancelled"
        log = app.query_one("#run-log").lines
        assert not any("Traceback" in line or "run failed" in line for line in log)


async def test_ctrl_r_on_the_serve_screen_recomputes_the_serving_plan():
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        app.query_one("#serve-prompt").focus()
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.serve_result is not None and app.search_result is None
        assert app.query_one("#serve-table").row_count > 0
        assert "meet the targets" in text(app, "#serve-status")


async def test_a_serve_plan_error_replaces_searching():
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        app.query_one("#serve-prompt").value = "0"
        app.query_one("#serve-search").press()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        status = text(app, "#serve-status")
        assert "searching" not in status
        assert "prompt-tokens(0) must be a positive integer" in status


@pytest.mark.parametrize("field,value", [("#top-seq", "0"), ("#top-seq", "-4096"),
                                         ("#top-gpus", "-")])
async def test_a_refused_top_bar_value_is_marked_and_nothing_searches_with_another(field, value):
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        before = app.choices
        top = app.query_one(field)
        top.focus()
        top.value = ""
        await pilot.press(*value)
        await pilot.pause()
        assert top.has_class("-invalid")
        error = app.query_one("#top-error")
        assert error.display and f"{value!r} refused" in text(app, "#top-error")
        assert app.choices == before
        await pilot.press("f2", "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.search_result is None  # no search ran with the last good value
        assert "fix the top bar first" in text(app, "#plan-status")
        await pilot.press("f5", "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.serve_result is None
        assert "fix the top bar first" in text(app, "#serve-status")
        top.value = "16"
        await pilot.pause()
        assert not top.has_class("-invalid") and not error.display


async def test_ctrl_s_asks_before_overwriting_and_leaves_no_stale_slurm_script(tmp_path):
    """An earlier two-node save left plan.toml and plan.slurm; saving a one-node plan over
    them asks first, then writes plan.toml and removes the script that no longer matches."""
    out, script = tmp_path / "plan.toml", tmp_path / "plan.slurm"
    out.write_text("# an earlier plan\n")
    script.write_text(slurm_script({"cluster": {"nodes": 2, "gpus_per_node": 8, "gpus": 16,
                                                "hardware": "h100-sxm"},
                                    "model": {"name": "llama-3-8b"}}, "plan.toml"))
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.search_result.cluster.nodes == 1
        app.query_one("#save-path").value = str(out)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert out.read_text() == "# an earlier plan\n" and script.exists()  # asked, not written
        assert any("again to overwrite" in n.message for n in app._notifications)
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert read_plan(out)["cluster"]["nodes"] == 1
    assert not script.exists()


async def test_an_edited_model_is_named_apart_from_its_preset(tmp_path):
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.query_one("#f-num_layers").focus()
        await pilot.press("end", "backspace", "4")
        await pilot.pause()
        assert app.spec.num_layers == 34
        assert app.spec.name == "llama-3-8b-edited"
        assert app.sub_title.startswith("llama-3-8b-edited on")
        await pilot.press("f2", "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.query_one("#save-path").value = str(tmp_path / "plan.toml")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert read_plan(tmp_path / "plan.toml")["model"]["name"] == "llama-3-8b-edited"
        await pilot.press("f1")
        app.query_one("#f-num_layers").focus()
        await pilot.press("end", "backspace", "2")  # back to the preset exactly
        await pilot.pause()
        assert app.spec.name == "llama-3-8b"


async def test_digits_typed_while_the_app_recomputes_are_kept(monkeypatch):
    """Keys arrive faster than each edit's round trip (up as SpecEdited, recompute, down as
    the spec): the echo of an earlier digit must not rewrite the input under later ones."""
    import tui.app

    compute = tui.app.compute

    def slow_compute(*args, **kwargs):
        time.sleep(0.05)  # a large model, or a busy machine
        return compute(*args, **kwargs)

    monkeypatch.setattr(tui.app, "compute", slow_compute)
    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        layers = app.query_one("#f-num_layers")
        layers.focus()
        await pilot.press("end", "backspace", "backspace")
        await post_keys(pilot, *"12")
        await post_keys(pilot, *"8")
        await pilot.pause()
        assert (layers.value, layers.cursor_position) == ("128", 3)
        assert app.spec.num_layers == 128
