"""torchtitan: a job config TOML (``--job.config_file``), its ``[model]``, ``[training]``,
``[parallelism]`` and ``[activation_checkpoint]`` tables.

Names as torchtitan's ``torchtitan/config/job_config.py`` at v0.2.2 (commit
73a0e6979dd10b6b1904098eb3c8f62c18ab87ce, the last release that reads TOML; 0.3 moved to a
Python config registry with the same ``section.key`` names as command-line overrides, which
the header prints). Batch: ``local_batch_size`` is one data-parallel rank's batch per
optimizer step with pipelining (split into ``pipeline_parallel_microbatch_size`` pieces,
``pipeline_parallel.py``) and one micro-batch without it (``train.py`` then accumulates
``global_batch_size / (local_batch_size x dp)`` of them). Equal pipeline stages are
``pipeline_parallel_layers_per_stage = L / (pp v)`` with no stage given fewer layers.

Refused, with the reason: models other than torchtitan's llama3 architecture (RoPE, SwiGLU,
RMSNorm, no biases, untied head); ZeRO-1 (its FSDP2 shards parameters, gradients and
optimizer state together); tensor parallelism without sequence parallelism (its llama3 plan
always shards the norms over the sequence in 0.2.2); fp16 (it trains bf16 or fp32); fp8
block scaling (its float8 recipes are tensorwise and rowwise); and torch's 1F1B with fewer
micro-batches than stages (``Schedule1F1B`` raises). fp8 is torchao's ``Float8Linear`` on
every linear but the head (``filter_fqns = ["output"]``), tensorwise, as ``planner.fp8`` plans;
llmplan's memory for it is Transformer Engine's recipe (fp8 saved inputs and weight copies),
where torchao saves bf16 inputs (``recipe="runtime"`` models that).
"""

from __future__ import annotations

from typing import Any

from planner import layout
from planner.exports.job import Job

NAME = "torchtitan"
FILENAME = "torchtitan.toml"
SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe", "interleaved": "Interleaved1F1B"}
FLOAT8 = "quantize.linear.float8"
"""torchtitan's model converter for fp8 linears (``components/quantization/float8.py``, its
``[quantize.linear.float8]`` table; docs/float8.md)."""

# torchtitan/models/llama3/__init__.py at v0.2.2, ``llama3_args``: (h, L, a, g, f, V, theta);
# f from TransformerModelArgs' rule multiple_of * ceil(multiplier * int(8 h / 3) / multiple_of).
FLAVORS = {
    "debugmodel": (256, 6, 16, 16, 768, 2048, 500_000.0),
    "8B": (4096, 32, 32, 8, 14336, 128256, 500_000.0),
    "70B": (8192, 80, 64, 8, 28672, 128256, 500_000.0),
    "405B": (16384, 126, 128, 8, 53248, 128256, 500_000.0),
}


def problems(job: Job) -> list[str]:
    cfg, p, s = job.cfg, job.par, job.setup
    out = []
    unlike = [what for what, differs in (
        ("MLP " + cfg.mlp, cfg.mlp != "swiglu"), ("norm " + cfg.norm, cfg.norm != "rmsnorm"),
        ("positions " + cfg.position, cfg.position != "rope"), ("biases " + cfg.bias, cfg.bias != "none"),
        ("block " + cfg.block, cfg.block != "pre_norm"), ("a tied head", cfg.tie_embeddings),
        ("experts", cfg.is_moe), ("embedding multiplier", cfg.embedding_multiplier != 1.0),
        ("a sliding window", bool(cfg.sliding_window))) if differs]
    if unlike:
        out.append(f"torchtitan's llama3 model is RoPE + SwiGLU + RMSNorm without biases or a "
                   f"tied head; {cfg.name} has {', '.join(unlike)}")
    if p.zero == 1:
        out.append("zero(1): torchtitan's FSDP2 shards parameters, gradients and optimizer "
                   "state together (zero 2 or 3)")
    if p.tp > 1 and not p.sp:
        out.append(f"tp({p.tp}) without sp: torchtitan's tensor-parallel plan always shards "
                   "the norms over the sequence (sequence parallel)")
    if s.dtype == "fp16":
        out.append("dtype(fp16): torchtitan trains in bf16 or fp32")
    if s.dtype == "fp8" and s.fp8_scaling == "block":
        out.append("fp8 scaling(block): torchtitan's float8 recipes scale per tensor or per "
                   "row (tensorwise, rowwise)")
    out.extend(f"torch's Schedule1F1B (torchtitan's): {problem.detail}"
               for problem in layout.batch_problems(
                   pp=p.pp, vpp=p.vpp, schedule=p.schedule, global_batch=job.global_batch,
                   dp=p.dp, mbs=s.micro_batch)
               if problem.key == "runtime_pp_microbatches")
    return out


