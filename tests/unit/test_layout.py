"""The layout contract: each rule names its numbers, nothing is rewritten, and `plan`,
`memory` and `launch` all ask the same rules."""

import json

import pytest
from typer.testing import CliRunner

from planner import layout
from planner.config import ConfigError
from planner.setup import Parallel, TrainSetup
from presets import load_model
from tui.cli import build

app = build()

runner = CliRunner()
SETUP = TrainSetup(seq_len=64, micro_batch=1, grad_accum=4, dtype="fp32", recipe="runtime")


def keys(cfg, par, setup=SETUP, runtime="llmplan"):
    return [p.key for p in layout.refusals(layout.problems(cfg, setup, par), runtime)]


def test_a_schedule_is_never_rewritten():
    par = Parallel(pp=2, vpp=2, schedule="gpipe")
    assert par.schedule == "gpipe"  # kept as asked ...
    assert keys(load_model("tiny"), par) == ["schedule"]  # ... and refused by the contract
    assert Parallel(pp=2, vpp=2).schedule == "interleaved"  # the default for virtual stages
    assert Parallel(pp=2).schedule == "1f1b"


@pytest.mark.parametrize(("model", "par", "key", "numbers"), [
    ("tiny", Parallel(tp=8), "tp_divisibility", "tp(8) does not divide query heads(4)"),
    ("tiny:vocab_size=251", Parallel(tp=2), "runtime_tp_vocab", "tp(2) does not divide vocab(251)"),
    ("tiny", Parallel(pp=3), "pp_layers", "pp(3) x vpp(1) = 3 does not divide layers(4)"),
    ("tiny", Parallel(vpp=2), "vpp_without_pp", "vpp(2) needs pp > 1"),
    ("tiny", Parallel(sp=True), "sp_without_tp", "sequence parallel needs tp > 1"),
    ("tiny", Parallel(zero=3), "zero_without_dp", "zero(3) needs dp > 1"),
    ("tiny", Parallel(pp=2, vpp=2, schedule="1f1b"), "schedule", "schedule(1f1b) has no virtual stages"),
])
def test_each_rule_names_its_numbers(model, par, key, numbers):
    name, _, change = model.partition(":")
    cfg = load_model(name, dict([change.split("=")]) if change else None)
    found = layout.problems(cfg, SETUP, par)
    hit = [p for p in found if p.key == key]
    assert hit and numbers in hit[0].message
    with pytest.raises(ConfigError, match=numbers.replace("(", r"\(").replace(")", r"\)")):
        layout.check(cfg, SETUP, par)


def test_tp_wider_than_the_kv_heads_is_run_by_replicating_them():
    cfg = load_model("tiny")  # 2 kv heads
    assert keys(cfg, Parallel(tp=4)) == []
    assert keys(load_model("tiny-falcon"), Parallel(tp=2)) == []  # multi-query


def test_pipeline_micro_batch_rules():
    cfg = load_model("tiny")
    one_f_one_b = TrainSetup(seq_len=64, micro_batch=1, grad_accum=1)
    assert keys(cfg, Parallel(pp=2), one_f_one_b) == ["runtime_pp_microbatches"]
    assert keys(cfg, Parallel(pp=2), one_f_one_b, runtime="any") == []  # Megatron runs m < p
    assert keys(cfg, Parallel(pp=2, schedule="gpipe"), one_f_one_b) == []
    three = TrainSetup(seq_len=64, micro_batch=1, grad_accum=3)
    assert keys(cfg, Parallel(pp=2, vpp=2), three, runtime="any") == ["interleaved_microbatches"]


def test_runtime_only_problems_are_kept_by_any_and_marked():
    from planner.cost import Cluster
    from planner.search import search
    from presets import load_hardware

    cfg = load_model("tiny")
    cluster = Cluster(hardware=load_hardware("cpu"), gpus=8)
    setup = TrainSetup(seq_len=64)
    ours = search(cfg, cluster, setup, global_batch=16)
    every = search(cfg, cluster, setup, global_batch=16, runtime="any")
    assert all(c.launchable for c in ours.candidates)
    marked = [c for c in every.candidates if not c.launchable]
    assert marked and all("1f1b needs micro-batches" in c.not_launchable[0] for c in marked)
    assert len(every.candidates) == len(ours.candidates) + len(marked)
    assert ours.rejected["runtime_pp_microbatches"] > 0
    assert every.rejected["runtime_pp_microbatches"] == 0


