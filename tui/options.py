"""The options commands share (Typer ``Annotated`` types), and the few helpers that turn them
into planner objects. One definition per option, so every command spells it alike."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelArg = Annotated[
    str, typer.Argument(help="Preset name, TOML model file, or Hugging Face config.json.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a model field: key=value (repeatable; V,h,L,a,g,d,f,E,k accepted)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
SeqOpt = Annotated[int, typer.Option("--seq", help="Sequence length s.")]
MbsOpt = Annotated[int, typer.Option("--mbs", help="Micro-batch b (sequences per rank).")]
GbsOpt = Annotated[int, typer.Option("--gbs", help="Global batch in sequences (default mbs*dp).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16, fp16, fp32, or fp8 (the linears' GEMMs in fp8, the rest in bf16).")]
Fp8ScalingOpt = Annotated[str, typer.Option("--fp8-scaling", help="With --dtype fp8: tensor (one scale per tensor) or block (1x128 activation tiles, 128x128 weight blocks).")]
RecipeOpt = Annotated[str, typer.Option("--recipe", help="mixed (16 B/param), mixed_fp32_grads, fp32, runtime.")]
OptimOpt = Annotated[str, typer.Option("--optimizer", help="adamw, adafactor, sgd_momentum, adam8bit.")]
ZeroOpt = Annotated[int, typer.Option("--zero", help="ZeRO stage 0-3 over dp.")]
DpOpt = Annotated[int, typer.Option("--dp", help="Data-parallel size.")]
TpOpt = Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline-parallel size.")]
CpOpt = Annotated[int, typer.Option("--cp", help="Context-parallel size: each sequence split over cp ranks (ring attention).")]
EpOpt = Annotated[int, typer.Option("--ep", help="Expert-parallel size: the experts split over ep of the dp ranks (all-to-all).")]
VppOpt = Annotated[int, typer.Option("--vpp", help="Virtual stages per pipeline rank (interleaved).")]
SpOpt = Annotated[bool, typer.Option("--sp/--no-sp", help="Sequence parallel.")]
RecomputeOpt = Annotated[str, typer.Option("--recompute", help="none, selective or full.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="flash (SDPA) or eager.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="1f1b, gpipe or interleaved (default: interleaved when vpp > 1, else 1f1b).")]
DropoutOpt = Annotated[bool, typer.Option("--dropout/--no-dropout", help="Dropout masks (Korthikanti's setting).")]
HardwareOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset (e.g. h100-sxm).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, or cuda on a CUDA machine.")]
MethodOpt = Annotated[str, typer.Option("--method", help="full, lora or qlora (adapters over a frozen base), dpo (preference pairs against a frozen reference) or ppo (actor, critic, reference and reward models).")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="DPO / PPO: how the policy is trained: full, lora or qlora.")]
LoraRankOpt = Annotated[int, typer.Option("--lora-rank", help="LoRA rank r.")]
LoraAlphaOpt = Annotated[float, typer.Option("--lora-alpha", help="LoRA alpha (B A is scaled by alpha / r).")]
LoraTargetsOpt = Annotated[Optional[list[str]], typer.Option("--lora-targets", help="Module names as peft names them (comma-separated or repeated; default: every attention and MLP projection).")]
LoraDropoutOpt = Annotated[float, typer.Option("--lora-dropout", help="Dropout on the adapters' input.")]
BaseBitsOpt = Annotated[Optional[int], typer.Option("--base-bits", help="Bits of the frozen base: 16 or 8 with lora, 4 (NF4) with qlora.")]
DoubleQuantOpt = Annotated[bool, typer.Option("--double-quant", help="QLoRA: quantise NF4's absmax constants to 8 bits (Dettmers et al. 2023).")]


def model(spec: str, sets: list[str] | None):
    """The ModelConfig a MODEL argument and its ``--set`` overrides name."""
    from presets import load_model, parse_overrides

    return load_model(spec, parse_overrides(sets))


def training(values: dict):
    """(TrainSetup, Parallel) of the shared training flags in a command's option values
    (``locals()``: seq, mbs, gbs, dtype, recipe, optimizer, zero, dp, tp, pp, vpp, sp, cp, ep,
    recompute, attention, schedule, dropout, and the fine-tuning flags where the command has
    them); the batch split by the layout contract's one
    rule (``planner.layout.micro_batches``)."""
    from planner import layout
    from planner.setup import Parallel, TrainSetup

    v = values
    par = Parallel(tp=v["tp"], pp=v["pp"], vpp=v["vpp"], dp=v["dp"], zero=v["zero"], sp=v["sp"],
                   schedule=v["schedule"], cp=v.get("cp", 1), ep=v.get("ep", 1))
    m = layout.micro_batches(global_batch=v["gbs"] or v["mbs"] * v["dp"], dp=v["dp"], mbs=v["mbs"])
    setup = TrainSetup(seq_len=v["seq"], micro_batch=v["mbs"], grad_accum=m, dtype=v["dtype"],
                       recipe=v["recipe"], optimizer=v["optimizer"], recompute=v["recompute"],
                       attention=v["attention"], dropout=v["dropout"],
                       fp8_scaling=v.get("fp8_scaling", ""),
                       adapters=adapters(v) if "method" in v else None,
                       objective=objective(v))
    return setup, par


def refuse_ppo(method: str, command: str) -> None:
    """PPO's four models are sized per phase by ``memory --method ppo`` (its FLOPs per step
    too); ``command`` does not treat them as one training run."""
    if method == "ppo":
        from planner.config import ConfigError

        raise ConfigError(f"{command} --method ppo: PPO's actor, critic, reference and reward "
                          "are sized per phase by `llmplan memory --method ppo` (with its "
                          "FLOPs per step)")


def objective(values: dict) -> str:
    from planner.finetune import objective_for

    return objective_for(values.get("method", "full"))


def adapters(values: dict):
    """The Adapters (None for full training) of the shared fine-tuning flags in a command's
    option values: method, lora_rank, lora_alpha, lora_targets, lora_dropout, base_bits,
    double_quant."""
    from planner.finetune import adapters_for

    v = values
    targets = tuple(t.strip() for arg in v.get("lora_targets") or [] for t in arg.split(",")
                    if t.strip())
    return adapters_for(v["method"], policy=v.get("policy", "full"), rank=v["lora_rank"],
                        alpha=v["lora_alpha"],
                        targets=targets, dropout=v["lora_dropout"], base_bits=v["base_bits"],
                        double_quant=v["double_quant"])


def accuracy(hardware: str):
    """The band put around estimates on ``hardware`` (the reference default without one)."""
    from planner.accuracy import DEFAULT_ACCURACY
    from presets import load_accuracy

    return load_accuracy(hardware) if hardware else DEFAULT_ACCURACY


def command_line(ctx) -> str:
    """The running command (``ctx``: its ``typer.Context``) as a user would type it:
    ``llmplan plan MODEL`` and each option whose value is not the default (written into
    exported files so they say how to reproduce them)."""
    import shlex

    words = ["llmplan", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value in ([], ()):
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value or not param.secondary_opts
                         else param.secondary_opts[0])
        else:
            for one in value if isinstance(value, (list, tuple)) else [value]:
                words += [param.opts[0], str(one)]
    return shlex.join(words)
