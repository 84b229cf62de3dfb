"""Predicted vs measured memory per category, fault + resume, and launch errors."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, launch

from planner.memory import CATEGORIES


@pytest.mark.parametrize("layout", [
    (),
    ("--dp", "2", "--zero", "3"),
    ("--dp", "2", "--zero", "2", "--optimizer", "sgd_momentum"),
    ("--dp", "2", "--zero", "1"),
    ("--pp", "2"),
    pytest.param(("--pp", "2", "--vpp", "2", "--gbs", "8"), marks=pytest.mark.extended),
    ("--tp", "2", "--sp"),
    ("--recompute", "selective"),
    ("--recompute", "full"),
    pytest.param(("--optimizer", "adafactor"), marks=pytest.mark.extended),
    pytest.param(("--set", "num_experts=4", "--set", "experts_per_token=2", "--tp", "2"),
                 marks=pytest.mark.extended),
], ids=["single", "dp2-zero3", "dp2-zero2-sgd", "dp2-zero1-sharded-states", "pp2",
        "pp2-interleaved", "tp2-sp", "selective", "full", "adafactor", "moe-tp2"])
def test_measured_memory_is_the_runtime_recipe(layout):
    """Parameters, gradients and optimizer states are what the runtime allocates to the
    byte (per-tensor shards, step counters, Adafactor's factors); saved activations within
    5% (what saved-tensor hooks see: the layers' kept tensors and the logits)."""
    events, _ = launch("tiny", "--steps", "3", "--seq", "64", "--gbs", "4", "--mbs", "1",
                       "--dtype", "fp32", *layout)
    done = next(e for e in events if e["event"] == "done")
    for rank in done["ranks"]:
        for cat in CATEGORIES:
            predicted = rank[f"predicted_{cat}_bytes"]
            measured = rank[f"measured_{cat}_bytes"]
            if cat == "activations":
                assert measured == pytest.approx(predicted, rel=0.05), (rank["rank"], cat)
            else:
                assert measured == predicted, (rank["rank"], cat, predicted, measured)
    start = next(e for e in events if e["event"] == "start")
    assert start["predicted_stages"] and start["predicted_step_time_s"] > 0
    band = done["predicted_step_time_band_s"]  # the reference band: no profile in tests
    assert band["low"] == pytest.approx(0.75 * done["predicted_step_time_s"])
    assert band["high"] == pytest.approx(1.25 * done["predicted_step_time_s"])


def test_a_killed_rank_ends_the_run_and_resume_continues_exactly(tmp_path):
    common = ("tiny", "--steps", "12", "--seq", "32", "--gbs", "4", "--mbs", "1",
              "--dp", "2", "--zero", "3", "--dtype", "fp32", "--ckpt-every", "5")
    straight, _ = launch(*common, "--ckpt-dir", str(tmp_path / "a"))
    crashed, proc = launch(*common, "--ckpt-dir", str(tmp_path / "b"), check=False,
                           env={"LLMPLAN_FAIL_AT_STEP": "8", "LLMPLAN_FAIL_RANK": "1"})
    assert proc.returncode != 0
    assert crashed[-1]["event"] == "error" and "rank" in crashed[-1]["message"]
    assert [e["step"] for e in crashed if e["event"] == "checkpoint"] == [5]
    assert (tmp_path / "b" / "latest").read_text().strip() == "5"
    resumed, _ = launch(*common, "--ckpt-dir", str(tmp_path / "b"), "--resume")
    start = next(e for e in resumed if e["event"] == "start")
    assert start["start_step"] == 5
    after = {e["step"]: e for e in resumed if e["event"] == "step"}
    before = {e["step"]: e for e in straight if e["event"] == "step"}
    assert sorted(after) == list(range(6, 13))
    for step, ev in after.items():
        assert ev["loss"] == pytest.approx(before[step]["loss"], rel=1e-5)
        assert ev["grad_norm"] == pytest.approx(before[step]["grad_norm"], rel=1e-5)


def test_a_rank_dying_after_done_is_a_warning_not_a_failed_run():
    events, proc = launch("tiny", "--steps", "3", "--seq", "32", "--gbs", "4", "--dp", "2",
                          env={"LLMPLAN_FAIL_AT_STEP": "-1", "LLMPLAN_FAIL_RANK": "1"},
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert events[-1]["event"] == "done"
    assert "after the run finished" in proc.stderr


@pytest.mark.extended  # the suite resumes ZeRO-1 into tp2 + dp2 (test_zero1_shards_...)
def test_resume_into_a_different_layout(tmp_path):
    """DCP reshards: a checkpoint saved by dp2 ZeRO-3 loads into tp2 + pp2."""
    launch("tiny", "--steps", "6", "--seq", "32", "--gbs", "4", "--mbs", "1", "--dp", "2",
           "--zero", "3", "--dtype", "fp32", "--ckpt-dir", str(tmp_path), "--ckpt-every", "4",
           check=False, env={"LLMPLAN_FAIL_AT_STEP": "5", "LLMPLAN_FAIL_RANK": "0"})
    assert (tmp_path / "latest").read_text().strip() == "4"
    straight, _ = launch("tiny", "--steps", "6", "--seq", "32", "--gbs", "4", "--mbs", "1",
                         "--dtype", "fp32")
    resumed, _ = launch("tiny", "--steps", "6", "--seq", "32", "--gbs", "4", "--mbs", "1",
                        "--tp", "2", "--pp", "2", "--dtype", "fp32", "--ckpt-dir", str(tmp_path),
                        "--resume")
    ref = {e["step"]: e["loss"] for e in straight if e["event"] == "step"}
    got = {e["step"]: e["loss"] for e in resumed if e["event"] == "step"}
    assert sorted(got) == [5, 6]  # resumed after the step-4 checkpoint
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-4)


@pytest.mark.parametrize(("args", "needle"), [
    (("--tp", "3"), "tp(3) does not divide query heads(4)"),
    (("--pp", "3"), "pp(3) x vpp(1) = 3 does not divide layers(4)"),
    (("--device", "cuda", "--dp", "2"), "GPU"),
    (("--seq", "4096"), "exceeds the model's max context(256)"),
])
def test_invalid_layouts_fail_before_any_process_starts(args, needle):
    cmd = [sys.executable, "-m", "tui.cli", "launch", "tiny", "--dry-run", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_dry_run_prints_the_torchrun_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tui.cli", "launch", "tiny", "--tp", "2",
                          "--dp", "2", "--device", "cpu", "--run-dir", str(tmp_path),
                          "--dry-run", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    data = json.loads(out.stdout)
    assert data["world"] == 4
    assert "--standalone" in data["command"] and "--nproc-per-node=4" in data["command"]
    assert (tmp_path / "run.toml").exists()


def test_a_model_toml_file_launches_like_a_preset(tmp_path):
    model = tmp_path / "mine.toml"
    model.write_text((ROOT / "presets" / "models" / "tiny.toml").read_text().replace(
        'name = "tiny"', 'name = "mine"'))
    out = subprocess.run([sys.executable, "-m", "tui.cli", "launch", str(model), "--tp", "2",
                          "--run-dir", str(tmp_path / "run"), "--dry-run", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["world"] == 2
    assert 'name = "mine"' in (tmp_path / "run" / "run.toml").read_text()


def test_training_on_a_local_text_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    events, _ = launch("tiny", "--steps", "8", "--seq", "32", "--gbs", "4", "--lr", "3e-3",
                       "--data", str(corpus), "--dtype", "fp32")
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 8 and losses[-1] < losses[0]  # bytes of real text are learnable
    # a missing file is refused before any process starts: one line, exit 2, no events
    bad, proc = launch("tiny", "--steps", "1", "--data", str(tmp_path / "missing.txt"), check=False)
    assert proc.returncode == 2 and not bad
    assert proc.stderr.strip().splitlines() == [f"llmplan: error: --data {tmp_path / 'missing.txt'}: no readable file there"]


def test_a_saved_plan_launches_unchanged(tmp_path):
    plan = tmp_path / "plan.toml"
    out = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "tiny", "--hardware", "cpu",
                          "--gpus", "2", "--gbs", "4", "--seq", "64", "--out", str(plan), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    best = json.loads(out.stdout)["candidates"][0]
    events, _ = launch(str(plan), "--steps", "2")
    start = next(e for e in events if e["event"] == "start")
    assert start["layout"]["tp"] == best["tp"] and start["layout"]["dp"] == best["dp"]
    assert start["micro_batch"] == best["mbs"] and events[-1]["event"] == "done"


def test_zero1_shards_optimizer_states_and_its_checkpoints_reshard(tmp_path):
    """ZeRO-1 trains like one process and its checkpoint (saved as ordinary per-parameter
    state) resumes in ZeRO-1 and in tp2 + dp2 (its 1/dp optimizer bytes: the runtime memory
    test's dp2-zero1-sharded-states case)."""
    common = ("tiny", "--steps", "6", "--seq", "32", "--gbs", "4", "--mbs", "1", "--dtype", "fp32")
    straight, _ = launch(*common)
    zero1 = ("--dp", "2", "--zero", "1")
    first, _ = launch(*common, *zero1, "--ckpt-dir", str(tmp_path), "--ckpt-every", "4",
                      check=False, env={"LLMPLAN_FAIL_AT_STEP": "5", "LLMPLAN_FAIL_RANK": "0"})
    assert (tmp_path / "latest").read_text().strip() == "4"
    before = {e["step"]: e for e in straight if e["event"] == "step"}
    for step, ev in {e["step"]: e for e in first if e["event"] == "step"}.items():
        assert ev["loss"] == pytest.approx(before[step]["loss"], rel=1e-5)
        assert ev["grad_norm"] == pytest.approx(before[step]["grad_norm"], rel=1e-5)
    for layout in (zero1, ("--tp", "2", "--dp", "2", "--sp")):
        resumed, _ = launch(*common, *layout, "--ckpt-dir", str(tmp_path), "--resume")
        for step, ev in {e["step"]: e for e in resumed if e["event"] == "step"}.items():
            assert step > 4
            assert ev["loss"] == pytest.approx(before[step]["loss"], rel=1e-4), layout
            assert ev["grad_norm"] == pytest.approx(before[step]["grad_norm"], rel=1e-4), layout
