"""Property tests over random valid configurations and layouts (hypothesis)."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.config import ConfigError, ModelConfig

from planner.setup import Parallel, TrainSetup
from planner.flops import flops_report
from planner.kv import kv_report
from planner.memory import memory_report

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw):
    g = draw(st.sampled_from([1, 2, 4, 8]))
    a = g * draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([16, 32, 64, 128]))
    h = draw(st.sampled_from([a * d, 2 * a * d // 2, 64 * draw(st.integers(1, 32))]))
    experts = draw(st.sampled_from([0, 0, 4, 8]))
    return ModelConfig(
        vocab_size=draw(st.integers(100, 200_000)), hidden_size=h,
        num_layers=draw(st.sampled_from([1, 2, 4, 8, 12, 16, 24, 32])),
        num_heads=a, num_kv_heads=g, head_dim=d,
        ffn_hidden_size=8 * draw(st.integers(8, 4096)),
        mlp=draw(st.sampled_from(["gelu", "relu", "swiglu", "geglu"])),
        norm=draw(st.sampled_from(["rmsnorm", "layernorm", "layernorm_nobias"])),
        block=draw(st.sampled_from(["pre_norm", "parallel"])),
        position=draw(st.sampled_from(["rope", "learned", "alibi"])),
        tie_embeddings=draw(st.booleans()), bias=draw(st.sampled_from(["none", "qkv", "all"])),
        max_context=4096,
        num_experts=experts, experts_per_token=min(2, experts) if experts else 0,
    )


@st.composite
def setups(draw):
    return TrainSetup(seq_len=draw(st.sampled_from([128, 512, 2048, 8192])),
                      micro_batch=draw(st.integers(1, 4)), grad_accum=draw(st.sampled_from([1, 2, 4, 8])),
                      recipe=draw(st.sampled_from(["mixed", "mixed_fp32_grads", "runtime"])),
                      optimizer=draw(st.sampled_from(["adamw", "adam8bit", "sgd_momentum", "adafactor"])),
                      attention=draw(st.sampled_from(["flash", "eager"])),
                      dropout=draw(st.booleans()))


def layout(draw, cfg):
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if cfg.num_heads % t == 0
                               and (cfg.num_kv_heads % t == 0 or t % cfg.num_kv_heads == 0)
                               and cfg.ffn_hidden_size % t == 0]))
    pp = draw(st.sampled_from([p for p in (1, 2, 4) if cfg.num_layers % p == 0]))
    return tp, pp, draw(st.booleans())


def resident(stage):
    """The model states a rank keeps for the whole step."""
    return stage.weights_bytes + stage.gradients_bytes + stage.optimizer_bytes


@SETTINGS
@given(cfg=configs(), setup=setups(), data=st.data())
def test_memory_falls_with_zero_stage_and_dp(cfg, setup, data):
    tp, pp, sp = layout(data.draw, cfg)
    seq_ok = setup.seq_len % tp == 0
    sp = sp and seq_ok and tp > 1  # the layout contract: sp needs tp > 1
    dp = data.draw(st.sampled_from([2, 4, 8]))
    reports = [memory_report(cfg, setup, Parallel(tp=tp, pp=pp, dp=dp, zero=z, sp=sp))
               for z in range(4)]
    for lower, higher in zip(reports, reports[1:]):
        for a, b in zip(lower.stages, higher.stages):
            assert resident(b) <= resident(a)
            # ZeRO-3 holds up to three layers unsharded at once (two gathered, one's
            # gradients): with 8 layers or more per stage that is less than what it saves
            if cfg.num_layers // pp >= 8:
                assert b.total_bytes <= a.total_bytes
    zero = data.draw(st.integers(0, 3))
    small = memory_report(cfg, setup, Parallel(tp=tp, pp=pp, dp=dp, zero=zero, sp=sp))
    large = memory_report(cfg, setup, Parallel(tp=tp, pp=pp, dp=2 * dp, zero=zero, sp=sp))
    assert large.per_gpu.total_bytes <= small.per_gpu.total_bytes


@SETTINGS
@given(cfg=configs(), setup=setups(), data=st.data())
def test_more_recompute_never_raises_activation_memory(cfg, setup, data):
    tp, pp, sp = layout(data.draw, cfg)
    sp = sp and setup.seq_len % tp == 0 and tp > 1
    par = Parallel(tp=tp, pp=pp, sp=sp)
    reports = [memory_report(cfg, TrainSetup(**{**{f: getattr(setup, f) for f in setup.__slots__},
                                               "recompute": r}), par)
               for r in ("none", "selective", "full")]
    for none, selective, full in zip(*(r.stages for r in reports)):
        assert none.activations_bytes >= selective.activations_bytes >= full.activations_bytes > 0
    totals = [r.per_gpu.total_bytes for r in reports]
    assert totals[0] >= totals[1] >= totals[2]


@SETTINGS
@given(cfg=configs(), setup=setups(), data=st.data())
def test_all_values_finite_and_non_negative(cfg, setup, data):
    tp, pp, sp = layout(data.draw, cfg)
    sp = sp and setup.seq_len % tp == 0 and tp > 1
    rep = memory_report(cfg, setup, Parallel(tp=tp, pp=pp, sp=sp))
    for stage in rep.stages:
        values = {k: v for k, v in stage.to_dict().items() if isinstance(v, int)}
        for value in [*values.values(), *stage.phases.values()]:
            assert value >= 0 and math.isfinite(value)
        assert stage.total_bytes == max(stage.phases.values())  # the peak of the timeline
        assert stage.peak_phase in stage.phases
    flops = flops_report(cfg, setup.seq_len)
    for value in (flops.train_flops_per_token, flops.six_n_flops_per_token, flops.palm_flops_per_token):
        assert value > 0 and math.isfinite(value)
    assert kv_report(cfg, seq_len=setup.seq_len).total_bytes > 0


@SETTINGS
@given(values=st.dictionaries(
    st.sampled_from(["vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "ffn_hidden_size", "num_experts", "experts_per_token"]),
    st.integers(-5, 70), min_size=1), tp=st.integers(-2, 16), pp=st.integers(-2, 16))
def test_invalid_combinations_are_clear_errors_never_crashes(values, tp, pp):
    base = dict(vocab_size=100, hidden_size=64, num_layers=4, num_heads=4, ffn_hidden_size=128)
    try:
        cfg = ModelConfig(**{**base, **values})
        memory_report(cfg, TrainSetup(seq_len=64), Parallel(tp=tp, pp=pp))
    except ConfigError as err:
        assert "(" in str(err)  # the offending number is named
