"""DeepSpeed: the JSON config ``deepspeed.initialize`` reads (``deepspeed/runtime/config.py``).

Batch: ``train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x
data-parallel world size`` (DeepSpeed asserts it); ``zero_optimization.stage`` 0-3; ``bf16`` /
``fp16``; tensor parallelism as AutoTP training (``tensor_parallel.autotp_size``, DeepSpeed
>= 0.16.4); full recompute as the ``activation_checkpointing`` section (DeepSpeed's
``checkpointing.checkpoint`` wraps whole layers). JSON has no comments: the header is the
first key, ``"//"``, which DeepSpeed, ``json`` and ``hjson`` all read and DeepSpeed ignores.

Refused, with the reason: pipeline parallelism (its degree is ``PipelineModule(num_stages=)``
in the training script, and its engine has no interleaved schedule), Megatron sequence
parallelism (AutoTP keeps norms and dropout whole; DeepSpeed's own "sequence parallel" is
Ulysses, a different split), selective recompute (layer checkpointing only) and fp8 (its
config has none: Transformer Engine's layers go into the model code).
"""

from __future__ import annotations

import json
from typing import Any

from planner.exports.job import Job

NAME = "deepspeed"
FILENAME = "ds_config.json"


def problems(job: Job) -> list[str]:
    p = job.par
    out = []
    if p.pp > 1:
        out.append(f"pp({p.pp}) > 1: DeepSpeed's pipeline degree is set in code "
                   "(PipelineModule(num_stages=...)), not in its config")
    if p.tp > 1 and p.sp:
        out.append(f"sp with tp({p.tp}): DeepSpeed's AutoTP has no Megatron sequence "
                   "parallelism (its sequence parallel is Ulysses)")
    if p.cp > 1:
        out.append(f"cp({p.cp}): DeepSpeed has no ring context parallelism (its sequence "
                   "parallelism, Ulysses, splits heads and is set in code)")
    if p.ep > 1:
        out.append(f"ep({p.ep}): DeepSpeed-MoE's expert parallel size is set in the model "
                   "code (deepspeed.moe.layer.MoE(ep_size=...)), not in its config")
    if job.setup.recompute == "selective":
        out.append("recompute(selective): DeepSpeed's activation checkpointing recomputes "
                   "whole layers (full)")
    if job.setup.dtype == "fp8":
        out.append("dtype(fp8): DeepSpeed's config has no fp8 training (Transformer Engine's "
                   "layers go into the model code)")
    return out


def settings(job: Job) -> dict[str, Any]:
    p, s = job.par, job.setup
    out: dict[str, Any] = {
        "//": " | ".join(job.header()),
        "train_batch_size": job.global_batch,
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "bf16": {"enabled": s.dtype == "bf16"},
        "fp16": {"enabled": s.dtype == "fp16"},
        "zero_optimization": {"stage": p.zero},
    }
    if p.tp > 1:
        out["tensor_parallel"] = {"autotp_size": p.tp}
    if s.recompute == "full":
        out["activation_checkpointing"] = {"partition_activations": False,
                                           "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return out


def render(job: Job) -> str:
    return json.dumps(settings(job), indent=2) + "\n"
