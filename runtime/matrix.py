"""The layout matrix in one torchrun world: ``python -m runtime.matrix --plan matrix.toml``.

Starting a process group costs seconds on a CPU host; building a tiny model costs
milliseconds. So every layout of a matrix is built and trained one after another inside one
world: a layout of ``w`` ranks runs as ``world / w`` identical replicas on sub-meshes of one
(replica, pp, dp / ep, ep, cp, tp) mesh (``runtime.parallel.build_mesh``), and rank 0 emits one ``layout`` event per layout with its losses
and gradient norms (or the error it raised). The file holds ``[model]``, ``[run]`` (steps,
seq, global batch, dtype, seed) and ``[[layouts]]`` (tp, pp, vpp, dp, zero, sp, recompute,
mbs, optimizer).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

from planner.config import ConfigError, ModelConfig

from planner.setup import Parallel, TrainSetup
from planner.planfile import read_plan
from runtime import events

LAYOUT_FIELDS = ("tp", "pp", "vpp", "dp", "zero", "sp", "schedule", "cp", "ep")


def layout_objects(entry: dict[str, Any], *, seq: int, gbs: int, dtype: str) -> tuple[TrainSetup, Parallel]:
    from planner import layout

    par = Parallel(**{k: entry[k] for k in LAYOUT_FIELDS if k in entry})
    mbs = int(entry.get("mbs", gbs // par.dp))
    setup = TrainSetup(seq_len=seq, micro_batch=mbs,
                       grad_accum=layout.micro_batches(global_batch=gbs, dp=par.dp, mbs=mbs),
                       dtype=dtype, recipe="runtime", recompute=entry.get("recompute", "none"),
                       optimizer=entry.get("optimizer", "adamw"))
    return setup, par


def enumerate_layouts(cfg: ModelConfig, *, seq: int, gbs: int, dtype: str = "fp32",
                      tps=(1, 2), pps=(1, 2), dps=(1, 2), zeros=(0, 1, 2, 3), sps=(False, True),
                      recomputes=("none", "selective", "full"), cps=(1,), eps=(1,),
                      accumulate: int = 2) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Every combination of the given dimensions, split by the layout contract into those
    llmplan's runtime runs and those it refuses (each with its reason). Each layout runs
    ``accumulate`` micro-batches per step (per pipeline flush). Context and expert
    parallelism (``cps``, ``eps``) are left at 1 unless asked for; an entry names them only
    when they are not 1."""
    from planner import layout

    accepted, refused = [], []
    for tp, pp, dp, zero, sp, rc, cp, ep in itertools.product(tps, pps, dps, zeros, sps,
                                                              recomputes, cps, eps):
        entry = {"tp": tp, "pp": pp, "dp": dp, "zero": zero, "sp": sp, "recompute": rc,
                 "mbs": max(1, gbs // (dp * accumulate))}
        entry.update({k: v for k, v in (("cp", cp), ("ep", ep)) if v != 1})
        setup, par = layout_objects(entry, seq=seq, gbs=gbs, dtype=dtype)
        found = layout.refusals(layout.problems(cfg, setup, par), "llmplan")
        if found:
            refused.append((entry, "; ".join(p.message for p in found)))
        else:
            accepted.append(entry)
    return accepted, refused


def reference_layout(gbs: int) -> dict:
    """Single process, one micro-batch: the run every layout must reproduce."""
    return {"tp": 1, "pp": 1, "dp": 1, "zero": 0, "sp": False, "recompute": "none", "mbs": gbs}


def launch_matrix(cfg: ModelConfig, layouts: list[dict], *, folder: Path, steps: int = 8,
                  seq: int = 32, gbs: int = 8, nproc: int = 8, seed: int = 0,
                  dtype: str = "fp32", on_layout=None) -> tuple[int, list[dict], str]:
    """Run ``layouts`` (the reference first is the caller's choice) in one torchrun world of
    ``nproc`` CPU processes; (exit code, the ``layout`` events, the error if any)."""
    from planner.tomlio import write_toml
    from runtime.launch import LaunchSpec, stream

    path = write_toml(folder / f"matrix-{cfg.name}.toml", {
        "model": cfg.to_dict(), "layouts": layouts,
        "run": {"steps": steps, "seq": seq, "gbs": gbs, "dtype": dtype, "seed": seed,
                "device": "cpu", "warmup_steps": 2}})
    got: list[events.LayoutResult] = []
    error = ""

    def on_line(_line: str, ev: events.Event | None) -> None:
        nonlocal error
        if isinstance(ev, events.LayoutResult):
            got.append(ev)
            if on_layout:
                on_layout(ev)
        elif isinstance(ev, events.Error):
            error = ev.message

    rc = stream(LaunchSpec(plan_path=path, nproc_per_node=nproc, device="cpu",
                           module="runtime.matrix"), on_line)
    return rc, got, error


def agrees(reference: events.LayoutResult, got: events.LayoutResult, rel: float = 1e-4) -> str:
    """Empty when every step's loss and gradient norm is within ``rel`` of the reference,
    else the first disagreement."""
    for i, (a, b, ga, gb) in enumerate(zip(reference.losses, got.losses,
                                           reference.grad_norms, got.grad_norms)):
        if abs(a - b) > rel * abs(a):
            return f"step {i + 1}: loss {b:.6g} vs {a:.6g}"
        if abs(ga - gb) > rel * abs(ga):
            return f"step {i + 1}: grad norm {gb:.6g} vs {ga:.6g}"
    if len(got.losses) != len(reference.losses):
        return f"{len(got.losses)} steps vs {len(reference.losses)}"
    return ""


def run(plan_path: str) -> int:
    import torch.distributed as dist

    from runtime.data import make_data
    from runtime.parallel import build_mesh
    from runtime.support import check_runtime_layout
    from runtime.train import RUN_DEFAULTS, init_distributed
    from runtime.trainer import Trainer

    plan = read_plan(Path(plan_path), required=("model", "run", "layouts"))
    cfg = ModelConfig.from_dict(plan["model"], where=f"{plan_path} [model]")
    opts = {**RUN_DEFAULTS, **plan["run"]}
    seq, gbs, dtype = int(opts["seq"]), int(opts["gbs"]), str(opts.get("dtype", "fp32"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = init_distributed(opts["device"])
    rank = dist.get_rank()
    data = make_data(None, cfg.vocab_size, seq, int(opts["seed"]))
    for i, entry in enumerate(plan["layouts"]):
        setup, par = layout_objects(entry, seq=seq, gbs=gbs, dtype=dtype)
        check_runtime_layout(cfg, setup, par)
        if world % par.world:
            raise ConfigError(f"layout {i}: world({par.world}) does not divide {world} processes")
        mesh = build_mesh(par, device.type, replicas=world // par.world)
        trainer = Trainer(cfg, setup, par, opts, mesh=mesh, device=device)
        losses, norms = [], []
        for step in range(1, int(opts["steps"]) + 1):
            out = trainer.step(data.global_batch(step, gbs))
            losses.append(out["loss"])
            norms.append(out["grad_norm"])
        if rank == 0:
            events.emit(events.LayoutResult(index=i, layout=entry, losses=losses,
                                            grad_norms=norms))
        del trainer
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from runtime.support import entry_point

    return entry_point("runtime.matrix", run, argv)


if __name__ == "__main__":
    sys.exit(main())
