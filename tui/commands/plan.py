"""``llmplan plan``: the fastest layouts that fit a cluster, and the plan file of the best."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer

from planner.config import LlmplanError
from tui import options, output
from planner.finetune import DEFAULT_ALPHA, DEFAULT_RANK
from tui.options import (AttentionOpt, BaseBitsOpt, DoubleQuantOpt, DtypeOpt, GbsOpt, JsonOpt,
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
    gpus: Annotated[int, typer.Option(help="Accelerators in the cluster.")] = 8,
    nodes: Annotated[int, typer.Option(help="Nodes (default: from the preset's GPUs per node).")] = 0,
    gbs: GbsOpt = 0,
    gbs_tokens: Annotated[float, typer.Option("--gbs-tokens", help="Global batch in tokens.")] = 0.0,
    seq: SeqOpt = 4096,
    dtype: DtypeOpt = "bf16", recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw",
    fp8_scaling: options.Fp8ScalingOpt = "",
    attention: AttentionOpt = "flash",
    max_vpp: Annotated[int, typer.Option("--max-vpp", help="Largest virtual-stage count tried.")] = 4,
    tokens: Annotated[float, typer.Option(help="Token budget: adds time and GPU-hours.")] = 0.0,
    top: Annotated[int, typer.Option(help="Layouts to show.")] = 5,
    runtime: Annotated[str, typer.Option(help="llmplan: only layouts llmplan's runtime runs; any: also those other frameworks run (marked).")] = "llmplan",
    out: Annotated[Optional[str], typer.Option("--out", help="Write the best layout as a plan file (with --export: the folder for both files).")] = None,
    export: Annotated[Optional[str], typer.Option("--export", help="accelerate, torchtitan, deepspeed or megatron: rank only layouts that framework runs and write its config for the best.")] = None,
    tp: Annotated[Optional[int], typer.Option("--tp", help="Pin tensor parallel.")] = None,
    pp: Annotated[Optional[int], typer.Option("--pp", help="Pin pipeline parallel.")] = None,
    cp: Annotated[Optional[int], typer.Option("--cp", help="Pin context parallel.")] = None,
    ep: Annotated[Optional[int], typer.Option("--ep", help="Pin expert parallel (MoE).")] = None,
    vpp: Annotated[Optional[int], typer.Option("--vpp", help="Pin virtual stages.")] = None,
    dp: Annotated[Optional[int], typer.Option("--dp", help="Pin data parallel.")] = None,
    zero: Annotated[Optional[int], typer.Option("--zero", help="Pin the ZeRO stage.")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Pin sequence parallel.")] = None,
    recompute: Annotated[Optional[str], typer.Option("--recompute", help="Pin recompute: none, selective, full.")] = None,
    mbs: Annotated[Optional[int], typer.Option("--mbs", help="Pin the micro-batch.")] = None,
    method: MethodOpt = "full", policy: PolicyOpt = "full",
    lora_rank: LoraRankOpt = DEFAULT_RANK,
    lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA, lora_targets: LoraTargetsOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0, base_bits: BaseBitsOpt = None,
    double_quant: DoubleQuantOpt = False,
    set_: SetOpt = None, json_mode: JsonOpt = False,
) -> None:
    """The fastest tensor x context x pipeline x data (expert, ZeRO) layouts that fit a cluster; any dimension
    given is pinned and the search covers the rest; --method lora or qlora plans adapters
    over a frozen base."""
    flags = dict(locals())
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
    if bool(gbs) == bool(gbs_tokens):
        raise LlmplanError("give exactly one of --gbs (sequences) or --gbs-tokens")
    if gbs_tokens:
        if gbs_tokens % seq:
            raise LlmplanError(f"gbs-tokens({gbs_tokens:.0f}) is not a multiple of seq({seq})")
        gbs = int(gbs_tokens // seq)
    setup = TrainSetup(seq_len=seq, dtype=dtype, recipe=recipe, optimizer=optimizer,
                       fp8_scaling=fp8_scaling,
                       attention=attention, recompute=recompute or "none",
                       adapters=options.adapters(flags),
                       objective=options.objective(flags))
    space = SearchSpace.pinned(max_vpp=max_vpp, tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero,
                               sp=sp, recompute=recompute, mbs=mbs, cp=cp, ep=ep)
    framework = exports.framework(export) if export else None
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
    pinned = any(v is not None for v in (tp, pp, vpp, dp, zero, sp, recompute, mbs))
    if pinned and not data["candidates"] and result.closest is not None:
        data["candidates"] = [data["closest"]]  # the pinned layout, returned though it does not fit
    written: list[str] = []
    if (out or framework) and result.best:
        from planner.planfile import candidate_plan, write_plan

        plan_path = Path(out or ".") / "plan.toml" if framework else Path(out)
        written = [str(p) for p in write_plan(plan_path, candidate_plan(cfg, result, result.best))]
        if framework:
            job = exports.job_of(cfg, result, result.best, command=command)
            written.insert(0, str(exports.export(export, job, Path(out or "."))))
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
                "z", "sp", "recomp", "b", "m", "GiB", "step s", "tok/s/gpu", "MFU"]
        rows = [(f"{i + 1}{'' if c.launchable else '*'}", c.tp, *([c.cp] if cp else []), c.pp,
                 c.vpp, c.dp, *([c.ep] if ep else []), c.zero,
                 "on" if c.sp else "off", c.recompute[:4],
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
        if not result.candidates and result.evaluated:
            notes.insert(0, "no layout fits")
        elif not result.candidates:
            notes.insert(0, "no layout passes the rules:")
        if data["nearest_published"]:
            notes.append("nearest published runs: " + "; ".join(
                f"{r['name']} ({r['gpus']} x {r['hardware']})" for r in data["nearest_published"]))
        notes.extend(f"wrote {w}" for w in written)
        renderables.extend(notes)
        output.show(*renderables)

    output.render(json_mode, data, human)


COMMANDS = {"plan": plan_cmd}
