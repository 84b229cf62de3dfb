"""Qwen3 / Qwen3-MoE, Gemma 2 / 3, DeepSeek-V2 / V3 (MLA), Mamba, Mamba-2, Jamba and RWKV-4
against ``transformers``: parameters (zero tolerance, breakdown and active count), the
tensor-parallel split of MLA, forward matmul FLOPs (FlopCounterMode), and the cache each
model allocates (KV, MLA latent, recurrent state) -- all from the same config.json."""

import json
import math
from pathlib import Path

import pytest

from hf_oracle import EXPERT_FIELDS, hf_meta_model, hf_param_count, to_hf_config
from planner.config import ConfigError
from planner.flops import FlopConventions, forward_flops_per_token
from planner.kv import kv_bytes_per_sequence, kv_report, state_bytes_per_sequence
from planner.params import count_params
from planner.setup import Parallel
from planner.stage_params import stage_params_per_rank
from presets import load_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
NEW = ("qwen3", "qwen3_moe", "gemma2", "gemma3_text", "deepseek_v2", "deepseek_v3", "mamba",
       "mamba2", "jamba", "rwkv")
PATHS = [p for p in sorted(FIXTURES.glob("*.json")) if json.loads(p.read_text())["model_type"] in NEW]
PRESETS = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b",
           "qwen3-30b-a3b", "qwen3-235b-a22b", "gemma-2-9b", "gemma-3-1b", "gemma-3-4b",
           "gemma-3-12b", "gemma-3-27b", "deepseek-v3", "deepseek-r1", "deepseek-v2-lite",
           "mamba-2.8b", "mamba2-2.7b", "mamba-codestral-7b", "jamba-v0.1", "rwkv-4-3b"]
MOE_PRESETS = ["qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "deepseek-r1", "deepseek-v2-lite",
               "jamba-v0.1"]


def fixture(path: Path):
    return json.loads(path.read_text()), load_model(str(path))


def test_every_new_family_has_a_fixture_and_a_preset():
    assert {json.loads(p.read_text())["model_type"] for p in PATHS} == set(NEW)
    assert {load_model(n).family for n in PRESETS} == set(NEW)


# ---- parameters --------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_fixture_total_breakdown_and_stage_equal_the_hf_model(path):
    data, cfg = fixture(path)
    counts = count_params(cfg)
    assert counts.total == hf_param_count(data)
    assert sum(counts.breakdown.values()) == counts.total
    assert stage_params_per_rank(cfg, Parallel()) == [counts.total]


def active_from_hf(cfg, hf: dict) -> int:
    """The HF model rebuilt with k routed experts has every parameter a token uses, but a
    router of h*k: add back the other h*(E-k) router columns of each MoE layer."""
    k = cfg.experts_per_token
    router_rest = cfg.hidden_size * (cfg.num_experts - k) * cfg.num_moe_layers
    return hf_param_count(hf, active_experts=k) + router_rest


@pytest.mark.parametrize("path", [p for p in PATHS if json.loads(p.read_text())["model_type"]
                                  in EXPERT_FIELDS], ids=lambda p: p.stem)
def test_fixture_active_equals_the_hf_model_with_k_experts(path):
    data, cfg = fixture(path)
    assert count_params(cfg).active == active_from_hf(cfg, data)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_total_and_stage_equal_the_hf_model(name):
    cfg = load_model(name)
    counts = count_params(cfg)
    assert counts.total == hf_param_count(to_hf_config(cfg))
    assert stage_params_per_rank(cfg, Parallel()) == [counts.total]


@pytest.mark.parametrize("name", MOE_PRESETS)
def test_preset_active_equals_the_hf_model_with_k_experts(name):
    cfg = load_model(name)
    assert count_params(cfg).active == active_from_hf(cfg, to_hf_config(cfg))


