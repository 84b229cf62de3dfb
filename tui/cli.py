"""The ``llmplan`` command line (Typer).

Every calculation takes ``--json`` (data on stdout, diagnostics on stderr). Bad input exits 2
with one line naming the problem. Heavy modules (rich, textual, torch, sympy) are imported
inside the commands that need them so ``llmplan params --json`` starts fast.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from planner.config import LlmplanError
from tui import output

DEFAULT_MODEL = "llama-3-8b"

app = typer.Typer(
    name="llmplan",
    help="Exact LLM calculator and 3D-parallel planner with a runnable backend.",
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArg = Annotated[
    str, typer.Argument(help="Preset name, TOML model file, or Hugging Face config.json.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a model field: key=value (repeatable; V,h,L,a,g,d,f,E,k accepted)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn llmplan's user-facing errors into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmplanError as err:
            sys.stderr.write(f"llmplan: error: {err}\n")
            raise typer.Exit(2) from None

    return wrapper


def _model(spec: str, sets: list[str] | None):
    from presets import load_model, parse_overrides

    return load_model(spec, parse_overrides(sets))


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context) -> None:
    """With no command on a terminal, open the TUI; otherwise print the default report."""
    if ctx.invoked_subcommand is not None:
        return
    if sys.stdin.isatty() and sys.stdout.isatty():
        from tui.app import run_app  # deferred: textual.app costs ~130 ms

        run_app()
        return
    cli_errors(_params_report)(DEFAULT_MODEL, None, False)


@app.command("tui")
def tui_cmd(preset: Annotated[str, typer.Option(help="Model preset to open.")] = "") -> None:
    """Open the Textual app (what `llmplan` with no arguments does on a terminal)."""
    from tui.app import run_app  # deferred: textual.app costs ~130 ms

    run_app(preset or None)


@app.command("presets")
@cli_errors
def presets_cmd(
    kind: Annotated[str, typer.Option(help="model or hardware (default: both).")] = "",
    json_mode: JsonOpt = False,
) -> None:
    """List the model and hardware presets."""
    from presets import load_hardware, load_model, preset_files
    from planner.params import count_params

    if kind not in ("", "model", "hardware"):
        raise LlmplanError(f"--kind {kind!r}: use model or hardware")
    data: dict[str, list[dict[str, Any]]] = {}
    if kind in ("", "model"):
        rows = []
        for name in preset_files("models"):
            cfg = load_model(name)
            rows.append({"name": name, "family": cfg.family,
                         "params": count_params(cfg).total, "source": cfg.source})
        data["models"] = rows
    if kind in ("", "hardware"):
        hw_rows = []
        for name in preset_files("hardware"):
            hw = load_hardware(name)
            hw_rows.append({"name": name, "peak_tflops_bf16": hw.peak_tflops_bf16,
                            "memory_gib": hw.memory_gib,
                            "hbm_bandwidth_gbps": hw.hbm_bandwidth_gbps,
                            "gpus_per_node": hw.gpus_per_node, "source": hw.source})
        data["hardware"] = hw_rows

    def human() -> None:
        tables = []
        if "models" in data:
            tables.append(output.table(
                "Model presets", ["name", "family", "params"],
                [(r["name"], r["family"], output.fmt_count(r["params"])) for r in data["models"]]))
        if "hardware" in data:
            tables.append(output.table(
                "Hardware presets",
                ["name", "bf16 TFLOP/s", "memory GiB", "HBM GB/s", "GPUs/node"],
                [(r["name"], f"{r['peak_tflops_bf16']:g}", f"{r['memory_gib']:g}",
                  f"{r['hbm_bandwidth_gbps']:g}", r["gpus_per_node"]) for r in data["hardware"]]))
        output.show(*tables)

    output.render(json_mode, data, human)


@app.command("params")
@cli_errors
def params_cmd(model: ModelArg, set_: SetOpt = None, json_mode: JsonOpt = False) -> None:
    """Exact parameter count with a breakdown (total, active per token, non-embedding)."""
    _params_report(model, set_, json_mode)


def _params_report(model: str, sets: list[str] | None, json_mode: bool) -> None:
    from planner.params import count_params

    cfg = _model(model, sets)
    counts = count_params(cfg)
    data = {"model": cfg.name, **counts.to_dict()}

    def human() -> None:
        rows = [(name, output.fmt_int(n), f"{100 * n / counts.total:.2f}%")
                for name, n in counts.breakdown.items() if n]
        rows += [("total", output.fmt_int(counts.total), "100.00%"),
                 ("active per token", output.fmt_int(counts.active),
                  f"{100 * counts.active / counts.total:.2f}%"),
                 ("non-embedding", output.fmt_int(counts.non_embedding),
                  f"{100 * counts.non_embedding / counts.total:.2f}%")]
        output.show(output.table(f"Parameters of {cfg.name} ({output.fmt_count(counts.total)})",
                                 ["component", "parameters", "share"], rows))

    output.render(json_mode, data, human)


# ---- shared training / parallel flags ----------------------------------------------------
SeqOpt = Annotated[int, typer.Option("--seq", help="Sequence length s.")]
MbsOpt = Annotated[int, typer.Option("--mbs", help="Micro-batch b (sequences per rank).")]
GbsOpt = Annotated[int, typer.Option("--gbs", help="Global batch in sequences (default mbs*dp).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16, fp16 or fp32.")]
RecipeOpt = Annotated[str, typer.Option("--recipe", help="mixed (16 B/param), mixed_fp32_grads, fp32, runtime.")]
OptimOpt = Annotated[str, typer.Option("--optimizer", help="adamw, adafactor, sgd_momentum, adam8bit.")]
ZeroOpt = Annotated[int, typer.Option("--zero", help="ZeRO stage 0-3 over dp.")]
DpOpt = Annotated[int, typer.Option("--dp", help="Data-parallel size.")]
TpOpt = Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline-parallel size.")]
VppOpt = Annotated[int, typer.Option("--vpp", help="Virtual stages per pipeline rank (interleaved).")]
SpOpt = Annotated[bool, typer.Option("--sp/--no-sp", help="Sequence parallel.")]
RecomputeOpt = Annotated[str, typer.Option("--recompute", help="none, selective or full.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="flash (SDPA) or eager.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="1f1b, gpipe or interleaved (default: interleaved when vpp > 1, else 1f1b).")]
DropoutOpt = Annotated[bool, typer.Option("--dropout/--no-dropout", help="Dropout masks (Korthikanti's setting).")]
HardwareOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset (e.g. h100-sxm).")]


def _training(seq: int, mbs: int, gbs: int, dtype: str, recipe: str, optimizer: str,
              zero: int, dp: int, tp: int, pp: int, vpp: int, sp: bool, recompute: str,
              attention: str, schedule: str, dropout: bool):
    from planner import layout
    from planner.config import Parallel, TrainSetup

    par = Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp, schedule=schedule)
    m = layout.micro_batches(global_batch=gbs or mbs * dp, dp=dp, mbs=mbs)
    setup = TrainSetup(seq_len=seq, micro_batch=mbs, grad_accum=m, dtype=dtype,
                       recipe=recipe, optimizer=optimizer, recompute=recompute,
                       attention=attention, dropout=dropout)
    return setup, par


@app.command("flops")
@cli_errors
def flops_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048,
    tokens: Annotated[float, typer.Option(help="Training tokens D: adds total_train_flops.")] = 0.0,
    causal: Annotated[bool, typer.Option("--causal/--no-causal", help="Halve attention for the causal mask.")] = True,
    count_embedding: Annotated[bool, typer.Option("--embedding/--no-embedding", help="Count the embedding lookup as a matmul.")] = False,
    recompute: RecomputeOpt = "none",
    hardware: HardwareOpt = "",
    gpus: Annotated[int, typer.Option(help="Accelerators, for time to train.")] = 0,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation, for time to train.")] = 0.4,
    set_: SetOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """FLOPs per token (exact, 6N, PaLM), inference prefill/decode, total and time to train."""
    from planner import flops as F
    from planner.config import RECOMPUTES

    if recompute not in RECOMPUTES:
        raise LlmplanError(f"recompute({recompute!r}) is not one of {', '.join(RECOMPUTES)}")
    cfg = _model(model, set_)
    conv = F.FlopConventions(causal=causal, count_embedding=count_embedding)
    rep = F.flops_report(cfg, seq, conv, recompute=recompute)
    data: dict[str, Any] = {
        "model": cfg.name, "seq_len": seq, "causal": causal,
        "forward_flops_per_token": rep.forward_flops_per_token,
        "train_flops_per_token": rep.train_flops_per_token,
        "hardware_flops_per_token": rep.hardware_flops_per_token,
        "conventions": rep.conventions(),
        "forward_breakdown": rep.forward.to_dict(),
        "prefill_flops": F.prefill_flops(cfg, seq),
        "decode_flops_per_token": F.decode_flops_per_token(cfg, seq),
    }
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
        rows = [("exact (MFU)", output.fmt_flops(rep.train_flops_per_token)),
                ("with recompute (HFU)", output.fmt_flops(rep.hardware_flops_per_token)),
                ("6N (Kaplan)", output.fmt_flops(rep.six_n_flops_per_token)),
                ("PaLM 6N' + 12Lads", output.fmt_flops(rep.palm_flops_per_token))]
        fwd = [(k, output.fmt_flops(v)) for k, v in rep.forward.to_dict().items() if v]
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

    output.render(json_mode, data, human)


@app.command("memory")
@cli_errors
def memory_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048, mbs: MbsOpt = 1, gbs: GbsOpt = 0, dtype: DtypeOpt = "bf16",
    recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw", zero: ZeroOpt = 0,
    dp: DpOpt = 1, tp: TpOpt = 1, pp: PpOpt = 1, vpp: VppOpt = 1, sp: SpOpt = False,
    recompute: RecomputeOpt = "none", attention: AttentionOpt = "flash",
    schedule: ScheduleOpt = "", dropout: DropoutOpt = False, hardware: HardwareOpt = "",
    set_: SetOpt = None, json_mode: JsonOpt = False,
) -> None:
    """Per-GPU training memory: weights, gradients, optimizer, activations, per pipeline stage."""
    from planner.accuracy import fmt_band
    from planner.memory import memory_report

    cfg = _model(model, set_)
    setup, par = _training(seq, mbs, gbs, dtype, recipe, optimizer, zero, dp, tp, pp, vpp, sp,
                           recompute, attention, schedule, dropout)
    rep = memory_report(cfg, setup, par)
    accuracy = _accuracy(hardware)
    band = accuracy.memory(rep.per_gpu.total_bytes)
    data: dict[str, Any] = {"model": cfg.name, "world": par.world, **rep.to_dict(),
                            "per_gpu_band_bytes": band.to_dict(), "accuracy": accuracy.to_dict()}
    capacity = None
    if hardware:
        from presets import load_hardware
        capacity = load_hardware(hardware).memory_bytes
        data.update(hardware=hardware, capacity_bytes=capacity,
                    fits=rep.per_gpu.total_bytes <= capacity)

    def human() -> None:
        cols = ["stage", "params", "weights", "grads", "optim", "activ", "transient", "total"]
        gib = output.gib
        rows = [(st.stage, output.fmt_count(st.params), gib(st.weights_bytes),
                 gib(st.gradients_bytes), gib(st.optimizer_bytes), gib(st.activations_bytes),
                 gib(st.transient_bytes), gib(st.total_bytes)) for st in rep.stages]
        caption = (f"per rank, GiB (2^30 bytes); most loaded rank: "
                   f"{fmt_band(band, output.fmt_bytes)}; band: {accuracy.source}")
        if capacity is not None:
            verdict = "fits" if data["fits"] else "does NOT fit"
            caption += f"; {hardware} holds {output.fmt_gib(capacity)}: {verdict}"
        output.show(output.table(
            f"Per-GPU memory, {cfg.name}: tp={tp} pp={pp} dp={dp} zero={zero} sp={sp} "
            f"s={seq} b={mbs} m={setup.grad_accum} {recipe}/{optimizer} recompute={recompute}",
            cols, rows, caption=caption))

    output.render(json_mode, data, human)


def _accuracy(hardware: str):
    """The band source for estimates on ``hardware`` (the reference default without one)."""
    from planner.accuracy import DEFAULT_ACCURACY
    from presets import load_accuracy

    return load_accuracy(hardware) if hardware else DEFAULT_ACCURACY


@app.command("kv")
@cli_errors
def kv_cmd(
    model: ModelArg,
    seq: SeqOpt = 2048,
    batch: Annotated[int, typer.Option(help="Sequences in the batch.")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="fp32, bf16, fp16, fp8, int8, int4.")] = "bf16",
    tp: TpOpt = 1,
    hardware: HardwareOpt = "",
    set_: SetOpt = None,
    json_mode: JsonOpt = False,
) -> None:
    """KV-cache bytes per token and for a batch; with --hardware, what fits beside the weights."""
    from planner import kv as K

    cfg = _model(model, set_)
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
                ("cached tokens per sequence", f"{rep.cached_tokens:,}"),
                (f"batch of {batch} per rank", output.fmt_gib(rep.total_bytes))]
        if hardware:
            rows += [(f"weights per rank ({hardware})", output.fmt_gib(data["weights_bytes_per_rank"])),
                     (f"largest batch at s={seq}", f"{data['max_batch']:,}"),
                     (f"longest context at batch {batch}", f"{data['max_context']:,}")]
        output.show(output.table(f"KV cache, {cfg.name}, {kv_dtype}, tp={tp}", ["quantity", "value"], rows))

    output.render(json_mode, data, human)


@app.command("chinchilla")
@cli_errors
def chinchilla_cmd(
    compute: Annotated[float, typer.Option(help="Compute budget C in FLOPs.")] = 0.0,
    params: Annotated[float, typer.Option(help="Model size N (parameters).")] = 0.0,
    model: Annotated[str, typer.Option(help="Take N from a model (preset, TOML, config.json).")] = "",
    tokens: Annotated[float, typer.Option(help="With --params/--model: the planned D, for over-training.")] = 0.0,
    gpus: Annotated[int, typer.Option(help="Accelerators (with --hardware and --days).")] = 0,
    hardware: HardwareOpt = "",
    days: Annotated[float, typer.Option(help="Days of training.")] = 0.0,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation.")] = 0.4,
    fit: Annotated[str, typer.Option(help="hoffmann, epoch or tokens20.")] = "hoffmann",
    json_mode: JsonOpt = False,
) -> None:
    """Compute-optimal params and tokens for a budget, a model size, or a cluster and time."""
    from planner import scaling as S

    if model:
        from planner.params import count_params
        params = float(count_params(_model(model, None)).total)
    chosen = sum(bool(x) for x in (compute, params, gpus or hardware or days))
    if chosen != 1:
        raise LlmplanError("give exactly one of --compute, --params/--model, or --gpus --hardware --days")
    if gpus or hardware or days:
        if not (gpus and hardware and days):
            raise LlmplanError("--gpus, --hardware and --days go together")
        from presets import load_hardware
        compute = S.compute_for_cluster(gpus=gpus, peak_flops=load_hardware(hardware).peak_flops("bf16"),
                                        days=days, mfu=mfu)
    budget = S.optimal_for_params(params, fit) if params else S.optimal_for_compute(compute, fit)
    data: dict[str, Any] = {**budget.to_dict(),
                            "kaplan_params": S.kaplan_optimal_params(budget.compute_flops)}
    over = None
    if tokens:
        if not params:
            raise LlmplanError("--tokens needs --params or --model")
        over = S.overtraining(params, tokens, fit if fit != "tokens20" else "hoffmann")
        data["overtraining"] = over.to_dict()

    def human() -> None:
        rows = [("fit", fit), ("compute", output.fmt_flops(budget.compute_flops)),
                ("optimal params N*", output.fmt_count(budget.params)),
                ("optimal tokens D*", output.fmt_count(budget.tokens)),
                ("tokens per param", f"{budget.tokens_per_param:,.1f}"),
                ("loss L(N*, D*)", "n/a" if budget.loss is None else f"{budget.loss:.4f}"),
                ("Kaplan 2020 N (for comparison)", output.fmt_count(data["kaplan_params"]))]
        if over is not None:
            rows += [("planned tokens D", output.fmt_count(over.tokens)),
                     ("D / D*(6ND) (over-training ratio)", f"{over.ratio:.2f}"),
                     ("loss at (N, D)", f"{over.loss:.4f}"),
                     ("loss cost vs optimal at equal compute", f"{over.loss_cost:+.4f}")]
        output.show(output.table("Compute-optimal budget", ["quantity", "value"], rows))

    output.render(json_mode, data, human)


@app.command("explain")
@cli_errors
def explain_cmd(
    quantity: Annotated[str, typer.Argument(help="params, kv_bytes_per_token, train_flops_per_token, model_states_bytes, chinchilla_params.")],
    model: ModelArg,
    seq: SeqOpt = 2048, mbs: MbsOpt = 1, gbs: GbsOpt = 0, dtype: DtypeOpt = "bf16",
    recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw", zero: ZeroOpt = 0,
    dp: DpOpt = 1, tp: TpOpt = 1, pp: PpOpt = 1, vpp: VppOpt = 1, sp: SpOpt = False,
    recompute: RecomputeOpt = "none", attention: AttentionOpt = "flash",
    schedule: ScheduleOpt = "", dropout: DropoutOpt = False,
    causal: Annotated[bool, typer.Option("--causal/--no-causal")] = True,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype")] = "bf16",
    compute: Annotated[float, typer.Option(help="For chinchilla_params.")] = 5.76e23,
    fit: Annotated[str, typer.Option(help="For chinchilla_params: hoffmann or epoch.")] = "hoffmann",
    set_: SetOpt = None, json_mode: JsonOpt = False,
) -> None:
    """Show the formula behind a number, the values substituted, and the result."""
    from planner.explain import explain

    cfg = _model(model, set_)
    setup, par = _training(seq, mbs, gbs, dtype, recipe, optimizer, zero, dp, tp, pp, vpp, sp,
                           recompute, attention, schedule, dropout)
    exp = explain(quantity, cfg, setup=setup, par=par, causal=causal, kv_dtype=kv_dtype,
                  compute_flops=compute, fit=fit)

    def human() -> None:
        from rich.panel import Panel
        values = ", ".join(f"{k} = {v:,}" if isinstance(v, int) else f"{k} = {v:g}"
                           for k, v in exp.values.items())
        body = (f"{exp.description}\n\n{exp.pretty}\n\nwith {values}\n\n= {exp.result:,.6g}"
                f"   (planner: {exp.planner_value:,.6g}, {'agrees' if exp.matches else 'DIFFERS'})"
                f"\n\nsource: {exp.source}")
        output.show(Panel(body, title=f"{exp.quantity} of {cfg.name}", expand=False))

    output.render(json_mode, exp.to_dict(), human)


@app.command("plan")
@cli_errors
def plan_cmd(
    model: ModelArg,
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware preset.")] = "h100-sxm",
    gpus: Annotated[int, typer.Option(help="Accelerators in the cluster.")] = 8,
    nodes: Annotated[int, typer.Option(help="Nodes (default: from the preset's GPUs per node).")] = 0,
    gbs: GbsOpt = 0,
    gbs_tokens: Annotated[float, typer.Option("--gbs-tokens", help="Global batch in tokens.")] = 0.0,
    seq: SeqOpt = 4096,
    dtype: DtypeOpt = "bf16", recipe: RecipeOpt = "mixed", optimizer: OptimOpt = "adamw",
    attention: AttentionOpt = "flash",
    max_vpp: Annotated[int, typer.Option("--max-vpp", help="Largest virtual-stage count tried.")] = 4,
    tokens: Annotated[float, typer.Option(help="Token budget: adds time and GPU-hours.")] = 0.0,
    top: Annotated[int, typer.Option(help="Layouts to show.")] = 5,
    runtime: Annotated[str, typer.Option(help="llmplan: only layouts llmplan's runtime runs; any: also those other frameworks run (marked).")] = "llmplan",
    out: Annotated[Optional[str], typer.Option("--out", help="Write the best layout as a plan file.")] = None,
    set_: SetOpt = None, json_mode: JsonOpt = False,
) -> None:
    """The fastest tensor x pipeline x data (ZeRO) layouts that fit a cluster."""
    from pathlib import Path

    from planner.accuracy import fmt_band
    from planner.config import Parallel, TrainSetup
    from planner.cost import Cluster
    from planner.search import SearchSpace, search
    from presets import load_hardware

    cfg = _model(model, set_)
    hw = load_hardware(hardware)
    per_node = 0
    if nodes:
        if gpus % nodes:
            raise LlmplanError(f"gpus({gpus}) is not divisible by nodes({nodes})")
        per_node = gpus // nodes
    cluster = Cluster(hardware=hw, gpus=gpus, gpus_per_node=per_node)
    if bool(gbs) == bool(gbs_tokens):
        raise LlmplanError("give exactly one of --gbs (sequences) or --gbs-tokens")
    if gbs_tokens:
        if gbs_tokens % seq:
            raise LlmplanError(f"gbs-tokens({gbs_tokens:.0f}) is not a multiple of seq({seq})")
        gbs = int(gbs_tokens // seq)
    setup = TrainSetup(seq_len=seq, dtype=dtype, recipe=recipe, optimizer=optimizer,
                       attention=attention)
    from presets import load_cost_model

    result = search(cfg, cluster, setup, global_batch=gbs, model=load_cost_model(hardware),
                    space=SearchSpace(max_vpp=max_vpp), runtime=runtime)
    world = cluster.gpus
    accuracy = _accuracy(hardware)

    def with_budget(c: Any) -> dict[str, Any]:
        d = c.to_dict(world)
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
        "closest": with_budget(result.closest) if result.closest else None,
        "suggestions": result.suggestions, "accuracy": accuracy.to_dict(),
    }
    written: list[str] = []
    if out and result.best:
        from planner.memory import memory_report
        from planner.planfile import plan_dict, write_plan

        best = result.best
        run_setup = TrainSetup(seq_len=seq, micro_batch=best.mbs, grad_accum=best.grad_accum,
                               dtype=dtype, recipe=recipe, optimizer=optimizer,
                               recompute=best.recompute, attention=attention)
        par = Parallel(tp=best.tp, pp=best.pp, vpp=best.vpp, dp=best.dp, zero=best.zero, sp=best.sp)
        prediction = {**{k: v for k, v in best.to_dict(world).items() if k != "step"},
                      **best.step.to_dict(),
                      "stages": memory_report(cfg, run_setup, par).to_dict()["stages"]}
        plan = plan_dict(cfg=cfg, setup=run_setup, par=par, hardware=hardware, gpus=world,
                         gpus_per_node=cluster.gpus_per_node, prediction=prediction)
        written = [str(p) for p in write_plan(Path(out), plan)]
        data["written"] = written
    elif out:
        output.warn("no feasible layout: no plan file written")

    def human() -> None:
        cols = ["#", "tp", "pp", "v", "dp", "z", "sp", "recomp", "b", "m", "GiB", "step s",
                "tok/s/gpu", "MFU"]
        rows = [(f"{i + 1}{'' if c.launchable else '*'}", c.tp, c.pp, c.vpp, c.dp, c.zero,
                 "on" if c.sp else "off", c.recompute[:4],
                 c.mbs, c.grad_accum, f"{c.memory_per_gpu_bytes / 2**30:.1f}",
                 f"{c.step_time_s:.3f}", f"{c.tokens_per_s / world:,.0f}", f"{c.mfu:.1%}")
                for i, c in enumerate(result.candidates[:top])]
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
        notes.extend(f"#{i}* not launchable by llmplan: {'; '.join(c.not_launchable)}"
                     for i, c in marked)
        if data["runner_up"]:
            notes.append(data["runner_up"])
        notes.extend(result.suggestions)
        if not result.candidates:
            notes.insert(0, "no layout fits")
        notes.extend(f"wrote {w}" for w in written)
        renderables.extend(notes)
        output.show(*renderables)

    output.render(json_mode, data, human)


OptInt = Optional[int]


@app.command("launch")
@cli_errors
def launch_cmd(
    target: Annotated[str, typer.Argument(help="A plan file (llmplan plan --out) or a MODEL.")],
    device: Annotated[str, typer.Option(help="cpu, cuda, or auto (cuda when available).")] = "auto",
    tp: Annotated[OptInt, typer.Option(help="Tensor parallel (default: plan or 1).")] = None,
    pp: Annotated[OptInt, typer.Option(help="Pipeline parallel.")] = None,
    vpp: Annotated[OptInt, typer.Option(help="Virtual stages (interleaved 1F1B).")] = None,
    dp: Annotated[OptInt, typer.Option(help="Data parallel.")] = None,
    zero: Annotated[OptInt, typer.Option(help="ZeRO 0/1 (replicated) or 2/3 (FSDP2).")] = None,
    sp: Annotated[Optional[bool], typer.Option("--sp/--no-sp", help="Sequence parallel.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="1f1b or gpipe.")] = None,
    recompute: Annotated[Optional[str], typer.Option(help="none, selective, full.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw, adafactor, sgd_momentum.")] = None,
    mbs: Annotated[OptInt, typer.Option(help="Micro-batch b.")] = None,
    gbs: Annotated[OptInt, typer.Option(help="Global batch in sequences.")] = None,
    seq: Annotated[OptInt, typer.Option(help="Sequence length.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32 or bf16.")] = None,
    pp_rounds: Annotated[int, typer.Option("--pp-rounds", help="Pipelines: run the step's micro-batches as this many schedule calls (gradient accumulation across flushes).")] = 1,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    seed: Annotated[int, typer.Option(help="Seed for init and data.")] = 0,
    data: Annotated[str, typer.Option(help="A local text file (byte-level tokens).")] = "",
    ckpt_dir: Annotated[str, typer.Option("--ckpt-dir", help="Checkpoint folder.")] = "",
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", help="Save every N steps.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where the run's plan is written.")] = "",
    nnodes: Annotated[int, typer.Option(help="Nodes (multi-node needs --rdzv-endpoint).")] = 1,
    rdzv_endpoint: Annotated[str, typer.Option("--rdzv-endpoint", help="host:port of the c10d store.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the torchrun command only.")] = False,
    set_: SetOpt = None,
    json_mode: Annotated[bool, typer.Option("--json", help="Print the JSON-lines event stream.")] = False,
) -> None:
    """Launch a 3D-parallel training run (torchrun) and show predicted next to measured."""
    import tempfile
    from pathlib import Path

    from planner import layout
    from planner.config import Parallel, TrainSetup
    from planner.planfile import plan_dict, plan_objects, read_plan, write_plan
    from runtime.launch import LaunchSpec, torchrun_command
    from runtime.support import check_runtime_layout

    # a TOML target is a training plan, a generation plan (`llmplan generate --run-dir` writes
    # one) or a model file
    toml = read_plan(Path(target), required=()) if target.endswith(".toml") and Path(target).exists() else {}
    if toml.get("kind") == "inference":
        _launch_inference(Path(target), toml, device, json_mode, dry_run)
        return
    if "layout" in toml:
        base = read_plan(Path(target))
        cfg, base_setup, base_par = plan_objects(base, where=target)
        if set_:
            from presets import parse_overrides
            cfg = cfg.with_overrides(parse_overrides(set_))
        hardware = base.get("cluster", {}).get("hardware", "")
    else:
        cfg = _model(target, set_)
        base_setup, base_par, hardware = TrainSetup(seq_len=min(256, cfg.max_context), dtype="fp32",
                                                    recipe="runtime"), Parallel(), ""
    from_plan = "layout" in toml
    asked = {"tp": tp, "pp": pp, "vpp": vpp, "dp": dp, "zero": zero, "sp": sp, "schedule": schedule}
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731
    par = Parallel(**{k: pick(v, getattr(base_par, k)) for k, v in asked.items()
                      if k != "schedule"},
                   schedule=pick(schedule, base_par.schedule if from_plan and vpp is None else ""))
    micro = pick(mbs, base_setup.micro_batch)
    per_step = micro * par.dp
    if gbs is not None:
        global_batch = gbs
    elif from_plan:  # the plan's batch, whatever else a flag changed
        global_batch = base_setup.micro_batch * base_setup.grad_accum * base_par.dp
    else:  # the smallest batch every schedule runs: pp micro-batches per flush, each round
        global_batch = per_step * (par.pp * pp_rounds if par.pp > 1 else 1)
    setup = TrainSetup(seq_len=pick(seq, base_setup.seq_len), micro_batch=micro,
                       grad_accum=layout.micro_batches(global_batch=global_batch, dp=par.dp,
                                                       mbs=micro),
                       dtype=pick(dtype, base_setup.dtype),
                       recipe=base_setup.recipe if from_plan else "runtime",
                       optimizer=pick(optimizer, base_setup.optimizer),
                       recompute=pick(recompute, base_setup.recompute),
                       attention=base_setup.attention, dropout=base_setup.dropout)
    if from_plan:
        _say_overrides(base_setup, base_par, setup, par)
    if setup.seq_len > cfg.max_context:
        raise LlmplanError(f"seq({setup.seq_len}) exceeds the model's max context({cfg.max_context})")
    check_runtime_layout(cfg, setup, par, rounds=pp_rounds)
    if device == "auto":
        import torch  # deferred: only a launch pays for it
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise LlmplanError(f"--device {device!r}: use cpu, cuda or auto")
    per_node = par.world // nnodes
    if par.world % nnodes:
        raise LlmplanError(f"world({par.world}) is not divisible by nnodes({nnodes})")
    if device == "cuda":
        import torch
        have = torch.cuda.device_count()
        if per_node > have:
            raise LlmplanError(f"{per_node} processes per node but {have} GPU(s): NCCL needs one GPU "
                               "per rank; use --device cpu to run the layout on CPU processes")
    if device == "cpu":
        _check_host_memory(cfg, setup, par)
    if not hardware:
        hardware = _default_hardware(device)
    folder = Path(run_dir or ckpt_dir or tempfile.mkdtemp(prefix="llmplan-run-"))
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_dict(cfg=cfg, setup=setup, par=par, hardware=hardware, gpus=par.world,
                     gpus_per_node=per_node, prediction=base.get("prediction", {}) if from_plan else {})
    if from_plan:  # what the plan was made for: kept for the report, not the local launch
        for key in ("gpus", "gpus_per_node", "nodes"):
            if key in base.get("cluster", {}):
                plan["cluster"][f"planned_{key}"] = base["cluster"][key]
    plan["run"] = {"steps": steps, "lr": lr, "seed": seed, "data": data, "ckpt_dir": ckpt_dir,
                   "ckpt_every": ckpt_every, "resume": resume, "device": device,
                   "pp_rounds": pp_rounds}
    plan_path = folder / "run.toml"
    plan["cluster"]["nodes"] = nnodes
    write_plan(plan_path, {**plan, "cluster": {**plan["cluster"], "nodes": 1}})
    spec = LaunchSpec(plan_path=plan_path, nproc_per_node=per_node, device=device,
                      nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    command = torchrun_command(spec)
    if dry_run:
        info = {"command": command, "plan": str(plan_path), "world": par.world, "device": device,
                "layout": plan["layout"], "setup": plan["setup"], "cluster": plan["cluster"]}
        output.render(json_mode, info, lambda: output.show(" ".join(command)))
        return
    if not json_mode:
        output.warn(f"launching {par.world} process(es) on {device}: {' '.join(command)}")
    last: dict[str, Any] = {}

    def on_event(ev: dict) -> None:
        if ev["event"] == "step":
            mfu = f" mfu {ev['mfu']:.1%}" if ev.get("mfu") else ""
            sys.stdout.write(f"step {ev['step']:>5}  loss {ev['loss']:.4f}  grad norm "
                             f"{ev['grad_norm']:.3f}  {ev['tokens_per_s']:,.0f} tok/s{mfu}\n")
            sys.stdout.flush()
        elif ev["event"] == "checkpoint":
            sys.stdout.write(f"checkpoint at step {ev['step']}: {ev['path']}\n")
        elif ev["event"] in ("done", "error"):
            last.update(ev)

    rc = _stream_events(spec, json_mode, on_event)
    if not json_mode and last.get("event") == "done":
        output.show(output.table("Predicted vs measured (most loaded rank)",
                                 ["quantity", "predicted", "measured", "error"],
                                 output.comparison_rows(last)))
        _calibration_hint(last, hardware, device)
    elif not json_mode and last.get("event") == "error":
        output.warn(f"error: {last.get('message')}")
    if rc:
        raise typer.Exit(rc if rc != 2 else 1)


def _say_overrides(base_setup: Any, base_par: Any, setup: Any, par: Any) -> None:
    """A flag that changes a plan field is allowed, and said (never silently)."""
    from dataclasses import fields

    for before, after in ((base_par, par), (base_setup, setup)):
        for f in fields(before):
            old, new = getattr(before, f.name), getattr(after, f.name)
            if old != new:
                output.warn(f"overriding the plan's {f.name}({old}) with {new}")


def _default_hardware(device: str) -> str:
    """The hardware preset a run's predictions use when none is named."""
    return "cpu" if device == "cpu" else "h100-sxm"


