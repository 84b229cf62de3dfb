"""The training entry point for torchrun: ``python -m torch.distributed.run ... -m runtime.train
--plan run.toml``. Rank 0 prints JSON-lines events (runtime.events).

One optimizer step: the dp rank's slice of the global batch is split into m micro-batches of b
sequences. Without pipelining they run one after another (gradient accumulation); with
pipelining they run as m/p rounds of a schedule over p micro-batches. Every micro-batch loss
is scaled by 1/m, so gradients equal the single-process gradient of the mean loss (schedules
run with ``scale_grads=False``, as torchtitan does). The gradient norm is reduced across
pipeline stages before clipping (torchtitan's ``clip_grad_norm_`` with a pp mesh).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from planner.config import ConfigError

from planner.setup import TrainSetup
from planner.planfile import plan_objects, read_plan
from runtime import events

RUN_DEFAULTS: dict[str, Any] = {
    "steps": 20, "lr": 3e-4, "warmup_steps": 2, "min_lr_ratio": 0.1, "seed": 0,
    "max_grad_norm": 1.0, "weight_decay": 0.1, "data": "", "ckpt_dir": "", "ckpt_every": 0,
    "resume": False, "device": "cpu", "measure_step": 2, "pp_rounds": 1,
    "weights": "", "save_hf": "",
}


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
                           weights=str(opts["weights"]))
        self.parts = self.built.parts
        self.pp_group = self.built.mesh["pp"].get_group()
        self.dp_group = self.built.mesh["dp"].get_group()
        self.dp_rank = self.built.mesh["dp"].get_local_rank()
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

    def make(self, groups: list[dict]):
        return make_optimizer(self.setup.optimizer, groups, lr=self.opts["lr"],
                              weight_decay=self.opts["weight_decay"])

    def _optimizer(self, part):
        """The plan's optimizer; under ZeRO-1 its states sharded over dp (runtime.zero1)."""
        if self.par.zero == 1 and self.par.dp > 1:
            from runtime.zero1 import ShardedOptimizer
            return ShardedOptimizer(list(part.parameters()), self.make, self.dp_group)
        return self.make(param_groups(part))

    def loss_fn(self, out, target):
        """This micro-batch's share of the global batch's mean loss over its label tokens:
        summed cross-entropy times dp / (labels in the global batch), so that the micro-batch
        sum on every rank, averaged over dp (as gradients are), is that mean; masked labels
        (``runtime.dataset.IGNORE``: prompt tokens under SFT) count nowhere."""
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
        bf16 = self.setup.dtype == "bf16" and not self.built.fsdp
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        return tp_ctx, amp

    def forward_backward(self, x, y):
        """Every micro-batch of the step, forward and backward; the summed (1/m-scaled) loss
        on the ranks of the last stage."""
        import torch

        m, mbs = self.setup.grad_accum, self.setup.micro_batch
        loss_sum = torch.zeros((), device=self.device)
        if self.schedule is None:
            for i in range(m):
                loss = self.loss_fn(self.parts[0](x[i * mbs:(i + 1) * mbs]), y[i * mbs:(i + 1) * mbs])
                loss.backward()
                loss_sum += _local(loss.detach())
            return loss_sum
        per_round = self.per_call * mbs
        for r in range(self.rounds):
            xr, yr = x[r * per_round:(r + 1) * per_round], y[r * per_round:(r + 1) * per_round]
            losses: list = []
            kwargs = {"target": yr, "losses": losses} if self.has_last else {}
            if self.has_first:
                self.schedule.step(xr, **kwargs)
            else:
                self.schedule.step(**kwargs)
            for lo in losses:
                loss_sum += _local(lo.detach())
        return loss_sum

    def step(self, batch, *, measure: bool = False) -> dict[str, Any]:
        """One optimizer step on this dp rank's slice of ``batch`` (the global batch):
        forward/backward, gradient reduction, clipping, update. Returns loss, grad_norm and
        (when ``measure``) the bytes each category holds."""
        import torch.distributed as dist

        from runtime import accounting
        from runtime.data import local_slice
        from runtime.parallel import allreduce_grads, clip_grad_norm_, clip_params, sync_tied_grads
        from runtime.tensor_parallel import sum_replicated_grads

        from runtime.dataset import IGNORE

        par = self.par
        tokens, mask = batch if isinstance(batch, tuple) else (batch, None)
        local = local_slice(tokens, self.dp_rank, par.dp).to(self.device)
        x, y = local[:, :-1].contiguous(), local[:, 1:].contiguous()
        labels = tokens[:, 1:].numel()
        if mask is not None:  # a prepared dataset: only its label tokens count
            labels = int(mask[:, 1:].sum())
            keep = local_slice(mask, self.dp_rank, par.dp)[:, 1:].to(self.device)
            y = y.masked_fill(~keep, IGNORE)
        self.loss_scale = par.dp / max(labels, 1)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        measured: dict[str, int] = {}
        meter = accounting.SavedTensorMeter() if measure else contextlib.nullcontext()
        tp_ctx, amp = self.contexts()
        with meter, tp_ctx, amp:
            loss_sum = self.forward_backward(x, y)
        if measure:
            measured["activations_bytes"] = meter.peak
        if par.dp > 1 and not self.built.fsdp:
            allreduce_grads(self.parts, self.dp_group)
        sum_replicated_grads(self.built.tp_summed, self.built.mesh["tp"].get_group())
        sync_tied_grads(self.built)
        counted, copies = clip_params(self.built)
        norm = clip_grad_norm_(counted, float(self.opts["max_grad_norm"]), self.pp_group, par.pp,
                               also=copies)
        if measure:
            measured["gradients_bytes"] = accounting.gradient_bytes(self.parts)
        for o in self.optimizers:
            o.step()
        for sch in self.schedulers:
            sch.step()
        if par.pp > 1:
            if not self.has_last:
                loss_sum.zero_()
            dist.all_reduce(loss_sum, group=self.pp_group)
        if par.dp > 1:
            dist.all_reduce(loss_sum, group=self.dp_group)
            loss_sum /= par.dp
        if measure:
            measured["parameters_bytes"] = accounting.parameter_bytes(self.parts)
            measured["optimizer_states_bytes"] = accounting.optimizer_bytes(self.optimizers)
        return {"loss": float(loss_sum), "grad_norm": float(norm), "measured": measured}


