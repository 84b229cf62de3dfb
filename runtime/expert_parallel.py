"""Expert parallelism: the experts of each MoE layer split over ep data-parallel ranks, tokens
exchanged by all-to-all (GShard, Lepikhin et al. 2020, arXiv 2006.16668 §2.3; Megatron-Core's
``MoEAlltoAllTokenDispatcher``; torchtitan's ``ExpertParallel``).

**Who holds what.** ep is carved from dp (Megatron-Core): the dp ranks of one
(pp, cp, tp) coordinate form groups of ep consecutive dp indices, and rank j of a group holds
experts j E/ep .. (j+1) E/ep - 1 of every MoE layer, under their global names
(``experts.<e>``), so initialisation, Hugging Face weights and checkpoints address them as
in the single-process model. The router, attention and shared experts stay replicated.

**A layer's forward.** Every rank routes its own tokens with the replicated router (the
model's top-k and softmax), then sorts its (token, choice) pairs by expert; since a rank's
experts are consecutive, that is also by destination rank. An all-to-all of the per-expert
counts tells each rank how many rows it receives; a second all-to-all carries the token rows
(autograd's all-to-all: its backward is the reverse exchange). Each local expert runs on its
rows from every source (an expert that got none runs on zero rows, so its gradient is zeros
on every rank); the outputs return by the reverse all-to-all and are weighted and summed into
their tokens in ascending expert order, the single-process model's order. Dropless: no
capacity limit, as ``runtime.model.MoE`` -- so the rows a rank's experts process (and the
activations they keep) follow the router's balance over the whole ep group, not 1/ep of it.

**Gradients.** Rank r's loss is its share of the global mean scaled by dp x cp (the
trainer's loss scale): L_r = (dp cp / N) sum_{t in r} l_t over the N label tokens. Expert e's
gradient on its rank gathers the tokens of the whole ep group G (the all-to-all's backward
brings them): (dp cp / N) sum_{t in G} dl_t/dw_e. Summed over the dp cp / ep ranks holding
the same experts (one per group) that is (dp cp / N) sum_t dl_t/dw_e, and divided by dp x cp
it is the single-process gradient (1/N) sum_t dl_t/dw_e (Megatron scales expert gradients
by 1/ep after averaging over the expert-data-parallel group: the same number). Dense weights
are averaged over their dp x cp replicas as without ep.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from runtime.init import canonical_name
from runtime.model import Decoder, MoE

EXPERTS = "feed_forward.experts."
"""Parameters whose (canonical) name has this part are expert-parallel."""


def apply_ep(part: Decoder, ep_mesh) -> None:
    """Keep this rank's E/ep experts of each MoE layer (a ``ModuleDict`` keyed by global
    index) and route its tokens to the others' by all-to-all. Called on the meta device,
    before tensor parallelism splits each kept expert."""
    ep, rank = ep_mesh.size(), ep_mesh.get_local_rank()
    for block in part.layers.values():
        ffn = block.feed_forward
        if not isinstance(ffn, MoE):
            continue
        per = len(ffn.experts) // ep
        first = rank * per
        ffn.experts = nn.ModuleDict({str(e): ffn.experts[e] for e in range(first, first + per)})
        ffn.routed = functools.partial(routed_all_to_all, ffn, group=ep_mesh.get_group(), ep=ep)


def expert_params(part: nn.Module) -> list[nn.Parameter]:
    """The routed experts' parameters of ``part``."""
    return [p for name, p in part.named_parameters() if EXPERTS in canonical_name(name, False)]


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group):
    """All-to-all of rows with autograd (the backward sends each row's gradient back)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

    return wait_tensor(all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group))


def routed_all_to_all(moe: MoE, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                      *, group, ep: int) -> torch.Tensor:
    """``MoE.routed`` over experts spread on the ``ep`` ranks of ``group``: this rank's tokens
    flat (T, h) with their choices chosen (T, k) and weights (T, k) -> (T, h). Rank j of the
    group holds experts j E/ep .. (j+1) E/ep - 1 (``apply_ep``)."""
    k = chosen.shape[1]
    per = len(moe.experts)
    n_experts = per * ep
    choice = chosen.reshape(-1)
    order = torch.argsort(choice, stable=True)  # by expert, hence by destination rank
    token, slot = order // k, order % k
    counts = torch.bincount(choice, minlength=n_experts)  # rows this rank sends each expert
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)  # [source, local expert]
    received = received.view(ep, per)
    send_splits = counts.view(ep, per).sum(1).tolist()
    recv_splits = received.sum(1).tolist()
    rows = _all_to_all(flat[token], recv_splits, send_splits, group)  # source-major
    # rows arrive grouped by source, each source's by expert: regroup them by expert
    starts = (torch.cumsum(received.reshape(-1), 0) - received.reshape(-1)).view(ep, per)
    outputs, where = [], []
    for j, expert in enumerate(moe.experts.values()):
        index = torch.cat([torch.arange(int(starts[s, j]), int(starts[s, j] + received[s, j]))
                           for s in range(ep)]).to(flat.device)
        outputs.append(expert(rows[index]))
        where.append(index)
    back = torch.zeros_like(rows).index_copy(0, torch.cat(where), torch.cat(outputs))
    done = _all_to_all(back, send_splits, recv_splits, group)  # in this rank's sorted order
    out = torch.zeros_like(flat)
    return out.index_add(0, token, done * weights[token, slot, None])