def _stream_events(spec: Any, json_mode: bool, on_event: Callable[[dict], None]) -> int:
    """Run a launch and follow its events: passed through as JSON lines in ``--json`` mode,
    else each handed to ``on_event``; the exit status of the run."""
    from runtime.launch import stream

    def on_line(line: str, ev: dict | None) -> None:
        if ev is None:
            return
        if json_mode:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            on_event(ev)

    return stream(spec, on_line)


def _calibration_hint(done: dict, hardware: str, device: str) -> None:
    """A step time outside an uncalibrated band says the constants are not this machine's."""
    from planner.accuracy import DEFAULT_ACCURACY

    band, measured = done.get("predicted_step_time_band_s"), done.get("measured_step_time_s")
    if (band and measured and not band["low"] <= measured <= band["high"]
            and done.get("predicted_step_time_band_source") == DEFAULT_ACCURACY.source):
        output.warn(f"the step-time model is not calibrated for {hardware}: "
                    f"`llmplan calibrate --device {device} --hardware {hardware}` fits it to "
                    f"this machine (about 10 minutes)")


def _check_host_memory(cfg: Any, setup: Any, par: Any) -> None:
    """CPU runs put every rank on this host: refuse a layout whose predicted memory (runtime
    recipe, all ranks) exceeds the host's RAM, instead of swapping it to a halt."""
    import os

    from planner.memory import memory_report

    stages = memory_report(cfg, setup, par).stages
    need = sum(s.total_bytes for s in stages) * par.tp * par.dp
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > have:
        raise LlmplanError(f"{par.world} CPU processes of {cfg.name} need about "
                           f"{need / 2**30:,.1f} GiB but this host has {have / 2**30:,.1f} GiB; "
                           "use --device cuda or a smaller model (e.g. tiny)")