def flavor(job: Job) -> str | None:
    """torchtitan's flavor name with this model's shape, or None."""
    c = job.cfg
    shape = (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.ffn_hidden_size,
             c.vocab_size, float(c.rope_theta))
    return next((name for name, dims in FLAVORS.items() if dims == shape), None)


def model_args(job: Job) -> str:
    """The ``TransformerModelArgs(...)`` that registers this shape as a flavor. With
    ``multiple_of = f`` any hidden size in (0, f] rounds up to f, so the multiplier only has to
    bring int(8 h / 3) down to f or below."""
    c = job.cfg
    base = int(2 * 4 * c.hidden_size / 3)
    multiplier = f", ffn_dim_multiplier={c.ffn_hidden_size / base!r}" if base > c.ffn_hidden_size else ""
    return (f"TransformerModelArgs(dim={c.hidden_size}, n_layers={c.num_layers}, "
            f"n_heads={c.num_heads}, n_kv_heads={c.num_kv_heads}, vocab_size={c.vocab_size}, "
            f"multiple_of={c.ffn_hidden_size}{multiplier}, norm_eps={c.norm_eps!r}, "
            f"rope_theta={c.rope_theta!r})")


def settings(job: Job) -> dict[str, Any]:
    """The job config as torchtitan's sections and keys."""
    p, s = job.par, job.setup
    sharded = p.zero in (2, 3)
    piped = p.pp > 1
    parallelism: dict[str, Any] = {
        "data_parallel_replicate_degree": 1 if sharded else p.dp,
        "data_parallel_shard_degree": p.dp if sharded else 1,
        "fsdp_reshard_after_forward": {3: "always", 2: "never"}.get(p.zero, "default"),
        "tensor_parallel_degree": p.tp,
        "pipeline_parallel_degree": p.pp,
        "context_parallel_degree": p.cp,
    }
    if piped:
        parallelism.update(
            pipeline_parallel_schedule=SCHEDULES[p.schedule],
            pipeline_parallel_microbatch_size=s.micro_batch,
            pipeline_parallel_layers_per_stage=job.cfg.num_layers // (p.pp * p.vpp),
            pipeline_parallel_first_stage_less_layers=0,
            pipeline_parallel_last_stage_less_layers=0)
    checkpoint: dict[str, Any] = {"mode": s.recompute}
    if s.recompute == "selective":
        checkpoint["selective_ac_option"] = "op"
    model: dict[str, Any] = {"name": "llama3", "flavor": flavor(job) or job.cfg.name}
    extra: dict[str, Any] = {}
    if s.dtype == "fp8":  # torchao's Float8Linear on the block linears; the head ("output") stays bf16
        model["converters"] = [FLOAT8]
        extra["quantize"] = {"linear": {"float8": {"recipe_name": "tensorwise",
                                                   "filter_fqns": ["output"]}}}
    return {
        "job": {"description": f"llmplan: {job.cfg.name}"},
        "model": model,
        "training": {
            "local_batch_size": s.micro_batch * (s.grad_accum if piped else 1),
            "global_batch_size": job.global_batch,
            "seq_len": s.seq_len,
            "mixed_precision_param": "float32" if s.dtype == "fp32" else "bfloat16",
        },
        "parallelism": parallelism,
        "activation_checkpoint": checkpoint,
        **extra,
    }


def render(job: Job) -> str:
    from planner.tomlio import dumps

    data = settings(job)
    notes = job.header()
    if flavor(job) is None:
        notes.append(f"flavor {job.cfg.name!r} is not one of torchtitan's llama3 flavors: "
                     f"register it in torchtitan/models/llama3/__init__.py as {model_args(job)}")
    overrides = " ".join(f"--{section}.{key}={value}" for section in ("training", "parallelism")
                         for key, value in data[section].items())
    if "quantize" in data:
        float8 = data["quantize"]["linear"]["float8"]
        overrides += f" --model.converters={FLOAT8}" + "".join(
            f" --{FLOAT8}.{key}={','.join(v) if isinstance(v, list) else v}"
            for key, v in float8.items())
    registry = f"llama3_{flavor(job).lower()}" if flavor(job) else "<your registry entry>"
    notes += [f"torchrun ... -m torchtitan.train --job.config_file {FILENAME}  (torchtitan <= 0.2.2)",
              f"torchtitan 0.3 (same keys as overrides; activation checkpointing "
              f"{job.setup.recompute} in the registry entry): --module llama3 --config "
              f"{registry} {overrides}"]
    return dumps(data, comment="\n".join(notes))
