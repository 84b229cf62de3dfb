"""Model commands: the presets there are, and a model's exact parameter count."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from planner.config import LlmplanError
from tui import output
from tui.options import JsonOpt, ModelArg, SetOpt
from tui.options import model as load


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


def params_cmd(
    model: ModelArg,
    set_: SetOpt = None,
    method: Annotated[str, typer.Option(help="full, lora or qlora (adds the adapters' trainable count and the frozen base's bytes).")] = "full",
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank r.")] = 16,
    lora_targets: Annotated[Optional[list[str]], typer.Option("--lora-targets", help="Module names as peft names them (comma-separated or repeated; default: every attention and MLP projection).")] = None,
    base_bits: Annotated[Optional[int], typer.Option("--base-bits", help="Bits of the frozen base: 16 or 8 with lora, 4 (NF4) with qlora.")] = None,
    double_quant: Annotated[bool, typer.Option("--double-quant", help="QLoRA: quantise NF4's absmax constants to 8 bits (Dettmers et al. 2023).")] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Exact parameter count with a breakdown (total, active per token, non-embedding) and,
    with --method lora or qlora, the adapters' trainable parameters and the frozen base's
    bytes at its bits."""
    params_report(model, set_, json_mode, method=method, lora_rank=lora_rank,
                  lora_targets=lora_targets, base_bits=base_bits, double_quant=double_quant)


def params_report(model: str, sets: list[str] | None, json_mode: bool, *, method: str = "full",
                  lora_rank: int = 16, lora_targets: list[str] | None = None,
                  base_bits: int | None = None, double_quant: bool = False) -> None:
    from planner.params import count_params

    cfg = load(model, sets)
    counts = count_params(cfg)
    data = {"model": cfg.name, **counts.to_dict(), "method": method, "trainable": counts.total}
    adapted = method in ("lora", "qlora")
    if adapted:
        from planner.frozen_base import check_method_bits, frozen_base
        from planner.lora import default_targets, lora_parameters

        bits = base_bits if base_bits is not None else (4 if method == "qlora" else 16)
        check_method_bits(method, bits)
        targets = tuple(t.strip() for arg in lora_targets or [] for t in arg.split(",") if t.strip())
        data.update(trainable=lora_parameters(cfg, rank=lora_rank, targets=targets or None),
                    lora_rank=lora_rank, lora_targets=list(targets or default_targets(cfg)),
                    **frozen_base(cfg, bits=bits, double_quant=double_quant).to_dict())
    elif method != "full":
        raise LlmplanError(f"--method {method!r}: params counts full, lora or qlora")
    elif base_bits is not None or double_quant:
        raise LlmplanError("--base-bits and --double-quant describe a frozen base: they need "
                           "--method lora or qlora")

    def human() -> None:
        rows = [(name, output.fmt_int(n), f"{100 * n / counts.total:.2f}%")
                for name, n in counts.breakdown.items() if n]
        rows += [("total", output.fmt_int(counts.total), "100.00%"),
                 ("active per token", output.fmt_int(counts.active),
                  f"{100 * counts.active / counts.total:.2f}%"),
                 ("non-embedding", output.fmt_int(counts.non_embedding),
                  f"{100 * counts.non_embedding / counts.total:.2f}%")]
        if adapted:
            rows.append((f"trainable (LoRA r={lora_rank}: {', '.join(data['lora_targets'])})",
                         output.fmt_int(data["trainable"]),
                         f"{100 * data['trainable'] / counts.total:.2f}%"))
            dq = " + double quant" if double_quant else ""
            rows.append((f"frozen base at {data['base_bits']} bits{dq} (bytes)",
                         output.fmt_int(data["frozen_base_bytes"]), ""))
        output.show(output.table(f"Parameters of {cfg.name} ({output.fmt_count(counts.total)})",
                                 ["component", "parameters", "share"], rows))

    output.render(json_mode, data, human)


COMMANDS = {"presets": presets_cmd, "params": params_cmd}