def _launch_inference(plan_path: Any, plan: dict, device: str, json_mode: bool,
                      dry_run: bool) -> None:
    """Run an inference plan file (read as ``plan``) through runtime.generate on its tp
    processes."""
    from runtime.launch import LaunchSpec, torchrun_command

    tp = int(plan.get("cluster", {}).get("gpus", 1))
    if device == "auto":
        device = plan.get("generate", {}).get("device", "cpu")
    spec = LaunchSpec(plan_path=plan_path, nproc_per_node=tp, device=device,
                      module="runtime.generate")
    if dry_run:
        output.render(json_mode, {"command": torchrun_command(spec), "plan": str(plan_path),
                                  "world": tp, "device": device},
                      lambda: output.show(" ".join(torchrun_command(spec))))
        return
    rc = _stream_events(spec, json_mode, _print_generation)
    if rc:
        raise typer.Exit(rc if rc != 2 else 1)


def _print_generation(ev: dict) -> None:
    if ev["event"] == "done":
        for text in ev.get("texts") or [ev.get("text", "")]:
            sys.stdout.write(text + "\n")
    elif ev["event"] == "error":
        output.warn(f"error: {ev.get('message')}")


@app.command("generate")
@cli_errors
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
    dtype: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    eos: Annotated[int, typer.Option(help="Stop a sequence at this token id (-1: never).")] = -1,
    run_dir: Annotated[str, typer.Option("--run-dir", help="Where the generation plan is written.")] = "",
    set_: SetOpt = None,
    json_mode: Annotated[bool, typer.Option("--json", help="Print the JSON-lines event stream.")] = False,
) -> None:
    """Generate text with a KV cache (prefill + decode), tensor-parallel over --tp processes."""
    import tempfile
    from pathlib import Path

    from planner.config import ModelConfig
    from planner.planfile import dumps, read_plan
    from runtime.launch import LaunchSpec

    folder = Path(target)
    checkpoint = ""
    if folder.is_dir():
        run_plan = folder / "run.toml"
        if not run_plan.exists() or not (folder / "latest").exists():
            raise LlmplanError(f"{folder}: not a checkpoint folder (needs run.toml and latest)")
        cfg = ModelConfig.from_dict(read_plan(run_plan)["model"], where=str(run_plan))
        checkpoint = str(folder.resolve())
    else:
        cfg = _model(target, set_)
    texts = list(prompt or [])
    if prompts:
        try:
            texts += [line for line in Path(prompts).read_text().splitlines() if line.strip()]
        except OSError as err:
            raise LlmplanError(f"--prompts {prompts}: cannot read ({err.strerror})") from None
    texts = texts or ["Hello"]
    if batch:
        texts = [texts[i % len(texts)] for i in range(batch)]
    if dtype not in ("fp32", "bf16"):
        raise LlmplanError(f"--dtype {dtype!r}: use fp32 or bf16")
    from runtime.generate import check_generation, encode
    check_generation(cfg, tp=tp, prompt_lens=[len(encode(t)) for t in texts], max_new=max_new_tokens)
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch
        if tp > torch.cuda.device_count():
            raise LlmplanError(f"tp({tp}) processes but {torch.cuda.device_count()} GPU(s); use --device cpu")
    out_dir = Path(run_dir or tempfile.mkdtemp(prefix="llmplan-gen-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"version": 1, "kind": "inference", "model": cfg.to_dict(),
            "cluster": {"hardware": _default_hardware(device), "gpus": tp},
            "generate": {"prompts": texts, "max_new_tokens": max_new_tokens,
                         "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                         "device": device, "dtype": dtype, "checkpoint": checkpoint,
                         "eos_token": eos}}
    plan_path = out_dir / "generate.toml"
    plan_path.write_text(dumps(plan))
    spec = LaunchSpec(plan_path=plan_path, nproc_per_node=tp, device=device, module="runtime.generate")
    last: dict[str, Any] = {}
    single = len(texts) == 1
    if single and not json_mode:
        sys.stdout.write(texts[0])
        sys.stdout.flush()

    def on_event(ev: dict) -> None:
        if ev["event"] == "token" and single:
            sys.stdout.write(ev["text"][0])
            sys.stdout.flush()
        elif ev["event"] in ("done", "error"):
            last.update(ev)

    rc = _stream_events(spec, json_mode, on_event)
    if not json_mode and last.get("event") == "done":
        if single:
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(last["texts"]):
                sys.stdout.write(f"[{i}] {text}\n")
        rows = [("time to first token", f"{last['ttft_s'] * 1e3:,.1f} ms"),
                ("prefill", f"{last['prefill_tokens_per_s']:,.0f} tok/s"),
                ("decode (measured)", f"{(last['decode_tokens_per_s'] or 0):,.0f} tok/s"),
                ("decode (roofline)", f"{last['predicted_decode_tokens_per_s']:,.0f} tok/s"),
                ("KV cache predicted", output.fmt_bytes(last["predicted_kv_cache_bytes"])),
                ("KV cache allocated", output.fmt_bytes(last["measured_kv_cache_bytes"]))]
        output.show(output.table("Generation", ["quantity", "value"], rows))
    elif not json_mode and last.get("event") == "error":
        if single:
            sys.stdout.write("\n")
        output.warn(f"error: {last.get('message')}")
    if rc:
        raise typer.Exit(rc if rc != 2 else 1)


def _accuracy_table(title: str, rows: list[dict[str, Any]]) -> Any:
    return output.table(title, ["case", "step predicted", "step measured", "step error",
                                "worst memory error"],
                        [(r["case"], f"{r['predicted_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['measured_step_time_s'] * 1e3:,.1f} ms",
                          f"{r['step_time_error']:+.1%}", f"{r['memory_error']:.1%}") for r in rows])


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    steps = [abs(r["step_time_error"]) for r in rows]
    mems = [r["memory_error"] for r in rows]
    return {"mean_step_time_error": sum(steps) / len(steps), "worst_step_time_error": max(steps),
            "mean_memory_error": sum(mems) / len(mems), "worst_memory_error": max(mems)}


def _save_accuracy(hardware: str, accuracy: Any, cost_model: dict | None = None) -> str:
    """Record ``accuracy`` (and fitted constants, when given) in the hardware's profile,
    keeping whatever else it holds; the planner's bands read it from there."""
    from planner.planfile import dumps
    from presets import load_profile, profile_path

    profile = load_profile(hardware)
    profile["hardware"] = hardware
    if cost_model is not None:
        profile["cost_model"] = cost_model
    profile["accuracy"] = accuracy.to_dict()
    path = profile_path(hardware)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(profile))
    return str(path)


