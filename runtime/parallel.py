"""How the decoder is parallelised: mesh, pipeline split, tensor/sequence parallel, activation
checkpointing, data parallel (FSDP2 or replicated), in torchtitan's order (build, PP split,
TP, AC, FSDP). The model file says *what*; this file says *how*.

Mesh: ``init_device_mesh(device, (pp, dp, tp), ("pp", "dp", "tp"))`` -- tp innermost, so a TP
group is adjacent ranks (one node / NVLink domain), as every framework does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from planner.config import ModelConfig, Parallel, TrainSetup
from planner.cost import DP_BUCKET_BYTES
from runtime.model import Decoder


def build_mesh(par: Parallel, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (par.pp, par.dp, par.tp), mesh_dim_names=("pp", "dp", "tp"))


def stage_ids(par: Parallel, pp_rank: int) -> list[int]:
    """Looped placement: rank r holds stages r, r + pp, ... (Megatron's interleaving)."""
    return [pp_rank + k * par.pp for k in range(par.vpp)]


def split_stage(model: Decoder, stage: int, n_stages: int) -> Decoder:
    """A copy of ``model`` keeping only the layers (and ends) that ``stage`` owns; layer names
    keep their global indices so checkpoints reshard across layouts."""
    part = copy.deepcopy(model)
    chunk = model.cfg.num_layers // n_stages
    keep = {str(i) for i in range(stage * chunk, (stage + 1) * chunk)}
    for name in list(part.layers.keys()):
        if name not in keep:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
        part.pos_embeddings = None
        part.embedding_norm = None
    if stage != n_stages - 1:
        part.norm = None
        part.output = None
    return part


def apply_tp(part: Decoder, tp_mesh, *, sp: bool) -> None:
    """Megatron-style TP with DTensor plans (torchtitan v0.2 ``apply_tp``); vocab-parallel
    embedding and LM head, loss computed under ``loss_parallel``."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    seq = Shard(1) if sp else Replicate()
    part.seq_shards = tp_mesh.size() if sp else 1
    top: dict = {}
    if part.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if part.output is not None:
        if part.norm is not None and sp:
            top["norm"] = SequenceParallel()
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1),
                                        use_local_output=False)
    if top:
        parallelize_module(part, tp_mesh, top)
    for block in part.layers.values():
        plan = {
            "attention": PrepareModuleInput(input_layouts=(seq, None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
        }
        if block.feed_forward.w3 is not None:
            plan["feed_forward.w3"] = ColwiseParallel()
        if sp:
            plan["attention_norm"] = SequenceParallel()
            if block.ffn_norm is not None:
                plan["ffn_norm"] = SequenceParallel()
        parallelize_module(block, tp_mesh, plan)


def apply_recompute(part: Decoder, recompute: str) -> None:
    """full: checkpoint every block (keep its input only); selective: recompute the attention
    core (Korthikanti et al. 2022 §4.2)."""
    if recompute == "full":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for name in list(part.layers.keys()):
            part.layers[name] = checkpoint_wrapper(part.layers[name], preserve_rng_state=False)
    elif recompute == "selective":
        for block in part.layers.values():
            block.attention.selective_recompute = True


def apply_fsdp(part: Decoder, dp_mesh, *, zero: int, dtype: str) -> None:
    """FSDP2 per block and then the root; ZeRO-3 reshards after forward, ZeRO-2 keeps the
    unsharded parameters until backward (``reshard_after_forward=False``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                              reduce_dtype=torch.float32)
    reshard = zero == 3
    for block in part.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(part, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)


@dataclass
class Built:
    parts: list[Decoder]
    stages: list[int]
    n_stages: int
    mesh: object
    fsdp: bool


def build(cfg: ModelConfig, setup: TrainSetup, par: Parallel, *, device: torch.device,
          seed: int) -> Built:
    """The model parts this rank runs, parallelised. Every rank initialises the same full
    model from ``seed`` and keeps its slice, so any layout starts from identical weights."""
    from runtime.model import init_weights

    mesh = build_mesh(par, device.type)
    model = Decoder(cfg)
    init_weights(model, seed)
    pp_rank = mesh["pp"].get_local_rank()
    n_stages = par.pp * par.vpp
    ids = stage_ids(par, pp_rank) if par.pp > 1 else [0]
    parts = [split_stage(model, s, n_stages) for s in ids] if par.pp > 1 else [model]
    fsdp = par.dp > 1 and par.zero >= 2
    for part in parts:
        part.to(device)
        if par.tp > 1:
            apply_tp(part, mesh["tp"], sp=par.sp)
        apply_recompute(part, setup.recompute)
        if fsdp:
            apply_fsdp(part, mesh["dp"], zero=par.zero, dtype=setup.dtype)
    return Built(parts=parts, stages=ids, n_stages=n_stages, mesh=mesh, fsdp=fsdp)


def allreduce_grads(parts: list[nn.Module], dp_group, bucket_bytes: int = DP_BUCKET_BYTES) -> None:
    """Replicated data parallelism (ZeRO-0/1): average gradients over the dp group.

    Gradients travel in flat buckets of at most ``bucket_bytes`` (DDP's 25 MiB), one
    collective per bucket rather than one per tensor: a call's fixed cost (about 2 ms for gloo
    on a CPU host) otherwise dominates a small model's step."""
    size = dist.get_world_size(dp_group)
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for part in parts for p in part.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []

    def flush() -> None:
        if not bucket:
            return
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=dp_group)
        flat.div_(size)
        for g, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(synced)
        bucket.clear()

    filled = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (filled + nbytes > bucket_bytes or g.dtype != bucket[0].dtype):
            flush()
            filled = 0
        bucket.append(g)
        filled += nbytes
    flush()


def clip_grad_norm_(params: list, max_norm: float, pp_group, pp: int) -> torch.Tensor:
    """Total gradient norm over every rank's parameters, then clip (torchtitan's recipe):
    DTensor grads give their full norm, plain-tensor grads (replicated norms under TP without
    SP) their local one, squares add up across pipeline stages."""
    dtensors = [p for p in params if p.grad is not None and hasattr(p.grad, "full_tensor")]
    plain = [p for p in params if p.grad is not None and not hasattr(p.grad, "full_tensor")]
    sq = torch.zeros((), dtype=torch.float32)
    for group in (dtensors, plain):
        if group:
            n = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0, False, True)
            n = n.full_tensor() if hasattr(n, "full_tensor") else n
            sq = sq.to(n.device) + n.float().pow(2)
    if pp > 1:
        dist.all_reduce(sq, group=pp_group)
    norm = sq.sqrt()
    coef = min(1.0, max_norm / (float(norm) + 1e-6))  # as clip_grads_with_norm_
    if coef < 1.0:
        for p in dtensors + plain:  # a Python scalar: DTensor and plain grads alike
            p.grad.mul_(coef)
    return norm