def test_published_sizes():
    # DeepSeek-V3 (arXiv 2412.19437 §4.2): 671B total, 37B activated; Jamba (arXiv
    # 2403.19887 §3): 52B / 12B; Qwen3 report: 8.2B (6.95B non-embedding), 30.5B / 3.3B.
    ds = count_params(load_model("deepseek-v3"))
    assert ds.total == pytest.approx(671e9, rel=0.001)
    assert ds.active == pytest.approx(37e9, rel=0.02)
    jamba = count_params(load_model("jamba-v0.1"))
    assert (jamba.total, jamba.active) == (pytest.approx(52e9, rel=0.01), pytest.approx(12e9, rel=0.01))
    q = count_params(load_model("qwen3-8b"))
    assert (q.total, q.non_embedding) == (pytest.approx(8.2e9, rel=0.005), pytest.approx(6.95e9, rel=0.005))
    moe = count_params(load_model("qwen3-30b-a3b"))
    assert (moe.total, moe.active) == (pytest.approx(30.5e9, rel=0.005), pytest.approx(3.3e9, rel=0.02))


def test_deepseek_v3_router_bias_is_a_buffer_and_mtp_counts_only_when_asked():
    cfg = load_model("deepseek-v3")
    data = json.loads((FIXTURES / "deepseek-v3-small.json").read_text())
    model = hf_meta_model(data)
    buffers = {n for n, _ in model.named_buffers() if n.endswith("e_score_correction_bias")}
    assert buffers and not any(n.endswith("e_score_correction_bias")
                               for n, _ in model.named_parameters())
    # transformers builds no MTP module (num_nextn_predict_layers = 1 is in the file)
    assert load_model(str(FIXTURES / "deepseek-v3-small.json")).mtp_layers == 1
    assert not any(".layers.3." in n for n, _ in model.named_parameters())
    assert count_params(cfg).mtp == 0
    with_mtp = count_params(cfg.replace(count_mtp_layers=True))
    # HF's model card: 685B = 671B + 14B of MTP weights, which hold their own copies of the
    # shared embedding and head (2 V h): the module itself is the rest.
    assert with_mtp.mtp + 2 * cfg.vocab_size * cfg.hidden_size == pytest.approx(14e9, rel=0.05)
    assert with_mtp.total == count_params(cfg).total + with_mtp.mtp
    assert stage_params_per_rank(cfg.replace(count_mtp_layers=True), Parallel()) == [with_mtp.total]


REPLICATED = ("q_a_proj", "q_a_layernorm", "kv_a_proj_with_mqa", "kv_a_layernorm", "norm",
              "mlp.gate.weight")


@pytest.mark.parametrize("stem", ["deepseek-v3-small", "deepseek-v2-lite-small"])
def test_mla_tensor_parallel_split_by_transformers_names(stem):
    """tp = 2: the latent down-projections, their norms, the block norms and the router are
    whole on every rank; q_b / q_proj, kv_b, o, the experts, embedding and head split."""
    data, cfg = fixture(FIXTURES / f"{stem}.json")
    tp = 2
    expected = 0
    for name, p in hf_meta_model(data).named_parameters():
        whole = any(part in name for part in REPLICATED)
        expected += p.numel() if whole else p.numel() // tp
    assert stage_params_per_rank(cfg, Parallel(tp=tp)) == [expected]


