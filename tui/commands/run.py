"""Run commands: ``launch`` (training, or an inference plan) and ``generate``.

Each parses its options into a request, asks the runtime to resolve it
(``runtime.runspec``: every check, the run's plan written, nothing started) and then follows
the run's event stream: passed through as JSON lines with ``--json``, else rendered.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable, Optional

import typer

from planner.finetune import DEFAULT_ALPHA, DEFAULT_RANK
from tui import output
from tui.options import (BaseBitsOpt, DoubleQuantOpt, LoraAlphaOpt, LoraDropoutOpt, LoraRankOpt,
                         LoraTargetsOpt, PolicyOpt, SetOpt)

OptInt = Optional[int]


def launch_cmd(
    target: Annotated[str, typer.Argument(help="A plan file (llmplan plan --out) or a MODEL.")],
    device: Annotated[str, typer.Option(help="cpu, cuda, or auto (cuda when available).")] = "auto",
    tp: Annotated[OptInt, typer.Option(help="Tensor parallel (default: plan or 1).")] = None,
    pp: Annotated[OptInt, typer.Option(help="Pipeline parallel.")] = None,
    vpp: Annotated[OptInt, typer.Option(help="Virtual stages (interleaved 1F1B).")] = None,
    dp: Annotated[OptInt, typer.Option(help="Data parallel.")] = None,
    zero: Annotated[OptInt, typer.Option(help="ZeRO 0/1 (replicated) or 2/3 (FSDP2).")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Sequence parallel.")] = None,
    cp: Annotated[OptInt, typer.Option(help="Context parallel: each sequence split over cp ranks (ring attention).")] = None,
    ep: Annotated[OptInt, typer.Option(help="Expert parallel: MoE experts split over ep of the dp ranks.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="1f1b, gpipe or interleaved.")] = None,
    recompute: Annotated[Optional[str], typer.Option(help="none, selective, full.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw, adafactor, sgd_momentum.")] = None,
    mbs: Annotated[OptInt, typer.Option(help="Micro-batch b.")] = None,
    gbs: Annotated[OptInt, typer.Option(help="Global batch in sequences.")] = None,
    seq: Annotated[OptInt, typer.Option(help="Sequence length.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp8 (fp8: CUDA, compute capability 8.9+; default: the plan's, a model folder's stored dtype, or fp32).")] = None,
    pp_rounds: Annotated[int, typer.Option("--pp-rounds", help="Pipelines: run the step's micro-batches as this many schedule calls (gradient accumulation across flushes).")] = 1,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    seed: Annotated[int, typer.Option(help="Seed for init and data.")] = 0,
    data: Annotated[str, typer.Option(help="Local .txt/.jsonl/.parquet file or folder, tokenised with the model folder's tokenizer (bytes for presets).")] = "",
    sft: Annotated[bool, typer.Option("--sft", help="Train on completions / assistant turns only (prompt tokens masked).")] = False,
    eval_data: Annotated[str, typer.Option("--eval-data", help="Held-out data (same formats as --data): eval events with loss and perplexity.")] = "",
    eval_every: Annotated[int, typer.Option("--eval-every", help="Evaluate every N steps (and at the end).")] = 0,
    ckpt_dir: Annotated[str, typer.Option("--ckpt-dir", help="Checkpoint folder.")] = "",
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", help="Save every N steps.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    save_hf: Annotated[str, typer.Option("--save-hf", help="At the end, write the model as a Hugging Face folder here (must not exist).")] = "",
    method: Annotated[Optional[str], typer.Option("--method", help="full, lora, qlora (adapters over the frozen model) or dpo (--data of prompt / chosen / rejected) (default: the plan's, else full).")] = None,
    policy: PolicyOpt = "full",
    dpo_beta: Annotated[float, typer.Option("--dpo-beta", help="DPO: beta, the strength of the reference (Rafailov et al. 2023).")] = 0.1,
    lora_rank: LoraRankOpt = DEFAULT_RANK, lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA,
    lora_targets: LoraTargetsOpt = None, lora_dropout: LoraDropoutOpt = 0.0,
    base_bits: BaseBitsOpt = None, double_quant: DoubleQuantOpt = False,
    init_adapter: Annotated[str, typer.Option("--init-adapter", help="LoRA: start from this peft adapter folder.")] = "",
    save_adapter: Annotated[str, typer.Option("--save-adapter", help="LoRA: at the end, write the adapters here in peft's format.")] = "",
    merge: Annotated[str, typer.Option("--merge", help="LoRA: at the end, write the model with its adapters merged as a Hugging Face folder here (must not exist).")] = "",
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where the run's plan is written.")] = "",
    nnodes: Annotated[int, typer.Option(help="Nodes (multi-node needs --rdzv-endpoint).")] = 1,
    rdzv_endpoint: Annotated[str, typer.Option("--rdzv-endpoint", help="host:port of the c10d store.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the torchrun command only.")] = False,
    set_: SetOpt = None,
    json_mode: Annotated[bool, typer.Option("--json", help="Print the JSON-lines event stream.")] = False,
) -> None:
    """Launch a 3D-parallel training run (torchrun) and show predicted next to measured."""
    options = dict(locals())  # exactly the options given, before any other name is bound
    from runtime.runspec import resolve

    resolved = resolve(train_request(options), progress=None if json_mode else output.progress("tokenising"))
    for said in resolved.overrides:
        output.warn(said)
    if dry_run:
        output.render(json_mode, resolved.summary(), lambda: output.show(" ".join(resolved.command)))
        return
    if resolved.mode == "inference":
        _finish(follow(resolved, json_mode, _print_generation))
        return
    if not json_mode:
        output.warn(f"launching {resolved.spec.nproc_per_node * resolved.spec.nnodes} process(es) "
                    f"on {resolved.spec.device}: {' '.join(resolved.command)}")
    _finish(follow(resolved, json_mode, _print_training(resolved)))


def train_request(params: dict[str, Any]):
    """The runtime's request from ``launch``'s option values (the CLI's, or the TUI's run
    screen parsing the same options)."""
    from runtime.runspec import TrainRequest

    from tui.options import adapters

    sets = tuple(params.pop("set_", None) or ())
    for ui_only in ("dry_run", "json_mode"):
        params.pop(ui_only, None)
    fine_tune = {k: params.pop(k) for k in ("method", "policy", "lora_rank", "lora_alpha",
                                            "lora_targets", "lora_dropout", "base_bits",
                                            "double_quant")}
    if fine_tune["method"] is None:  # the plan's (a MODEL: full training)
        asked = [f"--{k.replace('_', '-')}" for k, v in fine_tune.items()
                 if k != "method" and v and v not in (DEFAULT_RANK, DEFAULT_ALPHA, "full")]
        if asked:
            from planner.config import ConfigError
            raise ConfigError(f"{', '.join(asked)} describe adapters: give --method lora")
        return TrainRequest(**params, sets=sets)
    return TrainRequest(**params, sets=sets, method=fine_tune["method"],
                        adapters=adapters(fine_tune))


def parse_launch_args(args: list[str]):
    """``launch``'s options given as words (the TUI's run screen) -> the runtime's request;
    a ``typer.TyperException`` (Typer's Click's ``UsageError``) for words ``launch`` would refuse."""
    import typer.main

    single = typer.Typer(add_completion=False)
    single.command()(launch_cmd)
    command = typer.main.get_command(single)
    ctx = command.make_context("launch", list(args))
    return train_request(dict(ctx.params))


def follow(resolved, json_mode: bool, on_event: Callable[[Any], None]) -> int:
    """Start the run and follow its events: passed through as JSON lines in ``--json`` mode,
    else each handed to ``on_event``; the exit status of the run."""
    from runtime.launch import stream

    def on_line(line: str, ev) -> None:
        if ev is None:
            return
        if json_mode:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            on_event(ev)

    return stream(resolved.spec, on_line)


def _finish(rc: int) -> None:
    if rc:
        raise typer.Exit(rc if rc != 2 else 1)


def _print_training(resolved) -> Callable[[Any], None]:
    from runtime import events

    def on_event(ev) -> None:
        if isinstance(ev, events.Step):
            mfu = f" mfu {ev.mfu:.1%}" if ev.mfu else ""
            dpo = (f"  reward margin {ev.reward_margin:.3f} ({ev.reward_accuracy:.0%} ranked "
                   "right)" if ev.reward_margin is not None else "")
            sys.stdout.write(f"step {ev.step:>5}  loss {ev.loss:.4f}  grad norm "
                             f"{ev.grad_norm:.3f}  {ev.tokens_per_s:,.0f} tok/s{mfu}{dpo}\n")
            sys.stdout.flush()
        elif isinstance(ev, events.Eval):
            sys.stdout.write(f"eval {ev.step:>5}  loss {ev.loss:.4f}  perplexity "
                             f"{ev.perplexity:,.2f}  ({ev.tokens:,} tokens)\n")
        elif isinstance(ev, events.Checkpoint):
            kind = "Hugging Face folder" if ev.format == "hf" else "checkpoint"
            sys.stdout.write(f"{kind} at step {ev.step}: {ev.path}\n")
        elif isinstance(ev, events.Done):
            output.show(output.table("Predicted vs measured (most loaded rank)",
                                     ["quantity", "predicted", "measured", "error"],
                                     output.comparison_rows(ev)))
            _calibration_hint(ev, resolved.hardware, resolved.spec.device)
        elif isinstance(ev, events.Error):
            output.warn(f"error: {ev.message}")

    return on_event


def _calibration_hint(done, hardware: str, device: str) -> None:
    """A step time outside an uncalibrated band says the constants are not this machine's;
    calibration runs on the host's own device, so only a CPU run on the ``cpu`` preset can
    be fitted from here."""
    from planner.accuracy import DEFAULT_ACCURACY
    from runtime.calibration import calibratable

    band, measured = done.predicted_step_time_band_s, done.measured_step_time_s
    if (band and measured and not band["low"] <= measured <= band["high"]
            and done.predicted_step_time_band_source == DEFAULT_ACCURACY.source
            and calibratable(device, hardware)):
        output.warn(f"the step-time model is not calibrated for {hardware}: "
                    f"`llmplan calibrate --device {device} --hardware {hardware}` fits it to "
                    f"this machine (about 10 minutes)")


def _print_generation(ev) -> None:
    from runtime import events

    if isinstance(ev, events.GenerationDone):
        for text in ev.texts:
            sys.stdout.write(text + "\n")
    elif isinstance(ev, events.Error):
        output.warn(f"error: {ev.message}")


def generate_cmd(
    target: Annotated[str, typer.Argument(help="MODEL, or a checkpoint folder written by `llmplan launch --ckpt-dir`.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[str, typer.Option("--prompts", help="A file with one prompt per line.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample among the k most likely (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus probability mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch: Annotated[int, typer.Option(help="Repeat the prompts to this many sequences.")] = 0,
    tp: Annotated[int, typer.Option(help="Tensor-parallel processes / GPUs.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16, or auto (a model folder's stored dtype, else fp32).")] = "auto",
    eos: Annotated[int, typer.Option(help="Stop a sequence at this token id (-1: the model folder's EOS, else never).")] = -1,
    chat: Annotated[bool, typer.Option("--chat", help="Each prompt is a user turn in the folder's chat template.")] = False,
    weight_bits: Annotated[int, typer.Option("--weight-bits", help="16, or 8: int8 weight-only linears (torchao; tp 1, bf16).")] = 16,
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where the generation plan is written.")] = "",
    set_: SetOpt = None,
    json_mode: Annotated[bool, typer.Option("--json", help="Print the JSON-lines event stream.")] = False,
) -> None:
    """Generate text with a KV cache (prefill + decode), tensor-parallel over --tp processes."""
    from runtime import events
    from runtime.runspec import GenerateRequest, resolve_generation

    texts = list(prompt or []) + (_prompt_lines(prompts) if prompts else [])
    resolved = resolve_generation(GenerateRequest(
        target=target, prompts=tuple(texts or ["Hello"]), max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, batch=batch, tp=tp,
        device=device, dtype=dtype, eos=eos, chat=chat, weight_bits=weight_bits, run_dir=run_dir,
        sets=tuple(set_ or ())))
    single = len(resolved.plan["generate"]["prompts"]) == 1
    if single and not json_mode:
        sys.stdout.write(resolved.plan["generate"]["prompts"][0])
        sys.stdout.flush()

    def on_event(ev) -> None:
        if isinstance(ev, events.Token) and single:
            sys.stdout.write(ev.text[0])
            sys.stdout.flush()
        elif isinstance(ev, events.GenerationDone):
            if single:
                sys.stdout.write("\n")
            else:
                for i, text in enumerate(ev.texts):
                    sys.stdout.write(f"[{i}] {text}\n")
            def ms(x):
                return f"{x * 1e3:,.2f} ms" if x is not None else "-"

            rows = [("time to first token", ms(ev.predicted_ttft_s), ms(ev.ttft_s)),
                    ("time per output token", ms(ev.predicted_tpot_s), ms(ev.tpot_s)),
                    ("decode, all sequences", f"{ev.predicted_decode_tokens_per_s:,.0f} tok/s",
                     f"{(ev.decode_tokens_per_s or 0):,.0f} tok/s"),
                    ("prefill", "", f"{ev.prefill_tokens_per_s:,.0f} tok/s"),
                    ("warm-up before timing", "", ms(ev.warmup_s)),
                    ("KV cache", output.fmt_bytes(ev.predicted_kv_cache_bytes),
                     output.fmt_bytes(ev.measured_kv_cache_bytes)),
                    ("weights", output.fmt_bytes(ev.predicted_weights_bytes or 0),
                     output.fmt_bytes(ev.measured_weights_bytes or 0))]
            if ev.quantisation_logit_max_abs_diff is not None:
                rows.append(("logits vs bf16 (max |diff|)", "",
                             f"{ev.quantisation_logit_max_abs_diff:.4g}"))
            output.show(output.table("Generation (predicted: planner.serving, as serve-plan)",
                                     ["quantity", "predicted", "measured"], rows))
        elif isinstance(ev, events.Error):
            if single:
                sys.stdout.write("\n")
            output.warn(f"error: {ev.message}")

    _finish(follow(resolved, json_mode, on_event))


def _prompt_lines(path: str) -> list[str]:
    """``--prompts``: the file's non-blank lines, one prompt each; a file without any, or not
    UTF-8 text, is refused (never replaced by the default prompt)."""
    from pathlib import Path

    from planner.config import LlmplanError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise LlmplanError(f"--prompts {path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise LlmplanError(f"--prompts {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                           f"at offset {err.start})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise LlmplanError(f"--prompts {path}: no prompts in the file (one a line)")
    return lines


def export_cmd(
    ckpt_dir: Annotated[str, typer.Argument(help="A checkpoint folder written by `llmplan launch --ckpt-dir`.")],
    out_dir: Annotated[str, typer.Argument(help="The Hugging Face folder to write (must not exist).")],
    json_mode: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Write a training checkpoint as a Hugging Face folder (config.json, safetensors, tokenizer)."""
    from runtime.hf_weights import export_checkpoint

    data = export_checkpoint(ckpt_dir, out_dir)
    output.render(json_mode, data, lambda: output.show(
        f"{data['model']} step {data['step']} -> {data['out']}"))


COMMANDS = {"launch": launch_cmd, "generate": generate_cmd, "export": export_cmd}
