"""One layout's training state on a rank and its optimizer step (``runtime.train`` runs it).

One optimizer step: the dp rank's slice of the global batch is split into m micro-batches of b
sequences (under context parallelism each cp rank holds its load-balanced chunks of every
sequence: ``runtime.context_parallel``). Without pipelining they run one after another
(gradient accumulation); with pipelining they run as m/p rounds of a schedule over p
micro-batches. Every micro-batch loss is its share of the global batch's mean over its label
tokens (scaled by dp x cp, the ranks its gradients are averaged over), so gradients equal the
single-process gradient of that mean (schedules run with ``scale_grads=False``, as torchtitan
does). The gradient norm is reduced across pipeline stages before clipping (torchtitan's
``clip_grad_norm_`` with a pp mesh).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from planner.config import ConfigError
from planner.setup import TrainSetup


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to 1, then cosine to ``min_ratio`` at the last step."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_optimizer(name: str, groups: list[dict], *, lr: float, weight_decay: float):
    """The plan's optimizer from ``torch.optim``: AdamW (betas 0.9/0.95 as GPT-3 / Llama),
    Adafactor (Shazeer & Stern 2018; factored second moment, no first moment), SGD with
    momentum 0.9. The planner's ``optimizer`` memory follows the same states."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8,
                                 weight_decay=weight_decay, foreach=True)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr, weight_decay=weight_decay, foreach=False)
    if name == "sgd_momentum":
        # one tensor at a time on every device, as the planner's temporaries assume (foreach
        # SGD on FSDP2's sharded DTensors allocates the whole parameter: measured with
        # runtime.memtrack, 10x the shard at dp 8)
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay,
                               foreach=False)
    raise ConfigError(f"optimizer({name!r}) is not run by llmplan's runtime")