# ---- FLOPs -------------------------------------------------------------------------------
def counted_by_flop_counter(cfg, seq: int) -> float:
    """What FlopCounterMode sees of the planner's forward, per token: every matmul, the
    depthwise convolution over HF's K - 1 padded extra positions (sliced off after), and of
    Mamba's selective scan only its C readout (a ``matmul``, 2 d N): the rest of the scan
    (7 d N + 2 d, elementwise) it does not count. Mamba-2's SSD contractions are einsums:
    counted in full."""
    fwd = forward_flops_per_token(cfg, seq, FlopConventions(causal=False))
    total = fwd.total
    K, d, N = cfg.ssm_conv_kernel, cfg.recurrent_width, cfg.ssm_state_size
    for (mixer, _), n in cfg.layer_kinds().items():
        if mixer in ("mamba", "mamba2"):
            channels = d + (2 * cfg.ssm_groups * N if mixer == "mamba2" else 0)
            total += n * 2 * channels * K * (K - 1) / seq
        if mixer == "mamba":
            total -= n * (fwd.scan / sum(c for (m, _), c in cfg.layer_kinds().items()
                                         if m == "mamba") - 2 * d * N)
    return total


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_forward_flops_match_flop_counter(path):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    data, cfg = fixture(path)
    torch.manual_seed(0)
    # eager attention and experts: FlopCounterMode (torch 2.13) counts no FLOPs for SDPA's
    # CPU flash kernel nor grouped_mm
    model = hf_meta_model(data, device="cpu", attn_implementation="eager",
                          experts_implementation="eager").float().eval()
    batch, seq = 2, 64  # a multiple of the Mamba-2 fixture's chunk (32): no padded chunk
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    # Grad mode on (the forward alone is counted, nothing is backpropagated): transformers
    # 5.25 routes Mamba's causal conv1d through `kernels`' function modules, whose parameter
    # views made under no_grad have no grad_fn for FlopCounterMode's module tracker to hook.
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False)
    measured = counter.get_total_flops() / (batch * seq)
    assert counted_by_flop_counter(cfg, seq) == pytest.approx(measured, rel=1e-9)


def test_mamba_scan_constant_and_mla_head_dims():
    cfg = load_model("mamba-2.8b")
    f = forward_flops_per_token(cfg, 2048)
    d, N = cfg.recurrent_width, cfg.ssm_state_size
    assert f.scan == cfg.num_layers * (9 * d * N + 2 * d)  # state-spaces/mamba#110
    assert f.attention_core == 0 and f.qkv == 0
    ds = load_model("deepseek-v3")
    f = forward_flops_per_token(ds, 4096, FlopConventions(causal=False))
    assert f.scores == ds.num_layers * 2 * 128 * 192 * 4096
    assert f.attn_values == ds.num_layers * 2 * 128 * 128 * 4096


# ---- caches ------------------------------------------------------------------------------
def hf_cache_bytes(out) -> dict[str, int]:
    """Bytes of every tensor the model's returned cache holds, by kind."""
    import torch

    found = {"kv": 0, "state": 0}
    state = getattr(out, "state", None)
    if state is not None:  # RWKV: five (batch, hidden, layers) tensors
        found["state"] = sum(t.numel() * t.element_size() for t in state)
        return found
    for layer in out.past_key_values.layers:
        for name, value in vars(layer).items():
            tensors = value.values() if isinstance(value, dict) else [value]
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.dim() >= 2:
                    found["state" if "states" in name else "kv"] += t.numel() * t.element_size()
    return found


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_cache_bytes_equal_what_transformers_allocates(path, dtype):
    import torch

    data, cfg = fixture(path)
    if cfg.mixer == "rwkv":  # transformers sizes RWKV's state by hidden: it runs only with
        data = {**data, "attention_hidden_size": data["hidden_size"]}  # time mix == hidden
        cfg = cfg.replace(recurrent_width=data["hidden_size"])
    torch.manual_seed(0)
    model = hf_meta_model(data, device="cpu").eval()
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    seq = 12  # below every fixture's sliding window
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, cfg.vocab_size, (1, seq)), use_cache=True)
    theirs = hf_cache_bytes(out)
    assert kv_bytes_per_sequence(cfg, seq, dtype) == theirs["kv"] + theirs["state"]
    assert state_bytes_per_sequence(cfg, dtype) == theirs["state"]


