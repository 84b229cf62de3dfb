"""Layout-invariant weight initialisation of each rank's own shard.

A model is built on the ``meta`` device, split and sharded there, then each rank allocates and
fills only its own pieces (torchtitan's recipe). For every layout to start from the same
weights, a value must depend on the parameter and its global position, never on which rank
holds it: matrices are drawn in blocks of ``BLOCK_ROWS`` global rows, each block from a
generator seeded by (seed, parameter name, block index). A rank draws only the blocks its rows
touch (full width; columns it does not hold are dropped), so no rank ever holds a whole
parameter unless its shard is one, and a 1-D parameter (norm scales, biases) is a constant.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

BLOCK_ROWS = 64
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def canonical_name(name: str, tied: bool) -> str:
    """The parameter's name in the unsplit, unwrapped model; a tied LM head is the embedding."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    if tied and name == "output.weight":
        return "tok_embeddings.weight"
    return name


def global_indices(param: torch.Tensor) -> tuple[tuple[int, ...], list[torch.Tensor | None]]:
    """(global shape, per dimension the global indices this rank holds, None for all) of a
    plain tensor or a DTensor, following DTensor's own left-to-right sharding order (strided
    shards included, as FSDP2 uses on top of tensor parallelism)."""
    if not hasattr(param, "device_mesh"):
        return tuple(param.shape), [None] * param.dim()
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard, _StridedShardOffsetMode

    shape = tuple(param.shape)
    mesh = param.device_mesh
    coordinate = mesh.get_coordinate()
    sizes = list(shape)
    held: list[torch.Tensor | None] = [None] * len(shape)
    for mesh_dim, placement in enumerate(param.placements):
        if not isinstance(placement, (Shard, _StridedShard)):
            continue
        dim = placement.dim
        kwargs = {"curr_local_size": sizes[dim], "num_chunks": mesh.size(mesh_dim),
                  "rank": coordinate[mesh_dim]}
        if isinstance(placement, _StridedShard):
            kwargs["offset_mode"] = _StridedShardOffsetMode.ALL
        size, offsets = placement._local_shard_size_and_offset(**kwargs)
        if isinstance(offsets, int):
            index = torch.arange(offsets, offsets + size)
        else:
            index = torch.tensor(list(offsets)[:size], dtype=torch.long)
        previous = held[dim]
        held[dim] = index if previous is None else previous[index]
        sizes[dim] = size
    return shape, held


def _seed(seed: int, name: str, block: int) -> int:
    return (zlib.crc32(name.encode()) * 1_000_003 + seed * 7_919 + block) % (2**63 - 1)


def normal_shard(shape: tuple[int, ...], rows: torch.Tensor | None, cols: torch.Tensor | None,
                 *, seed: int, name: str, std: float) -> torch.Tensor:
    """The rows x cols of an N(0, std) matrix of global ``shape`` that is the same for every
    sharding (drawn in blocks of BLOCK_ROWS rows, each from its own seeded generator)."""
    n_rows, n_cols = shape
    rows = torch.arange(n_rows) if rows is None else rows
    out = torch.empty(len(rows), n_cols if cols is None else len(cols))
    blocks = rows // BLOCK_ROWS
    for block in torch.unique(blocks).tolist():
        first = block * BLOCK_ROWS
        height = min(BLOCK_ROWS, n_rows - first)
        gen = torch.Generator().manual_seed(_seed(seed, name, block))
        values = torch.randn((height, n_cols), generator=gen) * std
        where = (blocks == block).nonzero(as_tuple=True)[0]
        picked = values[rows[where] - first]
        out[where] = picked if cols is None else picked[:, cols]
    return out


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, *, tied: bool = False, std: float = 0.02) -> None:
    """N(0, std) matrices, ones for norm scales, zeros for biases, each rank writing only its
    own shard (``model`` may be plain, tensor-parallel, FSDP-sharded or one pipeline stage)."""
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() == 0:
            continue
        if p.dim() >= 2:
            shape, (rows, cols) = global_indices(p)
            values = normal_shard(shape, rows, cols, seed=seed, name=canonical_name(name, tied),
                                  std=std)
            local.copy_(values.to(local.dtype))
        elif name.endswith("bias"):
            local.zero_()
        else:
            local.fill_(1.0)
