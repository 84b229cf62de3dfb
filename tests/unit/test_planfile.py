"""Plan files round-trip: every field, nested tables after scalars, infinities; the Slurm
script a multi-node plan comes with says what it must."""

import json
import math

from typer.testing import CliRunner

from planner.setup import Parallel, TrainSetup
from planner.cost import cluster_of
from planner.planfile import candidate_plan, plan_objects, read_plan, slurm_script, write_plan
from planner.search import search
from planner.tomlio import dumps, read_toml
from presets import load_hardware, load_model
from tui.cli import build

runner = CliRunner()


def every_field_plan():
    cfg = load_model("tiny")
    result = search(cfg, cluster_of(load_hardware("cpu"), gpus=4),
                    TrainSetup(seq_len=64, dtype="fp32", recipe="runtime", optimizer="sgd_momentum",
                               attention="eager", dropout=True), global_batch=8)
    plan = candidate_plan(cfg, result, result.best)
    # what a reader must survive: a scalar after a table, a table after an array of tables,
    # infinities, an empty list, nesting three deep
    plan["prediction"]["band"] = {"low": 0.0, "high": math.inf, "deep": {"below": -math.inf}}
    plan["prediction"]["after_the_tables"] = 1.5
    plan["prediction"]["nothing"] = []
    plan["notes"] = "a scalar written after every table"
    return cfg, plan


def test_a_plan_with_every_field_reads_back_equal(tmp_path):
    cfg, plan = every_field_plan()
    path = tmp_path / "plan.toml"
    write_plan(path, plan)
    back = read_plan(path)
    assert back == plan
    assert back["prediction"]["band"]["high"] == math.inf
    assert back["notes"] == plan["notes"] and "notes" not in back["prediction"]
    got_cfg, setup, par = plan_objects(back)
    assert got_cfg == cfg
    assert (setup.optimizer, setup.attention, setup.dropout) == ("sgd_momentum", "eager", True)
    # every field; adapters, absent here, are a sub-table (the next test)
    assert set(back["setup"]) == set(TrainSetup.__dataclass_fields__) - {"adapters"}
    assert set(back["layout"]) == set(Parallel.__dataclass_fields__)


def test_a_plan_with_adapters_reads_back_equal(tmp_path):
    from planner.finetune import Adapters

    cfg = load_model("tiny")
    adapters = Adapters(method="qlora", rank=8, alpha=16.0, targets=("q_proj", "v_proj"),
                        dropout=0.05, base_bits=4, double_quant=True)
    result = search(cfg, cluster_of(load_hardware("cpu"), gpus=4),
                    TrainSetup(seq_len=64, adapters=adapters), global_batch=8, runtime="any")
    path = tmp_path / "plan.toml"
    write_plan(path, candidate_plan(cfg, result, result.best))
    _, setup, _ = plan_objects(read_plan(path))
    assert setup.adapters == adapters
    bad = read_plan(path)
    bad["setup"]["adapters"]["targets"] = "q_proj"
    import pytest
    from planner.config import ConfigError
    with pytest.raises(ConfigError, match=r"\[setup.adapters\]: targets\('q_proj'\) must be a "
                                          "list of names"):
        plan_objects(bad)


def test_launch_dry_run_shows_the_plans_fields_unchanged(tmp_path):
    _, plan = every_field_plan()
    path = tmp_path / "plan.toml"
    write_plan(path, plan)
    out = runner.invoke(build(["launch"]), ["launch", str(path), "--device", "cpu", "--dry-run",
                                            "--json", "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["layout"] == plan["layout"]
    assert shown["setup"] == plan["setup"]
    run = read_plan(tmp_path / "run" / "run.toml")
    assert run["prediction"] == plan["prediction"]  # the run compares against the same figures
    assert run["cluster"]["planned_gpus_per_node"] == plan["cluster"]["gpus_per_node"]


def test_none_is_left_out_and_nan_survives():
    import tomllib

    back = tomllib.loads(dumps({"a": None, "t": {"x": None, "y": float("nan")}}))
    assert "a" not in back and "x" not in back["t"] and math.isnan(back["t"]["y"])


def test_the_slurm_script_runs_one_agent_per_node_with_c10d(tmp_path):
    cfg = load_model("tiny")
    result = search(cfg, cluster_of(load_hardware("h100-sxm"), gpus=16), TrainSetup(seq_len=64),
                    global_batch=64)
    plan = candidate_plan(cfg, result, result.best)
    assert plan["cluster"]["nodes"] == 2
    written = write_plan(tmp_path / "big.toml", plan)
    assert [p.name for p in written] == ["big.toml", "big.slurm"]
    script = (tmp_path / "big.slurm").read_text()
    assert script == slurm_script(plan, "big.toml")
    for needle in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                   "--nnodes=2 --nproc-per-node=8", "--rdzv-backend=c10d",
                   '--rdzv-endpoint="$head_node:29500"', "-m runtime.train --plan big.toml"):
        assert needle in script, needle
    assert read_toml(tmp_path / "big.toml")["cluster"]["gpus"] == 16


def test_a_plan_with_context_and_expert_parallelism_reads_back_and_launches_unchanged(tmp_path):
    """[layout] carries cp and ep; a plan written before them reads as cp = ep = 1."""
    from planner.planfile import plan_dict

    cfg = load_model("tiny-moe")
    setup = TrainSetup(seq_len=32, micro_batch=1, grad_accum=2, dtype="fp32", recipe="runtime")
    par = Parallel(dp=2, ep=2, cp=2, zero=1)
    plan = plan_dict(cfg=cfg, setup=setup, par=par, hardware="cpu", gpus=par.world,
                     gpus_per_node=par.world, prediction={})
    path = tmp_path / "plan.toml"
    write_plan(path, plan)
    back = read_plan(path)
    assert back == plan and (back["layout"]["cp"], back["layout"]["ep"]) == (2, 2)
    assert plan_objects(back)[2] == par
    before = {**back, "layout": {k: v for k, v in back["layout"].items() if k not in ("cp", "ep")}}
    assert plan_objects(before)[2] == Parallel(dp=2, zero=1)
    out = runner.invoke(build(["launch"]), ["launch", str(path), "--device", "cpu", "--dry-run",
                                            "--json", "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["layout"] == plan["layout"]
    assert "--nproc-per-node=4" in json.loads(out.stdout)["command"]
    run = read_plan(tmp_path / "run" / "run.toml")
    assert (run["layout"]["cp"], run["layout"]["ep"]) == (2, 2)
