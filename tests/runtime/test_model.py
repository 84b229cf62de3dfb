"""The runtime's decoder: parameter counts equal the planner's; pieces behave as specified."""

import math

import pytest
import torch

from planner import layout
from planner.layout import RUNTIME_POSITIONS
from planner.params import count_params
from presets import load_model, preset_files
from runtime.model import Decoder, _RMSNormFn, alibi_slopes, rope_inv_freq, sinusoidal_table

SUPPORTED = [n for n in preset_files("models") if load_model(n).position in RUNTIME_POSITIONS
             and not layout.refusals(layout.model_problems(load_model(n)), "llmplan")]


@pytest.mark.parametrize("name", SUPPORTED)
def test_runtime_parameter_count_equals_the_planner(name):
    cfg = load_model(name)
    with torch.device("meta"):
        model = Decoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total


def test_rmsnorm_backward_matches_autograd():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFn.apply(a, b, 1e-6), (x, w))


def test_rope_scaling_changes_only_low_frequencies():
    base = load_model("llama-3-8b")
    scaled = load_model("llama-3.1-8b")
    a, b = rope_inv_freq(base), rope_inv_freq(scaled)
    assert torch.allclose(a[:8], b[:8])          # high frequencies kept (wavelength < 2048)
    assert torch.allclose(a[-4:] / 8, b[-4:])     # low frequencies interpolated by the factor


def test_sliding_window_and_causality():
    # One layer with a window of 4: token 0 reaches positions 0-3 and nothing after them;
    # changing the last token changes nothing before it.
    cfg = load_model("tiny").replace(num_layers=1, sliding_window=4)
    torch.manual_seed(0)
    model = Decoder(cfg).eval()
    x = torch.randint(0, 256, (1, 12))
    first, last = x.clone(), x.clone()
    first[0, 0] = (first[0, 0] + 1) % 256
    last[0, -1] = (last[0, -1] + 1) % 256
    with torch.no_grad():
        base, a, b = model(x), model(first), model(last)
    assert not torch.allclose(base[0, :4], a[0, :4])
    assert torch.allclose(base[0, 4:], a[0, 4:])
    assert torch.allclose(base[0, :-1], b[0, :-1])


@pytest.mark.parametrize("heads", [4, 6, 12, 32])
def test_alibi_slopes_equal_bloom_in_transformers(heads):
    # transformers' BLOOM builds slope x key position per head; positions 0..7 give the slopes
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(1, 8)
    alibi = build_alibi_tensor(mask, heads, torch.float32)  # (heads, 1, 8)
    assert torch.allclose(alibi[:, 0, 1], alibi_slopes(heads))
    assert torch.allclose(alibi[:, 0, :], alibi_slopes(heads)[:, None] * torch.arange(8.0))


def test_sinusoidal_table_is_the_transformer_paper_formula():
    # Vaswani et al. 2017 §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    table = sinusoidal_table(50, 16)
    pos, i = 37, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


@pytest.mark.parametrize(("scaling", "seq_len"), [("yarn", 0), ("ntk", 0), ("ntk", 8192),
                                                  ("linear", 0), ("llama3", 0)])
def test_rope_scaling_equals_transformers(scaling, seq_len):
    # Independent oracle: transformers' own RoPE initialisers on the same configuration
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from runtime.model import rope_attention_factor

    cfg = load_model("llama-3-8b").replace(rope_scaling=scaling, rope_scaling_factor=4.0,
                                           rope_original_context=2048, max_context=4096)
    params = {"rope_type": {"ntk": "dynamic"}.get(scaling, scaling), "rope_theta": cfg.rope_theta,
              "factor": 4.0, "original_max_position_embeddings": 2048}
    if scaling == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    hf = LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_heads,
                     max_position_embeddings=4096, rope_parameters=params)
    inv, attention = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf, "cpu", seq_len or None)
    assert torch.allclose(rope_inv_freq(cfg, seq_len), inv.float(), rtol=1e-5)
    assert rope_attention_factor(cfg) == pytest.approx(attention)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_the_mlp_activation_is_the_one_transformers_runs(act):
    # the config.json's activation -> ModelConfig -> runtime MLP, against transformers' ACT2FN
    from transformers.activations import ACT2FN

    from presets.hf import _activation
    from runtime.model import MLP

    cfg = load_model("tiny-gpt2").replace(**_activation(act, gated=False, where="test"))
    mlp = MLP(cfg, cfg.ffn_hidden_size)
    x = torch.randn(2, 3, cfg.hidden_size) * 3
    with torch.no_grad():
        expect = mlp.w2(ACT2FN[act](mlp.w1(x)))
        assert torch.allclose(mlp(x), expect, atol=1e-6)


def test_an_expert_no_token_chose_gets_a_zero_gradient_not_none():
    # FSDP reduce-scatters the same gradients on every data-parallel rank: an idle expert
    # must contribute zeros (a missing gradient made 8-rank ZeRO-2/3 MoE runs mismatch)
    from runtime.model import MoE

    cfg = load_model("tiny-moe")
    moe = MoE(cfg)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0   # every token picks experts 0 and 1 (ties broken by index)
        moe.router.weight[1] = 0.5
    x = torch.rand(1, 4, cfg.hidden_size) + 0.1
    moe(x).sum().backward()
    idle = moe.experts[3]
    assert all(p.grad is not None and not p.grad.any() for p in idle.parameters())
    assert moe.experts[0].w1.weight.grad.abs().sum() > 0
