"""Layer variants in the layout contract and the saved-tensor terms: what is refused (and
why), and the per-tensor terms q/k norms, sandwich norms and soft-capping add."""

import pytest

from planner import layout
from planner.activations import layer_activation_terms, tail_bytes
from planner.config import ConfigError
from planner.setup import TrainSetup
from presets import load_model


def test_unmodelled_layers_are_refused_for_every_runtime_and_named():
    for name, kind in (("mamba-2.8b", "mamba"), ("mamba2-2.7b", "mamba2"), ("rwkv-4-3b", "rwkv"),
                       ("jamba-v0.1", "mamba"), ("deepseek-v3", "mla")):
        found = layout.model_problems(load_model(name))
        first = found[0]
        assert first.key == "layers_not_modelled" and not first.runtime_only
        assert first.message == (f"training memory of {kind} layers is not modelled "
                                 "(params, flops and kv are)")
        assert any(p.key == "runtime_layers" and p.runtime_only for p in found)
    assert layout.KEYS[0] == "layers_not_modelled"


@pytest.mark.parametrize(("name", "what"), [
    ("qwen3-8b", "q/k norms"), ("gemma-2-9b", "sandwich norms"),
    ("gemma-2-9b", "logit soft-capping"), ("gemma-2-9b", "alternating local/global attention"),
    ("gemma-3-1b", "q/k norms"), ("qwen3-30b-a3b", "q/k norms"),
])
def test_runtime_refuses_what_its_decoder_does_not_build(name, what):
    found = layout.model_problems(load_model(name))
    assert [p.key for p in found] == ["runtime_layers"]
    assert found[0].runtime_only and what in found[0].message


def test_plain_transformers_have_no_model_problem():
    for name in ("llama-3-8b", "mixtral-8x7b", "gemma-7b", "qwen2.5-7b"):
        assert layout.model_problems(load_model(name)) == []


def test_memory_report_refuses_unmodelled_layers():
    from planner.memory import memory_report
    from planner.setup import Parallel

    with pytest.raises(ConfigError, match="training memory of mamba layers is not modelled"):
        memory_report(load_model("mamba-2.8b"), TrainSetup(seq_len=2048), Parallel())
    memory_report(load_model("gemma-2-9b"), TrainSetup(seq_len=2048), Parallel())


def test_qk_norms_save_their_inputs():
    cfg = load_model("qwen3-8b")
    setup = TrainSetup(seq_len=1024)
    with_norms = layer_activation_terms(cfg, setup, 2, moe=False)
    without = layer_activation_terms(cfg.replace(qk_norm=False), setup, 2, moe=False)
    B, sb, d = 2, 1024, cfg.head_dim
    assert with_norms.sharded - without.sharded == B * sb * d * (32 // 2 + 8 // 2)


def test_sandwich_norms_and_soft_capping():
    cfg = load_model("gemma-2-9b")
    setup = TrainSetup(seq_len=512, attention="eager")
    plain = cfg.replace(sandwich_norms=False, attn_logit_softcap=0.0)
    terms, base = (layer_activation_terms(c, setup, 1, moe=False) for c in (cfg, plain))
    sbh = 512 * cfg.hidden_size
    assert terms.replicated - base.replicated == 2 * 2 * sbh  # two more norm inputs
    assert terms.quadratic - base.quadratic == 2 * cfg.num_heads * 512 * 512  # tanh output
    capped = tail_bytes(cfg, setup, 1, False) - tail_bytes(
        cfg.replace(final_logit_softcap=0.0), setup, 1, False)
    assert capped == 2 * 512 * cfg.vocab_size


def test_layer_pattern():
    jamba = load_model("jamba-v0.1")
    assert [jamba.layer_mixer(i) for i in range(8)] == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert [jamba.layer_is_moe(i) for i in range(4)] == [False, True, False, True]
    gemma = load_model("gemma-3-1b")
    assert [gemma.layer_is_sliding(i) for i in range(6)] == [True] * 5 + [False]
    moe = load_model("qwen3-30b-a3b").replace(moe_layer_period=2, moe_layer_offset=1,
                                               mlp_only_layers=(3,))
    assert [moe.layer_is_moe(i) for i in range(6)] == [False, True, False, False, False, True]
    assert moe.with_overrides({"mlp_only_layers": "3, 5"}).mlp_only_layers == (3, 5)


@pytest.mark.parametrize("layers", [1, 5, 12, 61])
@pytest.mark.parametrize(("period", "offset", "first_dense", "mlp_only"), [
    (1, 0, 0, ()), (2, 1, 0, ()), (2, 0, 3, (4, 7)), (3, 2, 1, (0, 2, 5, 60)), (4, 3, 0, (3, 11))])
def test_layer_counts_equal_counting_layer_by_layer(layers, period, offset, first_dense, mlp_only):
    from dataclasses import replace

    base = replace(load_model("jamba-v0.1"), num_layers=64)  # moe + hybrid attention fields
    mlp_only = tuple(i for i in mlp_only if i < layers)
    try:
        cfg = replace(base, num_layers=layers, moe_layer_period=period, moe_layer_offset=offset,
                      first_dense_layers=first_dense, mlp_only_layers=mlp_only,
                      attention_layer_period=period, attention_layer_offset=offset)
    except ConfigError:
        return  # a pattern that leaves no MoE layer: refused (tested elsewhere)
    assert cfg.num_moe_layers == sum(map(cfg.layer_is_moe, range(layers)))
    assert cfg.num_attention_layers == sum(cfg.layer_mixer(i) == "attention" for i in range(layers))


def test_an_absurd_layer_count_is_one_line_not_a_hang():
    from dataclasses import replace

    with pytest.raises(ConfigError, match=r"layers\(1180591620717411303424\) is more than any"):
        replace(load_model("qwen3-30b-a3b"), num_layers=2**70)
