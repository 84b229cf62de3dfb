"""Context parallelism: each sequence split over the cp ranks, attention by a ring.

**The split** (causal load balancing; Llama 3, arXiv 2407.21783 §3.3.2, and torchtitan): a
sequence of s tokens is cut into 2 cp chunks of s / (2 cp) and cp rank r holds chunks r and
2cp - 1 - r. Under a causal mask query i attends i + 1 keys, so chunk c costs about c + 1/2
chunk-blocks of work; chunks r and 2cp - 1 - r together cost 2cp, the same on every rank.
Tokens, labels and positions are split alike; positions stay absolute (the model's RoPE,
learned or sinusoidal positions and ALiBi read them), so every token sees the position it
has in the single-process run.

**The attention** (Ring Attention, Liu et al. 2023, arXiv 2310.01889): a rank's queries
must see every key, so the K/V blocks travel round the ring of cp ranks, one hop a step
(sent to rank r + 1, received from r - 1), together with their positions; after cp - 1 hops
every block has been met once. Each step attends the local queries to the block in hand
with the mask computed from absolute positions (allowed: k_pos <= q_pos, and within the
sliding window q_pos - k_pos < w when the model has one; ALiBi's bias slope x k_pos added),
and returns the block's output and log-sum-exp per query. Blocks merge as the online softmax
does (Milakov & Gimelshein 2018, arXiv 1805.02867):

    lse = log(exp(lse_a) + exp(lse_b)),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b

which is softmax over the union of the blocks' keys. A query with no allowed key in a block
gets scores at the dtype's lowest finite value, so its log-sum-exp is about that value, its
merge weight exp(lse_i - lse) is exactly 0 and no NaN appears (every query sees itself in
the local block, so the merged log-sum-exp is finite). The backward is autograd's: through
the merge and the block softmax, and through each hop, whose backward sends the gradient
back the way the block came (to r - 1, received from r + 1).

The block attention is eager (an s/cp x s/cp score matrix per hop, recomputed in backward
rather than kept, as flash attention does; what a rank keeps for backward is its queries, the
K/V blocks it received -- the whole sequence's K and V, g/a the size of the queries -- and
each block's output and log-sum-exp): torch's CPU SDPA kernel returns no log-sum-exp that
autograd can differentiate, and has no context-parallel strategy. On CUDA, torch's ``context_parallel`` (``torch.distributed.tensor.experimental``)
does the same with fused kernels; this ring is the path on CPU/gloo.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
from torch import nn


def load_balanced_indices(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """The sequence positions cp rank ``rank`` holds: chunks r and 2cp - 1 - r of 2cp."""
    chunk = seq_len // (2 * cp)
    first = torch.arange(rank * chunk, (rank + 1) * chunk)
    second = torch.arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk)
    return torch.cat((first, second))


def local_chunks(t: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This cp rank's part of ``t`` along its sequence dimension ``dim``."""
    if cp == 1:
        return t
    index = load_balanced_indices(t.shape[dim], cp, rank).to(t.device)
    return t.index_select(dim, index).contiguous()