def test_sliding_layers_cache_their_window():
    """Past the window, transformers keeps window - 1 tokens in each sliding layer (the new
    token completes the window); the planner counts the window itself."""
    import torch

    data, cfg = fixture(FIXTURES / "gemma2-small.json")
    model = hf_meta_model(data, device="cpu").float().eval()
    seq, w = 40, cfg.sliding_window
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, cfg.vocab_size, (1, seq)), use_cache=True)
    per_token_layer = 2 * cfg.num_kv_heads * cfg.head_dim * 4
    assert seq > w and cfg.num_sliding_layers == cfg.num_layers // 2
    assert kv_bytes_per_sequence(cfg, seq, "fp32") == hf_cache_bytes(out)["kv"] \
        + cfg.num_sliding_layers * per_token_layer


def test_state_is_fixed_per_sequence_and_hybrids_add_kv_per_token():
    mamba = load_model("mamba-2.8b")
    assert kv_report(mamba, seq_len=1024).total_bytes == kv_report(mamba, seq_len=8192).total_bytes
    assert kv_report(mamba, seq_len=1024).bytes_per_token == 0
    jamba = load_model("jamba-v0.1")
    a, b = kv_report(jamba, seq_len=1000), kv_report(jamba, seq_len=2000)
    assert b.total_bytes - a.total_bytes == 1000 * a.bytes_per_token
    assert a.total_bytes == 1000 * a.bytes_per_token + a.state_bytes_per_sequence
    ds = kv_report(load_model("deepseek-v3"), seq_len=4096, tp=8)
    # DeepSeek-V2 §2.1.3: (d_c + d_R) = 576 elements per token and layer, the same per rank
    assert ds.bytes_per_token == ds.bytes_per_token_per_rank == 61 * 576 * 2


# ---- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(("stem", "field", "value", "message"), [
    ("mamba-small", "state_size", "16", "state_size('16') must be an integer"),
    ("mamba-small", "expand", [2], "expand([2]) must be a positive number"),
    ("gemma2-small", "layer_types", ["local"] * 4, "layer_types('local') is not one of"),
    ("gemma2-small", "layer_types", ["full_attention"] * 3, "layer_types has 3 entries"),
    ("gemma3-small", "use_bidirectional_attention", True, "use_bidirectional_attention"),
    ("deepseek-v3-small", "q_lora_rank", "x", "q_lora_rank('x') must be an integer"),
    ("deepseek-v3-small", "num_key_value_heads", 2, "num_key_value_heads(2) must equal"),
    ("qwen3-moe-small", "mlp_only_layers", [1.5], "mlp_only_layers([1.5]) must be a list of"),
    ("qwen3-moe-small", "mlp_only_layers", [9], "mlp_only_layers(9) is not a layer index"),
    ("qwen3-moe-small", "decoder_sparse_step", 0, "decoder_sparse_step(0) must be positive"),
    ("jamba-small", "attn_layer_offset", 4, "attention_layer_offset(4) must be below"),
    ("mamba2-small", "head_dim", 8, "num_heads(8) x head_dim(8) must equal"),
    ("rwkv-small", "attention_hidden_size", True, "attention_hidden_size(True) must be"),
])
def test_bad_fields_are_one_line_errors_naming_file_and_field(tmp_path, stem, field, value,
                                                              message):
    data = json.loads((FIXTURES / f"{stem}.json").read_text())
    data[field] = value
    path = tmp_path / f"{stem}.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load_model(str(path))
    text = str(err.value)
    assert "\n" not in text and str(path) in text and message in text, text


def test_layer_pattern_and_mla_errors_name_the_numbers():
    base = load_model("deepseek-v3")
    with pytest.raises(ConfigError, match=r"kv_lora_rank\(0\) must be positive for attention 'mla'"):
        base.replace(kv_lora_rank=0)
    with pytest.raises(ConfigError, match=r"query heads\(32\) must be 0: mixer 'mamba'"):
        load_model("mamba-2.8b").replace(num_heads=32)
    with pytest.raises(ConfigError, match=r"moe_layer_offset\(2\) must be below moe_layer_period\(2\)"):
        load_model("jamba-v0.1").replace(moe_layer_offset=2)
    assert math.isclose(load_model("gemma-2-9b").embedding_multiplier, 3584 ** 0.5)
