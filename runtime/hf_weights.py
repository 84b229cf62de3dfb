"""Load a Hugging Face folder's weights into any layout: each rank fills only its own shard.

The same walk as ``runtime.init.init_weights``: for every parameter of this rank's part
(plain, tensor-parallel, FSDP-sharded, one pipeline stage) the global indices it holds
(``runtime.init.global_indices``) become the rows and columns read from the checkpoint tensor
that ``runtime.hf_names`` names, so no rank reads more than it keeps.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from planner.config import ConfigError, ModelConfig
from runtime.hf_checkpoint import Checkpoint
from runtime.hf_names import pieces
from runtime.init import canonical_name, global_indices


def _expected(piece, ours_shape: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    want = tuple(reversed(ours_shape)) if piece.transposed else ours_shape
    if piece.rows is None:
        return want == theirs
    split = 1 if piece.transposed else 0
    others = [d for i, d in enumerate(want) if i != split]
    return (len(theirs) == len(want) and [d for i, d in enumerate(theirs) if i != split] == others
            and int(piece.rows.max()) < theirs[split])


def _located(ckpt: Checkpoint, piece, canon: str, shape: tuple[int, ...], folder: str) -> None:
    """The one shape rule, for the check before launch and for the load itself."""
    theirs = ckpt.shape(piece.theirs)
    if theirs is None:
        raise ConfigError(f"{folder}: checkpoint has no tensor {piece.theirs} "
                          f"(the model's {canon}, shape {list(shape)})")
    if not _expected(piece, shape, theirs):
        raise ConfigError(f"{folder}: tensor {piece.theirs} has shape {list(theirs)}, "
                          f"the model's {canon} needs {list(shape)}")


def check_folder(folder: str, cfg: ModelConfig) -> None:
    """Before any rank starts: every parameter of the model (built on ``meta``) is in the
    folder's checkpoint at a shape that fits."""
    from runtime.model import Decoder

    ckpt = Checkpoint(folder)
    with torch.device("meta"):
        model = Decoder(cfg)
    named = [(canonical_name(n, cfg.tie_embeddings), tuple(p.shape))
             for n, p in model.named_parameters()]
    where = pieces(cfg, [canon for canon, _ in named])
    for canon, shape in named:
        _located(ckpt, where[canon], canon, shape, folder)


@torch.no_grad()
def load_weights(model: nn.Module, folder: str, cfg: ModelConfig) -> int:
    """Fill every parameter of ``model`` from ``folder``; the number of tensors read."""
    from runtime.lora import is_adapter

    ckpt = Checkpoint(folder)
    named = [(name, p, canonical_name(name, cfg.tie_embeddings))
             for name, p in model.named_parameters() if not is_adapter(name)]
    where = pieces(cfg, [canon for _, _, canon in named])
    read = 0
    for name, p, canon in named:
        piece = where[canon]
        shape, held = global_indices(p)
        _located(ckpt, piece, canon, shape, folder)
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() == 0:
            continue
        rows = held[0]
        if piece.rows is not None:
            rows = piece.rows if rows is None else piece.rows[rows]
        index = [rows, *held[1:]]
        if piece.transposed:
            values = ckpt.read(piece.theirs, list(reversed(index))).T
        else:
            values = ckpt.read(piece.theirs, index)
        if piece.offset:
            values = values.float() + piece.offset
        local.copy_(values.reshape(local.shape).to(local.dtype))
        read += 1
    ckpt.close()
    return read


def hf_config(cfg: ModelConfig, *, source: str, dtype: str) -> dict:
    """The folder's config.json: the source folder's own (every field it had kept) or the
    family's written from ``cfg`` (``presets.hf_export``), with the saved dtype."""
    from presets.hf_export import to_hf_config

    path = Path(source) / "config.json" if source else None
    if path is not None and path.exists():
        config = json.loads(path.read_text())
        return {**config, "torch_dtype": dtype, "dtype": dtype}
    return to_hf_config(cfg, dtype=dtype)


@torch.no_grad()
def save_hf(parts: list[nn.Module], cfg: ModelConfig, out: str, *, writer: bool, label: str,
            dtype: torch.dtype, source: str = "", rank0: bool = True) -> None:
    """Write ``parts`` (this rank's pipeline stages) as Hugging Face tensors.

    Every rank walks its parameters in the same order and gathers each sharded one to full
    (``DTensor.full_tensor``: a collective over that parameter's mesh); the ``writer`` rank of
    each stage (dp and tp coordinate 0) maps them to the family's tensors, fused ones once all
    their pieces are in, and writes them; then rank 0 names the files and moves the folder
    into place (``runtime.hf_checkpoint.finish``)."""
    import torch.distributed as dist

    from runtime.hf_checkpoint import PartWriter, finish, staging

    tmp = staging(out)
    distributed = dist.is_initialized()
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    from runtime.lora import is_adapter

    named = [(name, p, canonical_name(name, cfg.tie_embeddings)) for part in parts
             for name, p in part.named_parameters()
             if not (cfg.tie_embeddings and canonical_name(name, False) == "output.weight")
             and not is_adapter(name)]
    where = pieces(cfg, [canon for _, _, canon in named])
    expected: dict[str, int] = {}
    for piece in where.values():
        expected[piece.theirs] = expected.get(piece.theirs, 0) + 1
    files = PartWriter(tmp, label)
    pending: dict[str, list] = {}
    for _, p, canon in named:
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if not writer:
            continue
        piece = where[canon]
        group = pending.setdefault(piece.theirs, [])
        group.append((piece, full.to(dtype)))
        if len(group) == expected[piece.theirs]:
            files.add(piece.theirs, _assemble(pending.pop(piece.theirs)))
    files.flush()
    if distributed:
        dist.barrier()
    if rank0:
        finish(tmp, Path(out),
               config=hf_config(cfg, source=source, dtype=str(dtype).removeprefix("torch.")),
               source=source)
    if distributed:
        dist.barrier()


