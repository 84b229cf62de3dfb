"""Measure one training step's memory timeline of llmplan's own model at real size, without
allocating it: torch's ``MemTracker`` (``FSDPMemTracker`` under ZeRO-2/3, with a fake
process group of dp ranks) records every tensor's bytes while ``FakeTensorMode`` runs the
runtime's model, recompute and optimizer on tensors that have shapes but no storage.

``python -m runtime.memtrack MODEL --seq S [--mbs B --m M --dtype D --recompute R
--optimizer O --dp N --zero Z] [--set k=v]`` prints one JSON object: the step's peak and
its breakdown by category, the activations saved at the turn from forward to backward, and
the planner's prediction for the same setup (``--dtype fp8``: torchao's emulated fp8 GEMMs,
``runtime.fp8``, whose fp32 operand copies a CUDA run does not make). Single-rank layouts
and data parallelism only (TP and PP need real collectives). The oracle tests and
``bench/memory_timeline.py`` use it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from typing import Any

GIB = 2**30


def _category(key) -> str:
    return str(getattr(key, "value", key)).lower()


def _snapshot(tracker, kind: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for per_device in tracker.get_tracker_snapshot(kind).values():
        for key, value in per_device.items():
            out[_category(key)] = out.get(_category(key), 0) + int(value)
    return out


def measure(cfg, setup, *, dp: int = 1, zero: int = 0) -> dict[str, Any]:
    """The second step's peak (the first creates the optimizer states) and the activations
    at the first micro-batch's turn, by MemTracker category, in bytes."""
    import torch
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from runtime.model import Decoder
    from runtime.fp8 import apply_fp8
    from runtime.parallel import BF16_COMPUTE, apply_fsdp, apply_recompute
    from runtime.trainer import make_optimizer, param_groups

    fsdp = zero >= 2 and dp > 1
    mesh = None
    if fsdp:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=dp)
        mesh = init_device_mesh("cpu", (dp,), mesh_dim_names=("dp",))
    m, b, s = setup.grad_accum, setup.micro_batch, setup.seq_len
    autocast = setup.dtype in BF16_COMPUTE and not fsdp  # as runtime.trainer.Trainer.contexts
    with FakeTensorMode():
        # as runtime.parallel.build: under FSDP shard on the meta device, then materialise
        with torch.device("meta") if fsdp else contextlib.nullcontext():
            model = Decoder(cfg)
        if setup.dtype == "fp8":
            apply_fp8(model, emulate=True)
        apply_recompute(model, setup.recompute)
        if fsdp:
            apply_fsdp(model, mesh, zero=zero, dtype=setup.dtype)
            model.to_empty(device="cpu")
            model.tie_weights()
        optimizer = make_optimizer(setup.optimizer, param_groups(model), lr=1e-4,
                                   weight_decay=0.1)
        tokens = torch.randint(0, cfg.vocab_size, (m * b, s + 1))
        turns: list[dict[str, int]] = []

        def step(tracker=None) -> None:
            optimizer.zero_grad(set_to_none=True)
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with amp:
                for i in range(m):
                    if tracker is not None and i:
                        tracker.reset_mod_stats()
                    x, y = tokens[i * b:(i + 1) * b, :-1], tokens[i * b:(i + 1) * b, 1:]
                    loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(0, 1)) / m
                    if tracker is not None and i == 0:
                        turns.append(_snapshot(tracker, "current"))
                    loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()

        step()
        if fsdp:
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

            tracker = FSDPMemTracker(model, optimizer)
            tracker.track_inputs((tokens,))
        else:
            tracker = MemTracker()
            tracker.track_external(model, optimizer, tokens)
        with tracker:
            step(tracker)
        peak = _snapshot(tracker, "peak")
    return {"peak_bytes": peak.pop("total"), "peak": peak, "turn": turns[0]}


def predict(cfg, setup, *, dp: int = 1, zero: int = 0):
    from planner.setup import Parallel
    from planner.memory import memory_report

    return memory_report(cfg, replace(setup, recipe="runtime"), Parallel(dp=dp, zero=zero)).per_gpu


def main(argv: list[str] | None = None) -> int:
    from planner.setup import TrainSetup
    from presets import load_model, parse_overrides

    parser = argparse.ArgumentParser(prog="runtime.memtrack")
    parser.add_argument("model")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--mbs", type=int, default=1)
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--recompute", default="none")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--dp", type=int, default=1)
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_model(args.model, parse_overrides(args.set))
    setup = TrainSetup(seq_len=args.seq, micro_batch=args.mbs, grad_accum=args.m,
                       dtype=args.dtype, recipe="runtime", optimizer=args.optimizer,
                       recompute=args.recompute)
    measured = measure(cfg, setup, dp=args.dp, zero=args.zero)
    stage = predict(cfg, setup, dp=args.dp, zero=args.zero)
    json.dump({**measured, "predicted": stage.to_dict()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
