"""Time from an edit to updated numbers in the TUI, for the 405B preset.

Prints the median of (a) the pure recompute (tui.results.compute) after a one-field edit and
(b) the app's state update (setting the spec runs every watcher: recompute and all widget
updates) and (c) the whole round trip to a rendered screen under Pilot, less Pilot's own
cost for an idle pause; next to the baseline of a bare `count_params` in the same process.

Goal (issue 7): under 50 ms for a 405B preset.
Run: `.venv/bin/python bench/tui_recompute.py`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

from planner.params import count_params
from presets import load_hardware, load_model
from tui.results import Choices, compute


def median_ms(fn, n: int = 30) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


async def app_round_trip(n: int = 20) -> tuple[float, float, float]:
    from tui.app import PlanApp

    os.environ["LLMPLAN_CONFIG_DIR"] = tempfile.mkdtemp()
    app = PlanApp(preset="llama-3.1-405b", save_settings=False)
    times = []
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        base = app.spec
        idle = []
        for _ in range(n):  # Pilot's own cost: a pause with nothing to do
            start = time.perf_counter()
            await pilot.pause()
            idle.append(time.perf_counter() - start)
        sync = []
        for i in range(n):
            start = time.perf_counter()
            app.spec = base.replace(num_kv_heads=8 if i % 2 else 16)
            sync.append(time.perf_counter() - start)  # watchers: recompute + widget updates
            await pilot.pause()
            times.append(time.perf_counter() - start)
    return (statistics.median(times) * 1e3, statistics.median(idle) * 1e3,
            statistics.median(sync) * 1e3)


def main() -> None:
    cfg = load_model("llama-3.1-405b")
    choices = Choices(hardware=load_hardware("h100-sxm"), gpus=16384, tp=8, pp=16)
    edits = [cfg.replace(num_kv_heads=8 if i % 2 else 16) for i in range(2)]
    bare = median_ms(lambda i: count_params(edits[i % 2]))
    pure = median_ms(lambda i: compute(edits[i % 2], choices))
    whole, idle, sync = asyncio.run(app_round_trip())
    print(f"state update (all watchers) {sync:7.3f} ms")
    print(f"count_params (baseline)     {bare:7.3f} ms")
    print(f"recompute after an edit     {pure:7.3f} ms  ({pure / bare:.0f}x the bare count)")
    print(f"Pilot pause, nothing to do  {idle:7.3f} ms  (harness overhead)")
    cost = whole - idle
    print(f"edit -> rendered in the app {whole:7.3f} ms, {cost:.3f} ms beyond the harness "
          f"(goal < 50 ms: {'met' if cost < 50 else 'NOT met'})")


if __name__ == "__main__":
    main()