def _assemble(group: list) -> torch.Tensor:
    """One checkpoint tensor from its pieces (ours transposed back, offset removed; a fused
    projection's rows placed where the family's layout keeps them)."""
    if len(group) == 1 and group[0][0].rows is None:
        piece, t = group[0]
        t = t - piece.offset if piece.offset else t
        return t.T if piece.transposed else t
    split = 1 if group[0][0].transposed else 0
    size = sum(len(piece.rows) for piece, _ in group)
    sample = group[0][1].T if group[0][0].transposed else group[0][1]
    shape = list(sample.shape)
    shape[split] = size
    out = torch.empty(shape, dtype=sample.dtype)
    for piece, t in group:
        t = t.T if piece.transposed else t
        out.index_copy_(split, piece.rows, t)
    return out


def export_checkpoint(ckpt_dir: str, out: str) -> dict:
    """``llmplan export``: a training checkpoint (any layout; DCP reshards it into one
    process) written as a Hugging Face folder; the source folder's config and tokenizer are
    kept when the run started from one. A LoRA run's checkpoint is written merged, W + (alpha
    / r) B A as peft's ``merge_and_unload`` folds it (``runtime.lora.merge_adapters``): the
    folder is the model the run trained, not its untouched base."""
    from runtime.checkpoint import latest_step
    from runtime.hf_checkpoint import check_output
    from runtime.hf_names import check_family
    from runtime.inputs import run_tokenizer
    from presets.hf_export import to_hf_config

    check_output(out, "export")
    run_plan = Path(ckpt_dir) / "run.toml"
    if not run_plan.exists() or latest_step(ckpt_dir) is None:
        raise ConfigError(f"{ckpt_dir}: not a checkpoint folder (needs run.toml and latest)")
    cfg, adapters, run = checkpoint_run(ckpt_dir)
    check_family(cfg, f"export {out}")
    to_hf_config(cfg)
    source = str(run.get("weights", "")) or run_tokenizer(run, str(ckpt_dir))
    model, step = trained_model(cfg, adapters, ckpt_dir, run)
    save_hf([model], cfg, out, writer=True, label="0", dtype=torch.float32, source=source)
    return {"checkpoint": str(ckpt_dir), "step": step, "out": str(out), "model": cfg.name,
            "merged_adapters": adapters is not None}


def checkpoint_run(ckpt_dir: str):
    """A checkpoint folder's model, adapters (None for a run that trained every weight) and
    ``[run]`` table, from its ``run.toml``."""
    from planner.planfile import plan_objects, read_plan

    run_plan = Path(ckpt_dir) / "run.toml"
    plan = read_plan(run_plan)
    cfg, setup, _ = plan_objects(plan, where=str(run_plan))
    return cfg, setup.adapters, plan.get("run", {})


def trained_model(cfg: ModelConfig, adapters, ckpt_dir: str, run: dict):
    """The checkpoint's model in one process, its adapters (if any) merged into the weights;
    and the checkpoint's step.

    LoRA over a 16-bit base: every tensor (base and adapters) from the checkpoint. QLoRA:
    the checkpoint holds the base as torchao NF4 tensors, which DCP reads back only by
    unpickling them; the base is frozen, so it is rebuilt as the run built it (the run's
    weights folder, or its seeded initialisation, quantised to NF4) and only the adapters are
    read. The merge dequantises the NF4 base, as ``--merge`` and peft's 4-bit merge do, and
    the folder is written in fp32 (not re-quantised)."""
    from runtime.generate import build_model, load_weights as load_dcp
    from runtime.lora import apply_lora, merge_adapters, quantise_base

    nf4 = adapters is not None and adapters.base_bits == 4
    weights = str(run.get("weights", "")) if nf4 else ""
    if nf4 and weights and not Path(weights).is_dir():
        raise ConfigError(f"{ckpt_dir}: the QLoRA run's base {weights} is gone (the checkpoint "
                          "keeps only its adapters readable): put it back to export")
    model = build_model(cfg, tp=1, device=torch.device("cpu"),
                        opts={"weights": weights, "weights_seed": int(run.get("seed", 0))})
    if adapters is not None:
        apply_lora(model, cfg, adapters)
    with warnings.catch_warnings():  # DCP says it loads in one process: that is the intent
        warnings.simplefilter("ignore", UserWarning)
        if nf4:
            quantise_base(model, cfg)
            step = _load_adapters(model, ckpt_dir)
        else:
            step = load_dcp(model, ckpt_dir)
    if adapters is not None:
        merge_adapters([model])
    return model, step


def _load_adapters(model: nn.Module, ckpt_dir: str) -> int:
    """Only the adapter tensors of the latest checkpoint, read into ``model``'s."""
    from runtime.checkpoint import read_latest
    from runtime.lora import is_adapter

    state = {"model": {n: p.detach() for n, p in model.named_parameters() if is_adapter(n)}}
    return read_latest(state, ckpt_dir)
