"""Memory against the papers: ZeRO Figure 1 and Korthikanti et al. 2022 Table 2 / §4."""

import pytest

from planner.config import ModelConfig

from planner.setup import Parallel, TrainSetup
from planner.activations import in_flight_layers, layer_activation_bytes, layer_activation_terms
from planner.memory import memory_report
from planner.states import model_state_bytes
from presets import load_model


@pytest.mark.parametrize(("zero", "gb"), [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure_1(zero, gb):
    # Rajbhandari et al. 2020, Figure 1: Psi = 7.5B, N_d = 64, K = 12 (mixed-precision Adam).
    w, g, o = model_state_bytes(7_500_000_000, recipe="mixed", optimizer="adamw",
                                zero=zero, dp=64)
    assert round((w + g + o) / 1e9, 1) == pytest.approx(gb, abs=0.051)


def test_bytes_per_param_of_each_recipe():
    def per_param(recipe, optimizer):
        return sum(model_state_bytes(1000, recipe=recipe, optimizer=optimizer, zero=0, dp=1)) / 1000
    assert per_param("mixed", "adamw") == 16
    assert per_param("mixed_fp32_grads", "adamw") == 18
    assert per_param("fp32", "adamw") == 16
    assert per_param("fp32", "sgd_momentum") == 12
    assert per_param("mixed", "adam8bit") == 10


# Korthikanti et al. 2022, Table 3 model configurations (s = 2048, t = 8).
KORTHIKANTI = {
    "22B": dict(h=6144, a=64, L=48, b=4),
    "175B": dict(h=12288, a=96, L=96, b=1),
    "530B": dict(h=20480, a=128, L=105, b=1),
    "1T": dict(h=25600, a=160, L=128, b=1),
}


def gpt(h, a, L):
    return ModelConfig(vocab_size=51200, hidden_size=h, num_layers=L, num_heads=a,
                       ffn_hidden_size=4 * h, mlp="gelu", norm="layernorm",
                       position="learned", bias="all", max_context=2048)


@pytest.mark.parametrize("name", list(KORTHIKANTI))
def test_korthikanti_table_2(name):
    c = KORTHIKANTI[name]
    h, a, b, s, t = c["h"], c["a"], c["b"], 2048, 8
    cfg = gpt(h, a, c["L"])
    setup = TrainSetup(seq_len=s, micro_batch=b, attention="eager", dropout=True)
    sbh = s * b * h

    def per_layer(tp, sp, recompute):
        terms = layer_activation_terms(cfg, setup, tp, moe=False)
        return layer_activation_bytes(terms, tp=tp, sp=sp, recompute=recompute)

    assert per_layer(1, False, "none") == pytest.approx(sbh * (34 + 5 * a * s / h), rel=1e-12)
    assert per_layer(t, False, "none") == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert per_layer(t, True, "none") == pytest.approx(sbh * (34 + 5 * a * s / h) / t)
    assert per_layer(t, True, "selective") == pytest.approx(34 * sbh / t)
    assert per_layer(t, False, "selective") == pytest.approx(sbh * (10 + 24 / t))
    assert per_layer(1, False, "full") == 2 * sbh
    assert per_layer(t, True, "full") == 2 * sbh / t


def test_korthikanti_pipeline_first_stage_holds_L_layers_of_activations():
    # Korthikanti §4.2.3: with 1F1B the first stage holds p micro-batches of L/p layers;
    # interleaving multiplies that by 1 + (p - 1)/(p v).
    cfg = gpt(12288, 96, 96)
    p, m = 8, 64
    L = cfg.num_layers
    assert in_flight_layers(L, pp=p, vpp=1, m=m, stage=0, schedule="1f1b") == L
    assert in_flight_layers(L, pp=p, vpp=1, m=m, stage=p - 1, schedule="1f1b") == L // p
    v = 3
    inter = in_flight_layers(L, pp=p, vpp=v, m=m, stage=0, schedule="interleaved")
    assert inter == pytest.approx(L * (1 + (p - 1) / (p * v)))
    assert in_flight_layers(L, pp=p, vpp=1, m=m, stage=0, schedule="gpipe") == m * L // p


def test_stage_params_sum_to_the_model_and_tp_shards_exactly():
    from planner.stage_params import stage_params_per_rank
    from planner.params import count_params
    cfg = load_model("llama-2-7b")
    total = count_params(cfg).total
    assert sum(stage_params_per_rank(cfg, Parallel(pp=4))) == total
    # TP=2 on Llama-2-7B: everything but the norms is split in half.
    norms = count_params(cfg).norms
    assert stage_params_per_rank(cfg, Parallel(tp=2))[0] == (total - norms) // 2 + norms


def test_memory_report_picks_the_most_loaded_stage():
    cfg = load_model("llama-3-70b")
    rep = memory_report(cfg, TrainSetup(seq_len=4096, grad_accum=8),
                        Parallel(tp=8, pp=4, dp=2, zero=1, sp=True))
    assert rep.per_gpu is max(rep.stages, key=lambda s: s.total_bytes)
    assert rep.per_gpu.stage == 0  # most micro-batches in flight
    # 1F1B (Narayanan et al. 2021 §2.2): stage i holds p - i micro-batches in flight, so each
    # stage holds one micro-batch of its n = L/p layers more than the next; the last stage
    # adds the logits. One layer's kept bytes k, from two single-stage models one layer apart:
    setup = TrainSetup(seq_len=4096, grad_accum=1)
    one = Parallel(tp=8, sp=True)
    k = (memory_report(cfg.replace(num_layers=2), setup, one).stages[0].activations_bytes
         - memory_report(cfg.replace(num_layers=1), setup, one).stages[0].activations_bytes)
    n = cfg.num_layers // 4
    rope = 2 * 4 * 4096 * cfg.head_dim  # each forward's fp32 cos and sin tables, saved once
    acts = [st.activations_bytes for st in rep.stages]
    assert acts[0] - acts[1] == pytest.approx(n * k + rope, abs=1)
    assert acts[1] - acts[2] == pytest.approx(n * k + rope, abs=1)
    assert acts[2] - acts[3] < n * k  # the last stage's logits make up part of the step


def test_layout_errors_name_the_numbers():
    from planner.config import ConfigError
    cfg = load_model("llama-3-8b")
    with pytest.raises(ConfigError, match=r"tp\(3\) does not divide query heads\(32\)"):
        memory_report(cfg, TrainSetup(seq_len=128), Parallel(tp=3))
    with pytest.raises(ConfigError, match=r"pp\(5\) x vpp\(1\) = 5 does not divide layers\(32\)"):
        memory_report(cfg, TrainSetup(seq_len=128), Parallel(pp=5))
    # tp=16 > kv heads 8: allowed, the KV heads are replicated.
    memory_report(cfg, TrainSetup(seq_len=128), Parallel(tp=16))


def test_the_tensor_inventory_adds_up_to_the_stage_parameters():
    """planner.tensors (per-tensor shapes, for sharding and optimizer state) and the
    closed-form per-stage count agree for every preset and layout."""
    from planner import layout
    from planner.stage_params import stage_params_per_rank
    from planner.tensors import numel, stage_tensors
    from presets import preset_files

    checked = 0
    for name in preset_files("models"):
        cfg = load_model(name)
        for tp, pp, vpp in ((1, 1, 1), (2, 1, 1), (4, 2, 1), (8, 4, 2), (2, 2, 2)):
            if layout.tp_problems(cfg, tp) or layout.pp_problems(cfg, pp, vpp):
                continue
            par = Parallel(tp=tp, pp=pp, vpp=vpp)
            expected = stage_params_per_rank(cfg, par)
            for stage in range(pp):
                got = sum(n * numel(shape) for shape, n in stage_tensors(cfg, par, stage).items())
                assert got == expected[stage], (name, tp, pp, vpp, stage)
                checked += 1
    assert checked > 100
