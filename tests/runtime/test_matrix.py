"""The layout matrix, sampled: layouts the contract accepts train like one process.

For each tiny preset (llama-, mixtral-, gpt2- and falcon-style) a fixed, representative
sample of the layouts that the layout contract accepts trains 8 fp32 steps in one torchrun
world of as many CPU processes as its widest layout (runtime.matrix); every step's loss and
gradient norm must be within a relative 1e-4 of the single-process run. `make test-matrix` runs every accepted layout.
"""

import pytest

from presets import load_model
from runtime.matrix import agrees, enumerate_layouts, launch_matrix, reference_layout


def L(**k):
    return {"tp": 1, "pp": 1, "dp": 1, "zero": 0, "sp": False, "recompute": "none", "mbs": 4, **k}


SAMPLE = {  # 13 layouts: TP+FSDP with and without SP, TP x PP, ZeRO-1 under TP, every recompute
    "tiny": [L(tp=2, dp=2, zero=3, mbs=2), L(pp=2, dp=2, zero=1, mbs=2),
             L(tp=2, pp=2, sp=True, recompute="full"), L(tp=2, dp=2, zero=1, mbs=2)],
    "tiny-moe": [L(tp=2, dp=2, zero=3, sp=True, mbs=2), L(pp=2, dp=2, zero=2, mbs=2),
                 L(tp=2, pp=2)],
    # tied embeddings under PP; learned positions under TP and PP
    "tiny-gpt2": [L(tp=2, dp=2, zero=3, mbs=2), L(tp=2, sp=True, recompute="selective"),
                  L(tp=2, pp=2, sp=True)],
    # multi-query under TP: the one kv head replicated on both ranks; ALiBi under TP and PP
    "tiny-falcon": [L(dp=2, zero=1, mbs=2, recompute="full"), L(tp=2, dp=2, zero=3, mbs=2),
                    L(tp=2, pp=2, sp=True)],
}


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.extended)
                                   if m in ("tiny-moe", "tiny-falcon", "tiny-gpt2") else m
                                   for m in SAMPLE])  # MoE, GPT-2, MQA/ALiBi: test-extended
def test_sampled_layouts_match_single_process(model, tmp_path):
    cfg = load_model(model)
    accepted, _ = enumerate_layouts(cfg, seq=32, gbs=8)
    for entry in SAMPLE[model]:
        assert entry in accepted, entry  # the sample is drawn from what the contract accepts
    # as many processes as the widest layout: a narrower one would run as identical replicas
    nproc = max(e["tp"] * e["pp"] * e["dp"] for e in SAMPLE[model])
    rc, got, error = launch_matrix(cfg, [reference_layout(8), *SAMPLE[model]], folder=tmp_path,
                                   nproc=nproc)
    assert rc == 0, error
    reference, *layouts = got
    assert len(layouts) == len(SAMPLE[model])
    assert reference.losses[-1] < reference.losses[0]  # the task is learnable
    for ev in layouts:
        assert not agrees(reference, ev), (ev.layout, agrees(reference, ev))


def test_the_contract_refuses_with_reasons_and_accepts_the_rest():
    accepted, refused = enumerate_layouts(load_model("tiny-falcon"), seq=32, gbs=8)
    assert any(e["tp"] == 2 for e in accepted)  # multi-query: its kv head is replicated
    reasons = {part for _, why in refused for part in why.split("; ")}
    assert reasons == {"sequence parallel needs tp > 1", "zero(1) needs dp > 1",
                       "zero(2) needs dp > 1", "zero(3) needs dp > 1"}
    assert len(accepted) + len(refused) == 2 * 2 * 2 * 4 * 2 * 3
