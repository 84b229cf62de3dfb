"""``llmplan plan``: the fastest layouts that fit a cluster, and the plan file of the best."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer

from planner.config import LlmplanError
from tui import options, output
from planner.finetune import DEFAULT_ALPHA, DEFAULT_RANK
from tui.options import (AttentionOpt, BaseBitsOpt, DoubleQuantOpt, DtypeOpt, FormatOpt, JsonOpt,
                         LoraAlphaOpt, LoraDropoutOpt, LoraRankOpt, LoraTargetsOpt, MethodOpt, PolicyOpt,
                         ModelArg, OptimOpt, RecipeOpt, SeqOpt, SetOpt)
from tui.options import model as load


def nearest_runs(cfg, cluster, seq: int) -> list[dict[str, Any]]:
    """The published runs nearest to the job (same chip first): what this estimate was
    checked against."""
    from planner.params import count_params
    from planner.published_fit import nearest
    from presets.runs import load_runs

    runs = nearest(load_runs(), chip=cluster.hardware.chip, params=count_params(cfg).total,
                   gpus=cluster.gpus, seq=seq)
    return [{"name": r.name, "hardware": r.hardware.name, "gpus": r.gpus,
             "model": r.cfg.name, "seq_len": r.seq_len, "source": r.source} for r in runs]


def plan_cmd(
    ctx: typer.Context,
    model: ModelArg,
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware preset.")] = "h100-sxm",
    gpus: Annotated[int, typer.Option(callback=options.POSITIVE.callback, help="Accelerators in the cluster.")] = 8,
    nodes: Annotated[int, typer.Option(callback=options.OPTIONAL_COUNT.callback, help="Nodes (default: from the preset's GPUs per node).")] = 0,
    gbs: Annotated[int, options.sized(options.OPTIONAL_BATCH, "--gbs", help="Global batch in sequences (or --gbs-tokens; default: mbs*dp when --mbs and --dp are both pinned).")] = 0,
    gbs_tokens: Annotated[Optional[float], options.sized(options.GBS_TOKENS, "--gbs-tokens", help="Global batch in tokens (4M = 4,000,000; 4Mi = 4,194,304), a multiple of --seq.")] = None,
    seq: SeqOpt = 4096,
    dtype: DtypeOpt = "bf16", recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw",
    fp8_scaling: options.Fp8ScalingOpt = "",
    attention: AttentionOpt = "flash",
    max_vpp: Annotated[int, typer.Option("--max-vpp", callback=options.Count(1, 64).callback, help="Largest virtual-stage count tried.")] = 4,
    tokens: Annotated[Optional[float], options.sized(options.POSITIVE_TOKENS, "--tokens", help="Token budget (e.g. 15T): adds time and GPU-hours.")] = None,
    top: Annotated[int, typer.Option(callback=options.TOP.callback, help="Layouts to show.")] = 5,
    runtime: Annotated[str, typer.Option(help="llmplan: only layouts llmplan's runtime runs; any: also those other frameworks run (marked).")] = "llmplan",
    out: Annotated[Optional[str], typer.Option("--out", help="Write the best layout as a plan file (with --export: the folder for both files).")] = None,
    export: Annotated[Optional[str], typer.Option("--export", help="accelerate, torchtitan, deepspeed or megatron: rank only layouts that framework runs and write its config for the best.")] = None,
    tp: Annotated[Optional[int], typer.Option("--tp", callback=options.POSITIVE.callback, help="Pin tensor parallel.")] = None,
    pp: Annotated[Optional[int], typer.Option("--pp", callback=options.POSITIVE.callback, help="Pin pipeline parallel.")] = None,
    cp: Annotated[Optional[int], typer.Option("--cp", callback=options.POSITIVE.callback, help="Pin context parallel.")] = None,
    ep: Annotated[Optional[int], typer.Option("--ep", callback=options.POSITIVE.callback, help="Pin expert parallel (MoE).")] = None,
    vpp: Annotated[Optional[int], typer.Option("--vpp", callback=options.Count(1, 64).callback, help="Pin virtual stages.")] = None,
    dp: Annotated[Optional[int], typer.Option("--dp", callback=options.POSITIVE.callback, help="Pin data parallel.")] = None,
    zero: Annotated[Optional[int], typer.Option("--zero", callback=options.Count(0, 3).callback, help="Pin the ZeRO stage.")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Pin sequence parallel.")] = None,
    recompute: Annotated[Optional[str], typer.Option("--recompute", help="Pin recompute: none, selective, full.")] = None,
    mbs: Annotated[Optional[int], typer.Option("--mbs", callback=options.POSITIVE.callback, help="Pin the micro-batch.")] = None,
    method: MethodOpt = "full", policy: PolicyOpt = "full",
    lora_rank: LoraRankOpt = DEFAULT_RANK,
    lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA, lora_targets: LoraTargetsOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0, base_bits: BaseBitsOpt = None,
    double_quant: DoubleQuantOpt = False,
    set_: SetOpt = None, json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """The fastest tensor x context x pipeline x data (expert, ZeRO) layouts that fit a cluster; any dimension
    given is pinned and the search covers the rest; --method lora or qlora plans adapters
    over a frozen base."""
    flags = dict(locals())
    fmt = options.output_format(json_mode, fmt)
    options.refuse_ppo(method, "plan")
    from pathlib import Path

    from planner.accuracy import fmt_band
    from planner.setup import TrainSetup
    from planner.cost import cluster_of
    from planner import exports
    from planner.search import SearchSpace, search
    from presets import load_cost_model, load_hardware

    cfg = load(model, set_)
    cluster = cluster_of(load_hardware(hardware), gpus=gpus, nodes=nodes)
    if gbs and gbs_tokens is not None:
        raise LlmplanError(f"give one of --gbs({gbs}) (sequences) or --gbs-tokens"
                           f"({gbs_tokens:.0f}), not both")
    if not gbs and gbs_tokens is None:
        if mbs is None or dp is None:
            raise LlmplanError("give --gbs (sequences) or --gbs-tokens (e.g. 4M), or pin --mbs "
                               "and --dp (the global batch is then mbs*dp)")
        gbs = mbs * dp
    if gbs_tokens is not None:
        if gbs_tokens % seq:
            raise LlmplanError(f"--gbs-tokens({gbs_tokens:.0f}) is not a multiple of --seq({seq})")
        gbs = int(gbs_tokens // seq)
        options.BATCH.check("--gbs-tokens / --seq", gbs)
    framework = exports.framework(export) if export else None
    targets = output_paths(out, framework, multi_node=cluster.nodes > 1)
    setup = TrainSetup(seq_len=seq, dtype=dtype, recipe=recipe, optimizer=optimizer,
                       fp8_scaling=fp8_scaling,
                       attention=attention, recompute=recompute or "none",
                       adapters=options.adapters(flags),
                       objective=options.objective(flags))
    space = SearchSpace.pinned(max_vpp=max_vpp, tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero,
                               sp=sp, recompute=recompute, mbs=mbs, cp=cp, ep=ep)
    cost_model = load_cost_model(hardware, fused=export == "megatron")
    result = search(cfg, cluster, setup, global_batch=gbs, model=cost_model,
                    space=space, runtime="any" if framework else runtime)
    world = cluster.gpus
    accuracy = options.accuracy(hardware)
    command = options.command_line(ctx)
    refused: dict[str, int] = {}
    if framework:
        ranked, counts = exports.expressible(export, cfg, result, command=command)
        if result.candidates and not ranked:
            reason, n = counts.most_common(1)[0]
            many = f" (all {len(result.candidates)} layouts that fit; first reason)" if n > 1 else ""
            raise LlmplanError(f"--export {export}: {reason}{many}")
        result = replace(result, candidates=ranked)
        refused = dict(counts)

    def with_budget(c: Any, fits: bool = True) -> dict[str, Any]:
        d = c.to_dict(world)
        d.update(fits=fits, overshoot_bytes=max(0, c.memory_per_gpu_bytes - result.usable_bytes))
        d.update(step_time_band_s=accuracy.time(c.step_time_s).to_dict(),
                 memory_band_bytes=accuracy.memory(c.memory_per_gpu_bytes).to_dict(),
                 tokens_per_s_band=accuracy.rate(c.tokens_per_s).to_dict())
        if tokens:
            seconds = tokens / c.tokens_per_s
            d.update(time_to_train_s=seconds, gpu_hours=seconds * world / 3600,
                     time_to_train_band_s=accuracy.time(seconds).to_dict())
        return d

    data: dict[str, Any] = {
        "model": cfg.name, "hardware": hardware, "gpus": world, "nodes": cluster.nodes,
        "global_batch": gbs, "seq_len": seq, "runtime": runtime,
        "usable_bytes_per_gpu": result.usable_bytes,
        "evaluated": result.evaluated, "layouts": result.total,
        "candidates": [with_budget(c) for c in result.candidates[:top]],
        "rejected": {k: v for k, v in result.rejected.items() if v},
        "pareto": [with_budget(c) for c in result.pareto()],
        "runner_up": result.runner_up_reason(),
        "closest": with_budget(result.closest, fits=False) if result.closest else None,
        "suggestions": result.suggestions, "accuracy": accuracy.to_dict(),
        "nearest_published": nearest_runs(cfg, cluster, seq),
    }
    if not result.candidates:
        data["no_answer"] = no_answer(result)
    pinned = any(v is not None for v in (tp, pp, vpp, dp, zero, sp, recompute, mbs))
    if pinned and not data["candidates"] and result.closest is not None:
        data["candidates"] = [data["closest"]]  # the pinned layout, returned though it does not fit
    written: list[str] = []
    if (out or framework) and result.best:
        from planner.planfile import candidate_plan, write_plan

        written = [str(p) for p in write_plan(targets[0], candidate_plan(cfg, result, result.best))]
        if framework:
            job = exports.job_of(cfg, result, result.best, command=command)
            written.insert(0, str(exports.export(export, job, targets[0].parent)))
            data["export"] = {"framework": export, "settings": exports.settings(export, job),
                              "refused": refused}
        data["written"] = written
    elif out or framework:
        output.warn("no feasible layout: nothing written")

    def human() -> None:
        shown = result.candidates[:top]
        # cp and ep columns where a shown layout uses them (the table stays narrow otherwise)
        cp, ep = (any(getattr(c, k) > 1 for c in shown) for k in ("cp", "ep"))
        cols = ["#", "tp", *(["cp"] if cp else []), "pp", "v", "dp", *(["ep"] if ep else []),
                "z", "sp", "recompute", "b", "m", "GiB", "step s", "tok/s/gpu", "MFU"]
        rows = [(f"{i + 1}{'' if c.launchable else '*'}", c.tp, *([c.cp] if cp else []), c.pp,
                 c.vpp, c.dp, *([c.ep] if ep else []), c.zero,
                 "on" if c.sp else "off", c.recompute,
                 c.mbs, c.grad_accum, f"{c.memory_per_gpu_bytes / 2**30:.1f}",
                 f"{c.step_time_s:.3f}", f"{c.tokens_per_s / world:,.0f}", f"{c.mfu:.1%}")
                for i, c in enumerate(shown)]
        rejected = ", ".join(f"{k} {v:,}" for k, v in data["rejected"].items())
        caption = (f"{result.total:,} layouts, {result.evaluated:,} evaluated; usable "
                   f"{result.usable_bytes / 2**30:.1f} GiB/GPU; rejected: {rejected}")
        renderables: list[Any] = [output.table(
            f"Layouts for {cfg.name} on {world} x {hardware} ({cluster.nodes} node(s)), "
            f"gbs {gbs} x {seq} tokens", cols, rows, caption=caption)]
        notes = []
        if result.best:
            best = result.best
            notes.append(f"#1: step {fmt_band(accuracy.time(best.step_time_s), '{:.3f}'.format, ' s')}, "
                         f"{fmt_band(accuracy.memory(best.memory_per_gpu_bytes), output.fmt_bytes)}/GPU; "
                         f"bands: {accuracy.source}")
        if result.best and tokens:
            d = data["candidates"][0]
            days = accuracy.time(d["time_to_train_s"] / 86400)
            notes.append(f"{tokens:.3g} tokens: {fmt_band(days, '{:,.1f}'.format, ' days')}, "
                         f"{d['gpu_hours']:,.0f} GPU-hours")
        marked = [(i + 1, c) for i, c in enumerate(result.candidates[:top]) if not c.launchable]
        if not framework:
            notes.extend(f"#{i}* not launchable by llmplan: {'; '.join(c.not_launchable)}"
                         for i, c in marked)
        if refused:
            notes.append(f"{sum(refused.values()):,} layouts that fit are not expressible in "
                         f"{export}: " + "; ".join(f"{n:,} {why}" for why, n in refused.items()))
        if data["runner_up"]:
            notes.append(data["runner_up"])
        notes.extend(result.suggestions)
        if not result.candidates:
            notes.insert(0, data["no_answer"])
        if data["nearest_published"]:
            notes.append("nearest published runs: " + "; ".join(
                f"{r['name']} ({r['gpus']} x {r['hardware']})" for r in data["nearest_published"]))
        notes.extend(f"wrote {w}" for w in written)
        renderables.extend(notes)
        output.show(*renderables)

    options.warn_context(cfg, seq)
    output.render(json_mode, data, human, fmt)
    if not result.candidates:
        if fmt in ("json", "csv"):  # the reason is not among their rows
            output.warn(f"no answer: {data['no_answer']}")
        raise typer.Exit(1)


def no_answer(result) -> str:
    """Why a search ranked no layout, in one line: none fits (with the closest), or which
    rules rejected how many of the layouts (or that the pinned sizes leave none to try)."""
    if result.evaluated:
        closest = (f"; closest: {result.closest.label()} needs "
                   f"{result.closest.memory_per_gpu_bytes / 2**30:.1f} GiB of "
                   f"{result.usable_bytes / 2**30:.1f} GiB usable") if result.closest else ""
        return f"no layout fits: {result.evaluated:,} evaluated, all out of memory{closest}"
    counts = {k: v for k, v in result.rejected.items() if v}
    if not counts:
        return "no layout to try: the pinned sizes leave none for this cluster"
    reasons = "; ".join(f"{k} rejected {v:,}" for k, v in sorted(counts.items(),
                                                                   key=lambda kv: -kv[1]))
    why = f" ({result.suggestions[0]})" if result.suggestions else ""
    return f"no layout passes the rules: of {result.total:,} layouts, {reasons}{why}"


def output_paths(out: str | None, framework, *, multi_node: bool) -> list:
    """Where ``plan`` will write, each checked before any search (``planner.outputs``: one
    rule): the plan file (``--out FILE``; with ``--export``, ``plan.toml`` in the ``--out``
    folder, default the current one), the framework's file beside it, the Slurm script of a
    multi-node plan. An existing folder given as a file, a file given as a folder, or a
    folder that cannot be written is a one-line error before anything is computed."""
    from pathlib import Path

    from planner.outputs import writable_file, writable_folder

    if not (out or framework):
        return []
    if framework:
        folder = writable_folder(out or ".", "--out folder")
        plan = writable_file(folder / "plan.toml", "--out plan file")
        paths = [plan, writable_file(folder / framework.FILENAME, f"--export {framework.NAME} file")]
    else:
        plan = writable_file(Path(out), "--out")
        paths = [plan]
    if multi_node:
        paths.append(writable_file(plan.with_suffix(".slurm"), "--out Slurm script"))
    return paths


COMMANDS = {"plan": plan_cmd}
