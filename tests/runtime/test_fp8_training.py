"""FP8 training (runtime.fp8): torchao's Float8Linear on the block linears.

The GEMM against an independent oracle: an emulated fp8 linear equals torch's own
``_scaled_mm`` kernel on the same E4M3 casts, and both equal the cast written out by hand
(scale 448 / amax, round to E4M3, multiply, unscale). Which linears are fp8 against the
planner's inventory (``planner.fp8.linear_weights_per_layer``). Then the layout matrix in
one world of CPU processes (the worker emulates the GEMMs; ``llmplan launch`` refuses fp8
on CPU): where each rank casts the very tensors the single process casts (data and
pipeline parallel and ZeRO-1 at the same micro-batch, recompute) every step's loss and gradient
norm is within 1e-4 of the single-process fp8 run; where the tensors a scale is taken over
change (ZeRO-3 gathers bf16 weights, TP and CP cast other groupings, EP's experts see both
ranks' tokens) within fp8's own noise (see ``FP8_NOISE``).
"""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers import launch_refused

E4M3_MAX = 448.0


def _cast(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-wise dynamic scaling by hand (Micikevicius et al. 2022 §3): the E4M3 values
    and the scale that maps the tensor's amax to E4M3's largest finite value."""
    scale = E4M3_MAX / t.abs().max().float()
    return (t.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def test_an_fp8_linear_is_the_scaled_e4m3_gemm():
    from runtime.fp8 import apply_fp8

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 64, generator=gen)
    w = torch.randn(32, 64, generator=gen) * 0.02
    xq, sx = _cast(x)
    wq, sw = _cast(w)
    by_hand = (xq.float() @ wq.float().t()) / (sx * sw)
    kernel = torch._scaled_mm(xq, wq.t(), scale_a=(1 / sx).reshape(()), scale_b=(1 / sw).reshape(()),
                              out_dtype=torch.float32)
    torch.testing.assert_close(kernel, by_hand, atol=1e-5, rtol=1e-5)
    for emulate in (True, False):
        model = torch.nn.ModuleDict({"layers": torch.nn.ModuleDict(
            {"0": torch.nn.Linear(64, 32, bias=False)})})
        model["layers"]["0"].weight.data.copy_(w)
        assert apply_fp8(model, emulate=emulate) == 1
        out = model["layers"]["0"](x)
        torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"emulate={emulate}: {m}")
    exact = x @ w.t()
    error = ((out - exact).norm() / exact.norm()).item()
    assert 1e-3 < error < 0.1, error  # E4M3's 3 mantissa bits: visibly not the fp32 GEMM


def test_the_block_linears_are_fp8_and_the_head_and_router_are_not():
    from planner.fp8 import linear_weights_per_layer
    from presets import load_model
    from runtime.fp8 import apply_fp8
    from runtime.model import Decoder

    for name in ("tiny", "tiny-moe"):
        cfg = load_model(name)
        with torch.device("meta"):
            model = Decoder(cfg)
        apply_fp8(model, emulate=True)
        fp8 = {n: m for n, m in model.named_modules() if type(m).__name__ == "RuntimeFloat8Linear"}
        assert sum(m.weight.numel() for m in fp8.values()) == \
            cfg.num_layers * linear_weights_per_layer(cfg, 1, moe=cfg.is_moe), name
        assert not any(n.endswith("router") or n == "output" for n in fp8), name
        assert type(model.output) is torch.nn.Linear


def test_an_expert_no_token_chose_gets_a_zero_gradient():
    from runtime.fp8 import apply_fp8

    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleDict(
        {"0": torch.nn.Linear(64, 32, bias=False)})})
    apply_fp8(model, emulate=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model["layers"]["0"](torch.zeros(0, 64))
    out.float().sum().backward()
    assert out.shape == (0, 32) and out.dtype == torch.bfloat16
    assert torch.equal(model["layers"]["0"].weight.grad, torch.zeros(32, 64))


# ---- what the eager casts move (the cost model's planner.fp8.runtime_cast_elements) -----------
class CastTraffic(TorchDispatchMode):
    """Over aten ops: the HBM bytes of every op but the GEMMs (inputs read, outputs written)
    and the elements of every copy into an fp8 dtype (one per cast)."""

    GEMMS = {"mm", "_scaled_mm", "addmm", "bmm"}
    FREE = {"view", "t", "transpose", "_unsafe_view", "reshape", "detach", "alias", "expand",
            "as_strided"}  # no data moves
    bytes = cast_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in self.GEMMS | self.FREE:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0]
                       if isinstance(t, torch.Tensor) and t.dim() > 0]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        if name == "_to_copy" and out.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            self.cast_elements += out.numel()
        return out


def test_an_eager_fp8_cast_moves_33_bytes_per_element():
    """One fp8 linear's forward and backward through torch's own ``_scaled_mm`` (CPU): every
    byte outside the GEMMs is the casts', ``EAGER_CAST_BYTES`` per element cast, and the
    elements cast are 2 (W + X + G), for bf16 and fp32 operands alike."""
    from planner.fp8 import EAGER_CAST_BYTES
    from runtime.fp8 import apply_fp8

    n_in, n_out, tokens = 256, 512, 64
    for dtype in (torch.bfloat16, torch.float32):
        model = torch.nn.ModuleDict({"layers": torch.nn.ModuleDict(
            {"0": torch.nn.Linear(n_in, n_out, bias=False, dtype=dtype)})})
        apply_fp8(model, emulate=False)
        x = torch.randn(tokens, n_in, dtype=dtype, requires_grad=True)
        grad = torch.randn(tokens, n_out, dtype=dtype)
        with CastTraffic() as mode:
            model["layers"]["0"](x).backward(grad)
        elements = 2 * (n_in * n_out + tokens * n_in + tokens * n_out)
        assert mode.cast_elements == elements, dtype
        assert mode.bytes == EAGER_CAST_BYTES * elements, dtype


@pytest.mark.parametrize(("model", "recompute"), [("tiny", "none"), ("tiny", "full"),
                                                  ("tiny-moe", "none")])
def test_the_planner_counts_every_cast_the_decoder_makes(model, recompute):
    """The whole decoder in fp8, forward and backward (full recompute redoes each block's
    forward): the elements its casts produce are the planner's per-layer count times the
    layers (the LM head and routers are not cast)."""
    from planner.fp8 import runtime_cast_elements
    from presets import load_model
    from runtime.fp8 import apply_fp8
    from runtime.init import init_weights
    from runtime.model import Decoder
    from runtime.parallel import apply_recompute

    cfg = load_model(model, SETS.get(model))
    net = Decoder(cfg)
    init_weights(net, 0)
    net.reset_buffers()
    apply_fp8(net, emulate=True)
    apply_recompute(net, recompute)
    b, s = 4, 32
    tokens = torch.randint(0, cfg.vocab_size, (b, s), generator=torch.Generator().manual_seed(0))
    with CastTraffic() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
        net(tokens).float().logsumexp(-1).sum().backward()
    assert mode.cast_elements == cfg.num_layers * runtime_cast_elements(
        cfg, 1, moe=cfg.is_moe, ep=1, tokens=b * s, recompute=recompute)


# ---- the layout matrix in fp8 ---------------------------------------------------------------
FP8_NOISE = {"loss": 2e-3, "grad_norm": 3e-2}
"""How far fp8 runs of one model drift apart when a scale is taken over other tensors: an
element near an E4M3 rounding boundary moves by a whole step (2^-3 of its value) for a bf16
perturbation; top-2 routing amplifies it. Measured here: single-process fp8 at micro-batch
8 against 4 differs by 0.5% in gradient norm; bf16 layouts agree to 1e-4 (test_parity)."""

R = {"tp": 1, "pp": 1, "dp": 1, "zero": 0, "sp": False, "recompute": "none"}
MATRIX = {  # model: [(layout, reference index, exact)]
    "tiny": [({"mbs": 8}, None, None), ({"mbs": 4}, None, None),
             ({"dp": 2, "mbs": 4}, 1, True), ({"pp": 2, "mbs": 4}, 1, True),
             ({"mbs": 8, "recompute": "full"}, 0, True),
             ({"mbs": 8, "recompute": "selective"}, 0, True),
             ({"dp": 2, "zero": 1, "mbs": 4}, 1, True),
             ({"dp": 2, "zero": 3, "mbs": 4}, 1, False), ({"tp": 2, "sp": True, "mbs": 8}, 0, False),
             ({"cp": 2, "mbs": 8}, 0, False)],
    "tiny-moe": [({"mbs": 4}, None, None), ({"dp": 2, "ep": 2, "mbs": 4}, 0, False),
                 ({"tp": 2, "mbs": 4}, 0, False)],
}
SETS = {"tiny": {"ffn_hidden_size": "192"}}  # 176 / tp 2 = 88 is not a multiple of 16


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.extended)
                                   if m == "tiny-moe" else m for m in MATRIX])  # MoE: extended
def test_fp8_layouts_train_like_the_single_process_fp8_run(model, tmp_path):
    from presets import load_model
    from runtime.matrix import agrees, launch_matrix

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = load_model(model, SETS.get(model))
    cases = MATRIX[model]
    rc, got, error = launch_matrix(cfg, [{**R, **layout} for layout, _, _ in cases],
                                   folder=tmp_path, nproc=2, dtype="fp8")
    assert rc == 0 and not error, error
    assert len(got) == len(cases)
    for (layout, ref, exact), result in zip(cases, got):
        if ref is None:
            assert result.losses[-1] < result.losses[0], layout  # it learns
            continue
        reference = got[ref]
        if exact:
            assert not agrees(reference, result, rel=1e-4), (layout, agrees(reference, result))
            continue
        for a, b, ga, gb in zip(reference.losses, result.losses, reference.grad_norms,
                                result.grad_norms):
            assert b == pytest.approx(a, rel=FP8_NOISE["loss"]), (layout, a, b)
            assert gb == pytest.approx(ga, rel=FP8_NOISE["grad_norm"]), (layout, ga, gb)


def test_fp8_is_not_the_bf16_run(tmp_path):
    """The same model and batch in bf16 and fp8: the fp8 GEMMs move the gradient norm by
    more than bf16's own layout noise (1e-4) and the loss by less than fp8's noise."""
    from presets import load_model
    from runtime.matrix import launch_matrix

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = load_model("tiny")
    runs = {}
    for dtype in ("bf16", "fp8"):
        rc, got, error = launch_matrix(cfg, [{**R, "mbs": 8}], folder=tmp_path, nproc=1,
                                       steps=4, dtype=dtype)
        assert rc == 0 and not error, error
        runs[dtype] = got[0]
    bf16, fp8 = runs["bf16"], runs["fp8"]
    assert max(abs(a - b) / a for a, b in zip(bf16.grad_norms, fp8.grad_norms)) > 1e-3
    for a, b in zip(bf16.losses, fp8.losses):
        assert b == pytest.approx(a, rel=FP8_NOISE["loss"])


# ---- refused before any process starts ------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (("tiny", "--dtype", "fp8"),
     "--dtype fp8 runs on a CUDA GPU with fp8 tensor cores (compute capability 8.9+), not on cpu"),
    (("tiny", "--dtype", "fp8", "--tp", "2"),
     "fp8 GEMMs need multiples of 16: ffn hidden / tp(88) is not"),
    (("tiny", "--dtype", "fp8", "--method", "lora"), "fp8 adapters are not trained"),
], ids=["cpu", "dims", "lora"])
def test_fp8_launches_the_runtime_cannot_run_exit_2_with_one_line(args, needle):
    said = launch_refused(*args)
    assert needle in said, said


def test_the_contract_says_which_fp8_layouts_run():
    from planner import layout
    from planner.setup import Parallel, TrainSetup
    from presets import load_model

    tiny = load_model("tiny")
    fp8 = TrainSetup(seq_len=32, micro_batch=2, grad_accum=2, dtype="fp8", recipe="runtime")
    block = TrainSetup(seq_len=32, micro_batch=2, dtype="fp8", fp8_scaling="block")
    said = lambda cfg, setup, par, runtime="llmplan": [  # noqa: E731
        p.message.split(" (llmplan's runtime;")[0]
        for p in layout.refusals(layout.problems(cfg, setup, par), runtime)]
    assert said(tiny, fp8, Parallel(dp=2, zero=3, pp=2)) == []
    assert said(tiny, block, Parallel()) == [
        "fp8 scaling(block) is not run: torchao float8 trains with tensor-wise scales"]
    assert said(tiny, block, Parallel(), "any") == []
    wide = load_model("tiny", {"ffn_hidden_size": "192"})
    assert said(wide, fp8, Parallel(tp=4)) == [  # kv heads 2: replicated K/V row slices
        "fp8 with tp(4) > kv heads(2) is not run: the replicated K/V projections' row slices "
        "are bf16"]
    assert said(wide, fp8, Parallel(tp=4), "any") == []  # each rank holds one whole kv head (16 wide)
