"""Snapshot tests, one per screen, each paired with a Pilot assertion on what it shows.

Update with `pytest tests/tui --snapshot-update` only after looking at snapshot_report.html.
"""

import json
from pathlib import Path

from runtime import events
from tui.app import PlanApp, RunEvent

SIZE = (100, 30)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def make_app() -> PlanApp:
    return PlanApp(save_settings=False, blink=False)


def test_model_screen(snap_compare):
    async def run_before(pilot):
        await pilot.pause()
        assert "8,030,261,248" in str(pilot.app.query_one("#params-headline").render())

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_model_screen_with_an_invalid_field(snap_compare):
    async def run_before(pilot):
        pilot.app.query_one("#f-num_kv_heads").focus()
        await pilot.press("end", "backspace", "5")
        await pilot.pause()
        assert "kv heads(5)" in str(pilot.app.query_one("#err-num_kv_heads").render())

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_plan_screen(snap_compare):
    async def run_before(pilot):
        await pilot.press("f2", "ctrl+r")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        pilot.app.query_one("#layouts").focus()
        await pilot.pause()
        assert pilot.app.query_one("#layouts").row_count > 0

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_run_screen(snap_compare):
    async def run_before(pilot):
        await pilot.press("f3")
        for line in (FIXTURES / "run_tiny.jsonl").read_text().splitlines():
            event = events.from_dict({**json.loads(line), "time": 0})
            pilot.app.post_message(RunEvent(event.to_json(), event))
        await pilot.pause()
        assert pilot.app.run_state.status == "done"

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_compare_screen(snap_compare):
    async def run_before(pilot):
        await pilot.press("f4")
        await pilot.pause()
        assert pilot.app.query_one("#compare-table").row_count > 30

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)