def _exchange(x: torch.Tensor, group, send_to: int, recv_from: int) -> torch.Tensor:
    """Send ``x`` to global rank ``send_to`` and receive a tensor like it from
    ``recv_from`` (one batched isend/irecv pair; every ring rank posts both at once)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, send_to, group), dist.P2POp(dist.irecv, out, recv_from, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


class RingPass(torch.autograd.Function):
    """One hop round the ring: forward sends to the next rank and receives from the previous;
    backward sends the gradient to the previous and receives the next rank's."""

    @staticmethod
    def forward(ctx, x, group, send_to: int, recv_from: int):
        ctx.group, ctx.send_to, ctx.recv_from = group, send_to, recv_from
        return _exchange(x, group, send_to, recv_from)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, ctx.group, ctx.recv_from, ctx.send_to), None, None, None


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                    k_pos: torch.Tensor, *, window: int = 0,
                    slopes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q (b, a, sq, d) to one block k, v (b, g, sk, d) with the mask
    and ALiBi bias from absolute positions q_pos (b or 1, sq), k_pos (b or 1, sk): (output
    (b, a, sq, d), log-sum-exp (b, a, sq)), both fp32 for 16-bit inputs (merged in fp32).
    Scores are those of ``F.scaled_dot_product_attention`` (scale 1/sqrt(d); kv head j
    serves query heads j a/g .. (j+1) a/g - 1, as ``enable_gqa``)."""
    a, g = q.shape[1], k.shape[1]
    if a != g:
        k, v = k.repeat_interleave(a // g, dim=1), v.repeat_interleave(a // g, dim=1)
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))
    if scores.dtype in (torch.bfloat16, torch.float16):  # softmax in fp32, as SDPA's kernels
        scores = scores.float()
    qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
    allowed = kp <= qp
    if window:
        allowed = allowed & (qp - kp < window)
    if slopes is not None:  # BLOOM's form: slope x key position (the query's cancels)
        scores = scores + slopes.float()[None, :, None, None] * kp.float()
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse[..., None]).to(v.dtype) @ v
    return out.to(lse.dtype), lse


def merge(out: torch.Tensor, lse: torch.Tensor, out_i: torch.Tensor,
          lse_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two blocks' attention over disjoint keys -> attention over their union (online
    softmax, Milakov & Gimelshein 2018)."""
    new = torch.logaddexp(lse, lse_i)
    return out * torch.exp(lse - new)[..., None] + out_i * torch.exp(lse_i - new)[..., None], new


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   group, *, window: int = 0, slopes: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of this rank's queries to the keys of every rank of ``group``;
    ``positions`` (b or 1, s_local) are the absolute positions of this rank's tokens (of its
    queries and of its own K/V block). Returns (b, a, s_local, d)."""
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    send_to = dist.get_global_rank(group, (rank + 1) % cp)
    recv_from = dist.get_global_rank(group, (rank - 1) % cp)
    kv, k_pos = torch.stack((k, v)), positions
    attend = functools.partial(_recomputed_block, window=window, slopes=slopes)
    out, lse = attend(q, k, v, positions, positions)
    for _ in range(cp - 1):
        kv = RingPass.apply(kv, group, send_to, recv_from)
        k_pos = _exchange(k_pos, group, send_to, recv_from)
        out_i, lse_i = attend(q, kv[0], kv[1], positions, k_pos)
        out, lse = merge(out, lse, out_i, lse_i)
    return out.to(q.dtype)


def _recomputed_block(q, k, v, q_pos, k_pos, *, window: int, slopes):
    """:func:`block_attention` keeping only its inputs for backward and recomputing the
    block's scores there (as flash attention does): a rank then holds one s/cp x s/cp score
    matrix at a time, not one per block and layer."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(block_attention, q, k, v, q_pos, k_pos, window=window, slopes=slopes,
                      use_reentrant=False, preserve_rng_state=False)


class RingAttentionCore(nn.Module):
    """Drop-in for ``runtime.model.AttentionCore`` under context parallelism. Its ``mask``
    argument (the model's, built for a contiguous local sequence) is not used: the mask is
    made per block from absolute positions, ``k_pos`` being those of this rank's tokens."""

    def __init__(self, group, window: int) -> None:
        super().__init__()
        self.group, self.window = group, window

    def forward(self, q, k, v, mask=None, k_pos=None, slopes=None):
        if k_pos is None:
            raise ValueError("context parallel attention needs the tokens' positions")
        return ring_attention(q, k, v, k_pos, self.group, window=self.window, slopes=slopes)


def _local_positions(module, args, kwargs, *, positions: torch.Tensor):
    """Forward pre-hook: the absolute positions of this rank's tokens, unless given."""
    if len(args) < 2 and kwargs.get("positions") is None:
        x = args[0]
        kwargs = {**kwargs, "positions": positions.to(x.device)}
    return args, kwargs


def apply_cp(part: nn.Module, cp_mesh, seq_len: int) -> None:
    """Context parallelism on one model part (a whole decoder or a pipeline stage): each
    attention core becomes the ring over ``cp_mesh``, and the part is given this rank's
    absolute positions (a pre-hook ahead of any other, so that pipeline stages after the
    first and sequence-parallel ranks see the same ones). Inputs and labels are split by
    the trainer with :func:`local_chunks`."""
    from runtime.model import Attention

    cp, rank = cp_mesh.size(), cp_mesh.get_local_rank()
    group = cp_mesh.get_group()
    positions = load_balanced_indices(seq_len, cp, rank)[None]
    for module in part.modules():
        if isinstance(module, Attention):
            module.core = RingAttentionCore(group, module.window or 0)
    part.register_forward_pre_hook(functools.partial(_local_positions, positions=positions),
                                   with_kwargs=True, prepend=True)
