"""Serving plans: the decode roofline against the weights' own bytes, the candidate fields
scripts rely on, what limits a batch, and bad input as one line."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT
from planner.config import ConfigError
from planner.serving import ServeJob, quantised_weight_bytes, serve_plan, weight_bytes_per_gpu
from presets import load_cost_model, load_hardware, load_model

LLAMA3_8B_PARAMS = 8_030_261_248  # Meta-Llama-3-8B, transformers' sum(p.numel())
H100 = load_hardware("h100-sxm")


def serve(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "serve-plan", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_llama3_8b_on_8_h100_candidates_and_the_batch_1_roofline():
    data = json.loads(serve("llama-3-8b", "--hardware", "h100-sxm", "--gpus", "8",
                            "--prompt-tokens", "1024", "--output-tokens", "256", "--tpot-ms",
                            "30", "--top", "500", "--json").stdout)
    cands = data["candidates"]
    assert cands and all(c["tpot_s"] <= 0.030 for c in cands)
    keys = {"tp", "replicas", "batch", "ttft_s", "tpot_s", "tokens_per_s", "max_concurrency",
            "weights_bytes_per_gpu", "kv_bytes_per_gpu"}
    assert keys <= set(cands[0])
    assert all(c["tp"] * c["replicas"] == 8 for c in cands)
    assert [c["tokens_per_s"] for c in cands] == sorted((c["tokens_per_s"] for c in cands), reverse=True)
    one = next(c for c in cands if c["tp"] == 1 and c["batch"] == 1 and c["weight_bits"] == 16)
    roofline = 2 * LLAMA3_8B_PARAMS / (3350e9)  # bf16 weights over the H100's HBM3 bandwidth
    assert one["tpot_roofline_s"] == pytest.approx(roofline, rel=0.10)
    assert one["weights_bytes_per_gpu"] == 2 * LLAMA3_8B_PARAMS
    assert one["tpot_s"] > one["tpot_roofline_s"]  # achieved bandwidth is below peak


def test_quantised_weights_shrink_only_the_linears():
    cfg = load_model("llama-3-8b")
    full = 2 * LLAMA3_8B_PARAMS
    embedding = 2 * cfg.vocab_size * cfg.hidden_size  # stays bf16 (the untied head is a linear)
    int8, int4 = quantised_weight_bytes(cfg, 8), quantised_weight_bytes(cfg, 4)
    assert embedding + (full - embedding) / 2 < int8 < embedding + (full - embedding) / 2 * 1.01
    assert embedding + (full - embedding) / 4 < int4 < embedding + (full - embedding) / 4 * 1.07
    assert weight_bytes_per_gpu(cfg, weight_bits=8, tp=2) == pytest.approx(int8 / 2, rel=0.01)


def test_a_larger_batch_trades_latency_for_throughput_until_memory_runs_out():
    cfg = load_model("llama-3-8b")
    result = serve_plan(cfg, H100, gpus=1, job=ServeJob(prompt_tokens=1024, output_tokens=256),
                        weight_bits=(16,), model=load_cost_model("h100-sxm"))
    by_batch = sorted(result.candidates, key=lambda c: c.batch)
    assert [c.batch for c in by_batch][:3] == [1, 2, 4]
    for a, b in zip(by_batch, by_batch[1:]):
        assert b.tpot_s > a.tpot_s and b.tokens_per_s > a.tokens_per_s
    top = by_batch[-1]
    assert top.batch == top.max_concurrency  # the largest batch is what fits beside the weights


def test_targets_no_layout_meets_report_the_closest_and_what_it_misses():
    proc = serve("llama-3-70b", "--gpus", "8", "--ttft-ms", "5", "--tpot-ms", "2", "--json",
                 check=False)
    assert proc.returncode == 1  # no answer (not bad input)
    data = json.loads(proc.stdout)
    assert data["candidates"] == []
    closest = data["closest"]
    assert any(m.startswith("tpot") for m in closest["misses"])


@pytest.mark.parametrize(("args", "needle"), [
    (["--weight-bits", "3"], "--weight-bits(3) is not one of 16, 8, 4"),
    (["--rate", "2", "--concurrency", "8"], "give one of --rate or --concurrency, not both"),
    (["--kv-dtype", "fp4"], "--kv-dtype('fp4') is not one of bf16, fp8, int8"),
])
def test_bad_input_is_one_line(args, needle):
    proc = serve("llama-3-8b", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"llmplan: error: {needle}"]


def test_explain_shows_the_decode_roofline_and_agrees():
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "explain", "decode_roofline_s",
                           "llama-3-8b", "--hardware", "h100-sxm", "--seq", "1152", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    data = json.loads(proc.stdout)
    assert data["matches"] and "B_hbm" in data["formula"]
    assert data["result"] == pytest.approx(2 * LLAMA3_8B_PARAMS / 3350e9, rel=0.02)


def test_serve_job_validation():
    with pytest.raises(ConfigError, match=r"prompt-tokens\(0\) must be a positive integer"):
        ServeJob(prompt_tokens=0, output_tokens=8)