class Trainer:
    """One layout's training state on this rank, in the steps a reader can follow (as
    torchtitan's trainer): build the parallel model, its optimizers and schedulers, its
    pipeline schedule; then ``step`` runs one optimizer step on a global batch."""

    def __init__(self, cfg, setup: TrainSetup, par, opts: dict[str, Any], *, mesh, device) -> None:
        import torch

        from runtime.parallel import build

        self.cfg, self.setup, self.par, self.opts, self.device = cfg, setup, par, opts, device
        self.built = build(cfg, setup, par, device=device, seed=int(opts["seed"]), mesh=mesh,
                           weights=str(opts["weights"]),
                           adapter_init=str(opts.get("init_adapter", "")))
        self.parts = self.built.parts
        self.pp_group = self.built.mesh["pp"].get_group()
        self.dp_group = self.built.mesh["dp"].get_group()
        self.dp_rank = self.built.mesh["dp"].get_local_rank()
        self.cp_rank = self.built.mesh["cp"].get_local_rank()
        self.dp_cp_group = self.built.mesh["dp_cp"].get_group()
        self.has_first = 0 in self.built.stages
        self.has_last = self.built.n_stages - 1 in self.built.stages
        self.optimizers = [self._optimizer(p) for p in self.parts]
        total = int(opts["steps"])
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(
            getattr(o, "inner", o), lr_lambda(int(opts["warmup_steps"]), total,
                                              float(opts["min_lr_ratio"])))
            for o in self.optimizers]
        self.rounds = int(opts["pp_rounds"]) if par.pp > 1 else 1
        self.per_call = setup.grad_accum // self.rounds if par.pp > 1 else 1
        self.global_batch = setup.micro_batch * setup.grad_accum * par.dp
        self.schedule = self._pipeline_schedule() if par.pp > 1 else None
        self.loss_scale = 1.0  # set per step from the global batch's label count
        self.dpo = setup.objective == "dpo"
        self.reference = None  # DPO over a fully trained policy: its frozen copy
        if self.dpo and setup.adapters is None:
            from dataclasses import replace

            self.reference = build(cfg, replace(setup, objective="lm"), par, device=device,
                                   seed=int(opts["seed"]), mesh=mesh,
                                   weights=str(opts["weights"])).parts
            for part in self.reference:
                part.requires_grad_(False)
        self.rewards = (0.0, 0)  # DPO: this step's summed reward margin, pairs ranked right

    def make(self, groups: list[dict]):
        return make_optimizer(self.setup.optimizer, groups, lr=self.opts["lr"],
                              weight_decay=self.opts["weight_decay"])

    def _optimizer(self, part):
        """The plan's optimizer; under ZeRO-1 its states sharded over the ranks holding the
        same parameters (dp x cp; an expert's over dp x cp / ep: runtime.zero1)."""
        if self.par.zero == 1 and self.par.shard_ranks > 1:
            from runtime.parallel import replicated_params
            from runtime.zero1 import ShardedOptimizer

            mine = {id(p) for p in trained(part)}
            groups = [([p for p in params if id(p) in mine], group)
                      for params, group in replicated_params(self.built)]
            return ShardedOptimizer(groups, self.make)
        return self.make(param_groups(part))

    def loss_fn(self, out, target):
        """This micro-batch's share of the global batch's mean loss over its label tokens:
        summed cross-entropy times dp x cp / (labels in the global batch), so that the
        micro-batch sum on every rank, averaged over dp x cp (as gradients are), is that mean;
        masked labels (``runtime.dataset.IGNORE``: prompt tokens under SFT) count nowhere."""
        import torch.nn.functional as F

        from runtime.dataset import IGNORE

        return F.cross_entropy(out.flatten(0, 1).float(), target.flatten(0, 1),
                               ignore_index=IGNORE, reduction="sum") * self.loss_scale

    def _pipeline_schedule(self):
        from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                                  ScheduleInterleaved1F1B)

        b = self.built
        stages = [PipelineStage(part, sid, b.n_stages, self.device, group=self.pp_group)
                  for part, sid in zip(self.parts, b.stages)]
        if self.par.vpp > 1:
            return ScheduleInterleaved1F1B(stages, n_microbatches=self.per_call,
                                           loss_fn=self.loss_fn, scale_grads=False)
        cls = ScheduleGPipe if self.par.schedule == "gpipe" else Schedule1F1B
        return cls(stages[0], n_microbatches=self.per_call, loss_fn=self.loss_fn,
                   scale_grads=False)

    def contexts(self):
        """Loss-parallel under TP, bf16 autocast when FSDP2's mixed precision is not on."""
        import torch

        tp_ctx = contextlib.nullcontext()
        if self.par.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel
            tp_ctx = loss_parallel()
        from runtime.parallel import BF16_COMPUTE

        bf16 = self.setup.dtype in BF16_COMPUTE and not self.built.fsdp
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        return tp_ctx, amp

    def forward_backward(self, x, y, *, backward: bool = True):
        """Every micro-batch of the step, forward and (unless evaluating) backward; the
        summed, scaled loss on the ranks of the last stage."""
        import torch

        m, mbs = self.setup.grad_accum, self.setup.micro_batch
        loss_sum = torch.zeros((), device=self.device)
        if self.dpo:
            return self._dpo(x, y, backward=backward)
        if self.schedule is None:
            for i in range(m):
                loss = self.loss_fn(self.parts[0](x[i * mbs:(i + 1) * mbs]), y[i * mbs:(i + 1) * mbs])
                if backward:
                    loss.backward()
                loss_sum += _local(loss.detach())
            return loss_sum
        per_round = self.per_call * mbs
        for r in range(self.rounds):
            xr, yr = x[r * per_round:(r + 1) * per_round], y[r * per_round:(r + 1) * per_round]
            losses: list = []
            kwargs = {"target": yr, "losses": losses} if self.has_last else {}
            run = self.schedule.step if backward else self.schedule.eval
            if self.has_first:
                run(xr, **kwargs)
            else:
                run(**kwargs)
            for lo in losses:
                loss_sum += _local(lo.detach())
        return loss_sum

    def _dpo(self, x, y, *, backward: bool):
        """Every micro-batch of preference pairs (``runtime.dpo``): the reference's
        log-probabilities without gradients, then the policy's loss; the summed, scaled loss,
        and the reward margin and ranking in ``self.rewards``."""
        import torch

        from runtime.dpo import adapters_off, dpo_terms, sequence_logps

        rows = 2 * self.setup.micro_batch
        loss_sum = torch.zeros((), device=self.device)
        margin = torch.zeros((), device=self.device)
        right = torch.zeros((), device=self.device)
        for i in range(self.setup.grad_accum):
            xi, yi = x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows]
            with torch.no_grad():
                if self.reference is not None:
                    ref = sequence_logps(self.reference[0](xi), yi)
                else:
                    with adapters_off(self.parts):
                        ref = sequence_logps(self.parts[0](xi), yi)
            loss, m_sum, r_sum = dpo_terms(sequence_logps(self.parts[0](xi), yi), ref,
                                           float(self.opts["dpo_beta"]))
            loss = loss * self.loss_scale
            if backward:
                loss.backward()
            loss_sum += loss.detach()
            margin += m_sum
            right += r_sum
        self.rewards = (margin, right)
        return loss_sum

    def step(self, batch, *, measure: bool = False) -> dict[str, Any]:
        """One optimizer step on this dp rank's slice of ``batch`` (the global batch):
        forward/backward, gradient reduction, clipping, update. Returns loss, grad_norm and
        (when ``measure``) the bytes each category holds."""
        from runtime import accounting
        from runtime.parallel import (allreduce_grads, clip_grad_norm_, clip_params,
                                      replicated_params, sync_tied_grads)
        from runtime.tensor_parallel import sum_replicated_grads

        par = self.par
        x, y, _ = self._inputs(batch)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        measured: dict[str, int] = {}
        meter = accounting.SavedTensorMeter() if measure else contextlib.nullcontext()
        tp_ctx, amp = self.contexts()
        with meter, tp_ctx, amp:
            loss_sum = self.forward_backward(x, y)
        if measure:
            measured["activations_bytes"] = meter.peak
        if par.shard_ranks > 1 and not self.built.fsdp:
            for params, group in replicated_params(self.built):
                allreduce_grads(params, group, divide_by=par.shard_ranks)
        sum_replicated_grads(self.built.tp_summed, self.built.mesh["tp"].get_group())
        sync_tied_grads(self.built)
        counted, copies = clip_params(self.built)
        norm = clip_grad_norm_(counted, float(self.opts["max_grad_norm"]), self.pp_group, par.pp,
                               also=copies, experts=self.built.experts,
                               ep_group=self.built.mesh["ep"].get_group())
        if measure:
            measured["gradients_bytes"] = accounting.gradient_bytes(self.parts)
        for o in self.optimizers:
            o.step()
        for sch in self.schedulers:
            sch.step()
        if measure:
            measured["parameters_bytes"] = accounting.parameter_bytes(self.parts)
            measured["frozen_base_bytes"] = accounting.parameter_bytes(
                self.parts + (self.reference or []), frozen=True)
            measured["optimizer_states_bytes"] = accounting.optimizer_bytes(self.optimizers)
        out = {"loss": self._global_loss(loss_sum), "grad_norm": float(norm),
               "measured": measured}
        if self.dpo:
            out.update(self._global_rewards())
        return out

    def _global_rewards(self) -> dict[str, float]:
        """DPO: the global batch's mean reward margin and the share of pairs whose chosen
        completion gets the higher reward."""
        import torch
        import torch.distributed as dist

        sums = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device)
                            for v in self.rewards])
        if self.par.dp > 1:
            dist.all_reduce(sums, group=self.dp_group)
        pairs = self.global_batch
        return {"reward_margin": float(sums[0]) / pairs, "reward_accuracy": float(sums[1]) / pairs}

    def evaluate(self, batch) -> tuple[float, int]:
        """Forward only: (the batch's mean loss over its label tokens, their count)."""
        import torch

        x, y, labels = self._inputs(batch)
        tp_ctx, amp = self.contexts()
        with torch.no_grad(), tp_ctx, amp:
            loss_sum = self.forward_backward(x, y, backward=False)
        return self._global_loss(loss_sum), labels

    def _inputs(self, batch):
        """This rank's inputs and labels of a global batch (tokens, or (tokens, label mask)
        from a prepared dataset, masked labels set to IGNORE): its dp slice of the
        sequences, its cp chunks of each; sets the loss scale."""
        from runtime.context_parallel import local_chunks
        from runtime.data import local_slice
        from runtime.dataset import IGNORE

        par = self.par
        tokens, mask = batch if isinstance(batch, tuple) else (batch, None)
        local = local_slice(tokens, self.dp_rank, par.dp).to(self.device)
        x, y = local[:, :-1].contiguous(), local[:, 1:].contiguous()
        labels = tokens[:, 1:].numel()
        if mask is not None:
            labels = int(mask[:, 1:].sum())
            keep = local_slice(mask, self.dp_rank, par.dp)[:, 1:].to(self.device)
            y = y.masked_fill(~keep, IGNORE)
        x, y = local_chunks(x, par.cp, self.cp_rank), local_chunks(y, par.cp, self.cp_rank)
        # the mean over label tokens; DPO's over the global batch's pairs
        self.loss_scale = par.shard_ranks / (self.global_batch if self.dpo else max(labels, 1))
        return x, y, labels

    def _global_loss(self, loss_sum) -> float:
        """The last stage's summed micro-batch losses, made every rank's and averaged over
        dp x cp."""
        import torch.distributed as dist

        if self.par.pp > 1:
            if not self.has_last:
                loss_sum.zero_()
            dist.all_reduce(loss_sum, group=self.pp_group)
        if self.par.shard_ranks > 1:
            dist.all_reduce(loss_sum, group=self.dp_cp_group)
            loss_sum /= self.par.shard_ranks
        return float(loss_sum)


def _local(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def trained(part) -> list:
    """The parameters the optimizer steps: every one, or the adapters over a frozen base."""
    return [p for p in part.parameters() if p.requires_grad]


def param_groups(part) -> list[dict]:
    """foreach kernels cannot mix DTensor and plain tensors (TP without SP leaves the norms
    plain), so each kind gets its own parameter group. A frozen base is not stepped."""
    params = trained(part)
    kinds = [[p for p in params if hasattr(p, "to_local")],
             [p for p in params if not hasattr(p, "to_local")]]
    return [{"params": k} for k in kinds if k]
