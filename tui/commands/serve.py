"""``llmplan serve-plan``: the TP x replica split, precision and batch that meet a latency
target, ranked by throughput."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from tui import options, output
from tui.options import FormatOpt, HardwareOpt, JsonOpt, ModelArg, SetOpt
from tui.options import model as load


def serve_plan_cmd(
    model: ModelArg,
    hardware: HardwareOpt = "h100-sxm",
    gpus: Annotated[int, typer.Option(callback=options.POSITIVE.callback, help="Accelerators to serve on.")] = 8,
    prompt_tokens: Annotated[int, options.sized(options.SEQ_LEN, "--prompt-tokens", help="Typical prompt length P.")] = 1024,
    output_tokens: Annotated[int, options.sized(options.SEQ_LEN, "--output-tokens", help="Typical answer length O.")] = 256,
    ttft_ms: Annotated[float, typer.Option("--ttft-ms", callback=options.MS.callback, help="Time-to-first-token target (0: none).")] = 0.0,
    tpot_ms: Annotated[float, typer.Option("--tpot-ms", callback=options.MS.callback, help="Time-per-output-token target (0: none).")] = 0.0,
    rate: Annotated[float, typer.Option("--rate", callback=options.RATE.callback, help="Requests/s to sustain (0: none).")] = 0.0,
    concurrency: Annotated[int, options.sized(options.OPTIONAL_BATCH, "--concurrency", help="Sequences in flight (0: as many as fit).")] = 0,
    weight_bits: Annotated[Optional[list[int]], typer.Option("--weight-bits", help="16, 8 or 4 (repeatable; default all).")] = None,
    kv_dtype: Annotated[Optional[list[str]], typer.Option("--kv-dtype", help="bf16, fp8 or int8 (repeatable; default bf16).")] = None,
    price: Annotated[float, typer.Option("--price", callback=options.PRICE.callback, help="USD per GPU-hour (default: the preset's, if any).")] = 0.0,
    top: Annotated[int, typer.Option(callback=options.TOP.callback, help="Candidates to show.")] = 8,
    set_: SetOpt = None, json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """Serving plan: every TP x replica split, weight / KV precision and batch, ranked by
    output tokens/s among those meeting the targets (continuous batching, steady state)."""
    from planner.serving import WEIGHT_BITS, ServeJob, serve_plan
    from presets import load_cost_model, load_hardware

    fmt = options.output_format(json_mode, fmt)
    cfg = load(model, set_)
    hw = load_hardware(hardware)
    job = ServeJob(prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                   ttft_s=ttft_ms / 1e3, tpot_s=tpot_ms / 1e3, rate_qps=rate,
                   concurrency=concurrency, price_per_gpu_hour=price or hw.price_per_gpu_hour_usd)
    result = serve_plan(cfg, hw, gpus=gpus, job=job, weight_bits=tuple(weight_bits or WEIGHT_BITS),
                        kv_dtypes=tuple(kv_dtype or ("bf16",)),
                        model=load_cost_model(hardware, serving=True))
    data: dict[str, Any] = {
        "model": cfg.name, "hardware": hardware, "gpus": gpus, "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "targets": {"ttft_s": job.ttft_s or None, "tpot_s": job.tpot_s or None,
                    "rate_qps": job.rate_qps or None, "concurrency": job.concurrency or None},
        "evaluated": result.evaluated, "refused_tp": result.refused,
        "candidates": [c.to_dict() for c in result.candidates[:top]],
        "closest": result.closest.to_dict() if result.closest else None,
        "model_notes": "continuous batching in steady state: each decode step serves the batch, "
                       "each new request's prefill runs between steps (planner.serving)",
    }
    if not result.candidates and result.closest is None:
        # no answer (exit 1), not bad input: the model does not fit these GPUs
        output.warn(f"no answer: no TP size of {gpus} GPUs holds {cfg.name} with room for a "
                    "cache: " + "; ".join(f"tp {k}: {v}" for k, v in result.refused.items()))
        raise typer.Exit(1)
    if not result.candidates:
        data["no_answer"] = ("no candidate meets the targets; closest: "
                             + "; ".join(result.closest.misses))

    def human() -> None:
        priced = bool(job.price_per_gpu_hour)
        cols = ["#", "tp", "repl", "bits", "kv", "batch", "TTFT ms", "TPOT ms", "tok/s/GPU",
                "req/s", "max seqs", "GiB w"] + (["$/M tok"] if priced else [])
        shown = result.candidates[:top] or [result.closest]
        rows = [(i + 1, c.tp, c.replicas, c.weight_bits, c.kv_dtype, c.batch,
                 f"{c.ttft_s * 1e3:,.1f}", f"{c.tpot_s * 1e3:,.2f}",
                 f"{c.tokens_per_s / gpus:,.0f}", f"{c.requests_per_s:,.1f}",
                 f"{c.max_concurrency:,}", f"{c.weights_bytes_per_gpu / 2**30:.1f}",
                 *([f"{c.cost_per_million_tokens:.3f}"] if priced else []))
                for i, c in enumerate(shown)]
        title = (f"Serving {cfg.name} on {gpus} x {hardware}: prompts ~{prompt_tokens}, "
                 f"answers ~{output_tokens} tokens")
        notes = []
        if not result.candidates:
            notes.append("no candidate meets the targets; closest: " + "; ".join(result.closest.misses))
        notes.append(data["model_notes"])
        notes.extend(f"tp {k} refused: {v}" for k, v in result.refused.items())
        output.show(output.table(title, cols, rows, caption=f"{result.evaluated:,} evaluated"), *notes)

    options.warn_context(cfg, prompt_tokens + output_tokens)
    output.render(json_mode, data, human, fmt)
    if not result.candidates:
        if fmt in ("json", "csv"):  # the reason is not among their rows
            output.warn(f"no answer: {data['no_answer']}")
        raise typer.Exit(1)


COMMANDS = {"serve-plan": serve_plan_cmd}
