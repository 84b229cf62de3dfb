"""Distributed checkpoints with torch.distributed.checkpoint (DCP), saved atomically.

Layout on disk: ``<dir>/step-<n>/`` (DCP shards + ``.metadata``), ``<dir>/latest`` (a one-
line file naming the newest complete step: the commit point) and ``<dir>/run.toml`` (the
run's plan, so the folder describes its model to ``generate`` and ``export``). A save goes to
``step-<n>.tmp`` first; only after every rank has finished does rank 0 rename it, write
``run.toml`` and then replace ``latest`` (write + rename), so a crash mid-save never leaves a
corrupt latest checkpoint. State dicts use the model's own parameter names (layers keep their
global index), so DCP reshards a checkpoint into any other layout on load.

Before a ``--resume`` starts any rank, :func:`resume_point` checks the checkpoint on disk
(DCP's metadata read, each shard file it names present and long enough) and picks the newest
intact committed step, saying what was wrong with any newer one.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from planner.config import ConfigError


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


def save(ckpt_dir: str, step: int, parts, optimizers, plan_path: str = "") -> str:
    """Save this rank's shards of step ``step``; rank 0 commits it (rename, the run's plan as
    ``run.toml`` when ``plan_path`` is given, then ``latest``)."""
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
        _pause("written", step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        describe(root, plan_path)
        _pause("renamed", step)
        marker_tmp = root / "latest.tmp"
        marker_tmp.write_text(f"{step}\n")
        os.replace(marker_tmp, root / "latest")
    dist.barrier()
    return str(final)


def read_latest(state: dict, ckpt_dir: str) -> int:
    """Fill ``state`` (DCP's nested dict of tensors, read in place) from ``ckpt_dir``'s latest
    step, outside a training run (generation, export); that step. One-line ``ConfigError``
    for a folder without a checkpoint or one whose tensors do not fit ``state``."""
    import torch.distributed.checkpoint as dcp

    step = latest_step(ckpt_dir)
    if step is None:
        raise ConfigError(f"{ckpt_dir}: no checkpoint (no 'latest' file)")
    try:
        dcp.load(state, checkpoint_id=str(Path(ckpt_dir) / f"step-{step}"))
    except BaseException as err:  # DCP's CheckpointException derives from BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        detail = " ".join(str(err).split())[-200:]
        raise ConfigError(f"{ckpt_dir}: incompatible checkpoint for this model ({detail})") from None
    return step


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


def describe(root: Path, plan_path: str) -> None:
    """The checkpoint folder's ``run.toml``: the run's plan, copied atomically when the plan
    lives elsewhere (``--run-dir`` apart from ``--ckpt-dir``), so the folder always names its
    model for ``generate`` and ``export``."""
    if not plan_path:
        return
    target = root / "run.toml"
    source = Path(plan_path)
    if target.exists() and source.resolve() == target.resolve():
        return
    from planner.outputs import write_text

    write_text(target, source.read_text(), "checkpoint plan")


def _pause(moment: str, step: int) -> None:
    """Fault injection for tests: ``LLMPLAN_SAVE_PAUSE=<moment>:<step>:<seconds>`` sleeps on
    rank 0 at that moment of that step's save (``written``: the ``.tmp`` folder is complete,
    not yet renamed; ``renamed``: renamed, ``latest`` not yet updated), so a test can kill
    the run there."""
    where, at, seconds = (os.environ.get("LLMPLAN_SAVE_PAUSE", "").split(":") + ["", ""])[:3]
    if where == moment and at == str(step):
        import time

        time.sleep(float(seconds or 0))


# ---- checking a checkpoint before a resume (launcher side, before any rank starts) --------
_STEP = re.compile(r"^step-(\d+)$")
_TMP = re.compile(r"^step-(\d+)\.tmp$")


def _steps(root: Path, pattern: re.Pattern) -> list[int]:
    """Step numbers of the folders in ``root`` whose names match ``pattern``, newest first."""
    if not root.is_dir():
        return []
    found = [int(m.group(1)) for p in root.iterdir() if (m := pattern.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def damage(step_dir: Path) -> str | None:
    """What is wrong with the DCP checkpoint in ``step_dir``, naming the file; None when it is
    intact: its ``.metadata`` reads, and every shard file the metadata names exists and is at
    least as long as the furthest byte (offset + length) read from it."""
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    meta = step_dir / ".metadata"
    if not meta.is_file():
        return f"{meta} is missing"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(str(step_dir)).read_metadata().storage_data
    except Exception as err:  # a garbled pickle raises anything
        return f"{meta} cannot be read ({type(err).__name__})"
    if not isinstance(storage, dict) or not storage:
        return f"{meta} names no shard files"
    ends: dict[str, int] = {}
    for info in storage.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = step_dir / name
        if not shard.is_file():
            return f"{shard} is missing"
        size = shard.stat().st_size
        if size < end:
            return f"{shard} is truncated ({size:,} bytes; its metadata reads up to byte {end:,})"
    return None


def tensor_differences(step_dir: Path, cfg) -> list[str]:
    """The model tensors of the checkpoint in ``step_dir`` that ``cfg``'s model (built on the
    meta device: no memory) lacks, has in another shape, or has and the checkpoint lacks;
    adapters aside. For a checkpoint folder without ``run.toml`` to compare models by."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader

    from runtime.lora import is_adapter
    from runtime.model import Decoder

    with torch.device("meta"):
        ours = {f"model.{k}": tuple(v.shape) for k, v in Decoder(cfg).state_dict().items()}
    saved = FileSystemReader(str(step_dir)).read_metadata().state_dict_metadata
    theirs = {k: tuple(v.size) for k, v in saved.items()
              if k.startswith("model.") and hasattr(v, "size")}
    out = []
    for name in sorted((set(ours) | set(theirs))):
        if is_adapter(name) or ours.get(name) == theirs.get(name):
            continue
        short = name.removeprefix("model.")
        out.append(f"{short}({list(theirs[name]) if name in theirs else 'absent'} vs "
                   f"{list(ours[name]) if name in ours else 'absent'})")
    return out


