"""Calculator commands: FLOPs, per-GPU memory, KV cache, compute-optimal budgets, and the
formula behind a number."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from planner.config import LlmplanError
from planner.explain import QUANTITIES
from tui import options, output
from planner.finetune import DEFAULT_ALPHA, DEFAULT_RANK
from tui.options import (AttentionOpt, BaseBitsOpt, DoubleQuantOpt, DpOpt, DropoutOpt,
                         DtypeOpt, GbsOpt, HardwareOpt, JsonOpt, LoraAlphaOpt, LoraDropoutOpt,
                         LoraRankOpt, LoraTargetsOpt, MbsOpt, MethodOpt, PolicyOpt, ModelArg, OptimOpt,
                         PpOpt, RecipeOpt, RecomputeOpt, ScheduleOpt, SeqOpt, SetOpt, SpOpt,
                         TpOpt, VppOpt, ZeroOpt, CpOpt, EpOpt, Fp8ScalingOpt, FormatOpt)
from tui.options import model as load


def flops_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048,
    tokens: Annotated[Optional[float], options.sized(options.POSITIVE_TOKENS, "--tokens", help="Training tokens D (e.g. 15T): adds total_train_flops.")] = None,
    causal: Annotated[bool, typer.Option("--causal/--no-causal", help="Halve attention for the causal mask.")] = True,
    count_embedding: Annotated[bool, typer.Option("--embedding/--no-embedding", help="Count the embedding lookup as a matmul.")] = False,
    recompute: RecomputeOpt = "none",
    hardware: HardwareOpt = "",
    gpus: Annotated[Optional[int], typer.Option(callback=options.POSITIVE.callback, help="Accelerators, for time to train (with --tokens and --hardware).")] = None,
    mfu: Annotated[float, typer.Option(callback=options.MFU.callback, help="Model FLOPs utilisation, for time to train.")] = 0.4,
    method: MethodOpt = "full", policy: PolicyOpt = "full",
    lora_rank: LoraRankOpt = DEFAULT_RANK,
    lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA, lora_targets: LoraTargetsOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0, base_bits: BaseBitsOpt = None,
    double_quant: DoubleQuantOpt = False,
    set_: SetOpt = None,
    json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """FLOPs per token (exact, 6N, PaLM), inference prefill/decode, total and time to train;
    with --method lora or qlora, of adapters over a frozen base (no weight gradient for it)."""
    from planner import flops as F
    from planner.setup import RECOMPUTES

    flags = dict(locals())
    fmt = options.output_format(json_mode, fmt)
    options.refuse_ppo(method, "flops")
    if recompute not in RECOMPUTES:
        raise LlmplanError(f"recompute({recompute!r}) is not one of {', '.join(RECOMPUTES)}")
    if (gpus is not None or hardware) and not (gpus and hardware and tokens):
        raise LlmplanError(f"--gpus({gpus or '-'}) and --hardware({hardware or '-'}) give the time "
                           "to train: give both, with --tokens")
    cfg = load(model, set_)
    adapters = options.adapters(flags)
    conv = F.FlopConventions(causal=causal, count_embedding=count_embedding)
    rep = F.flops_report(cfg, seq, conv, recompute=recompute, adapters=adapters,
                         objective=options.objective(flags))
    data: dict[str, Any] = {
        "model": cfg.name, "seq_len": seq, "causal": causal,
        "forward_flops_per_token": rep.forward_flops_per_token,
        "train_flops_per_token": rep.train_flops_per_token,
        "hardware_flops_per_token": rep.hardware_flops_per_token,
        "conventions": rep.conventions(),
        "forward_breakdown": rep.forward.to_dict(),
        "prefill_flops": F.prefill_flops(cfg, seq),
        "decode_flops_per_token": F.decode_flops_per_token(cfg, seq),
        "method": method, "reference_forward_flops_per_token": rep.reference_forward_flops_per_token,
    }
    if adapters is not None:
        from planner.finetune import dequantised_weights_per_micro_batch, summary

        data.update(summary(cfg, adapters),
                    adapter_forward_flops_per_token=rep.adapter_forward_flops_per_token,
                    dequantised_weights_per_micro_batch=dequantised_weights_per_micro_batch(
                        cfg, adapters))
    if tokens:
        total = rep.train_flops_per_token * tokens
        data["tokens"] = tokens
        data["total_train_flops"] = total
        if hardware and gpus:
            from presets import load_hardware
            peak = load_hardware(hardware).peak_flops("bf16")
            seconds = F.time_to_train_s(total, accelerators=gpus, peak_flops=peak, mfu=mfu)
            data.update(hardware=hardware, gpus=gpus, mfu=mfu, time_to_train_s=seconds,
                        gpu_hours=seconds * gpus / 3600)

    def human() -> None:
        exact = "exact (MFU)" if adapters is None else \
            f"exact, {adapters.method}: frozen base (MFU)"
        rows = [(exact, output.fmt_flops(rep.train_flops_per_token)),
                ("with recompute (HFU)", output.fmt_flops(rep.hardware_flops_per_token)),
                ("6N (Kaplan)", output.fmt_flops(rep.six_n_flops_per_token)),
                ("PaLM 6N' + 12Lads", output.fmt_flops(rep.palm_flops_per_token))]
        fwd = [(k, output.fmt_flops(v)) for k, v in rep.forward.to_dict().items() if v]
        if rep.adapter_forward_flops_per_token:
            fwd.append(("adapters", output.fmt_flops(rep.adapter_forward_flops_per_token)))
        if rep.reference_forward_flops_per_token:
            fwd.append(("DPO reference (frozen)",
                        output.fmt_flops(rep.reference_forward_flops_per_token)))
        extra = [("prefill of one sequence", output.fmt_flops(data["prefill_flops"])),
                 (f"decode per token at context {seq}", output.fmt_flops(data["decode_flops_per_token"]))]
        if tokens:
            extra.append((f"training on {tokens:.3g} tokens", output.fmt_flops(data["total_train_flops"])))
        if "time_to_train_s" in data:
            extra.append((f"time on {gpus} x {hardware} at {mfu:.0%} MFU",
                          f"{data['time_to_train_s'] / 86400:,.1f} days ({data['gpu_hours']:,.0f} GPU-h)"))
        output.show(
            output.table(f"Training FLOPs per token, {cfg.name}, s={seq}, "
                         f"{'causal' if causal else 'non-causal'}", ["convention", "per token"], rows),
            output.table("Forward matmul FLOPs per token", ["component", "per token"], fwd),
            output.table("Totals", ["quantity", "value"], extra))

    options.warn_context(cfg, seq)
    output.render(json_mode, data, human, fmt)


def memory_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048, mbs: MbsOpt = 1, gbs: GbsOpt = 0, dtype: DtypeOpt = "bf16",
    recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw", zero: ZeroOpt = 0,
    dp: DpOpt = 1, tp: TpOpt = 1, pp: PpOpt = 1, vpp: VppOpt = 1, sp: SpOpt = False,
    cp: CpOpt = 1, ep: EpOpt = 1, fp8_scaling: Fp8ScalingOpt = "",
    recompute: RecomputeOpt = "none", attention: AttentionOpt = "flash",
    schedule: ScheduleOpt = "", dropout: DropoutOpt = False, hardware: HardwareOpt = "",
    method: MethodOpt = "full", policy: PolicyOpt = "full",
    lora_rank: LoraRankOpt = DEFAULT_RANK,
    lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA, lora_targets: LoraTargetsOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0, base_bits: BaseBitsOpt = None,
    double_quant: DoubleQuantOpt = False,
    prompt_tokens: Annotated[int, options.sized(options.SEQ_LEN, "--prompt-tokens", help="PPO: prompt length.")] = 512,
    response_tokens: Annotated[int, options.sized(options.SEQ_LEN, "--response-tokens", help="PPO: generated tokens per sequence.")] = 512,
    rollout: Annotated[int, typer.Option("--rollout", callback=options.POSITIVE.callback, help="PPO: sequences generated per GPU per step.")] = 8,
    actor_gpus: Annotated[int, typer.Option("--actor-gpus", callback=options.OPTIONAL_COUNT.callback, help="PPO: split the models into groups: the actor's GPUs (with --critic-gpus, --reference-gpus, --reward-gpus, summing to --dp; default co-located).")] = 0,
    critic_gpus: Annotated[int, typer.Option("--critic-gpus", callback=options.OPTIONAL_COUNT.callback, help="PPO: the critic's GPUs.")] = 0,
    reference_gpus: Annotated[int, typer.Option("--reference-gpus", callback=options.OPTIONAL_COUNT.callback, help="PPO: the reference's GPUs.")] = 0,
    reward_gpus: Annotated[int, typer.Option("--reward-gpus", callback=options.OPTIONAL_COUNT.callback, help="PPO: the reward model's GPUs.")] = 0,
    set_: SetOpt = None, json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """Per-GPU training memory: weights, gradients, optimizer, activations, per pipeline
    stage; with --method lora or qlora, of adapters over a frozen base; dpo: preference
    pairs and a frozen reference; ppo: each phase of the four co-located models."""
    flags = dict(locals())
    fmt = options.output_format(json_mode, fmt)
    from planner.accuracy import fmt_band
    from planner.memory import memory_report

    cfg = load(model, set_)
    setup, par = options.training(flags)
    if method == "ppo":
        if par.cp > 1 or par.ep > 1:
            raise LlmplanError(f"--method ppo is planned over dp x ZeRO: cp({par.cp}) and "
                               f"ep({par.ep}) must be 1")
        return ppo_memory(cfg, setup, par, flags, hardware, fmt)
    rep = memory_report(cfg, setup, par)
    accuracy = options.accuracy(hardware)
    band = accuracy.memory(rep.per_gpu.total_bytes)
    data: dict[str, Any] = {"model": cfg.name, "world": par.world, **rep.to_dict(),
                            "per_gpu_band_bytes": band.to_dict(), "accuracy": accuracy.to_dict()}
    data.update(method=method, objective=setup.objective)
    if setup.adapters is not None:
        from planner.finetune import summary

        data.update(summary(cfg, setup.adapters, dtype_bytes=setup.activation_bytes),
                    method=method)
    capacity = None
    if hardware:
        from presets import load_hardware
        hw = load_hardware(hardware)
        if setup.dtype == "fp8":  # fp8 tensors need fp8 tensor cores, as plan and estimate say
            hw.peak_flops("fp8")
        capacity = hw.memory_bytes
        data.update(hardware=hardware, capacity_bytes=capacity,
                    fits=rep.per_gpu.total_bytes <= capacity)

    def human() -> None:
        based = any(st.frozen_base_bytes for st in rep.stages)
        trained = "adapters" if setup.adapters is not None else "weights"
        cols = ["stage", "params", *(["frozen", trained] if based else ["weights"]), "grads",
                "optim", "activ", "temp", "peak", "at"]
        gib = output.gib
        rows = [(st.stage, output.fmt_count(st.params),
                 *([gib(st.frozen_base_bytes)] if based else []), gib(st.weights_bytes),
                 gib(st.gradients_bytes), gib(st.optimizer_bytes), gib(st.activations_bytes),
                 gib(st.transient_bytes), gib(st.total_bytes), output.PHASES[st.peak_phase])
                for st in rep.stages]
        caption = (f"per rank, GiB (2^30 bytes): each category at its largest; peak: of the "
                   f"step's timeline (not their sum), temp: temporaries then; most loaded rank: "
                   f"{fmt_band(band, output.fmt_bytes)}; band: {accuracy.source}")
        top = rep.per_gpu
        buffers = [f"{what} {gib(n)} GiB" for what, n in (
            ("all-to-all buffers", top.all_to_all_bytes), ("ring K/V blocks", top.ring_bytes)) if n]
        if buffers:
            caption += f"; of temp: {', '.join(buffers)}"
        if capacity is not None:
            verdict = "fits" if data["fits"] else "does NOT fit"
            caption += f"; {hardware} holds {output.fmt_gib(capacity)}: {verdict}"
        output.show(output.table(
            f"Per-GPU memory, {cfg.name}: tp={tp} "
            + (f"cp={cp} " if cp > 1 else "") + f"pp={pp} dp={dp} "
            + (f"ep={ep} " if ep > 1 else "") + f"zero={zero} sp={sp} "
            f"s={seq} b={mbs} m={setup.grad_accum} {recipe}/{optimizer} recompute={recompute}"
            + describe_method(method, setup),
            cols, rows, caption=caption))

    options.warn_context(cfg, seq)
    output.render(json_mode, data, human, fmt)


def ppo_memory(cfg, setup, par, flags: dict, hardware: str, fmt: str) -> None:
    from planner.ppo import PPOGroups, PPOShape, ppo_report

    shape = PPOShape(prompt_tokens=flags["prompt_tokens"], response_tokens=flags["response_tokens"],
                     rollout=flags["rollout"])
    sizes = {k: flags[f"{k}_gpus"] for k in ("actor", "critic", "reference", "reward")}
    groups = PPOGroups(**sizes) if any(sizes.values()) else None
    rep = ppo_report(cfg, setup, par, shape, groups)
    data: dict[str, Any] = {"model": cfg.name, "method": "ppo", "world": par.world,
                            "dp": par.dp, "zero": par.zero, "prompt_tokens": shape.prompt_tokens,
                            "response_tokens": shape.response_tokens, "rollout": shape.rollout,
                            "groups": groups.sizes() if groups else None, **rep.to_dict()}
    if setup.adapters is not None:
        from planner.finetune import summary

        data.update(summary(cfg, setup.adapters), method="ppo")
    if hardware:
        from presets import load_hardware

        capacity = load_hardware(hardware).memory_bytes
        data.update(hardware=hardware, capacity_bytes=capacity, fits=rep.peak_bytes <= capacity)

    options.warn_context(cfg, setup.seq_len)

    def human() -> None:
        rows = [(name.replace("_", " "), output.fmt_gib(n)) for name, n in rep.phases_bytes.items()]
        parts = [(name.replace("_", " "), output.fmt_gib(n)) for name, n in rep.parts_bytes.items()]
        flops = [(name.replace("_", " "), output.fmt_flops(f)) for name, f in rep.flops_per_step.items()]
        output.show(
            output.table(f"PPO per-GPU memory by phase, {cfg.name}: dp={par.dp} zero={par.zero} "
                         f"{describe_method('ppo', setup).strip()}, {shape.rollout} x "
                         f"({shape.prompt_tokens} + {shape.response_tokens}) tokens per generating GPU",
                         ["phase", "per GPU"], rows,
                         caption=f"peak: {rep.peak_phase.replace('_', ' ')}"),
            output.table("What each phase holds", ["part", "per GPU"], parts),
            output.table("FLOPs per step (all GPUs)", ["work", "FLOPs"], flops))

    output.render(False, data, human, fmt)


def describe_method(method: str, setup) -> str:
    """The title's words for a fine-tuning or alignment run ("" for full training)."""
    a = setup.adapters
    policy = f"{a.method} r={a.rank}, {a.base_bits}-bit base" if a is not None else ""
    if method in ("dpo", "ppo"):
        return f" {method} (policy: {policy or 'full'})"
    return f" {policy}" if policy else ""


