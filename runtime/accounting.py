"""Measured memory by category, on CPU (live tensor bytes) and CUDA (allocator peaks).

Parameters, gradients and optimizer states are summed over the local storage of each tensor
(the shard a rank holds). Activations are the peak bytes of tensors autograd saved for
backward, de-duplicated by storage, excluding parameters, tracked with
``saved_tensors_hooks`` and released when autograd drops them.
"""

from __future__ import annotations

import weakref

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's bytes: a DTensor's local shard; the buffer of a
    collective's result still in flight (``AsyncCollectiveTensor``, what DTensor's
    redistributions hand back) -- its storage exists, the wrapper has none."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return getattr(t, "elem", t)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass made of others (torchao's NF4 tensor: its
    4-bit codes, scales and constants) the sum of theirs."""
    t = local(t)
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        return sum(tensor_bytes(getattr(t, name)) for name in flatten(t)[0])
    return t.numel() * t.element_size()


def parameter_bytes(parts, *, frozen: bool = False) -> int:
    """Bytes of the parameters trained (``frozen``: of those frozen, a LoRA run's base)."""
    seen, total = set(), 0
    for part in parts:
        for p in part.parameters():
            if id(p) not in seen and p.requires_grad != frozen:
                seen.add(id(p))
                total += tensor_bytes(p)
    return total


def gradient_bytes(parts) -> int:
    seen, total = set(), 0
    for part in parts:
        for p in part.parameters():
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                total += tensor_bytes(p.grad)
    return total


def optimizer_bytes(optimizers) -> int:
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    total += tensor_bytes(value)
    return total


class SavedTensorMeter:
    """Peak live bytes of saved activations during the ``with`` block."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}  # storage ptr -> [bytes, refs]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        if isinstance(base, torch.nn.Parameter) or (base.requires_grad and base.is_leaf):
            return t  # a parameter (frozen ones too), or a view of one (weight.t())
        loc = local(t)
        try:
            key = loc.untyped_storage().data_ptr()
            nbytes = loc.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return t
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        holder = _Held(t)
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.t if isinstance(holder, _Held) else holder

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class _Held:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t
