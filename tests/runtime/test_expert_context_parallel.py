"""Expert parallelism and context parallelism train like one process.

Ring attention (runtime.context_parallel) in 2 and 4 gloo processes against
``F.scaled_dot_product_attention`` on the whole sequence: output and the gradients of q, k
and v, causal, with a sliding window short enough that whole K/V blocks are masked, and with
ALiBi. Then `llmplan launch` runs (fp32, 8 steps, seq 32): every step's loss and gradient
norm within a relative 1e-4 of the single-process run of the same global batch, for
tiny-moe over ep (with dp, tp, ZeRO-1 and FSDP) and tiny over cp (with dp, tp + sp, FSDP over
dp x cp, and a sliding window). `make test-extended` adds pipelining, ALiBi, ZeRO-2 and
ep x cp. Bad layouts exit 2 with one line before any process starts.
"""

import os

import pytest
import torch

from helpers import launch_refused

COMMON = ("--steps", "8", "--seq", "32", "--gbs", "8", "--dtype", "fp32")


# ---- ring attention against SDPA ------------------------------------------------------------
RING_CASES = [  # (window, alibi): plain causal; window 3 (cp 4: chunks of 2, whole blocks masked)
    (0, False), (3, False), (0, True), (5, True)]


def _ring_worker(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from runtime.context_parallel import load_balanced_indices, local_chunks, ring_attention
    from runtime.model import alibi_slopes

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(0)
        b, a, g, s, d = 2, 4, 2, 16, 8  # GQA: two query heads per kv head
        q, k, v, grad = (torch.randn(shape, generator=gen) for shape in
                         ((b, a, s, d), (b, g, s, d), (b, g, s, d), (b, a, s, d)))
        i = torch.arange(s)
        for window, alibi in RING_CASES:
            allowed = i[None, :] <= i[:, None]
            if window:
                allowed &= i[:, None] - i[None, :] < window
            slopes = alibi_slopes(a) if alibi else None
            mask = allowed if slopes is None else (slopes[:, None, None] * i.float()).masked_fill(
                ~allowed, float("-inf"))
            full = [t.clone().requires_grad_() for t in (q, k, v)]
            reference = F.scaled_dot_product_attention(*full, attn_mask=mask, enable_gqa=True)
            reference.backward(grad)
            mine = [local_chunks(t, world, rank, dim=2).requires_grad_() for t in (q, k, v)]
            positions = load_balanced_indices(s, world, rank)[None]
            out = ring_attention(*mine, positions, dist.group.WORLD, window=window, slopes=slopes)
            out.backward(local_chunks(grad, world, rank, dim=2))
            case = f"window {window}, alibi {alibi}, rank {rank}"
            torch.testing.assert_close(out, local_chunks(reference.detach(), world, rank, dim=2),
                                       atol=1e-5, rtol=0, msg=lambda m: f"{case}: output {m}")
            for name, t, whole in zip("qkv", mine, full):
                assert torch.isfinite(t.grad).all(), case
                torch.testing.assert_close(t.grad, local_chunks(whole.grad, world, rank, dim=2),
                                           atol=1e-5, rtol=0,
                                           msg=lambda m, n=name: f"{case}: d{n} {m}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.extended)])
def test_ring_attention_equals_sdpa_on_the_whole_sequence(world, tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_ring_worker, args=(world, str(tmp_path / "store")), nprocs=world, join=True)


def test_load_balanced_chunks_cover_the_sequence_once():
    from runtime.context_parallel import load_balanced_indices

    held = [load_balanced_indices(16, 4, r).tolist() for r in range(4)]
    assert held[0] == [0, 1, 14, 15] and held[3] == [6, 7, 8, 9]
    assert sorted(sum(held, [])) == list(range(16))


# ---- parity through `llmplan launch` --------------------------------------------------------
PARITY = {  # id: (model and its --set, layout)
    "moe-dp4-ep2": (("tiny-moe",), ("--mbs", "2", "--dp", "4", "--ep", "2")),
    "moe-dp2-ep2-tp2": (("tiny-moe",), ("--mbs", "4", "--dp", "2", "--ep", "2", "--tp", "2")),
    "moe-dp2-ep2-zero1": (("tiny-moe",), ("--mbs", "4", "--dp", "2", "--ep", "2", "--zero", "1")),
    # each expert an FSDP unit over its 2 replicas, the dense weights over 4
    "moe-dp4-ep2-zero3": (("tiny-moe",), ("--mbs", "2", "--dp", "4", "--ep", "2", "--zero", "3")),
    "cp2": (("tiny",), ("--mbs", "8", "--cp", "2")),
    "cp2-dp2": (("tiny",), ("--mbs", "4", "--cp", "2", "--dp", "2")),
    "cp2-tp2-sp": (("tiny",), ("--mbs", "8", "--cp", "2", "--tp", "2", "--sp")),
    "cp2-window8": (("tiny", "--set", "sliding_window=8"), ("--mbs", "8", "--cp", "2")),
}
EXTENDED = {
    "moe-dp2-ep2-tp2-sp-zero3": (("tiny-moe",), ("--mbs", "4", "--dp", "2", "--ep", "2",
                                                 "--tp", "2", "--sp", "--zero", "3")),
    "moe-dp2-ep2-pp2": (("tiny-moe",), ("--mbs", "2", "--dp", "2", "--ep", "2", "--pp", "2")),
    "moe-dp2-ep2-cp2-zero3": (("tiny-moe",), ("--mbs", "4", "--dp", "2", "--ep", "2",
                                              "--cp", "2", "--zero", "3")),
    "moe-dp2-ep2-zero2-full-recompute": (("tiny-moe",), ("--mbs", "4", "--dp", "2", "--ep", "2",
                                                         "--zero", "2", "--recompute", "full")),
    "cp2-dp2-zero3": (("tiny",), ("--mbs", "4", "--cp", "2", "--dp", "2", "--zero", "3")),
    "cp2-zero1": (("tiny",), ("--mbs", "8", "--cp", "2", "--zero", "1")),
    "cp2-pp2-interleaved": (("tiny",), ("--mbs", "2", "--cp", "2", "--pp", "2", "--vpp", "2")),
    "cp4-selective": (("tiny",), ("--mbs", "8", "--cp", "4", "--recompute", "selective")),
    "alibi-mqa-cp2-tp2": (("tiny-falcon",), ("--mbs", "8", "--cp", "2", "--tp", "2")),
    "learned-tied-cp2-pp2": (("tiny-gpt2",), ("--mbs", "2", "--cp", "2", "--pp", "2")),
}
CASES = [pytest.param(k, id=k) for k in PARITY] + [
    pytest.param(k, id=k, marks=pytest.mark.extended) for k in EXTENDED]


def steps(events):
    return [e for e in events if e["event"] == "step"]


@pytest.mark.parametrize("case", CASES)
def test_expert_and_context_parallel_runs_match_single_process(run_tiny, case):
    model, layout = {**PARITY, **EXTENDED}[case]
    ref = steps(run_tiny(*model, *COMMON, "--mbs", "8"))
    got_events = run_tiny(*model, *COMMON, *layout)
    got = steps(got_events)
    start = next(e for e in got_events if e["event"] == "start")
    for flag in ("--ep", "--cp"):  # the layout ran as asked
        if flag in layout:
            assert start["layout"][flag[2:]] == int(layout[layout.index(flag) + 1])
    assert len(ref) == len(got) == 8
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (
            a["step"], a["grad_norm"], b["grad_norm"])
    assert ref[-1]["loss"] < ref[0]["loss"]  # the synthetic task is learnable


def test_the_sliding_window_changes_the_reference(run_tiny):
    """The windowed model is another model (seq 32 > window 8): its cp run is a real check."""
    plain = steps(run_tiny("tiny", *COMMON, "--mbs", "8"))
    windowed = steps(run_tiny("tiny", "--set", "sliding_window=8", *COMMON, "--mbs", "8"))
    assert plain[-1]["loss"] != pytest.approx(windowed[-1]["loss"], rel=1e-4)


# ---- refused before any process starts ------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (("tiny-moe", "--dp", "2", "--ep", "4"), "ep(4) does not divide dp(2)"),
    (("tiny", "--cp", "2", "--seq", "30"), "2 x cp(2) = 4 does not divide seq(30)"),
    (("tiny", "--dp", "2", "--ep", "2"), "ep(2) needs a mixture-of-experts model"),
    (("tiny-moe", "--dp", "2", "--ep", "2", "--save-hf", "/nonexistent-llmplan-out"),
     "--save-hf with ep(2) is not written"),
], ids=["ep-exceeds-dp", "cp-seq", "ep-dense", "ep-save-hf"])
def test_bad_layouts_exit_2_with_one_line(args, needle):
    said = launch_refused(*args)
    assert needle in said, said


