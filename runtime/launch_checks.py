"""Every check a launch makes before anything is written or started (``runtime.runspec``
calls them): options and devices, the folders the run will write, the checkpoint it resumes,
the host's memory, a generation's prompts. A refused request is one ``ConfigError`` naming
the numbers, and nothing is on disk yet.

Standard library only (torch is imported only to look at CUDA devices).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner import layout
from planner.config import ConfigError, ModelConfig
from planner.planfile import read_plan
from planner.setup import Parallel, TrainSetup

if TYPE_CHECKING:
    from runtime.runspec import TrainRequest

DEVICES = ("auto", "cpu", "cuda")
RUNTIME_DTYPES = ("fp32", "bf16", "fp8")
GENERATION_DTYPES = ("fp32", "bf16")


def positive_int(label: str, value: Any, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{label}({value}) must be an integer >= {minimum}")


def finite(label: str, value: Any, *, low: float = 0.0, high: float = math.inf,
            low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high and \
        (value > low if low_open else value >= low)
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigError(f"{label}({value}) must be a finite number {bound}"
                          + (f" and <= {high:g}" if high < math.inf else ""))


def device_of(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r}: use {', '.join(DEVICES)}")
    if device == "auto":
        import torch  # deferred: only "auto" pays for it

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cuda_ranks(per_node: int) -> None:
    import torch

    have = torch.cuda.device_count()
    if per_node > have:
        raise ConfigError(f"{per_node} processes per node but {have} GPU(s): NCCL needs one GPU "
                          "per rank; use --device cpu to run the layout on CPU processes")


def fp8_device(device: str) -> None:
    """fp8 training runs on fp8 tensor cores (Ada, Hopper, Blackwell); elsewhere its GEMMs
    would be emulated (``runtime.fp8``), at no fp8 peak to plan it by."""
    import torch

    from runtime.fp8 import FP8_CAPABILITY, emulated

    if not emulated(torch.device(device)):
        return
    where = device
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        where = f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
    raise ConfigError(f"--dtype fp8 runs on a CUDA GPU with fp8 tensor cores (compute "
                      f"capability {'.'.join(map(str, FP8_CAPABILITY))}+), not on {where}: "
                      "train in bf16 there")


def check_train_options(req: TrainRequest) -> None:
    """Every option a training request carries, before anything reads a file or starts."""
    for label in ("tp", "pp", "vpp", "dp", "cp", "ep", "mbs", "gbs", "seq"):
        value = getattr(req, label)
        if value is not None:
            positive_int(f"--{label}", value)
    if req.zero is not None and req.zero not in (0, 1, 2, 3):
        raise ConfigError(f"--zero({req.zero}) must be 0, 1, 2 or 3")
    positive_int("--steps", req.steps)
    positive_int("--pp-rounds", req.pp_rounds)
    positive_int("--nnodes", req.nnodes)
    positive_int("--seed", req.seed, minimum=0)
    positive_int("--ckpt-every", req.ckpt_every, minimum=0)
    finite("--lr", req.lr)
    finite("--dpo-beta", req.dpo_beta)
    if req.method == "ppo":
        raise ConfigError("--method ppo is planned (memory, flops, plan), not trained by "
                          "llmplan's runtime")
    if req.dtype is not None and req.dtype not in RUNTIME_DTYPES:
        raise ConfigError(f"--dtype {req.dtype!r}: llmplan's runtime trains in "
                          f"{' or '.join(RUNTIME_DTYPES)}")
    if req.device not in DEVICES:
        raise ConfigError(f"--device {req.device!r}: use {', '.join(DEVICES)}")
    if req.data:
        from runtime.dataset import data_files

        data_files(req.data)
    positive_int("--eval-every", req.eval_every, minimum=0)
    if req.eval_every and not req.eval_data:
        raise ConfigError(f"--eval-every {req.eval_every} needs --eval-data")
    if req.eval_data:
        from runtime.dataset import data_files

        data_files(req.eval_data, flag="--eval-data")
    if req.sft and not req.data:
        raise ConfigError("--sft needs --data (prompt/completion or chat messages)")
    if req.ckpt_every and not req.ckpt_dir:
        raise ConfigError(f"--ckpt-every {req.ckpt_every} needs --ckpt-dir")
    if req.resume and not req.ckpt_dir:
        raise ConfigError("--resume: no checkpoint in (no --ckpt-dir)")
    check_output_paths(req)
    if req.nnodes > 1 and not req.rdzv_endpoint:
        raise ConfigError(f"--nnodes {req.nnodes} needs --rdzv-endpoint host:port")
    check_adapter_options(req)


def check_output_paths(req: TrainRequest) -> None:
    """Every folder the run will write, checked before anything is written or started
    (``planner.outputs``: a real probe, so root, read-only mounts and /sys alike are refused
    here, not after the training): the run and checkpoint folders, and the exports, which
    must not exist yet (nothing is overwritten)."""
    from planner.outputs import writable_folder
    from runtime.hf_checkpoint import check_output

    for flag, path in (("--run-dir", req.run_dir), ("--ckpt-dir", req.ckpt_dir),
                       ("--save-adapter", req.save_adapter)):
        if path:
            writable_folder(path, flag)
    if req.ckpt_dir and not req.resume:
        check_fresh_checkpoint_folder(req.ckpt_dir)
    for flag, path in (("--save-hf", req.save_hf), ("--merge", req.merge)):
        if path:
            check_output(path, flag)
            writable_folder(path, flag)


def check_fresh_checkpoint_folder(ckpt_dir: str) -> None:
    """A run that does not ``--resume`` saves into a folder holding no other run's steps: its
    saves would replace theirs step by step (``runtime.checkpoint.save``), so it is refused
    before anything starts, naming the newest step found."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return
    steps = sorted(int(p.name[5:]) for p in root.glob("step-*")
                   if p.is_dir() and p.name[5:].isdigit())
    if steps or (root / "latest").exists():
        newest = f" (steps up to {steps[-1]})" if steps else ""
        raise ConfigError(f"--ckpt-dir {ckpt_dir} holds another run's checkpoint{newest}: "
                          "pass --resume to continue it, or give an empty folder")


