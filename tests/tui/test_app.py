"""Pilot tests: drive each screen by key presses and assert on the values shown."""

import json
from pathlib import Path

import pytest

from runtime import events
from tui.app import PlanApp, RunEvent
from tui.run_pane import RunState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SIZE = (100, 30)


def text(app, selector: str) -> str:
    return str(app.query_one(selector).render())


async def search_on_plan_screen(app, pilot) -> None:
    """Open the plan screen, run its search and wait for the ranked layouts."""
    await pilot.press("f2")
    await pilot.press("ctrl+r")
    await app.workers.wait_for_complete()
    await pilot.pause()


async def choose_preset(pilot, name: str) -> None:
    """Through the command palette, as a user would."""
    await pilot.press("ctrl+p")
    await pilot.press(*f"model {name}")
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause()


async def test_default_is_llama3_8b_on_h100():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "8,030,261,248" in text(app, "#params-headline")
        assert app.sub_title == "llama-3-8b on 8 x h100-sxm"


async def test_selecting_llama2_7b_from_the_palette_shows_its_parameters():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await choose_preset(pilot, "llama-2-7b")
        assert "6,738,415,616" in text(app, "#params-headline")


async def test_changing_kv_heads_changes_the_kv_cache():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "131,072 B/token" in text(app, "#kv")
        app.query_one("#f-num_kv_heads").focus()
        await pilot.press("end", "backspace", "4")
        await pilot.pause()
        assert app.spec.num_kv_heads == 4
        assert "65,536 B/token" in text(app, "#kv")


async def test_invalid_head_count_is_marked_at_the_field_and_keeps_the_rest():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        before = app.spec
        app.query_one("#f-num_kv_heads").focus()
        await pilot.press("end", "backspace", "5")
        await pilot.pause()
        assert "kv heads(5) does not divide query heads(32)" in text(app, "#err-num_kv_heads")
        assert app.spec == before  # nothing applied, nothing cleared
        assert app.query_one("#f-hidden_size").value == "4096"
        await pilot.press("backspace", "8")
        await pilot.pause()
        assert text(app, "#err-num_kv_heads") == ""


async def test_accelerator_change_updates_memory_capacity():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "/ 79.6" in text(app, "#memory")
        app.choose_hardware("a100-40gb")
        await pilot.pause()
        assert "/ 40.0" in text(app, "#memory")


async def test_plan_screen_searches_ranks_and_saves(tmp_path):
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await search_on_plan_screen(app, pilot)
        table = app.query_one("#layouts")
        assert table.row_count > 0
        best = app.search_result.best
        assert "fit of" in text(app, "#plan-status")
        assert best.label() in text(app, "#layout-detail")
        out = tmp_path / "plan.toml"
        app.query_one("#save-path").value = str(out)
        await pilot.press("ctrl+s")
        await pilot.pause()
        from planner.planfile import plan_objects, read_plan
        cfg, setup, par = plan_objects(read_plan(out))
        assert (cfg.name, par.tp, par.pp, par.dp) == ("llama-3-8b", best.tp, best.pp, best.dp)
        app.query_one("#export-framework").value = "megatron"
        app.query_one("#export-dir").value = str(tmp_path / "megatron")
        app.query_one("#export").press()
        await pilot.pause()
    from export_readers import megatron_layout, megatron_read
    written = (tmp_path / "megatron" / "megatron_args.sh").read_text()
    got = megatron_layout(megatron_read(written))
    assert (got["tp"], got["pp"], got["zero"], got["mbs"]) == (best.tp, best.pp, best.zero, best.mbs)
    assert f"--tp {best.tp} --cp {best.cp} --pp {best.pp}" in written  # the command that reproduces it


async def test_run_screen_replays_a_canned_event_stream():
    app = PlanApp(save_settings=False)
    lines = (FIXTURES / "run_tiny.jsonl").read_text().splitlines()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        for line in lines:
            app.post_message(RunEvent(line, events.parse(line)))
        await pilot.pause()
        state = app.run_state
        assert state.status == "done" and state.done_steps == state.steps == 10
        assert app.query_one("#progress").percentage == 1.0
        assert len(state.losses) == 10
        table = app.query_one("#comparison")
        assert table.row_count == 5  # four memory categories + step time