DeviceOpt = Annotated[str, typer.Option(help="cpu, or cuda on a CUDA machine.")]
ProfileHwOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset the profile is for (default: cpu, or h100-sxm on cuda).")]
RoundsOpt = Annotated[int, typer.Option(min=1, help="Runs per case; the median counts.")]


@app.command("calibrate")
@cli_errors
def calibrate_cmd(
    device: DeviceOpt = "cpu",
    hardware: ProfileHwOpt = "",
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="Start no further round after this long.")] = 10.0,
    rounds: RoundsOpt = 3,
    runs: Annotated[Optional[str], typer.Option(help="Refit the runs a previous calibrate saved (its .runs.json) instead of running.")] = None,
    json_mode: JsonOpt = False,
) -> None:
    """Run a sweep of short real runs, fit the planner's constants, save a hardware profile."""
    import dataclasses
    import json
    import time
    from pathlib import Path

    from presets import load_cost_model, load_hardware, load_profile, profile_path
    from runtime import calibration as cal

    hardware = hardware or _default_hardware(device)
    hw = load_hardware(hardware)
    saved = profile_path(hardware).with_suffix(".runs.json")
    if runs:
        try:
            cases = [cal.Case.from_dict(d) for d in json.loads(Path(runs).read_text())]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LlmplanError(f"{runs}: not a calibrate runs file ({err})") from None
    else:
        deadline = time.monotonic() + budget_minutes * 60
        cases = cal.measure(cal.runnable({**cal.FIT_CASES, **cal.HELD_OUT}, device), device,
                            rounds=rounds, deadline=deadline, progress=output.warn)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps([c.to_dict() for c in cases]) + "\n")
    fit_cases = [c for c in cases if c.name in cal.FIT_CASES]
    held = [c for c in cases if c.name in cal.HELD_OUT]
    if not fit_cases or not held:
        raise LlmplanError(f"{len(fit_cases)} sweep and {len(held)} held-out runs: need both")
    before = load_cost_model(hardware)
    before_label = "the previous profile" if load_profile(hardware).get("cost_model") else "defaults"
    fitted = cal.fit(fit_cases, hw, before)
    rows_before = cal.errors(held, before, hw)
    rows_after = cal.errors(held, fitted, hw)
    summary = _summary(rows_after)
    accuracy = cal.accuracy(rows_after, f"{len(held)} held-out runs, llmplan calibrate "
                                        f"{time.strftime('%Y-%m-%d')}")
    constants = dataclasses.asdict(fitted)
    path = _save_accuracy(hardware, accuracy, constants)
    data = {"profile": path, "runs": str(saved) if not runs else runs, "cost_model": constants,
            "fit_cases": [c.name for c in fit_cases],
            "held_out_before": rows_before, "held_out_after": rows_after,
            "before": _summary(rows_before), "after": summary, "accuracy": accuracy.to_dict()}

    def human() -> None:
        output.show(_accuracy_table(f"Held-out runs, before calibration ({before_label})", rows_before),
                    _accuracy_table("Held-out runs, after calibration", rows_after),
                    f"saved {path}: worst held-out step-time error "
                    f"{summary['worst_step_time_error']:.1%}, worst memory error "
                    f"{summary['worst_memory_error']:.1%}")

    output.render(json_mode, data, human)


