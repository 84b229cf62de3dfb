"""KV cache: published per-token sizes, GQA/MQA, TP replication, sliding window, fit."""

import pytest

from planner.config import ConfigError
from planner.kv import kv_bytes_per_token, kv_report, max_batch, max_context
from presets import load_hardware, load_model


@pytest.mark.parametrize(("name", "per_token"), [
    ("llama-2-7b", 512 * 1024),   # MHA: 2 * 32 layers * 32 heads * 128 * 2 bytes
    ("llama-3-8b", 128 * 1024),   # GQA 8 kv heads
    ("falcon-7b", 8 * 1024),      # MQA: one kv head of 64
])
def test_bytes_per_token_bf16(name, per_token):
    assert kv_bytes_per_token(load_model(name)) == per_token


def test_llama3_8b_8k_batch_1_is_one_gib():
    assert kv_report(load_model("llama-3-8b"), seq_len=8192).total_bytes == 2**30


def test_dtypes_and_tp():
    cfg = load_model("llama-3-8b")
    assert kv_bytes_per_token(cfg, "int4") == 128 * 1024 // 4
    assert kv_bytes_per_token(cfg, "fp8", tp=4) == 128 * 1024 // 2 // 4
    # tp=16 > 8 kv heads: each rank keeps one replicated head.
    assert kv_bytes_per_token(cfg, "bf16", tp=16) == 128 * 1024 // 8
    with pytest.raises(ConfigError, match=r"tp\(3\) and kv heads\(8\)"):
        kv_report(cfg, seq_len=10, tp=3)


def test_sliding_window_caps_the_cache():
    cfg = load_model("mistral-7b")
    assert kv_report(cfg, seq_len=32768).cached_tokens == 4096
    assert max_context(cfg, memory_bytes=load_hardware("h100-sxm").memory_bytes) == cfg.max_context


def test_max_batch_fits_beside_the_weights():
    cfg = load_model("llama-3-8b")
    mem = load_hardware("h100-sxm").memory_bytes
    n = max_batch(cfg, memory_bytes=mem, seq_len=8192)
    weights = 2 * 8_030_261_248
    assert weights + n * 2**30 <= mem < weights + (n + 1) * 2**30