def _local(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def param_groups(part) -> list[dict]:
    """foreach kernels cannot mix DTensor and plain tensors (TP without SP leaves the norms
    plain), so each kind gets its own parameter group."""
    params = list(part.parameters())
    kinds = [[p for p in params if hasattr(p, "to_local")],
             [p for p in params if not hasattr(p, "to_local")]]
    return [{"params": k} for k in kinds if k]


def init_distributed(device_name: str):
    """The process group (nccl on CUDA, gloo on CPU) and this rank's device."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device_name == "cuda" else "gloo")
    return device


def load_run(plan_path: str):
    """The run's plan, checked against the layout contract and the world it runs in."""
    from runtime.support import check_runtime_layout

    plan = read_plan(Path(plan_path))
    cfg, setup, par = plan_objects(plan, where=plan_path)
    opts = {**RUN_DEFAULTS, **plan.get("run", {})}
    check_runtime_layout(cfg, setup, par, rounds=int(opts["pp_rounds"]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != par.world:
        raise ConfigError(f"{world} processes for a layout of tp({par.tp}) x pp({par.pp}) x "
                          f"dp({par.dp}) = {par.world}")
    return plan, cfg, setup, par, opts


def resume(trainer: Trainer, opts: dict[str, Any]) -> int:
    """Load the latest checkpoint when resuming (into this layout, whatever layout wrote
    it) and move the LR schedules to its step; the step to continue from."""
    from runtime import checkpoint

    if not opts["resume"]:
        return 0
    ckpt_dir = opts["ckpt_dir"]
    latest = checkpoint.latest_step(ckpt_dir) if ckpt_dir else None
    if latest is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir or '(no --ckpt-dir)'}")
    checkpoint.load(ckpt_dir, latest, trainer.parts, trainer.optimizers)
    for sch in trainer.schedulers:
        for _ in range(latest):
            sch.step()
    return latest


def train_steps(trainer: Trainer, data, *, start_step: int, predicted: dict[str, Any], say,
                rank: int) -> tuple[dict[str, int], list[float | None]]:
    """The step loop: each step's event, checkpoints, the memory meter on one step; the
    measured bytes and each step's time (None for the metered one)."""
    import torch

    from planner.flops import flops_report
    from runtime import checkpoint
    from runtime.report import peak_rss_bytes

    opts, par, setup = trainer.opts, trainer.par, trainer.setup
    cuda = trainer.device.type == "cuda"
    steps, ckpt_dir, every = int(opts["steps"]), opts["ckpt_dir"], int(opts["ckpt_every"])
    fail_step = int(os.environ.get("LLMPLAN_FAIL_AT_STEP", "0"))  # fault injection (tests)
    fail_rank = int(os.environ.get("LLMPLAN_FAIL_RANK", "1"))
    model_flops = flops_report(trainer.cfg, setup.seq_len).train_flops_per_token
    measured: dict[str, int] = {}
    step_times: list[float | None] = []
    for step in range(start_step + 1, steps + 1):
        batch = data.global_batch(step, trainer.global_batch)
        measure = step == start_step + int(opts["measure_step"])
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = trainer.step(batch, measure=measure)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        measured.update(out["measured"])
        step_times.append(None if measure else dt)  # the metered step runs hooks: untimed
        tokens_per_s = trainer.global_batch * setup.seq_len / dt
        peak_mem = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        mfu = None
        if predicted.get("peak_flops"):
            mfu = model_flops * tokens_per_s / (par.world * predicted["peak_flops"])
        say(events.Step(step=step, loss=out["loss"], grad_norm=out["grad_norm"],
                        lr=trainer.schedulers[0].get_last_lr()[0], step_time_s=dt,
                        tokens_per_s=tokens_per_s, mfu=mfu, mem_peak_bytes=int(peak_mem)))
        if rank == fail_rank and step == fail_step:
            sys.stderr.write(f"llmplan: fault injection: rank {rank} exits at step {step}\n")
            os._exit(17)
        if ckpt_dir and ((every and step % every == 0) or step == steps):
            path = checkpoint.save(ckpt_dir, step, trainer.parts, trainer.optimizers)
            say(events.Checkpoint(step=step, path=path))
    return measured, step_times


def save_final(trainer: Trainer, out: str, say) -> None:
    """The trained model as a Hugging Face folder (``runtime.hf_weights.save_hf``): each
    pipeline stage written by its (dp 0, tp 0) rank, in the run's parameter dtype."""
    import torch

    mesh = trainer.built.mesh
    writer = mesh["dp"].get_local_rank() == 0 and mesh["tp"].get_local_rank() == 0
    from runtime.hf_weights import save_hf

    save_hf(trainer.parts, trainer.cfg, out, writer=writer,
            label="-".join(str(s) for s in trainer.built.stages),
            dtype=next(trainer.parts[0].parameters()).dtype if trainer.parts else torch.float32,
            source=str(trainer.opts["weights"]), rank0=torch.distributed.get_rank() == 0)
    say(events.Checkpoint(step=int(trainer.opts["steps"]), path=out, format="hf"))


def run(plan_path: str) -> int:
    """One training run on this rank: load and check the plan, build the layout from the
    meta device, resume, say what the planner predicts, train, report measured next to
    predicted."""
    import torch.distributed as dist

    from runtime.data import make_data
    from runtime.parallel import build_mesh
    from runtime.report import peak_rss_bytes, predictions, report

    plan, cfg, setup, par, opts = load_run(plan_path)
    device = init_distributed(opts["device"])
    rank = dist.get_rank()
    say = events.emit if rank == 0 else (lambda ev: None)
    import accelerate.utils  # noqa: F401  (imported before the baseline, like torch)
    rss_baseline = peak_rss_bytes()

    from accelerate.utils import set_seed  # the ecosystem's one call for python/numpy/torch seeds

    set_seed(int(opts["seed"]))
    trainer = Trainer(cfg, setup, par, opts, mesh=build_mesh(par, device.type), device=device)
    build_peak = peak_rss_bytes() - rss_baseline  # the meta-device build: this rank's shard
    start_step = resume(trainer, opts)
    # The planner's m is the micro-batches of one pipeline flush: those of one schedule call.
    flush = replace(setup, grad_accum=setup.grad_accum // trainer.rounds)
    predicted = predictions(cfg, flush, par, plan.get("cluster", {}).get("hardware", "cpu"),
                            trainer.rounds)
    data = make_data(opts["data"] or None, cfg.vocab_size, setup.seq_len, int(opts["seed"]))
    say(events.Start(
        model=cfg.name, layout={f: getattr(par, f) for f in par.__slots__}, world=par.world,
        device=device.type, steps=int(opts["steps"]), start_step=start_step,
        global_batch=trainer.global_batch, seq_len=setup.seq_len, micro_batch=setup.micro_batch,
        grad_accum=setup.grad_accum, recompute=setup.recompute, dtype=setup.dtype,
        optimizer=setup.optimizer, recipe=setup.recipe, attention=setup.attention,
        predicted_stages=predicted["stages"], predicted_step_time_s=predicted.get("step_time_s"),
        predicted_tokens_per_s=predicted.get("tokens_per_s")))
    measured, step_times = train_steps(trainer, data, start_step=start_step,
                                       predicted=predicted, say=say, rank=rank)
    if opts["save_hf"]:
        save_final(trainer, str(opts["save_hf"]), say)
    report(trainer, {**measured, "host_build_peak_bytes": build_peak}, predicted, step_times,
           say, cuda=device.type == "cuda", rss_baseline=rss_baseline)
    dist.barrier()
    if rank == int(os.environ.get("LLMPLAN_FAIL_RANK", "1")) and \
            int(os.environ.get("LLMPLAN_FAIL_AT_STEP", "0")) < 0:  # a rank dies in teardown
        os._exit(17)
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from runtime.support import entry_point

    return entry_point("runtime.train", run, argv)


if __name__ == "__main__":
    sys.exit(main())