@app.command("validate")
@cli_errors
def validate_cmd(
    device: DeviceOpt = "cpu",
    hardware: ProfileHwOpt = "",
    out: Annotated[str, typer.Option(help="Folder for validation.md and validation.json.")] = ".",
    rounds: RoundsOpt = 1,
    json_mode: JsonOpt = False,
) -> None:
    """The accuracy table: planner vs real runs; exits 1 if a memory error exceeds 10%."""
    import json
    import time
    from pathlib import Path

    from presets import load_cost_model, load_hardware
    from runtime import calibration as cal

    hardware = hardware or _default_hardware(device)
    hw = load_hardware(hardware)
    model = load_cost_model(hardware)
    chosen = cal.runnable({**cal.FIT_CASES, **cal.HELD_OUT}, device)
    if not chosen:
        raise LlmplanError(f"no validation case runs on {device} here")
    cases = cal.measure(chosen, device, rounds=rounds, progress=output.warn)
    rows = cal.errors(cases, model, hw)
    accuracy = cal.accuracy(rows, f"{len(rows)} runs, llmplan validate {time.strftime('%Y-%m-%d')}")
    data = {"hardware": hardware, "cases": rows, **_summary(rows), "accuracy": accuracy.to_dict(),
            "profile": _save_accuracy(hardware, accuracy)}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.json").write_text(json.dumps(data, indent=2) + "\n")
    md = ["| case | step predicted (ms) | step measured (ms) | step error | worst memory error |",
          "|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['predicted_step_time_s'] * 1e3:.1f} | {r['measured_step_time_s'] * 1e3:.1f} "
           f"| {r['step_time_error']:+.1%} | {r['memory_error']:.1%} |" for r in rows]
    md.append(f"\nworst memory error {data['worst_memory_error']:.1%}, worst step-time error "
              f"{data['worst_step_time_error']:.1%} ({hardware})")
    (folder / "validation.md").write_text("\n".join(md) + "\n")
    output.render(json_mode, data, lambda: output.show(
        _accuracy_table(f"Validation on {hardware}", rows),
        f"bands from now on: step time x{accuracy.step_time_ratio[0]:.2f}-"
        f"{accuracy.step_time_ratio[1]:.2f}, memory x{accuracy.memory_ratio[0]:.3f}-"
        f"{accuracy.memory_ratio[1]:.3f} (saved in {data['profile']})"))
    if data["worst_memory_error"] > 0.10:
        output.warn(f"memory error {data['worst_memory_error']:.1%} exceeds 10%")
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point. Typer builds a Click command for every registered command
    on each call (~5 ms each); when the first argument names a command, only that one is
    built, which keeps `llmplan params --json` a fast script call."""
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = [c for c in app.registered_commands if c.name == name]
    if not chosen:
        app()
        return
    single = typer.Typer(name="llmplan", add_completion=False, pretty_exceptions_show_locals=False,
                         context_settings={"help_option_names": ["-h", "--help"]})
    single.registered_callback = app.registered_callback
    single.registered_commands = chosen
    single()


if __name__ == "__main__":  # pragma: no cover
    main()
