"""Published GPU runs as data, the step times they measured (by each source's own FLOP
count), and the cost model fitted to them: formulas checked against the sources' own
statements, every run file readable and sourced, the shipped preset constants reproducing
the published step times, and a leave-one-out sample within the goal."""

import pytest

from planner.config import ConfigError
from planner.cost import CostModel
from planner.published import PublishedRun, megatron_core_2024_flops, narayanan2021_flops
from planner.published_fit import evaluate, report
from presets import load_cost_model, load_hardware, load_model
from presets.runs import load_runs

RUNS = load_runs()
HELD = load_runs(held_out=True)


def test_narayanan_eq3_gives_the_32_second_gpt3_iteration_their_readme_states():
    # NVIDIA/Megatron-LM README (commit 55ba1f7b): "With full global batch size of 1536 on
    # 1024 A100 GPUs, each iteration takes around 32 seconds resulting in 138 teraFLOPs per GPU"
    flops = narayanan2021_flops(batch=1536, seq=2048, layers=96, hidden=12288, vocab=51200)
    assert flops / (1024 * 138e12) == pytest.approx(32, abs=1)


def test_megatron_core_count_is_narayanans_without_the_recomputed_forward():
    # for a GPT layer (4h GELU MLP, no GQA) Megatron-Core's count is eq. 3 minus the extra
    # layer forward of recomputation (a quarter of the layers' 4 passes), same logit term
    cfg = load_model("gpt3-175b").with_overrides({"V": "51200"})
    B, s = 64, 2048
    ours = narayanan2021_flops(batch=B, seq=s, layers=cfg.num_layers, hidden=cfg.hidden_size,
                               vocab=cfg.vocab_size)
    logits = 6 * B * s * cfg.vocab_size * cfg.hidden_size
    assert megatron_core_2024_flops(cfg, batch=B, seq=s) == pytest.approx(
        (ours - logits) * 3 / 4 + logits)


def test_every_run_file_is_sourced_and_readable():
    assert len(RUNS) >= 21 and len(HELD) >= 2
    names = {r.name.split("-")[0] for r in RUNS}
    assert {"narayanan2021", "megatron", "torchtitan"} <= names
    for r in RUNS + HELD:
        assert r.source and ("arXiv" in r.source or "commit" in r.source), r.name
        assert r.measured_step_time_s() > 0
        assert r.hardware.chip in ("a100", "h100")


def test_a_run_needs_exactly_one_measurement():
    base = dict(name="x", source="s", hardware=load_hardware("h100-sxm"), gpus=8,
                cfg=load_model("tiny"), seq_len=256, global_batch=8)
    with pytest.raises(ConfigError, match="exactly one of"):
        PublishedRun(**base)
    with pytest.raises(ConfigError, match=r"flops_formula\('guess'\)"):
        PublishedRun(**base, tflops_per_gpu=100.0, flops_formula="guess")
    with pytest.raises(ConfigError, match="unknown layout key"):
        PublishedRun(**base, tokens_per_s_per_gpu=1.0, layout={"ep": 2})


@pytest.mark.parametrize("run", [r for r in RUNS if r.gpus <= 1536], ids=lambda r: r.name)
def test_shipped_constants_reproduce_each_published_step_time(run):
    """The hardware presets hold the constants ``validate --published --write`` fitted."""
    row = evaluate(run, load_cost_model(run.hardware.name), held_out=False)
    assert abs(row.error) <= 0.10, (run.name, row.error)
    assert row.best is not None and row.best.step_time_s <= row.predicted_step_time_s * (1 + 1e-9)


def test_validate_report_on_a_sample_meets_the_goal():
    """A fixed sample (four A100 rows of Narayanan et al.), each predicted by constants fitted
    to the other three (``llmplan validate --published`` holds out every run of both chips);
    a run of a chip with no fitted runs is listed as not evaluable, not guessed."""
    sample = [r for r in RUNS if r.name in {"narayanan2021-gpt-1.7b", "narayanan2021-gpt-18.4b",
                                            "narayanan2021-gpt-145.6b", "narayanan2021-gpt-1008b"}]
    h100 = [r for r in HELD if r.hardware.chip == "h100"][:1]
    data = report(sample, h100, CostModel())
    rows = data["runs"]
    assert len(rows) == 4 and all(r["held_out"] for r in rows)
    for r in rows:
        assert r["error"] == pytest.approx(  # the one sign convention: planner.accuracy
            (r["measured_step_time_s"] - r["predicted_step_time_s"]) / r["predicted_step_time_s"])
        assert r["planner_best_faster"]
    s = data["summary"]
    assert s["median_abs_error"] <= 0.10 and s["worst_abs_error"] <= 0.25, s
    assert data["held_out_set"]["not_evaluable"] == [
        {"name": h100[0].name, "reason": "no fitted runs on h100"}]
    assert set(data["chips"]["a100"]["constants"]) >= {"matmul_half_dim", "link_efficiency"}
    assert data["chips"]["a100"]["constants"]["matmul_efficiency"] == pytest.approx(271.2 / 312)
