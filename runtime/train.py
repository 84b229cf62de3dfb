"""The training entry point for torchrun: ``python -m torch.distributed.run ... -m runtime.train
--plan run.toml``. Rank 0 prints JSON-lines events (runtime.events): load the plan, build the
layout (``runtime.trainer.Trainer``), resume, train with held-out evaluation and checkpoints,
save, report measured next to predicted.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from planner.config import ConfigError
from planner.planfile import plan_objects, read_plan
from runtime import events
from runtime.trainer import Trainer

RUN_DEFAULTS: dict[str, Any] = {
    "steps": 20, "lr": 3e-4, "warmup_steps": 2, "min_lr_ratio": 0.1, "seed": 0,
    "max_grad_norm": 1.0, "weight_decay": 0.1, "data": "", "ckpt_dir": "", "ckpt_every": 0,
    "resume": False, "device": "cpu", "measure_step": 2, "pp_rounds": 1,
    "weights": "", "save_hf": "", "eval_data": "", "eval_every": 0, "eval_batches": 8,
    "init_adapter": "", "save_adapter": "", "merge": "", "dpo_beta": 0.1,
    "resume_step": -1, "plan_path": "",
}


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
        raise ConfigError(f"{world} processes for a layout of tp({par.tp}) x cp({par.cp}) x "
                          f"pp({par.pp}) x dp({par.dp}) = {par.world}")
    return plan, cfg, setup, par, opts


def resume(trainer: Trainer, opts: dict[str, Any]) -> int:
    """Load the checkpoint when resuming (into this layout, whatever layout wrote it) and move
    the LR schedules to its step; the step to continue from. The step is the launcher's
    (``resume_step``: the newest intact one, checked before any rank started), else
    ``latest``'s."""
    from runtime import checkpoint

    if not opts["resume"]:
        return 0
    ckpt_dir = opts["ckpt_dir"]
    latest = int(opts["resume_step"])
    if latest < 0:
        latest = checkpoint.latest_step(ckpt_dir) if ckpt_dir else None
    if latest is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir or '(no --ckpt-dir)'}")
    checkpoint.load(ckpt_dir, latest, trainer.parts, trainer.optimizers)
    for sch in trainer.schedulers:
        for _ in range(latest):
            sch.step()
    return latest


