"""CUDA-only checks (marked ``gpu``: skipped without a GPU; ``bench/gpu.sh`` runs them on a
lent machine): the planner's per-GPU peak against the CUDA allocator's, and a run's measured
states against the runtime recipe, byte for byte, on a real device."""

import pytest

from helpers import launch

pytestmark = pytest.mark.gpu


def cuda_launch(*args: str):
    return launch(*args, device="cuda")


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_the_allocator_peak_is_the_planners_peak(recompute):
    """llama-3.2-1b's width, 4 layers, bf16, s=2048: ``max_memory_allocated`` of the whole
    step against the planner's timeline peak (the allocator rounds each block up to 512 B
    and keeps cuBLAS workspaces: within 10%)."""
    events, _ = cuda_launch("llama-3.2-1b", "--set", "num_layers=4", "--dtype", "bf16",
                            "--seq", "2048", "--gbs", "2", "--mbs", "2", "--steps", "4",
                            "--recompute", recompute)
    done = next(e for e in events if e["event"] == "done")
    rank = done["ranks"][0]
    assert rank["measured_max_allocated_bytes"] == pytest.approx(rank["predicted_total_bytes"],
                                                                 rel=0.10)
    for cat in ("parameters", "gradients", "optimizer_states"):
        assert rank[f"measured_{cat}_bytes"] == rank[f"predicted_{cat}_bytes"], cat
