"""FLOPs conventions side by side, causal averaging, recompute, inference."""

import pytest

from planner.flops import (FlopConventions, attended_keys, decode_flops_per_token,
                           flops_report, forward_flops_per_token, prefill_flops)
from presets import load_model


def test_llama3_8b_conventions_match_the_reference_table():
    # 6N (Kaplan et al. 2020) 48.2, PaLM App. B 57.9, Megatron causal (Narayanan et al.
    # 2021 eq. 3 with the causal half) 51.5 GFLOP per token, each by hand from the shape.
    rep = flops_report(load_model("llama-3-8b"), 8192)
    assert rep.six_n_flops_per_token / 1e9 == pytest.approx(48.2, abs=0.05)
    assert rep.palm_flops_per_token / 1e9 == pytest.approx(57.9, abs=0.05)
    assert rep.train_flops_per_token / 1e9 == pytest.approx(51.5, abs=0.05)
    # Non-causal exact equals PaLM's attention term with the LM head counted.
    nc = flops_report(load_model("llama-3-8b"), 8192, FlopConventions(causal=False))
    assert nc.train_flops_per_token == pytest.approx(rep.palm_flops_per_token, rel=1e-4)


def test_causal_key_average_is_exact():
    s = 7
    assert attended_keys(s, causal=True) == sum(range(1, s + 1)) / s
    assert attended_keys(s, causal=True, window=3) == sum(min(i, 3) for i in range(1, s + 1)) / s
    assert attended_keys(s, causal=False) == s


def test_recompute_counts_in_hfu_only():
    cfg = load_model("llama-2-7b")
    none = flops_report(cfg, 4096, recompute="none")
    full = flops_report(cfg, 4096, recompute="full")
    sel = flops_report(cfg, 4096, recompute="selective")
    assert none.train_flops_per_token == full.train_flops_per_token == sel.train_flops_per_token
    # Full recompute: 4 layer forwards instead of 3 (Korthikanti et al. 2022 §5).
    fwd = none.forward
    assert full.hardware_flops_per_token == pytest.approx(4 * fwd.layers + 3 * fwd.lm_head)
    assert none.hardware_flops_per_token < sel.hardware_flops_per_token < full.hardware_flops_per_token


def test_moe_flops_scale_with_k_not_e():
    cfg = load_model("mixtral-8x7b")
    top2 = forward_flops_per_token(cfg, 4096).mlp
    top1 = forward_flops_per_token(cfg.replace(experts_per_token=1), 4096).mlp
    assert top2 == pytest.approx(2 * top1)
    more_experts = forward_flops_per_token(cfg.replace(num_experts=16), 4096)
    assert more_experts.mlp == top2  # experts that are not run cost nothing


def test_gpt3_training_compute_is_3_14e23():
    # Brown et al. 2020, Table D.1: 3.14e23 FLOPs for 175B on 300B tokens (6ND convention).
    rep = flops_report(load_model("gpt3-175b"), 2048)
    assert rep.six_n_flops_per_token * 300e9 == pytest.approx(3.14e23, rel=0.01)


def test_inference_prefill_and_decode():
    cfg = load_model("llama-3-8b")
    ctx = 1000
    prefill = prefill_flops(cfg, ctx)
    per_token = forward_flops_per_token(cfg, ctx, FlopConventions(causal=True)).total
    assert prefill == pytest.approx(per_token * ctx)
    # Decoding token ctx+1 attends ctx+1 keys; summing decode steps from 0 reproduces prefill.
    summed = sum(decode_flops_per_token(cfg, c) for c in range(ctx))
    assert summed == pytest.approx(prefill, rel=1e-9)


def test_palm_540b_mfu_reproduces_the_paper():
    # Chowdhery et al. 2022, App. B: 238.3K tokens/s on 6144 TPU v4 (275 TFLOP/s bf16 each)
    # at s = 2048 is 46.2% MFU with 6N + 12LHQT model FLOPs per token.
    rep = flops_report(load_model("palm-540b"), 2048)
    mfu = 238.3e3 * rep.palm_flops_per_token / (6144 * 275e12)
    assert mfu == pytest.approx(0.462, abs=0.001)