def test_the_contract_refuses_what_the_runtime_does_not_run():
    from planner import layout
    from planner.finetune import Adapters
    from planner.setup import Parallel, TrainSetup
    from presets import load_model

    cfg = load_model("tiny-moe")
    dpo = TrainSetup(seq_len=32, micro_batch=2, objective="dpo")
    lora = TrainSetup(seq_len=32, micro_batch=2, adapters=Adapters(method="lora"))
    said = {p.message for setup, par in ((dpo, Parallel(cp=2)), (lora, Parallel(dp=2, ep=2)))
            for p in layout.refusals(layout.problems(cfg, setup, par), "llmplan")}
    assert any(m.startswith("DPO is trained over dp x ZeRO: cp(2) must be 1") for m in said), said
    assert "--method lora is planned over dp x ZeRO: ep(2) must be 1" in said, said
    runs = TrainSetup(seq_len=32, micro_batch=1, grad_accum=2, dtype="fp32", recipe="runtime")
    for par in (Parallel(dp=4, ep=2, zero=3, tp=2, sp=True), Parallel(cp=2, pp=2, tp=2, sp=True),
                Parallel(dp=2, ep=2, cp=2, zero=1)):
        assert not layout.refusals(layout.problems(cfg, runs, par), "llmplan"), par