def test_run_state_is_rebuilt_from_events_alone():
    lines = (FIXTURES / "run_tiny.jsonl").read_text().splitlines()
    state = RunState()
    for line in lines:
        state = state.apply(events.parse(line))
    assert state.comparison[0][0] == "parameters"
    assert RunState().apply(events.Error(message="boom")).status == "error: boom"


@pytest.mark.slow
async def test_run_screen_drives_a_real_cpu_run_of_tiny():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        app.query_one("#run-args").value = "tiny --steps 6 --seq 32 --gbs 4 --mbs 2 --dtype fp32 --device cpu"
        await pilot.press("ctrl+l")
        await app.workers.wait_for_complete()
        await pilot.pause(0.5)
        state = app.run_state
        assert state.status == "done", state.status
        assert app.query_one("#progress").percentage == 1.0
        measured = [row[2] for row in state.comparison]
        assert all(m != "-" for m in measured[:4])  # measured memory shown per category


@pytest.mark.slow
async def test_cancel_stops_every_rank_of_a_four_rank_run():
    import time

    from runtime.launch import _alive

    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        app.query_one("#run-args").value = "tiny --steps 100000 --seq 32 --gbs 4 --dp 4 --device cpu"
        await pilot.press("ctrl+l")
        for _ in range(600):  # until the ranks have built the model and said `start`
            await pilot.pause(0.1)
            if app.run_state.status.startswith("running"):
                break
        assert app.run_state.status.startswith("running"), app.run_state.status
        pids = app._run.processes()
        assert len(pids) >= 1 + 4  # torchrun's agent and its four ranks (each its own session)
        await pilot.press("ctrl+k")
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert not [p for p in pids if _alive(p)]
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.run_state.status == "cancelled", app.run_state.status
        assert app.query_one("#run-log").lines  # the log is kept


@pytest.mark.parametrize(("args", "said"), [
    ("tiny --tp 3 --device cpu", "tp(3)"),  # the layout contract refuses it
    ("tiny --tp abc --device cpu", "'abc' is not a valid int"),  # the option parser does
])
async def test_failed_run_shows_its_error_and_keeps_the_log(args, said):
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        app.query_one("#run-args").value = args
        await pilot.press("ctrl+l")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.run_state.status.startswith("error")
        assert any(said in line for line in app.query_one("#run-log").lines)


async def test_compare_highlights_differences():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        table = app.query_one("#compare-table")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        labels = {str(r[0]) for r in rows}
        assert any("num_kv_heads" in label and "yellow" in label for label in labels)
        assert "num_layers" in labels  # 32 = 32: not highlighted


async def test_settings_remember_the_last_preset(tmp_path):
    app = PlanApp()
    async with app.run_test(size=SIZE) as pilot:
        await choose_preset(pilot, "mistral-7b")
    again = PlanApp()
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.spec.name == "mistral-7b"


async def test_explain_view_shows_the_formula_and_follows_edits():
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.query_one("#explain-pick").value = "kv_bytes_per_token"
        await pilot.pause()  # the request travels up as a message, then the worker starts
        await app.workers.wait_for_complete()
        await pilot.pause()
        shown = text(app, "#explain")
        assert "= 131,072" in shown and "agrees" in shown
        app.spec = app.spec.replace(num_kv_heads=4)
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "= 65,536" in text(app, "#explain")


async def test_bands_follow_the_accelerators_calibration_profile(tmp_path):
    profiles = tmp_path / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "a100-40gb.toml").write_text(
        '[accuracy]\nstep_time_ratio = [0.5, 2.0]\nmemory_ratio = [0.5, 2.0]\n'
        'source = "2 runs here"\nruns = 2\n')
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        # the default accelerator's band: the held-out error of the published H100 runs
        assert "bands: held-out error of 11 published runs on h100" in text(app, "#memory")
        app.choose_hardware("a100-40gb")
        await pilot.pause()
        memory = text(app, "#memory")
        total = app.results.memory_stages[0]["total_bytes"] / 2**30
        assert "bands: 2 runs here" in memory
        assert f"{total:,.1f} ({total / 2:,.1f}-{total * 2:,.1f}) / 40.0" in memory
        await search_on_plan_screen(app, pilot)
        step = app.search_result.best.step_time_s
        detail = text(app, "#layout-detail")
        assert f"step {step:.3f} s ({step / 2:.3f}-{step * 2:.3f})" in detail
        assert "bands: 2 runs here" in detail


