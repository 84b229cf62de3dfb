"""ZeRO stage 1: optimizer states sharded over the data-parallel group (Rajbhandari et al.
2020, §5.1 "P_os").

Every data-parallel rank keeps the whole (replicated) parameters and receives the whole
averaged gradient, but steps only its own contiguous 1/dp slice of each parameter (as
DeepSpeed's flat partitioning does), dp being the ranks that hold the parameter: dp x cp for
dense weights, dp x cp / ep for an expert under expert parallelism (Megatron-Core's
distributed optimizer shards experts over their own data-parallel group). The optimizer's
parameters are views into that slice, so its moments exist for 1/dp of the model. After the step each rank's updated slice is
all-gathered back into every replica, bucketed like the gradient all-reduce. Elementwise
optimizers (AdamW, SGD) give exactly the unsharded update; Adafactor's factored moments need
whole matrices, which the layout contract says.

For checkpoints the sharded state converts to and from the ordinary per-parameter state of
an optimizer over the model's parameters (``full_state`` / ``load_full_state``), so a ZeRO-1
checkpoint reshards into any layout like every other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from planner.cost import DP_BUCKET_BYTES


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


class Slice:
    """This rank's [lo, hi) of one parameter's flattened local tensor, padded to ``chunk``, of
    the ``size`` slices its replica ``group`` holds."""

    def __init__(self, param: nn.Parameter, group, rank: int, size: int) -> None:
        self.param, self.group, self.size = param, group, size
        self.numel = _local(param).numel()
        self.chunk = -(-self.numel // size)
        self.lo = min(rank * self.chunk, self.numel)
        self.hi = min(self.lo + self.chunk, self.numel)

    def flat(self) -> torch.Tensor:
        return _local(self.param).detach().view(-1)


class ShardedOptimizer:
    """``make(param_groups)`` builds the inner optimizer over this rank's slices of
    ``groups``' parameters, each sliced over its process group (the ranks holding it)."""

    def __init__(self, groups: list[tuple[list[nn.Parameter], object]], make) -> None:
        self.make = make
        self.slices = [Slice(p, group, dist.get_rank(group), dist.get_world_size(group))
                       for params, group in groups for p in params]
        self.views = {}
        for sl in self.slices:
            if sl.hi > sl.lo:
                self.views[sl] = nn.Parameter(sl.flat()[sl.lo:sl.hi])  # shares storage
        views = list(self.views.values()) or [nn.Parameter(torch.zeros(0))]
        self.inner = make([{"params": views}])

    # the torch.optim surface the trainer and the LR schedulers use
    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for sl in self.slices:
            sl.param.grad = None
        for view in self.views.values():
            view.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from runtime.parallel import local_grad

        for sl, view in self.views.items():
            if sl.param.grad is not None:
                view.grad = local_grad(sl.param).reshape(-1)[sl.lo:sl.hi]
        self.inner.step()
        self._gather()

    @torch.no_grad()
    def _gather(self) -> None:
        """Every rank's updated slices back into every replica, one all-gather per bucket
        (a bucket's slices share a group and a dtype)."""
        bucket: list[Slice] = []
        filled = 0
        for sl in self.slices:
            nbytes = sl.chunk * sl.size * sl.flat().element_size()
            if bucket and (filled + nbytes > DP_BUCKET_BYTES or sl.group is not bucket[0].group
                           or sl.flat().dtype != bucket[0].flat().dtype):
                self._gather_bucket(bucket)
                bucket, filled = [], 0
            bucket.append(sl)
            filled += nbytes
        if bucket:
            self._gather_bucket(bucket)

    def _gather_bucket(self, bucket: list[Slice]) -> None:
        width = sum(sl.chunk for sl in bucket)
        mine = torch.zeros(width, dtype=bucket[0].flat().dtype, device=bucket[0].flat().device)
        at = 0
        for sl in bucket:
            mine[at:at + sl.hi - sl.lo] = sl.flat()[sl.lo:sl.hi]
            at += sl.chunk
        gathered = [torch.empty_like(mine) for _ in range(bucket[0].size)]
        dist.all_gather(gathered, mine, group=bucket[0].group)
        at = 0
        for sl in bucket:
            flat = sl.flat()
            for r, chunk in enumerate(gathered):
                lo = min(r * sl.chunk, sl.numel)
                hi = min(lo + sl.chunk, sl.numel)
                flat[lo:hi] = chunk[at:at + hi - lo]
            at += sl.chunk

    # checkpoints: the ordinary per-parameter optimizer state, gathered / sliced
    @torch.no_grad()
    def full_state(self) -> dict[nn.Parameter, dict[str, torch.Tensor]]:
        """Per model parameter, its optimizer state at the parameter's local shape (moments
        all-gathered over dp; scalars such as ``step`` as they are)."""
        out: dict = {}
        states = list(self.inner.state.values())
        names = sorted({k for st in states for k in st})
        # scalars (Adam's ``step``) are the same for every slice: decided once, by name, so
        # every rank runs the same collectives whichever slices it owns
        scalars = {k: v for st in states for k, v in st.items() if v.dim() == 0}
        for sl in self.slices:
            view = self.views.get(sl)
            st = self.inner.state.get(view, {}) if view is not None else {}
            full: dict[str, torch.Tensor] = {}
            for name in names:
                if name in scalars:
                    full[name] = st.get(name, scalars[name]).clone()
                    continue
                mine = torch.zeros(sl.chunk, dtype=torch.float32, device=sl.flat().device)
                value = st.get(name)
                if value is not None:
                    mine[:value.numel()] = value.reshape(-1)
                gathered = [torch.empty_like(mine) for _ in range(sl.size)]
                dist.all_gather(gathered, mine, group=sl.group)
                full[name] = torch.cat(gathered)[:sl.numel].view_as(_local(sl.param))
            out[sl.param] = full
        return out

    @torch.no_grad()
    def load_full_state(self, full: dict[nn.Parameter, dict[str, torch.Tensor]]) -> None:
        for sl, view in self.views.items():
            st = {}
            for name, value in full.get(sl.param, {}).items():
                value = _local(value)
                st[name] = value.clone() if value.dim() == 0 else \
                    value.reshape(-1)[sl.lo:sl.hi].clone()
            if st:
                self.inner.state[view] = st


def shadow(opt: ShardedOptimizer, part: nn.Module) -> torch.optim.Optimizer:
    """An ordinary optimizer over ``part``'s parameters holding the gathered state (and the
    current hyper-parameters): what DCP's optimizer state dict reads and writes."""
    from torch.distributed.tensor import DTensor

    plain = opt.make([{"params": list(part.parameters())}])
    for group in plain.param_groups:
        group.update({k: v for k, v in opt.param_groups[0].items() if k != "params"})
    for param, state in opt.full_state().items():
        if not state:  # nothing stepped yet: DCP initialises the state itself on load
            continue
        plain.state[param] = {
            k: DTensor.from_local(v, param.device_mesh, param.placements)
            if isinstance(param, DTensor) and v.dim() else v for k, v in state.items()}
    return plain


def absorb(opt: ShardedOptimizer, plain: torch.optim.Optimizer) -> None:
    """Take back the state a checkpoint loaded into ``shadow``'s optimizer."""
    opt.load_full_state({p: dict(plain.state[p]) for p in plain.state})