def kv_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048,
    batch: Annotated[int, options.sized(options.BATCH, "--batch", help="Sequences in the batch.")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="fp32, bf16, fp16, fp8, int8, int4.")] = "bf16",
    tp: TpOpt = 1,
    hardware: HardwareOpt = "",
    set_: SetOpt = None,
    json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """KV-cache bytes per token and for a batch (MLA: the latent; Mamba, RWKV: a fixed state
    per sequence, whatever --seq); with --hardware, what fits beside the weights."""
    from planner import kv as K

    fmt = options.output_format(json_mode, fmt)
    cfg = load(model, set_)
    rep = K.kv_report(cfg, seq_len=seq, batch=batch, kv_dtype=kv_dtype, tp=tp)
    data: dict[str, Any] = {"model": cfg.name, "seq_len": seq, "batch": batch,
                            "kv_dtype": kv_dtype, "tp": tp, **rep.to_dict()}
    if hardware:
        from presets import load_hardware
        mem = load_hardware(hardware).memory_bytes
        data.update(hardware=hardware,
                    weights_bytes_per_rank=K.weight_bytes_per_rank(cfg, tp=tp),
                    max_batch=K.max_batch(cfg, memory_bytes=mem, seq_len=seq, kv_dtype=kv_dtype, tp=tp),
                    max_context=K.max_context(cfg, memory_bytes=mem, batch=batch, kv_dtype=kv_dtype, tp=tp))

    def human() -> None:
        rows = [("per token (all ranks)", f"{rep.bytes_per_token:,} B ({rep.bytes_per_token / 1024:,.1f} KiB)"),
                ("per token per rank", f"{rep.bytes_per_token_per_rank:,} B"),
                ("cached tokens per sequence", f"{rep.cached_tokens:,}")]
        if rep.cache_kind == "mla_latent":
            rows[0] = ("per token (all ranks; MLA latent + rope key)", rows[0][1])
        if rep.sliding_layers and rep.sliding_layers < rep.attention_layers:
            rows.append((f"of which {rep.sliding_layers} of {rep.attention_layers} layers",
                         f"at most {cfg.sliding_window:,} tokens (sliding window)"))
        if rep.recurrent_layers:
            rows.append((f"recurrent state per sequence per rank ({rep.recurrent_layers} layers)",
                         f"{rep.state_bytes_per_sequence_per_rank:,} B, fixed (any --seq)"))
        rows.append((f"batch of {batch} per rank", output.fmt_gib(rep.total_bytes)))
        if hardware:
            rows += [(f"weights per rank ({hardware})", output.fmt_gib(data["weights_bytes_per_rank"])),
                     (f"largest batch at s={seq}", f"{data['max_batch']:,}"),
                     (f"longest context at batch {batch}", f"{data['max_context']:,}")]
        output.show(output.table(f"KV cache, {cfg.name}, {kv_dtype}, tp={tp}", ["quantity", "value"], rows))

    options.warn_context(cfg, seq)
    output.render(json_mode, data, human, fmt)