async def test_the_plan_screen_and_the_cli_rank_the_same_best_layout(tmp_path):
    """One cluster rule: nodes from the preset's GPUs per node, GPUs and seq from the top bar
    (llama-3-70b on 64 H100s is 8 nodes, not one 64-GPU node)."""
    import subprocess
    import sys

    from helpers import ROOT

    cli = json.loads(subprocess.run(
        [sys.executable, "-m", "tui.cli", "plan", "llama-3-70b", "--hardware", "h100-sxm",
         "--gpus", "64", "--gbs", "256", "--seq", "4096", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    app = PlanApp(preset="llama-3-70b", save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.query_one("#top-gpus").value = "64"
        await pilot.pause()
        await search_on_plan_screen(app, pilot)
        result = app.search_result
        assert (result.cluster.gpus, result.cluster.nodes, result.setup.seq_len) == (64, 8, 4096)
        best = result.best.to_dict(result.world)
        expected = cli["candidates"][0]
        for key in ("tp", "pp", "vpp", "dp", "zero", "sp", "recompute", "mbs", "grad_accum"):
            assert best[key] == expected[key], key
        assert best["step_time_s"] == pytest.approx(expected["step_time_s"], rel=1e-12)
        out = tmp_path / "plan.toml"
        app.query_one("#save-path").value = str(out)
        await pilot.press("ctrl+s")
        await pilot.pause()
    from planner.planfile import read_plan
    plan = read_plan(out)
    assert plan["cluster"] == {"hardware": "h100-sxm", "gpus": 64, "gpus_per_node": 8, "nodes": 8}
    assert (tmp_path / "plan.slurm").exists()


async def test_opening_a_hugging_face_folder_shows_its_exact_parameters(tmp_path):
    import sys

    sys.path.insert(0, str(FIXTURES.parent))
    from hf_models import write_hf_folder

    hf = write_hf_folder("qwen2", tmp_path / "qwen2-small")
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.query_one("#open-path").value = str(tmp_path / "qwen2-small")
        await pilot.click("#open-path")
        await pilot.press("enter")
        await pilot.pause()
        assert f"{sum(p.numel() for p in hf.parameters()):,}" in text(app, "#params-headline")
        assert "qwen2-small" in app.sub_title


async def test_serve_screen_ranks_the_serving_layouts_serve_plan_ranks():
    import subprocess
    import sys

    from helpers import ROOT

    cli = json.loads(subprocess.run(
        [sys.executable, "-m", "tui.cli", "serve-plan", "llama-3-8b", "--hardware", "h100-sxm",
         "--gpus", "8", "--prompt-tokens", "1024", "--output-tokens", "256", "--tpot-ms", "30",
         "--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    app = PlanApp(preset="llama-3-8b", save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.choose_hardware("h100-sxm")
        app.query_one("#top-gpus").value = "8"
        await pilot.pause()
        await pilot.press("f5")
        app.query_one("#serve-search").press()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        best = app.serve_result.candidates[0].to_dict()
        for key in ("tp", "replicas", "weight_bits", "batch", "tokens_per_s", "tpot_s"):
            assert best[key] == cli["candidates"][0][key], key
        assert app.query_one("#serve-table").row_count > 0
        assert "meet the targets" in text(app, "#serve-status")


async def test_the_method_in_the_top_bar_reaches_the_model_and_plan_screens():
    """QLoRA on the model screen is the CLI's ``memory --method qlora`` for the same
    choices; the plan screen then searches adapter layouts (dp x ZeRO only)."""
    import subprocess
    import sys

    from helpers import ROOT

    cli = json.loads(subprocess.run(
        [sys.executable, "-m", "tui.cli", "memory", "llama-3-8b", "--method", "qlora",
         "--double-quant", "--seq", "4096", "--dp", "8", "--zero", "3", "--gbs", "8",
         "--recompute", "selective", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    app = PlanApp(save_settings=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        full = app.results.memory_stages[0]["total_bytes"]
        app.query_one("#method").value = "qlora"
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        stage = app.results.memory_stages[0]
        assert stage["total_bytes"] == cli["per_gpu"]["total_bytes"] < full
        assert stage["frozen_base_bytes"] == cli["per_gpu"]["frozen_base_bytes"] > 0
        assert "frozen" in text(app, "#memory")
        app.query_one("#method").value = "lora"
        await pilot.pause()
        await search_on_plan_screen(app, pilot)
        result = app.search_result
        assert result.setup.adapters.method == "lora"
        assert result.candidates and all(c.tp == c.pp == 1 for c in result.candidates)
