"""The step-time model's terms, each against its formula worked out by hand: the pipeline
bubble (Narayanan et al. 2021 §2.2), ring collectives (alpha-beta), the DP gradient traffic in
the recipe's gradient dtype, ZeRO-1's all-gather in llmplan's runtime, PP point-to-point."""

import pytest

from planner.setup import TrainSetup
from planner.cost import CostEstimator, CostModel, allgather_s, allreduce_s, cluster_of
from presets import load_hardware, load_model

CFG = load_model("llama-3-8b")
H100 = load_hardware("h100-sxm")
NO_OVERLAP = CostModel(overlap_dp=False)


def estimator(gpus: int, recipe: str = "mixed", dtype: str = "bf16", model=NO_OVERLAP):
    return CostEstimator(CFG, TrainSetup(seq_len=4096, dtype=dtype, recipe=recipe),
                         cluster_of(H100, gpus=gpus), model)


def step(est, **layout):
    base = dict(tp=1, pp=1, vpp=1, dp=1, zero=0, sp=False, recompute="none", mbs=1, m=8,
                params_per_rank=8_000_000_000)
    return est.step_time(**{**base, **layout})


def test_ring_collectives_follow_the_alpha_beta_model():
    # 8 ranks, 1 GB, 100 GB/s, 10 us: 14 latency steps + 14/8 of the bytes over the link
    assert allreduce_s(1e9, 8, 100e9, 10e-6) == pytest.approx(14 * 10e-6 + 1.75 * 1e9 / 100e9)
    assert allgather_s(1e9, 8, 100e9, 10e-6) == pytest.approx(7 * 10e-6 + 0.875 * 1e9 / 100e9)
    assert allreduce_s(1e9, 1, 100e9, 10e-6) == allgather_s(1e9, 1, 100e9, 10e-6) == 0


@pytest.mark.parametrize(("pp", "vpp"), [(2, 1), (4, 1), (4, 2), (8, 4)])
def test_the_bubble_is_p_minus_1_over_v_micro_batches(pp, vpp):
    est = estimator(pp)
    t = step(est, pp=pp, vpp=vpp, params_per_rank=8_000_000_000 // pp)
    per_micro_batch = (t.compute_s + t.tp_comm_s) / 8  # m = 8 micro-batches of compute
    assert t.bubble_s == pytest.approx((pp - 1) / vpp * per_micro_batch)
    assert step(est, pp=1).bubble_s == 0


def test_pp_sends_activations_and_gradients_every_tick():
    est = estimator(4)
    bw, lat = est.link(2 * 1 * 1)  # neighbouring stages: tp * dp ranks apart, inside a node
    t = step(est, pp=4)
    ticks = 8 * 1 + 4 - 1  # m v + p - 1
    activation = 4096 * CFG.hidden_size * 2  # s b h in bf16
    assert t.pp_comm_s == pytest.approx(ticks * (lat + 2 * activation / bw))


@pytest.mark.parametrize(("recipe", "dtype", "grad_bytes"), [
    ("mixed", "bf16", 2), ("mixed_fp32_grads", "bf16", 4), ("fp32", "fp32", 4),
])
def test_dp_moves_gradients_in_the_recipes_dtype(recipe, dtype, grad_bytes):
    est = estimator(8, recipe=recipe, dtype=dtype)
    bw, lat = est.link(8)
    params = 8_000_000_000
    t = step(est, dp=8, params_per_rank=params)
    assert t.dp_comm_s == pytest.approx(allreduce_s(params * grad_bytes, 8, bw, lat))


def test_runtime_zero1_all_reduces_then_gathers_fp32_slices():
    est = estimator(8, recipe="runtime", dtype="fp32")
    bw, lat = est.link(8)
    params = 8_000_000_000
    plain = allreduce_s(params * 4, 8, bw, lat)
    assert step(est, dp=8, zero=0, params_per_rank=params).dp_comm_s == pytest.approx(plain)
    assert step(est, dp=8, zero=1, params_per_rank=params).dp_comm_s == pytest.approx(
        plain + allgather_s(params * 4, 8, bw, lat))  # 1.5x the volume of ZeRO-0


def test_zero3_gathers_weights_in_the_compute_dtype_twice_per_micro_batch():
    est = estimator(8)
    bw, lat = est.link(8)
    params = 8_000_000_000
    t = step(est, dp=8, zero=3, m=4, params_per_rank=params)
    expected = 2 * 4 * allgather_s(params * 2, 8, bw, lat) + allgather_s(params * 2, 8, bw, lat)
    assert t.dp_comm_s == pytest.approx(expected)


def test_host_terms_never_stretch_an_accelerator():
    cpu_fitted = CostModel(overlap_dp=False, host_cores=2)
    assert step(estimator(8, model=cpu_fitted), dp=8).total_s == pytest.approx(
        step(estimator(8), dp=8).total_s)


@pytest.mark.parametrize(("pp", "vpp", "m"), [(2, 1, 8), (4, 1, 16), (4, 2, 8), (8, 4, 32)])
def test_bubble_fraction_is_p_minus_1_over_v_m(pp, vpp, m):
    # Narayanan et al. 2021 §2.2.1-2.2.2: 1F1B idles (p - 1) / m of the ideal time, the
    # interleaved schedule (p - 1) / (v m)
    t = step(estimator(pp), pp=pp, vpp=vpp, m=m, params_per_rank=8_000_000_000 // pp)
    assert t.bubble_s / t.compute_s == pytest.approx((pp - 1) / (vpp * m))


@pytest.mark.parametrize("n", [2, 4, 8, 64])
def test_ring_bytes_per_rank(n):
    # a ring all-reduce moves 2 (n - 1) / n of the buffer through each rank's link, a
    # reduce-scatter or all-gather (n - 1) / n (Patarasuk & Yuan 2009; NCCL's bus bandwidth)
    nbytes, bw = 1e9, 1e11
    assert allreduce_s(nbytes, n, bw, 0.0) * bw / nbytes == pytest.approx(2 * (n - 1) / n)
    assert allgather_s(nbytes, n, bw, 0.0) * bw / nbytes == pytest.approx((n - 1) / n)


def test_breakdown_parts_add_up_and_exposed_never_exceeds_total():
    est = estimator(64, model=CostModel(overlap_tp=True))
    t = step(est, tp=8, pp=2, dp=4, zero=1, sp=True, recompute="selective",
             params_per_rank=8_000_000_000 // 16)
    b = t.breakdown()
    compute = b["compute"]
    assert compute["matmul_s"] + compute["attention_s"] + compute["elementwise_s"] + \
        compute["overhead_s"] == pytest.approx(compute["total_s"]) == pytest.approx(t.compute_s)
    for kind, comm in b["communication"].items():
        assert 0 <= comm["exposed_s"] <= comm["total_s"] + 1e-15, kind
    assert b["communication"]["tp"]["exposed_s"] < b["communication"]["tp"]["total_s"]  # overlapped
    assert b["bubble_s"] + b["optimizer_s"] + b["other_s"] + compute["total_s"] + sum(
        c["exposed_s"] for c in b["communication"].values()) == pytest.approx(t.total_s)
