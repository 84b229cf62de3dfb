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


def test_mla_caches_its_latent_and_rope_key_on_every_rank():
    # DeepSeek-V2 §2.1.3: (d_c + d_R) = 512 + 64 elements per token and layer
    cfg = load_model("deepseek-v3")
    assert kv_bytes_per_token(cfg) == 61 * 576 * 2
    assert kv_bytes_per_token(cfg, tp=8) == kv_bytes_per_token(cfg)


def test_recurrent_state_does_not_grow_with_the_sequence():
    from planner.kv import state_bytes_per_sequence

    cfg = load_model("mamba-2.8b")
    d, K, N = cfg.recurrent_width, cfg.ssm_conv_kernel, cfg.ssm_state_size
    # conv state d x K at the cache dtype, SSM state d x N in fp32, per layer
    assert state_bytes_per_sequence(cfg) == cfg.num_layers * (d * K * 2 + d * N * 4)
    short, long = kv_report(cfg, seq_len=128), kv_report(cfg, seq_len=65536)
    assert short.total_bytes == long.total_bytes == short.state_bytes_per_sequence
    assert short.cache_kind == "recurrent_state" and short.cached_tokens == 0
    mem = load_hardware("h100-sxm").memory_bytes
    assert max_batch(cfg, memory_bytes=mem, seq_len=128) == max_batch(cfg, memory_bytes=mem,
                                                                      seq_len=65536)


def test_hybrid_fit_counts_kv_per_token_and_state_per_sequence():
    from planner.kv import kv_bytes_per_sequence, weight_bytes_per_rank

    cfg = load_model("jamba-v0.1")
    rep = kv_report(cfg, seq_len=4096)
    assert rep.cache_kind == "kv+recurrent_state" and rep.attention_layers == 4
    assert rep.total_bytes == 4096 * rep.bytes_per_token + rep.state_bytes_per_sequence
    mem = 2 * 2**40  # room for the weights and many caches
    free = mem - weight_bytes_per_rank(cfg)
    n = max_batch(cfg, memory_bytes=mem, seq_len=4096)
    assert n * rep.total_bytes <= free < (n + 1) * rep.total_bytes
    s = max_context(cfg, memory_bytes=weight_bytes_per_rank(cfg) + 100 * rep.total_bytes,
                    batch=100)
    assert s == 4096  # the longest context whose 100 caches fit exactly
    assert kv_bytes_per_sequence(cfg, s + 1) * 100 > 100 * rep.total_bytes


def test_alternating_windows_cap_only_the_local_layers():
    cfg = load_model("gemma-2-9b")
    per_layer = 2 * cfg.num_kv_heads * cfg.head_dim * 2
    rep = kv_report(cfg, seq_len=8192)
    assert rep.sliding_layers == 21 and rep.cached_tokens == 8192
    assert rep.total_bytes == per_layer * (21 * 8192 + 21 * 4096)