def check_adapter_options(req: TrainRequest) -> None:
    """The adapter folder read, checked before anything starts (the folders written:
    :func:`check_output_paths`; that they need adapters at all: :func:`resolve`, once the
    plan's are known)."""
    if req.init_adapter and req.adapters is not None:
        from runtime.lora import check_adapter_folder

        check_adapter_folder(req.init_adapter, req.adapters)


def check_host_memory(cfg: ModelConfig, setup: TrainSetup, par: Parallel) -> None:
    """CPU runs put every rank on this host: refuse a layout whose predicted memory (runtime
    recipe, all ranks) exceeds the host's RAM, instead of swapping it to a halt."""
    from planner.memory import memory_report

    stages = memory_report(cfg, setup, par).stages
    need = sum(s.total_bytes for s in stages) * (par.world // par.pp)  # every stage's ranks
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > have:
        raise ConfigError(f"{par.world} CPU processes of {cfg.name} need about "
                          f"{need / 2**30:,.1f} GiB but this host has {have / 2**30:,.1f} GiB; "
                          "use --device cuda or a smaller model (e.g. tiny)")


def check_resume(ckpt_dir: str, cfg: ModelConfig):
    """Before anything is written or started: the checkpoint to resume is intact
    (``runtime.checkpoint.resume_point``: the newest intact step, with a warning when that
    is not ``latest``'s, or a refusal naming the damaged file) and of ``cfg``'s model (its
    ``run.toml``'s model fields, else the step's tensor shapes; one line naming every one
    that differs)."""
    from runtime.checkpoint import resume_point, tensor_differences

    point = resume_point(ckpt_dir)
    saved = Path(ckpt_dir) / "run.toml"
    if saved.exists():
        theirs = ModelConfig.from_dict(read_plan(saved, required=()).get("model", {}),
                                       where=f"{saved} [model]")
        name, differ = theirs.name, model_differences(theirs, cfg)
    else:
        name = "another model"
        differ = tensor_differences(Path(ckpt_dir) / f"step-{point.step}", cfg)
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigError(f"--resume: {ckpt_dir} holds a checkpoint of {name}, not "
                          f"{cfg.name}: {shown} differ (checkpoint vs asked)")
    return point


def model_differences(theirs: ModelConfig, ours: ModelConfig) -> list[str]:
    """``field(theirs vs ours)`` for each model field that differs, its name and source aside
    (a copy of a model under another name has the same tensors)."""
    a, b = theirs.to_dict(), ours.to_dict()
    return [f"{k}({a[k]} vs {b[k]})" for k in a
            if k not in ("name", "source") and a[k] != b.get(k)]


def check_generation(cfg: ModelConfig, *, tp: int, prompts: list[str], max_new: int,
                     tokenizer=None, chat: bool = False) -> None:
    """The layout contract's model and tensor-parallel rules for llmplan's runtime, then the
    prompt lengths (in ``tokenizer``'s tokens, bytes by default) against the context."""
    from runtime.tokenizer import ByteTokenizer, prompt_ids

    def encode(text: str) -> list[int]:
        return prompt_ids(tokenizer or ByteTokenizer(), text, chat=chat)
    positive_int("--max-new-tokens", max_new)
    refused = layout.refusals([*layout.model_problems(cfg), *layout.tp_problems(cfg, tp)],
                              "llmplan")
    if refused:
        raise ConfigError("; ".join(p.message for p in refused))
    lengths = [len(encode(p)) for p in prompts]
    if not lengths or min(lengths) < 1:
        raise ConfigError("every prompt needs at least one token")
    longest = max(lengths) + max_new
    if longest > cfg.max_context:
        raise ConfigError(f"prompt({max(lengths)}) + max new tokens({max_new}) = {longest} "
                          f"exceeds the model's max context({cfg.max_context})")
