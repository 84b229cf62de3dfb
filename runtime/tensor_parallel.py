"""Tensor parallelism (Megatron-LM's, as DTensor plans: torchtitan's ``apply_tp``): what
each TP rank computes of the decoder, applied from outside the model.

Column-parallel q/k/v and gate/up, row-parallel o/down, vocab-parallel embedding and LM head;
with sequence parallelism (Korthikanti et al. 2022 §4.2.2) the norms and the residual
stream are sequence-sharded. MoE experts split like dense MLPs (Megatron's expert tensor
parallelism). When tp is wider than the kv heads, each kv head is replicated over the tp/g
ranks whose query heads use it (as Megatron-LM does): those ranks keep the whole K and V
projections, compute only their head's rows, and sum their gradients over the TP group.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from runtime.model import Decoder, MoE

REPLICATED_KV = ("attention.wk.", "attention.wv.")
"""Parameters whose name has one of these parts are replicated over TP when tp > kv heads."""


def _mlp_plan(prefix: str, mlp, out) -> dict:
    plan = {f"{prefix}.w1": ColwiseParallel(), f"{prefix}.w2": RowwiseParallel(output_layouts=out)}
    if mlp.w3 is not None:
        plan[f"{prefix}.w3"] = ColwiseParallel()
    return plan


def apply_tp(part: Decoder, tp_mesh, *, sp: bool, sharded_logits: bool = True) -> None:
    """Megatron-style TP with DTensor plans (torchtitan's ``apply_tp``), for training and
    generation alike: column-parallel q/k/v and gate/up, row-parallel o/down, vocab-parallel
    embedding and LM head (logits left vocab-sharded for ``loss_parallel`` when
    ``sharded_logits``, else gathered). With ``sp`` the norms and the residual stream are
    sequence-sharded (Korthikanti et al. 2022 §4.2.2).

    - Additive positions (learned, sinusoidal) and an embedding norm act on the replicated
      embedding output; the first block then takes its sequence shard.
    - MoE: each expert is split like a dense MLP (Megatron's expert tensor parallelism) and
      reduced to the replicated tokens it serves; the router stays replicated.
    - ALiBi: each rank keeps its own heads' slopes.
    - tp > kv heads: K and V replicated, each rank computing its kv head's rows
      (:func:`replicated_kv_params` lists them; their gradients are summed over TP).
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (PrepareModuleInput, PrepareModuleInputOutput,
                                                   SequenceParallel, parallelize_module)

    tp, rank = tp_mesh.size(), tp_mesh.get_local_rank()
    seq = Shard(1) if sp else Replicate()
    if sp and part.tok_embeddings is None:
        # a later pipeline stage receives its 1/t sequence shard: the positions are those of
        # the whole sequence
        part.register_forward_pre_hook(functools.partial(_whole_positions, shards=tp),
                                       with_kwargs=True)
    additive = part.pos_embeddings is not None or part.pos_table is not None \
        or part.embedding_norm is not None
    top: dict = {}
    if part.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(),
                                                output_layouts=Replicate() if additive else seq)
        if additive and sp:
            first = next(iter(part.layers))
            top[f"layers.{first}"] = PrepareModuleInput(
                input_layouts=(Replicate(), None, None, None, None),
                desired_input_layouts=(seq, None, None, None, None), use_local_output=True)
    if part.output is not None:
        if part.norm is not None and sp:
            top["norm"] = SequenceParallel()
        top["output"] = ColwiseParallel(input_layouts=seq,
                                        output_layouts=Shard(-1) if sharded_logits else Replicate(),
                                        use_local_output=not sharded_logits)
    tied = part.tok_embeddings is not None and part.output is not None
    if top:
        parallelize_module(part, tp_mesh, top)
    if tied:  # both are vocab-sharded on dim 0: one DTensor serves both
        part.tie_weights()

    g = part.cfg.num_kv_heads
    replicate_kv = tp > g
    for block in part.layers.values():
        plan = {
            "attention": PrepareModuleInput(input_layouts=(seq, None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
        }
        ffn = block.feed_forward
        if isinstance(ffn, MoE):  # the router and the token gather act on plain tensors
            plan["feed_forward"] = PrepareModuleInputOutput(
                input_layouts=(seq,), desired_input_layouts=(Replicate(),), use_local_input=True,
                output_layouts=(Replicate(),), desired_output_layouts=(seq,))
            for group in ("experts", "shared"):
                # named, not counted: under expert parallelism a rank holds some experts,
                # keyed by their global index (runtime.expert_parallel)
                for i, expert in getattr(ffn, group).named_children():
                    plan.update(_mlp_plan(f"feed_forward.{group}.{i}", expert, Replicate()))
            ffn.agree = functools.partial(_routing_of_first_rank, group=tp_mesh.get_group(),
                                          src=int(tp_mesh.mesh[0]))
        else:
            plan.update(_mlp_plan("feed_forward", ffn, seq))
        if sp:
            plan["attention_norm"] = SequenceParallel()
            if block.ffn_norm is not None:
                plan["ffn_norm"] = SequenceParallel()
        if not replicate_kv:
            plan.update({"attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel()})
        parallelize_module(block, tp_mesh, plan)
        att = block.attention
        if replicate_kv:  # rank r's query heads all read kv head r // (tp / g)
            head = rank // (tp // g)
            rows = (head * att.head_dim, (head + 1) * att.head_dim)
            for linear in (att.wk, att.wv):
                linear.forward = functools.partial(_rows_forward, linear, rows)
        if att.alibi is not None:
            per = part.cfg.num_heads // tp
            att.heads = (rank * per, (rank + 1) * per)
            att.alibi = att.alibi[rank * per:(rank + 1) * per]


def _rows_forward(linear, rows: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """``linear`` restricted to output rows [lo, hi): one kv head of the whole projection,
    from the replicated attention input. Each rank's part of the input's gradient covers its
    own heads only, so it leaves as a partial sum (reduced with the query path's)."""
    from torch.distributed.tensor import Partial

    lo, hi = rows
    if hasattr(x, "to_local"):
        x = x.to_local(grad_placements=tuple(Partial() for _ in x.placements))
    bias = linear.bias[lo:hi] if linear.bias is not None else None
    return F.linear(x, linear.weight[lo:hi], bias)


def replicated_kv_params(part: Decoder, tp: int) -> list:
    """The K and V projections each TP rank holds whole when tp > kv heads."""
    if tp <= part.cfg.num_kv_heads:
        return []
    return [p for name, p in part.named_parameters()
            if any(key in name.replace("_checkpoint_wrapped_module.", "") for key in REPLICATED_KV)]


def sum_replicated_grads(params: list, tp_group) -> None:
    """Each TP rank's gradient of a replicated K/V projection covers its query heads only:
    their sum over the TP group is the single-model gradient."""
    from runtime.parallel import local_grad

    for p in params:
        if p.grad is not None:
            g = local_grad(p)
            flat = g.contiguous()
            dist.all_reduce(flat, group=tp_group)
            if flat.data_ptr() != g.data_ptr():
                g.copy_(flat)


def _whole_positions(module, args, kwargs, *, shards: int):
    if kwargs.get("positions") is None:
        x = args[0]
        kwargs = {**kwargs, "positions": torch.arange(x.shape[1] * shards, device=x.device)[None]}
    return args, kwargs


def shard_embedding_grad(part: Decoder) -> None:
    """DTensor's embedding backward leaves a replicated gradient on the vocab-sharded
    weight: keep only this rank's rows of it (a local slice, no communication), so the
    gradient a rank holds is its shard. Registered on the materialised parameter."""
    if part.tok_embeddings is not None and hasattr(part.tok_embeddings.weight, "placements"):
        part.tok_embeddings.weight.register_post_accumulate_grad_hook(_grad_like_param)


def _grad_like_param(param) -> None:
    grad = param.grad
    if grad is not None and hasattr(grad, "placements") and grad.placements != param.placements:
        param.grad = grad.redistribute(param.device_mesh, param.placements)


def _routing_of_first_rank(chosen: torch.Tensor, *, group, src: int) -> torch.Tensor:
    """The expert choice of the tp group's first rank, on every rank of the group. Training
    inputs are replicated, so this changes nothing there; but a pipeline stage infers its
    shapes from uninitialised buffers, and tensor-parallel ranks that routed those
    differently would exchange differently sized expert outputs."""
    chosen = chosen.contiguous()
    dist.broadcast(chosen, src=src, group=group)
    return chosen
