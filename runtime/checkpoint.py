"""Distributed checkpoints with torch.distributed.checkpoint (DCP), saved atomically.

Layout on disk: ``<dir>/step-<n>/`` (DCP shards + ``.metadata``) and ``<dir>/latest`` (a one-
line file naming the newest complete step). A save goes to ``step-<n>.tmp`` first; only after
every rank has finished does rank 0 rename it and then replace ``latest`` (write + rename), so
a crash mid-save never leaves a corrupt latest checkpoint. State dicts use the model's own
parameter names (layers keep their global index), so DCP reshards a checkpoint into any
other layout on load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def _plain(parts, optimizers) -> list:
    """Each part's optimizer as DCP reads it: a ZeRO-1 sharded optimizer as the ordinary
    optimizer holding its gathered state (runtime.zero1), so checkpoints reshard alike."""
    from runtime.zero1 import ShardedOptimizer, shadow

    return [shadow(opt, part) if isinstance(opt, ShardedOptimizer) else opt
            for part, opt in zip(parts, optimizers)]


def _state(parts, optimizers) -> dict:
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)

    model, optim = {}, {}
    for part, opt in zip(parts, optimizers):
        model.update(get_model_state_dict(part))
        optim.update(get_optimizer_state_dict(part, opt, options=_options()))
    return {"model": model, "optim": optim}


def latest_step(ckpt_dir: str) -> int | None:
    """The newest complete step in ``ckpt_dir`` (standard library only: launch checks a
    ``--resume`` before any process starts), or None."""
    marker = Path(ckpt_dir) / "latest"
    if not marker.exists():
        return None
    text = marker.read_text().strip()
    return int(text) if text.isdigit() else None


def save(ckpt_dir: str, step: int, parts, optimizers) -> str:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    root = Path(ckpt_dir)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(_state(parts, _plain(parts, optimizers)), checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker_tmp = root / "latest.tmp"
        marker_tmp.write_text(f"{step}\n")
        os.replace(marker_tmp, root / "latest")
    dist.barrier()
    return str(final)


def load(ckpt_dir: str, step: int, parts, optimizers) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    from runtime.zero1 import ShardedOptimizer, absorb

    plain = _plain(parts, optimizers)
    state = _state(parts, plain)
    dcp.load(state, checkpoint_id=str(Path(ckpt_dir) / f"step-{step}"))
    for part, opt, flat in zip(parts, optimizers, plain):
        set_model_state_dict(part, state["model"], options=StateDictOptions(strict=False))
        set_optimizer_state_dict(part, flat, state["optim"], options=_options())
        if isinstance(opt, ShardedOptimizer):
            absorb(opt, flat)
