"""Megatron-LM: the ``pretrain_gpt.py`` arguments (a bash script with one array).

Names as ``megatron/training/arguments.py`` of NVIDIA/Megatron-LM at commit
d98e8a64ddf34856e74b24714e3bedb2f5a39553 (tests check every flag against the parser's own
option list, ``tests/fixtures/exports/megatron_options.json``). Layout: tensor / pipeline
sizes, ``--num-virtual-stages-per-pipeline-rank``, ``--sequence-parallel``, micro and
global batch (Megatron derives the accumulation), ZeRO-1 as ``--use-distributed-optimizer``
and ZeRO-2/3 as Megatron-FSDP's ``--data-parallel-sharding-strategy optim_grads`` /
``optim_grads_params``, recompute as ``--recompute-granularity selective`` (attention core,
Korthikanti et al. 2022) or ``full`` (uniform, every layer); fp8 as Transformer Engine's
``--fp8-format hybrid --fp8-recipe tensorwise`` (E4M3 forward, E5M2 gradients) or, for block
scaling, ``--fp8-format e4m3 --fp8-recipe blockwise`` (DeepSeek-V3 §3.3: 1 x 128 and 128 x
128 tiles, E4M3 throughout), over ``--bf16``. The model is spelt out too, so Megatron builds
the shape the plan was made for.

Megatron-FSDP needs ``--ckpt-format fsdp_dtensor`` (its only checkpoint format) and
CUDA_DEVICE_MAX_CONNECTIONS unset; tp or cp > 1 without it needs CUDA_DEVICE_MAX_CONNECTIONS=1
(both asserted by ``validate_args``). Several nodes get a torchrun line with c10d rendezvous
(``--node-rank "$NODE_RANK" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"``).

Refused, with the reason: the GPipe schedule (Megatron runs 1F1B and interleaved 1F1B),
ZeRO-2/3 with pp > 1 (Megatron-FSDP does not support pipeline parallelism: NVIDIA/Megatron-LM
issue 1455), a sequence longer than the model's max_position_embeddings (asserted), and
model features Megatron's GPT model has no flag for (parallel blocks, ALiBi or sinusoidal
positions, norms without bias, biases on a subset other than q/k/v, ReLU/GeGLU MLPs).
"""

from __future__ import annotations

import shlex

from planner.exports.job import Job

NAME = "megatron"
FILENAME = "megatron_args.sh"
FSDP_CHECKPOINT = ["--ckpt-format", "fsdp_dtensor"]
"""Megatron-FSDP saves only this format: ``validate_args`` asserts ``args.ckpt_format ==
"fsdp_dtensor"`` under ``--use-megatron-fsdp`` ("Megatron FSDP only supports fsdp_dtensor
checkpoint format")."""
ZERO = {0: [], 1: ["--use-distributed-optimizer"],
        2: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads",
            *FSDP_CHECKPOINT],
        3: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads_params",
            *FSDP_CHECKPOINT]}
POSITIONS = {"rope": "rope", "learned": "learned_absolute", "none": "none"}
NORMS = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}


def problems(job: Job) -> list[str]:
    cfg = job.cfg
    out = []
    if job.par.schedule == "gpipe":
        out.append("schedule(gpipe): Megatron-LM runs 1F1B and interleaved 1F1B")
    if job.par.zero >= 2 and job.par.pp > 1:
        out.append("zero 2/3 with pp > 1: Megatron-LM runs ZeRO-2/3 as Megatron-FSDP, which "
                   "does not support pipeline parallelism (NVIDIA/Megatron-LM issue 1455)")
    if job.setup.seq_len > cfg.max_context:
        out.append(f"seq({job.setup.seq_len}) > max_position_embeddings({cfg.max_context}): "
                   "Megatron-LM asserts max_position_embeddings >= seq_length")
    unlike = [what for what, differs in (
        (f"block {cfg.block}", cfg.block != "pre_norm"),
        (f"positions {cfg.position}", cfg.position not in POSITIONS),
        (f"norm {cfg.norm}", cfg.norm not in NORMS),
        (f"biases {cfg.bias}", cfg.bias not in ("none", "qkv", "all")),
        (f"MLP {cfg.mlp}", cfg.mlp not in ("swiglu", "gelu")),
        ("an embedding multiplier", cfg.embedding_multiplier != 1.0)) if differs]
    if unlike:
        out.append(f"Megatron-LM's GPT model has no flag for {cfg.name}'s {', '.join(unlike)}")
    return out


