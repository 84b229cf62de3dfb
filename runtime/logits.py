"""Forward-only logits of a batch in any layout, for checking a loaded model against its
source: ``python -m torch.distributed.run ... -m runtime.logits --plan run.toml``.

The plan is a training plan (``llmplan launch ... --dry-run`` writes one) whose ``[run]``
also names ``tokens`` (a saved (batch, seq) tensor) and ``out``; each data-parallel group's
last pipeline stage (tensor-parallel rank 0) saves its rows' full-vocabulary logits as
``<out>.dp<rank>.pt``. The forward is the training one: the same build, shards, pipeline
schedule (its forward-only ``eval``) and tensor-parallel plan.
"""

from __future__ import annotations

import sys


def launch_logits(request, tokens, folder) -> "object":
    """Resolve ``request`` (a ``runtime.runspec.TrainRequest``) as a training run would be,
    run its layout forward on ``tokens`` and return the (batch, seq, vocab) logits; raises
    ``RuntimeError`` with the run's error when it fails."""
    from dataclasses import replace
    from pathlib import Path

    import torch

    from planner.tomlio import read_toml, write_toml
    from runtime import events
    from runtime.launch import stream
    from runtime.runspec import resolve

    folder = Path(folder)
    resolved = resolve(replace(request, run_dir=str(folder)))
    plan = read_toml(resolved.spec.plan_path)
    torch.save(tokens, folder / "tokens.pt")
    plan["run"].update(tokens=str(folder / "tokens.pt"), out=str(folder / "logits"))
    write_toml(resolved.spec.plan_path, plan)
    errors: list[str] = []
    rc = stream(replace(resolved.spec, module="runtime.logits"),
                lambda _line, ev: errors.append(ev.message) if isinstance(ev, events.Error) else None)
    if rc:
        raise RuntimeError(errors[0] if errors else f"exit code {rc}")
    parts = [folder / f"logits.dp{r}.pt" for r in range(resolved.par.dp)]
    return torch.cat([torch.load(p) for p in parts])


def run(plan_path: str) -> int:
    import torch
    import torch.distributed as dist

    from runtime.data import local_slice
    from runtime.parallel import build_mesh
    from runtime.train import init_distributed, load_run
    from runtime.trainer import Trainer

    plan, cfg, setup, par, opts = load_run(plan_path)
    device = init_distributed(opts["device"])
    trainer = Trainer(cfg, setup, par, opts, mesh=build_mesh(par, device.type), device=device)
    tokens = local_slice(torch.load(plan["run"]["tokens"]), trainer.dp_rank, par.dp).to(device)
    tp_ctx, amp = trainer.contexts()  # loss-parallel: the last stage's labels meet sharded logits
    with torch.no_grad(), tp_ctx, amp:
        if trainer.schedule is None:
            out = trainer.parts[0](tokens)
        else:
            # 1F1B computes a loss on the last stage even forward-only: any labels do
            kwargs = {"target": tokens, "losses": []} if trainer.has_last else {}
            args = (tokens,) if trainer.has_first else ()
            out = trainer.schedule.eval(*args, **kwargs)
    if trainer.has_last:
        out = out.full_tensor() if hasattr(out, "full_tensor") else out
        if trainer.built.mesh["tp"].get_local_rank() == 0:
            torch.save(out.float().cpu(), f"{plan['run']['out']}.dp{trainer.dp_rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from runtime.support import entry_point

    return entry_point("runtime.logits", run, argv)


if __name__ == "__main__":
    sys.exit(main())
