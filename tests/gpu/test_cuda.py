"""CUDA-only checks (marked ``gpu``: skipped without a GPU; ``bench/gpu.sh`` runs them on a
lent machine): the planner's per-GPU peak against the CUDA allocator's, and a run's measured
states against the runtime recipe, byte for byte, on a real device."""

import pytest

from helpers import launch

pytestmark = pytest.mark.gpu


def cuda_launch(*args: str):
    return launch(*args, device="cuda")


def skip_without_fp8_tensor_cores() -> None:
    import torch

    from runtime.fp8 import FP8_CAPABILITY

    if torch.cuda.get_device_capability() < FP8_CAPABILITY:
        pytest.skip("fp8 tensor cores need compute capability 8.9+")


@pytest.mark.parametrize(("recompute", "dtype"), [("none", "bf16"), ("full", "bf16"),
                                                   ("none", "fp8")])
def test_the_allocator_peak_is_the_planners_peak(recompute, dtype):
    """llama-3.2-1b's width, 4 layers, bf16 (or fp8 GEMMs), s=2048: ``max_memory_allocated``
    of the whole step against the planner's timeline peak (the allocator rounds each block
    up to 512 B and keeps cuBLAS workspaces: within 10%)."""
    if dtype == "fp8":
        skip_without_fp8_tensor_cores()
    events, _ = cuda_launch("llama-3.2-1b", "--set", "num_layers=4", "--dtype", dtype,
                            "--seq", "2048", "--gbs", "2", "--mbs", "2", "--steps", "4",
                            "--recompute", recompute)
    done = next(e for e in events if e["event"] == "done")
    rank = done["ranks"][0]
    assert rank["measured_max_allocated_bytes"] == pytest.approx(rank["predicted_total_bytes"],
                                                                 rel=0.10)
    for cat in ("parameters", "gradients", "optimizer_states"):
        assert rank[f"measured_{cat}_bytes"] == rank[f"predicted_{cat}_bytes"], cat


def test_fp8_trains_like_bf16_on_fp8_tensor_cores():
    """torchao's fp8 GEMMs on the device (no emulation): the loss follows the bf16 run's
    within fp8's noise (tests/runtime/test_fp8_training.py)."""
    skip_without_fp8_tensor_cores()
    runs = {}
    for dtype in ("bf16", "fp8"):
        events, _ = cuda_launch("llama-3.2-1b", "--set", "num_layers=4", "--dtype", dtype,
                                "--seq", "2048", "--gbs", "2", "--mbs", "2", "--steps", "8")
        runs[dtype] = [e for e in events if e["event"] == "step"]
    for a, b in zip(runs["bf16"], runs["fp8"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3), (a["step"], a["loss"], b["loss"])
