"""3D-parallel training equals single-process training (fp32, 12 steps, same seed and batch).

Losses and gradient norms must agree to a relative 1e-4 at every step, for each layout with
and without gradient accumulation (micro-batches run one after another, or as two pipeline
flushes), each through `llmplan launch` (gradient norms, not only losses: a wrong reduction can leave the loss right for a while).
"""

import pytest

COMMON = ("tiny", "--steps", "12", "--seq", "32", "--gbs", "8", "--dtype", "fp32")
REFERENCE = COMMON + ("--mbs", "8")

LAYOUTS = {  # through `llmplan launch`; the wider matrix runs in one world (test_matrix.py)
    "tp2-dp2-zero3-no-sp": ("--tp", "2", "--dp", "2", "--zero", "3", "--no-sp"),
    "pp2-dp2-tp2": ("--pp", "2", "--dp", "2", "--tp", "2", "--sp"),
    "pp2-v2-interleaved": ("--pp", "2", "--vpp", "2"),
}


def accumulation(layout: str, accumulate: bool) -> tuple[str, ...]:
    """Micro-batch sizes giving one micro-batch round (no accumulation) or two."""
    dp = 2 if "dp2" in layout else 1
    per_rank = 8 // dp
    if "pp2" in layout:
        mbs = per_rank // 2 if not accumulate else per_rank // 4
        return ("--mbs", str(mbs)) + (("--pp-rounds", "2") if accumulate else ())
    return ("--mbs", str(per_rank if not accumulate else per_rank // 2))


def steps(events):
    return [e for e in events if e["event"] == "step"]


# pp2-dp2-tp2 without accumulation is in the matrix sample (test_matrix.py)
CASES = [(layout, ga) for layout in LAYOUTS for ga in (False, True)
         if (layout, ga) != ("pp2-dp2-tp2", False)]


@pytest.mark.parametrize(("layout", "accumulate"), CASES,
                         ids=[f"{l}-{'ga2' if ga else 'no-ga'}" for l, ga in CASES])
def test_parallel_run_matches_single_process(run_tiny, layout, accumulate):
    ref = steps(run_tiny(*REFERENCE))
    got = steps(run_tiny(*COMMON, *LAYOUTS[layout], *accumulation(layout, accumulate)))
    assert len(ref) == len(got) == 12
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["step"]
    assert ref[-1]["loss"] < ref[0]["loss"]  # the synthetic task is learnable