def model_args(job: Job) -> list[str]:
    c = job.cfg
    args = ["--num-layers", c.num_layers, "--hidden-size", c.hidden_size,
            "--ffn-hidden-size", c.ffn_hidden_size, "--num-attention-heads", c.num_heads]
    if c.head_dim * c.num_heads != c.hidden_size:
        args += ["--kv-channels", c.head_dim]
    if c.num_kv_heads != c.num_heads:
        args += ["--group-query-attention", "--num-query-groups", c.num_kv_heads]
    args += ["--seq-length", job.setup.seq_len, "--max-position-embeddings", c.max_context,
             "--position-embedding-type", POSITIONS[c.position],
             "--normalization", NORMS[c.norm], "--norm-epsilon", c.norm_eps]
    if c.position == "rope":
        args += ["--rotary-base", int(c.rope_theta), "--rotary-percent", c.rope_fraction]
        if c.rope_scaling == "llama3":
            args += ["--use-rope-scaling", "--rope-scaling-factor", c.rope_scaling_factor]
    if c.mlp == "swiglu":
        args.append("--swiglu")
    if c.bias in ("none", "qkv"):
        args.append("--disable-bias-linear")
    if c.bias == "qkv":
        args.append("--add-qkv-bias")
    if not c.tie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    if c.is_moe:
        args += ["--num-experts", c.num_experts, "--moe-router-topk", c.experts_per_token,
                 "--moe-ffn-hidden-size", c.moe_ffn_hidden_size]
        if c.num_shared_experts:
            args += ["--moe-shared-expert-intermediate-size",
                     c.num_shared_experts * c.moe_ffn_hidden_size]
        if c.first_dense_layers:
            args += ["--moe-layer-freq",
                     f"([0]*{c.first_dense_layers}+[1]*{c.num_layers - c.first_dense_layers})"]
    return [str(a) for a in args]


def layout_args(job: Job) -> list[str]:
    p, s = job.par, job.setup
    args = ["--tensor-model-parallel-size", p.tp, "--pipeline-model-parallel-size", p.pp,
            "--context-parallel-size", p.cp]
    if p.ep > 1:
        args += ["--expert-model-parallel-size", p.ep]
    if p.vpp > 1:
        args += ["--num-virtual-stages-per-pipeline-rank", p.vpp]
    if p.sp:
        args.append("--sequence-parallel")
    args += ["--micro-batch-size", s.micro_batch,
             "--global-batch-size", job.global_batch, *ZERO[p.zero]]
    if s.recompute == "selective":
        args += ["--recompute-granularity", "selective"]
    elif s.recompute == "full":
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform",
                 "--recompute-num-layers", 1]
    args += ["--attention-backend", "flash" if s.attention == "flash" else "unfused"]
    if s.dtype in ("bf16", "fp16"):
        args.append(f"--{s.dtype}")
    elif s.dtype == "fp8":  # Transformer Engine's fp8 GEMMs over bf16 (DeepSeek-V3's blocks: e4m3)
        block = s.fp8_scaling == "block"
        args += ["--bf16", "--fp8-format", "e4m3" if block else "hybrid",
                 "--fp8-recipe", "blockwise" if block else "tensorwise"]
    return [str(a) for a in args]


def settings(job: Job) -> list[str]:
    """The arguments, in order."""
    return [*model_args(job), *layout_args(job)]


def render(job: Job) -> str:
    header = "".join(f"# {line}\n" for line in job.header())
    lines = "".join(f"  {shlex.join(pair)}\n" for pair in _pairs(settings(job)))
    return (f"#!/bin/bash\n{header}"
            "# add your data and tokenizer, e.g. --data-path ... --tokenizer-type "
            "HuggingFaceTokenizer --tokenizer-model ...\n"
            f"MEGATRON_ARGS=(\n{lines})\n"
            f"{_connections(job)}{torchrun(job)} pretrain_gpt.py \"${{MEGATRON_ARGS[@]}}\" \"$@\"\n")


def _connections(job: Job) -> str:
    """Megatron-LM asserts CUDA_DEVICE_MAX_CONNECTIONS=1 with tp or cp > 1 before Blackwell,
    and asserts it is not 1 under Megatron-FSDP (``validate_args``)."""
    if job.par.zero >= 2:
        return "unset CUDA_DEVICE_MAX_CONNECTIONS  # Megatron-FSDP asserts it is not 1\n"
    if job.par.tp > 1 or job.par.cp > 1:
        return "export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-LM asserts it with tp/cp > 1\n"
    return ""


def torchrun(job: Job) -> str:
    """The launcher line: one node as is; several with c10d rendezvous on $MASTER_ADDR and
    each node's $NODE_RANK (set them per node, as a Slurm or Kubernetes job does)."""
    line = f"torchrun --nproc-per-node {min(job.gpus, job.gpus_per_node)} --nnodes {job.nodes}"
    if job.nodes > 1:
        line += (' --node-rank "$NODE_RANK" --rdzv-backend c10d'
                 ' --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}"'
                 ' --rdzv-id "${RDZV_ID:-llmplan}"')
    return line


def _pairs(args: list[str]) -> list[list[str]]:
    """Each flag with the values that follow it, one per line of the array."""
    out: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not out:
            out.append([a])
        else:
            out[-1].append(a)
    return out
