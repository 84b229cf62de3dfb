"""``validate --serving``'s pieces: the few-row GEMM staircase read off timings, the weight
passes it gives decode, and the fit giving back the constants behind noise-free times."""

import pytest

from planner.cost import CostModel
from planner.serving import ServeEstimator
from presets import load_hardware, load_model
from runtime import serving_validation as sv
from runtime.gemm_probe import packing_from_times

CPU = load_hardware("cpu")
# Seconds of (m x 4096) @ (4096 x 4096) fp32, one thread, on a 2.6 GHz AVX-512 Xeon
# (`python -m runtime.gemm_probe`, rounded): three rows per pass over the weights until a
# blocked GEMM takes over at 16.
MEASURED = {1: 2.34e-3, 2: 2.34e-3, 3: 2.34e-3, 4: 4.68e-3, 5: 4.75e-3, 6: 4.82e-3,
            7: 7.11e-3, 8: 7.04e-3, 9: 7.09e-3, 10: 9.43e-3, 11: 9.48e-3, 12: 9.41e-3,
            13: 12.1e-3, 14: 12.1e-3, 15: 11.9e-3, 16: 7.68e-3, 17: 7.9e-3}


def test_the_staircase_of_a_cpu_blas_is_read_off_its_timings():
    assert packing_from_times(MEASURED) == (3, 16)
    linear = {m: m * 1e-3 for m in range(1, 9)}           # every row costs: no staircase
    assert packing_from_times(linear) == (1, 0)
    flat = {m: 1e-3 for m in range(1, 9)}                  # a GPU-like kernel: never past one pass
    assert packing_from_times(flat) == (8, 9)


@pytest.mark.parametrize(("rows", "passes"), [(1, 1), (3, 1), (4, 2), (6, 2), (7, 3), (15, 5),
                                              (16, 1), (4096, 1)])
def test_weight_passes_follow_the_staircase(rows, passes):
    est = ServeEstimator(load_model("gpt2"), CPU, CostModel(gemv_rows=3, gemv_rows_limit=16))
    assert est.weight_passes(rows) == passes
    assert ServeEstimator(load_model("gpt2"), CPU, CostModel()).weight_passes(rows) == 1


def test_decode_at_batch_4_reads_the_weights_twice_on_the_cpu_model():
    model = CostModel(gemv_rows=3, gemv_rows_limit=16, infer_layer_overhead_s=0.0)
    est = ServeEstimator(load_model("gpt2"), CPU, model, dtype="fp32")
    w = 500_000_000
    b2, b4 = (est.decode_step_s(b, 64, tp=1, weights_bytes=w, kv_bytes=0) for b in (2, 4))
    assert b4 == pytest.approx(2 * b2)


def test_the_fit_gives_back_the_constants_of_noise_free_times():
    truth = CostModel(gemv_rows=3, gemv_rows_limit=16, link_efficiency=0.05).replace(
        hbm_efficiency=0.6, matmul_efficiency=0.8, matmul_half_dim=64.0,
        infer_layer_overhead_s=3e-4, collective_call_s=2e-3, attention_efficiency=0.05)
    every = {**sv.FIT_CASES, **sv.HELD_OUT}
    results = {}
    for name, case in every.items():
        ttft, tpot = sv.predict(case, truth, CPU, 132)
        results[name] = {"ttft_s": ttft, "tpot_s": tpot, "prompt_tokens": 132}
    base = CostModel(gemv_rows=3, gemv_rows_limit=16)
    fitted = sv.fit({k: v for k, v in results.items() if k in sv.FIT_CASES}, every, base, CPU)
    rows = sv.rows_of(results, every, fitted, CPU)
    assert max(max(abs(r["ttft_error"]), abs(r["tpot_error"])) for r in rows) < 0.02