def chinchilla_cmd(
    compute: Annotated[Optional[float], options.sized(options.FLOPS, "--compute", help="Compute budget C in FLOPs (e.g. 1e24).")] = None,
    params: Annotated[Optional[float], options.sized(options.PARAMS, "--params", help="Model size N in parameters (e.g. 70B).")] = None,
    model: Annotated[str, typer.Option(help="Take N from a model (preset, TOML, config.json).")] = "",
    tokens: Annotated[Optional[float], options.sized(options.POSITIVE_TOKENS, "--tokens", help="With --params/--model: the planned training tokens D (e.g. 15T), for planned compute and over-training.")] = None,
    gpus: Annotated[Optional[int], typer.Option(callback=options.POSITIVE.callback, help="Accelerators (with --hardware and --days).")] = None,
    hardware: HardwareOpt = "",
    days: Annotated[Optional[float], typer.Option(callback=options.DAYS.callback, help="Days of training.")] = None,
    mfu: Annotated[float, typer.Option(callback=options.MFU.callback, help="Model FLOPs utilisation.")] = 0.4,
    fit: Annotated[str, typer.Option(help="epoch (default: Besiroglu et al. 2024's refit of Hoffmann's Approach 3, ~20 tokens/param), approach1 (Hoffmann et al. 2022 Approach 1, Table 3), hoffmann (Approach 3 as published, ~100 tokens/param) or tokens20 (D = 20 N).")] = "epoch",
    json_mode: JsonOpt = False, fmt: FormatOpt = "table",
) -> None:
    """Compute-optimal params and tokens for a budget, a model size, or a cluster and time,
    under each published fit side by side; with --tokens, the planned compute and how far
    past compute-optimal the plan trains."""
    from planner import scaling as S

    fmt = options.output_format(json_mode, fmt)
    cluster = gpus is not None or bool(hardware) or days is not None
    given = [name for name, there in (("--compute", compute is not None),
                                      ("--params", params is not None), ("--model", bool(model)),
                                      ("--gpus/--hardware/--days", cluster)) if there]
    if len(given) != 1:
        raise LlmplanError("give exactly one of --compute, --params/--model, or --gpus --hardware "
                           f"--days ({'given: ' + ', '.join(given) if given else 'none given'})")
    if tokens is not None and not (params or model):
        raise LlmplanError(f"--tokens({options._show(tokens)}) needs --params or --model")
    if fit not in S.FIT_NAMES:
        raise LlmplanError(f"--fit({fit}) must be one of {', '.join(S.FIT_NAMES)}")
    name = ""
    if model:
        from planner.params import count_params
        cfg = load(model, None)
        name, params = cfg.name, float(count_params(cfg).total)
    if cluster:
        if not (gpus and hardware and days):
            raise LlmplanError("--gpus, --hardware and --days go together")
        from presets import load_hardware
        compute = S.compute_for_cluster(gpus=gpus, peak_flops=load_hardware(hardware).peak_flops("bf16"),
                                        days=days, mfu=mfu)

    def solve(one: str):
        return S.optimal_for_params(params, one) if params else S.optimal_for_compute(compute, one)

    budget = solve(fit)
    names = [fit, *(f for f in S.COMPARED_FITS if f != fit)]
    fits = {f: {**solve(f).to_dict(), "label": S.FIT_LABELS[f],
                "source": (S.FITS.get(f) or S.POWER_FITS.get(f)).source if f != "tokens20"
                else "D = 20 N (Hoffmann et al. 2022 Table 3, rounded)"} for f in names}
    data: dict[str, Any] = {**budget.to_dict(), "kaplan_params": S.kaplan_optimal_params(budget.compute_flops),
                            "fits": fits}
    if name:
        data["model"] = name
    overs = {}
    if tokens is not None:
        overs = {f: S.overtraining(params, tokens, f) for f in names}
        over = overs[fit]
        data.update(planned_tokens=tokens, planned_compute_flops=over.compute_flops,
                    overtraining=over.to_dict())
        for f in names:
            fits[f]["overtraining_ratio"] = overs[f].ratio

    def loss(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    def human() -> None:
        label = f"{S.FIT_LABELS[fit]} ({fit})"
        if params:
            who = f"{name} ({output.fmt_count(params)} parameters)" if name else \
                f"{output.fmt_count(params)} parameters"
            rows = [("model size N", output.fmt_count(params))]
            if tokens is not None:
                over = overs[fit]
                rows += [("planned tokens D", output.fmt_count(tokens)),
                         ("planned compute 6ND", output.fmt_flops(over.compute_flops)),
                         ("optimal tokens D*(N) for this size", output.fmt_count(budget.tokens)),
                         ("over-training ratio D / D*(N)", f"{over.ratio:,.2f}x"),
                         ("tokens per param (planned / optimal)",
                          f"{over.tokens_per_param:,.1f} / {budget.tokens_per_param:,.1f}"),
                         ("compute-optimal at the planned compute: N*, D*",
                          f"{output.fmt_count(over.optimal.params)}, "
                          f"{output.fmt_count(over.optimal.tokens)}"),
                         ("loss L(N, D) planned", loss(over.loss)),
                         ("loss cost vs compute-optimal at equal compute",
                          "n/a" if over.loss_cost is None else f"{over.loss_cost:+.4f}")]
            else:
                rows += [("optimal tokens D*(N)", output.fmt_count(budget.tokens)),
                         ("tokens per param", f"{budget.tokens_per_param:,.1f}"),
                         ("compute at which N is optimal (6 N D*)",
                          output.fmt_flops(budget.compute_flops)),
                         ("loss L(N, D*)", loss(budget.loss))]
            title = f"Compute-optimal tokens for {who}, fit: {label}"
            cols = ["fit", "optimal tokens D*", "tokens/param", "compute 6ND*", "loss L(N, D*)"]
            compare = [(f"{f}: {S.FIT_LABELS[f]}", output.fmt_count(b["tokens"]),
                        f"{b['tokens_per_param']:,.1f}", output.fmt_flops(b["compute_flops"]),
                        loss(b["loss"]),
                        *([f"{overs[f].ratio:,.2f}x"] if overs else []))
                       for f, b in fits.items()]
            if overs:
                cols.append("over-training D/D*")
        else:
            rows = [("compute C", output.fmt_flops(budget.compute_flops)),
                    ("optimal params N*", output.fmt_count(budget.params)),
                    ("optimal tokens D*", output.fmt_count(budget.tokens)),
                    ("tokens per param", f"{budget.tokens_per_param:,.1f}"),
                    ("loss L(N*, D*)", loss(budget.loss)),
                    ("Kaplan 2020 N (for comparison)", output.fmt_count(data["kaplan_params"]))]
            title = f"Compute-optimal split of {output.fmt_flops(budget.compute_flops)}, fit: {label}"
            cols = ["fit", "params N*", "tokens D*", "tokens/param", "loss L(N*, D*)"]
            compare = [(f"{f}: {S.FIT_LABELS[f]}", output.fmt_count(b["params"]), output.fmt_count(b["tokens"]),
                        f"{b['tokens_per_param']:,.1f}", loss(b["loss"])) for f, b in fits.items()]
        output.show(output.table(title, ["quantity", "value"], rows),
                    output.table("The published fits side by side", cols, compare,
                                 caption="sources: " + "; ".join(f"{f}: {b['source']}"
                                                                 for f, b in fits.items())))

    output.render(json_mode, data, human, fmt)


def explain_cmd(
    quantity: Annotated[str, typer.Argument(help=f"{', '.join(QUANTITIES)}.")],
    model: ModelArg,
    seq: SeqOpt = 2048, mbs: MbsOpt = 1, gbs: GbsOpt = 0, dtype: DtypeOpt = "bf16",
    recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw", zero: ZeroOpt = 0,
    dp: DpOpt = 1, tp: TpOpt = 1, pp: PpOpt = 1, vpp: VppOpt = 1, sp: SpOpt = False,
    cp: CpOpt = 1, ep: EpOpt = 1, fp8_scaling: Fp8ScalingOpt = "",
    recompute: RecomputeOpt = "none", attention: AttentionOpt = "flash",
    schedule: ScheduleOpt = "", dropout: DropoutOpt = False,
    causal: Annotated[bool, typer.Option("--causal/--no-causal")] = True,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype")] = "bf16",
    compute: Annotated[float, options.sized(options.FLOPS, "--compute", help="For chinchilla_params: the budget in FLOPs.")] = 5.76e23,
    fit: Annotated[str, typer.Option(help="For chinchilla_params: epoch or hoffmann (the loss fits).")] = "epoch",
    hardware: Annotated[str, typer.Option("--hardware", help="For decode_roofline_s.")] = "h100-sxm",
    batch: Annotated[int, options.sized(options.BATCH, "--batch", help="For decode_roofline_s: sequences decoding.")] = 1,
    weight_bits: Annotated[int, typer.Option("--weight-bits", help="For decode_roofline_s: 16, 8 or 4.")] = 16,
    set_: SetOpt = None, json_mode: JsonOpt = False,
) -> None:
    """Show the formula behind a number, the values substituted, and the result (for
    decode_roofline_s, --seq is the context)."""
    flags = dict(locals())
    from planner.explain import explain
    from planner.scaling import FITS

    if fit not in FITS:
        raise LlmplanError(f"--fit({fit}) must be one of {', '.join(FITS)}: the loss fits "
                           "whose optimum explain derives")

    cfg = load(model, set_)
    setup, par = options.training(flags)
    from presets import load_hardware

    exp = explain(quantity, cfg, setup=setup, par=par, causal=causal, kv_dtype=kv_dtype,
                  compute_flops=compute, fit=fit, hardware=load_hardware(hardware), batch=batch,
                  context=seq, weight_bits=weight_bits)

    def human() -> None:
        from rich.panel import Panel
        values = ", ".join(f"{k} = {v:,}" if isinstance(v, int) else f"{k} = {v:g}"
                           for k, v in exp.values.items())
        body = (f"{exp.description}\n\n{exp.pretty}\n\nwith {values}\n\n= {exp.result:,.6g}"
                f"   (planner: {exp.planner_value:,.6g}, {'agrees' if exp.matches else 'DIFFERS'})"
                f"\n\nsource: {exp.source}")
        output.show(Panel(body, title=f"{exp.quantity} of {cfg.name}", expand=False))

    options.warn_context(cfg, seq)
    output.render(json_mode, exp.to_dict(), human)


COMMANDS = {"flops": flops_cmd, "memory": memory_cmd, "kv": kv_cmd, "chinchilla": chinchilla_cmd,
            "explain": explain_cmd}