@pytest.mark.parametrize(("args", "numbers"), [
    (["--pp", "2", "--vpp", "2", "--schedule", "gpipe"], "schedule(gpipe) has no virtual stages"),
    (["--tp", "2", "--set", "V=251"], "tp(2) does not divide vocab(251)"),
    (["--sp"], "sequence parallel needs tp > 1"),
    (["--zero", "2"], "zero(2) needs dp > 1"),
    (["--pp", "2", "--gbs", "2", "--mbs", "2"], "1f1b needs micro-batches(1) >= pp(2)"),
    (["--pp", "3"], "pp(3) x vpp(1) = 3 does not divide layers(4)"),
    (["--optimizer", "adam8bit"], "optimizer(adam8bit)"),
    # every option, not only the layout: checked before any process starts
    (["--mbs", "0"], "--mbs(0) must be an integer >= 1"),
    (["--lr", "nan"], "--lr(nan) must be a finite number > 0"),
    (["--steps", "-5"], "--steps(-5) must be an integer >= 1"),
    (["--ckpt-every", "-1"], "--ckpt-every(-1) must be an integer >= 0"),
    (["--data", "/no/such/file.txt"], "--data /no/such/file.txt: no readable file there"),
    (["--resume", "--ckpt-dir", "/no/such/ckpt"], "--resume: no checkpoint in /no/such/ckpt"),
    (["--ckpt-every", "5"], "--ckpt-every 5 needs --ckpt-dir"),
    (["--dtype", "fp16"], "--dtype 'fp16': llmplan's runtime trains in fp32 or bf16"),
])
def test_launch_refuses_each_rule_in_one_line_before_anything_starts(args, numbers, tmp_path):
    result = runner.invoke(app, ["launch", "tiny", "--device", "cpu", "--run-dir",
                                 str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and numbers in lines[0]
    assert not (tmp_path / "run.toml").exists()  # nothing was written, nothing started


def test_launch_chooses_a_valid_default_batch_for_any_pipeline(tmp_path):
    result = runner.invoke(app, ["launch", "tiny", "--tp", "2", "--pp", "2", "--dp", "2",
                                 "--device", "cpu", "--dry-run", "--json", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    setup = json.loads(result.output)["setup"]
    assert setup["grad_accum"] == 2 and setup["micro_batch"] == 1  # pp micro-batches per flush


def test_a_plan_launches_unchanged_and_overrides_are_said(tmp_path):
    plan = tmp_path / "p.toml"
    result = runner.invoke(app, ["plan", "tiny", "--hardware", "cpu", "--gpus", "4", "--gbs", "8",
                                 "--seq", "64", "--optimizer", "adafactor", "--recipe", "fp32",
                                 "--dtype", "fp32", "--out", str(plan)])
    assert result.exit_code == 0, result.output
    import tomllib
    written = tomllib.loads(plan.read_text())
    result = runner.invoke(app, ["launch", str(plan), "--device", "cpu", "--dry-run", "--json",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["layout"] == written["layout"]
    assert shown["setup"] == written["setup"]
    assert shown["setup"]["optimizer"] == "adafactor" and shown["setup"]["recipe"] == "fp32"
    assert shown["cluster"]["planned_gpus_per_node"] == written["cluster"]["gpus_per_node"]
    again = runner.invoke(app, ["launch", str(plan), "--device", "cpu", "--dry-run", "--json",
                                "--run-dir", str(tmp_path / "run2"), "--optimizer", "sgd_momentum"])
    assert again.exit_code == 0
    assert "overriding the plan's optimizer(adafactor) with sgd_momentum" in again.stderr


def test_a_flag_on_a_plan_keeps_the_plans_global_batch(tmp_path):
    plan = tmp_path / "p.toml"
    assert runner.invoke(app, ["plan", "tiny", "--hardware", "cpu", "--gpus", "4", "--gbs", "8",
                               "--seq", "64", "--out", str(plan)]).exit_code == 0
    result = runner.invoke(app, ["launch", str(plan), "--dp", "1", "--tp", "1", "--pp", "1",
                                 "--zero", "0", "--no-sp", "--mbs", "2", "--device", "cpu",
                                 "--dry-run", "--json", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    setup = json.loads(result.stdout)["setup"]
    assert "overriding the plan's dp" in result.stderr
    assert setup["micro_batch"] * setup["grad_accum"] == 8  # 1 rank x 2 x 4: still 8 sequences
    bad = runner.invoke(app, ["launch", str(plan), "--dp", "1", "--tp", "1", "--pp", "1",
                              "--zero", "0", "--no-sp", "--mbs", "3", "--device", "cpu",
                              "--dry-run", "--run-dir", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "gbs(8) is not a multiple of mbs(3) x dp(1) = 3" in bad.output


@pytest.mark.parametrize(("args", "numbers"), [
    (["--max-new-tokens", "0"], "--max-new-tokens(0) must be an integer >= 1"),
    (["--top-p", "1.5"], "--top-p(1.5) must be a finite number > 0 and <= 1"),
    (["--temperature", "-1"], "--temperature(-1.0) must be a finite number >= 0"),
    (["--tp", "3"], "tp(3) does not divide query heads(4)"),
])
def test_generate_refuses_bad_options_before_anything_starts(args, numbers, tmp_path):
    result = runner.invoke(build(["generate"]), ["generate", "tiny", "--device", "cpu",
                                                 "--run-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and numbers in lines[0]
    assert not (tmp_path / "generate.toml").exists()
