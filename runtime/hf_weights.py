"""Load a Hugging Face folder's weights into any layout: each rank fills only its own shard.

The same walk as ``runtime.init.init_weights``: for every parameter of this rank's part
(plain, tensor-parallel, FSDP-sharded, one pipeline stage) the global indices it holds
(``runtime.init.global_indices``) become the rows and columns read from the checkpoint tensor
that ``runtime.hf_names`` names, so no rank reads more than it keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from planner.config import ConfigError, ModelConfig
from runtime.hf_checkpoint import Checkpoint
from runtime.hf_names import pieces
from runtime.init import canonical_name, global_indices


def _expected(piece, ours_shape: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    want = tuple(reversed(ours_shape)) if piece.transposed else ours_shape
    if piece.rows is None:
        return want == theirs
    split = 1 if piece.transposed else 0
    others = [d for i, d in enumerate(want) if i != split]
    return (len(theirs) == len(want) and [d for i, d in enumerate(theirs) if i != split] == others
            and int(piece.rows.max()) < theirs[split])


def _located(ckpt: Checkpoint, piece, canon: str, shape: tuple[int, ...], folder: str) -> None:
    """The one shape rule, for the check before launch and for the load itself."""
    theirs = ckpt.shape(piece.theirs)
    if theirs is None:
        raise ConfigError(f"{folder}: checkpoint has no tensor {piece.theirs} "
                          f"(the model's {canon}, shape {list(shape)})")
    if not _expected(piece, shape, theirs):
        raise ConfigError(f"{folder}: tensor {piece.theirs} has shape {list(theirs)}, "
                          f"the model's {canon} needs {list(shape)}")


def check_folder(folder: str, cfg: ModelConfig) -> None:
    """Before any rank starts: every parameter of the model (built on ``meta``) is in the
    folder's checkpoint at a shape that fits."""
    from runtime.model import Decoder

    ckpt = Checkpoint(folder)
    with torch.device("meta"):
        model = Decoder(cfg)
    named = [(canonical_name(n, cfg.tie_embeddings), tuple(p.shape))
             for n, p in model.named_parameters()]
    where = pieces(cfg, [canon for canon, _ in named])
    for canon, shape in named:
        _located(ckpt, where[canon], canon, shape, folder)


@torch.no_grad()
def load_weights(model: nn.Module, folder: str, cfg: ModelConfig) -> int:
    """Fill every parameter of ``model`` from ``folder``; the number of tensors read."""
    ckpt = Checkpoint(folder)
    named = [(name, p, canonical_name(name, cfg.tie_embeddings))
             for name, p in model.named_parameters()]
    where = pieces(cfg, [canon for _, _, canon in named])
    read = 0
    for name, p, canon in named:
        piece = where[canon]
        shape, held = global_indices(p)
        _located(ckpt, piece, canon, shape, folder)
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() == 0:
            continue
        rows = held[0]
        if piece.rows is not None:
            rows = piece.rows if rows is None else piece.rows[rows]
        index = [rows, *held[1:]]
        if piece.transposed:
            values = ckpt.read(piece.theirs, list(reversed(index))).T
        else:
            values = ckpt.read(piece.theirs, index)
        if piece.offset:
            values = values.float() + piece.offset
        local.copy_(values.reshape(local.shape).to(local.dtype))
        read += 1
    ckpt.close()
    return read
