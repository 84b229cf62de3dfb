"""Hugging Face accelerate: a launch config (YAML) for FSDP2 with its ``ParallelismConfig``.

Names as accelerate 1.x writes them (``accelerate config``; ``commands/config/config_args.py``
``ClusterConfig`` and ``parallelism_config.py``): ``distributed_type: FSDP`` with
``fsdp_config.fsdp_version: 2``, ``fsdp_reshard_after_forward`` (true: ZeRO-3's parameter
sharding; false: parameters stay gathered between forward and backward, ZeRO-2), and
``parallelism_config_{dp_replicate,dp_shard,tp,cp}_size``. Pure data parallelism without
sharding is ``distributed_type: MULTI_GPU`` (DDP).

What accelerate cannot express is refused with its reason: it has no pipeline parallelism;
FSDP shards gradients with the optimizer state, so ZeRO-1 alone is DeepSpeed's; its tensor
parallelism applies the model's ``transformers`` tp_plan, which keeps activations whole
(no Megatron sequence parallelism) and composes only with a sharded dp
(``ParallelismConfig``: "cannot be used with pure data parallelism"); FSDP's activation
checkpointing wraps whole layers, so selective recompute is not an option. fp8 is
``mixed_precision: fp8`` with torchao's backend (``fp8_config``, ``FP8_CONFIG``), tensor-wise:
block scaling is refused.
"""

from __future__ import annotations

import json
from typing import Any

from planner.exports.job import Job

NAME = "accelerate"
FILENAME = "accelerate_config.yaml"
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "fp8": "fp8"}
FP8_CONFIG = {"backend": "AO", "enable_fsdp_float8_all_gather": False, "pad_inner_dim": True}
"""fp8 through torchao (accelerate's ``AORecipeKwargs``): tensor-wise Float8Linear, all-gathers
in bf16 as planned, and the first and last linear left in bf16 by accelerate's default filter
(the head, as ``planner.fp8`` plans, and the first layer's query projection)."""


def problems(job: Job) -> list[str]:
    p, recompute = job.par, job.setup.recompute
    out = []
    if p.pp > 1:
        out.append(f"pp({p.pp}) > 1: accelerate has no pipeline parallelism (its "
                   "ParallelismConfig has dp_replicate, dp_shard, tp and cp)")
    if p.zero == 1:
        out.append("zero(1): accelerate's FSDP shards gradients with the optimizer state "
                   "(zero 2 or 3); optimizer-only sharding is DeepSpeed's")
    if p.tp > 1 and p.sp:
        out.append(f"sp with tp({p.tp}): accelerate's tensor parallelism (the model's "
                   "transformers tp_plan) has no sequence parallelism")
    if p.tp > 1 and p.dp > 1 and p.zero == 0:
        out.append(f"tp({p.tp}) with unsharded dp({p.dp}): accelerate composes tensor "
                   "parallelism only with a sharded dp (zero 2 or 3)")
    if p.ep > 1:
        out.append(f"ep({p.ep}): accelerate's ParallelismConfig has no expert parallelism")
    if p.cp > 1 and p.zero < 2:
        out.append(f"cp({p.cp}) with zero({p.zero}): accelerate's context parallelism runs "
                   "under FSDP2 (zero 2 or 3)")
    if recompute == "selective":
        out.append("recompute(selective): FSDP's activation checkpointing recomputes whole "
                   "layers (full)")
    if job.setup.dtype == "fp8" and job.setup.fp8_scaling == "block":
        out.append("fp8 scaling(block): accelerate's torchao fp8 scales per tensor")
    return out


def settings(job: Job) -> dict[str, Any]:
    """The config as accelerate's ``ClusterConfig`` fields."""
    p = job.par
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if p.zero == 0 and p.tp == 1 else "FSDP",
        "mixed_precision": MIXED_PRECISION[job.setup.dtype],
        "num_machines": job.nodes,
        "num_processes": job.gpus,
        "machine_rank": 0,
        "main_training_function": "main",
        "rdzv_backend": "static" if job.nodes == 1 else "c10d",
        "same_network": True,
        "use_cpu": False,
    }
    if job.setup.dtype == "fp8":
        out["fp8_config"] = dict(FP8_CONFIG)
    if out["distributed_type"] == "FSDP":
        out["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": p.zero == 3,
            "fsdp_activation_checkpointing": job.setup.recompute == "full",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
        }
        out["parallelism_config"] = {
            "parallelism_config_dp_replicate_size": 1,
            "parallelism_config_dp_shard_size": p.dp,
            "parallelism_config_tp_size": p.tp,
            "parallelism_config_cp_size": p.cp,
        }
    return out


def render(job: Job) -> str:
    s = job.setup
    notes = [*job.header(),
             f"in the training script: DataLoader(batch_size={s.micro_batch}), "
             f"Accelerator(gradient_accumulation_steps={s.grad_accum})"
             + (", model.gradient_checkpointing_enable()" if s.recompute == "full"
                and settings(job)["distributed_type"] == "MULTI_GPU" else ""),
             "launch: accelerate launch --config_file accelerate_config.yaml train.py"]
    return "".join(f"# {line}\n" for line in notes) + _yaml(settings(job))


def _yaml(data: dict[str, Any], indent: int = 0) -> str:
    """Block YAML of nested mappings of scalars (JSON scalars are valid YAML scalars)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:\n{_yaml(value, indent + 2)}")
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value)}\n")
    return "".join(lines)