def evaluate(trainer: Trainer, held_out, batches: int) -> events.Eval | None:
    """Held-out loss: the first ``batches`` global batches of the evaluation windows, in
    order, their mean over every label token; perplexity is its exponential."""
    total, labels = 0.0, 0
    for i in range(min(batches, held_out.windows // trainer.global_batch)):
        loss, n = trainer.evaluate(held_out.ordered_batch(i, trainer.global_batch))
        total, labels = total + loss * n, labels + n
    if not labels:
        return None
    mean = total / labels
    return events.Eval(step=0, loss=mean, perplexity=math.exp(min(mean, 700.0)), tokens=labels)


def train_steps(trainer: Trainer, data, *, start_step: int, predicted: dict[str, Any], say,
                rank: int, held_out=None) -> tuple[dict[str, int], list[float | None]]:
    """The step loop: each step's event, held-out evaluation, checkpoints, the memory meter
    on one step; the measured bytes and each step's time (None for the metered one)."""
    import torch

    from planner.flops import flops_report
    from runtime import checkpoint
    from runtime.report import peak_rss_bytes

    opts, par, setup = trainer.opts, trainer.par, trainer.setup
    cuda = trainer.device.type == "cuda"
    steps, ckpt_dir, every = int(opts["steps"]), opts["ckpt_dir"], int(opts["ckpt_every"])
    fail_step = int(os.environ.get("LLMPLAN_FAIL_AT_STEP", "0"))  # fault injection (tests)
    fail_rank = int(os.environ.get("LLMPLAN_FAIL_RANK", "1"))
    model_flops = flops_report(trainer.cfg, setup.seq_len, adapters=setup.adapters,
                               objective=setup.objective).train_flops_per_token
    sequences = trainer.global_batch * setup.sequences_per_example
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
        tokens_per_s = sequences * setup.seq_len / dt
        peak_mem = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        mfu = None
        if predicted.get("peak_flops"):
            mfu = model_flops * tokens_per_s / (par.world * predicted["peak_flops"])
        say(events.Step(step=step, loss=out["loss"], grad_norm=out["grad_norm"],
                        lr=trainer.schedulers[0].get_last_lr()[0], step_time_s=dt,
                        tokens_per_s=tokens_per_s, mfu=mfu, mem_peak_bytes=int(peak_mem),
                        reward_margin=out.get("reward_margin"),
                        reward_accuracy=out.get("reward_accuracy")))
        eval_every = int(opts["eval_every"])
        if held_out is not None and ((eval_every and step % eval_every == 0) or step == steps):
            result = evaluate(trainer, held_out, int(opts["eval_batches"]))
            if result is not None:
                say(replace(result, step=step))
        if rank == fail_rank and step == fail_step:
            sys.stderr.write(f"llmplan: fault injection: rank {rank} exits at step {step}\n")
            os._exit(17)
        if ckpt_dir and ((every and step % every == 0) or step == steps):
            path = checkpoint.save(ckpt_dir, step, trainer.parts, trainer.optimizers,
                                   plan_path=str(opts["plan_path"]))
            say(events.Checkpoint(step=step, path=path))
    return measured, step_times


def save_final(trainer: Trainer, out: str, say) -> None:
    """The trained model as a Hugging Face folder (``runtime.hf_weights.save_hf``): each
    pipeline stage written by its (dp 0, cp 0, tp 0) rank, in the run's parameter dtype."""
    import torch

    mesh = trainer.built.mesh
    writer = all(mesh[d].get_local_rank() == 0 for d in ("dp", "cp", "tp"))
    from runtime.hf_weights import save_hf

    save_hf(trainer.parts, trainer.cfg, out, writer=writer,
            label="-".join(str(s) for s in trainer.built.stages),
            dtype=next(trainer.parts[0].parameters()).dtype if trainer.parts else torch.float32,
            source=str(trainer.opts["weights"]), rank0=torch.distributed.get_rank() == 0)
    say(events.Checkpoint(step=int(trainer.opts["steps"]), path=out, format="hf"))


def fallback_ckpt_dir(opts: dict[str, Any]) -> str:
    """Where the final checkpoint of a ``--save-hf`` run without ``--ckpt-dir`` goes: the run
    folder (beside its ``run.toml``), so a failed export loses no training."""
    return str(Path(str(opts["plan_path"])).parent)


def export_with_fallback(trainer: Trainer, opts: dict[str, Any], say) -> None:
    """``--save-hf`` with the trained weights kept until it is written: without ``--ckpt-dir``
    the final step is first saved as a checkpoint in the run folder (removed once the folder
    is written); with one, its final checkpoint is already there. If the export fails, the
    launcher names the ``llmplan export`` command that writes it from that checkpoint."""
    import torch.distributed as dist

    from runtime import checkpoint

    steps = int(opts["steps"])
    fallback = "" if opts["ckpt_dir"] else fallback_ckpt_dir(opts)
    if fallback:
        checkpoint.save(fallback, steps, trainer.parts, trainer.optimizers,
                        plan_path=str(opts["plan_path"]))
    save_final(trainer, str(opts["save_hf"]), say)
    if fallback and dist.get_rank() == 0:  # written: the interim checkpoint goes
        shutil.rmtree(Path(fallback) / f"step-{steps}", ignore_errors=True)
        (Path(fallback) / "latest").unlink(missing_ok=True)


def save_adapters(trainer: Trainer, opts: dict[str, Any], say) -> None:
    """LoRA: the adapters in peft's format (``--save-adapter``), and the model with them
    folded into its weights as a Hugging Face folder (``--merge``)."""
    import torch.distributed as dist

    from runtime.lora import merge_adapters, save_adapter

    steps = int(opts["steps"])
    if opts["save_adapter"]:
        save_adapter(trainer.parts, trainer.cfg, str(opts["save_adapter"]),
                     rank0=dist.get_rank() == 0, base=str(opts["weights"]))
        dist.barrier()
        say(events.Checkpoint(step=steps, path=str(opts["save_adapter"]), format="peft"))
    if opts["merge"]:
        merge_adapters(trainer.parts)
        save_final(trainer, str(opts["merge"]), say)


def run(plan_path: str) -> int:
    """One training run on this rank: load and check the plan, build the layout from the
    meta device, resume, say what the planner predicts, train, report measured next to
    predicted."""
    import torch.distributed as dist

    from runtime.data import make_data
    from runtime.parallel import build_mesh
    from runtime.report import peak_rss_bytes, predictions, report

    plan, cfg, setup, par, opts = load_run(plan_path)
    opts["plan_path"] = plan_path
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
    held_out = make_data(opts["eval_data"], cfg.vocab_size, setup.seq_len,
                         int(opts["seed"])) if opts["eval_data"] else None
    say(events.Start(
        model=cfg.name, layout={f: getattr(par, f) for f in par.__slots__}, world=par.world,
        device=device.type, steps=int(opts["steps"]), start_step=start_step,
        global_batch=trainer.global_batch, seq_len=setup.seq_len, micro_batch=setup.micro_batch,
        grad_accum=setup.grad_accum, recompute=setup.recompute, dtype=setup.dtype,
        optimizer=setup.optimizer, recipe=setup.recipe, attention=setup.attention,
        predicted_stages=predicted["stages"], predicted_step_time_s=predicted.get("step_time_s"),
        predicted_tokens_per_s=predicted.get("tokens_per_s")))
    measured, step_times = train_steps(trainer, data, start_step=start_step,
                                       predicted=predicted, say=say, rank=rank,
                                       held_out=held_out)
    save_adapters(trainer, opts, say)
    if opts["save_hf"]:
        export_with_fallback(trainer, opts, say)
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