@dataclass(frozen=True)
class ResumePoint:
    """Where a ``--resume`` continues from, and what was wrong with anything newer (one line,
    empty when the latest checkpoint is intact and nothing newer was left behind)."""

    step: int
    warning: str = ""


def _latest_note(root: Path) -> tuple[int | None, str]:
    """``latest``'s step, or None and why it names none."""
    marker = root / "latest"
    if not marker.exists():
        return None, f"{marker} is missing"
    try:
        text = marker.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{marker} cannot be read ({err})"
    if not text.isdigit():
        return None, f"{marker} does not name a step ({text[:40]!r})"
    return int(text), ""


def _interrupted(root: Path, after: int | None) -> list[str]:
    """The ``.tmp`` folders of saves that never finished, newer than step ``after``."""
    return [f"{root / f'step-{s}.tmp'} (an interrupted save)" for s in _steps(root, _TMP)
            if after is None or s > after]


def _uncommitted(root: Path, latest: int | None, on_disk: list[int]) -> list[str]:
    """Step folders newer than ``latest``: renamed by a save killed before ``latest`` named
    them (or left by another run); never resumed from, since ``latest`` is the commit point."""
    return [f"{root / f'step-{s}'} (saved, but latest names step {latest}: not committed)"
            for s in on_disk if latest is not None and s > latest]


def resume_point(ckpt_dir: str) -> ResumePoint:
    """The newest intact committed step of ``ckpt_dir``: ``latest``'s when it is intact, else
    the newest intact ``step-<n>`` folder below it (with one warning line saying what was
    wrong); interrupted saves newer than it (a ``.tmp`` folder, or a renamed folder ``latest``
    was not yet moved to) are named in the warning and never used. One-line ``ConfigError``
    naming the damaged file when no step is intact."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir} (no such folder)")
    latest, latest_problem = _latest_note(root)
    problems = [latest_problem] if latest_problem else []
    on_disk = _steps(root, _STEP)
    if latest is not None and latest not in on_disk:
        problems.append(f"{root / 'latest'} names step {latest} but {root / f'step-{latest}'} "
                        "is missing")
    chosen = None
    for step in (s for s in on_disk if latest is None or s <= latest):
        trouble = damage(root / f"step-{step}")
        if trouble is None:
            chosen = step
            break
        problems.append(trouble)
    interrupted = _interrupted(root, chosen)
    if chosen is None:
        if not on_disk and latest is None and not interrupted:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
        raise ConfigError(f"--resume: no intact checkpoint in {ckpt_dir}: "
                          f"{'; '.join(problems + interrupted)}")
    left = interrupted + _uncommitted(root, latest, on_disk)
    if left:
        problems.append(f"ignored {', '.join(left)}")
    warning = f"--resume: {'; '.join(problems)}: resuming from step {chosen}" if problems else ""
    return ResumePoint(step=chosen, warning=warning)
