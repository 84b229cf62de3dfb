"""The per-GPU total is the peak of the step's timeline: checked against torch's own
MemTracker (FSDPMemTracker under ZeRO-2/3, with a fake process group of 8 ranks) measuring
llmplan's model, recompute and optimizer at real width under FakeTensorMode."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

LLAMA_1B_4L = ("llama-3.2-1b", "--set", "num_layers=4", "--seq", "2048")  # its real width
FSDP_04B = ("tiny", "--set", "hidden_size=2048", "--set", "num_layers=4", "--set",
            "ffn_hidden_size=8192", "--set", "num_heads=16", "--set", "num_kv_heads=8",
            "--set", "vocab_size=32000", "--seq", "16")


def measured(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "runtime.memtrack", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def autocast_cache_bytes(model: str, sets: dict, *, head_only: bool = False) -> int:
    """bf16 copies of every linear weight (autocast caches each cast for the step): counted
    on the transformers model of the same shape, independently of the planner. An fp8 run
    casts its block linears' weights to fp8 at each GEMM: only the LM head's bf16 copy is
    cached (``head_only``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_oracle import to_hf_config
    from presets import load_model

    hf = to_hf_config(load_model(model, sets))
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    return 2 * sum(m.weight.numel() for name, m in net.named_modules()
                   if isinstance(m, torch.nn.Linear) and (name == "lm_head" or not head_only))


@pytest.mark.parametrize("args", [
    (),
    ("--recompute", "full"),
    ("--recompute", "selective"),
    ("--dtype", "bf16"),
    ("--m", "2"),
    ("--optimizer", "sgd_momentum"),
    ("--set", "tie_embeddings=false", "--dtype", "bf16"),
    ("--dtype", "fp8"),
], ids=["fp32", "full-recompute", "selective", "bf16-autocast", "accumulation", "sgd", "untied-bf16",
        "fp8"])
def test_single_rank_peak_and_activations(args):
    out = measured(*LLAMA_1B_4L, *args)
    predicted = out["predicted"]
    assert predicted["total_bytes"] == pytest.approx(out["peak_bytes"], rel=0.02)
    # activations saved at the turn from forward to backward (MemTracker counts autocast's
    # cached weight casts as activations too: they are made in the forward)
    turn = out["turn"]["activation"]
    if "bf16" in args or "fp8" in args:
        sets = {"num_layers": "4", **({"tie_embeddings": "false"} if "tie_embeddings=false" in args else {})}
        turn -= autocast_cache_bytes("llama-3.2-1b", sets, head_only="fp8" in args)
    kept = predicted["activations_bytes"] - predicted["activations_recompute_bytes"]
    assert kept == pytest.approx(turn, rel=0.05)


@pytest.mark.parametrize(("args", "rel"), [
    (("--dp", "8", "--zero", "3"), 0.02),
    (("--dp", "8", "--zero", "2", "--dtype", "bf16"), 0.02),
    (("--dp", "4", "--zero", "3", "--m", "2"), 0.02),
    # the fp8 cast of the largest weight is counted beside the whole block's gradients,
    # which do not exist yet when it is cast: over by 2.5% here
    (("--dp", "8", "--zero", "3", "--dtype", "fp8"), 0.03),
], ids=["zero3", "zero2-bf16", "zero3-accumulation", "zero3-fp8"])
def test_fsdp_rank_peak(args, rel):
    out = measured(*FSDP_04B, *args)
    assert out["predicted"]["total_bytes"] == pytest.approx(out["peak_bytes"], rel=rel)
    assert out["predicted"]["peak_phase"] == "after_loss"  # mid-backward, not at the turn


def test_an_fp8_weight_cast_holds_nine_bytes_per_element():
    """torchao's eager cast (``planner.fp8.RUNTIME_CAST_BYTES``) measured by MemTracker on
    one fp8 linear's forward and backward: the step's peak is the weight plus 9 bytes per
    element of it (the backward's cast for the input gradient, before the weight gradient
    exists), in fp32 and in bf16."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from planner.fp8 import RUNTIME_CAST_BYTES
    from runtime.fp8 import apply_fp8

    n_in, n_out, tokens = 2048, 8192, 32
    for dtype in (torch.float32, torch.bfloat16):
        with FakeTensorMode():
            model = torch.nn.ModuleDict({"layers": torch.nn.ModuleDict(
                {"0": torch.nn.Linear(n_in, n_out, bias=False, dtype=dtype)})})
            apply_fp8(model, emulate=True)
            x = torch.randn(tokens, n_in, dtype=dtype, requires_grad=True)
            tracker = MemTracker()
            tracker.track_external(model, x)
            with tracker:
                model["layers"]["0"](x).float().sum().backward()
            peak = sum(v for per in tracker.get_tracker_snapshot("peak").values()
                       for k, v in per.items() if str(getattr(k, "value", k)).lower() == "total")
        weight = n_in * n_out
        assert (peak - weight * dtype.itemsize) / weight == pytest.approx(RUNTIME_CAST_BYTES,
                                                                        abs=0.1), dtype
