"""Model commands: the presets there are, and a model's exact parameter count."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from planner.config import LlmplanError
from planner.finetune import DEFAULT_ALPHA, DEFAULT_RANK
from tui import options, output
from tui.options import (BaseBitsOpt, DoubleQuantOpt, JsonOpt, LoraAlphaOpt, LoraDropoutOpt,
                         LoraRankOpt, LoraTargetsOpt, MethodOpt, PolicyOpt, ModelArg, SetOpt)
from tui.options import model as load


def presets_cmd(
    action: Annotated[str, typer.Argument(
        help="none: list the presets; show NAME: print a preset's TOML and where it is; "
             "new --from NAME [--name NEW]: copy a preset into your user presets.",
        show_default=False)] = "",
    target: Annotated[str, typer.Argument(help="The preset `show` prints.",
                                          show_default=False)] = "",
    kind: Annotated[str, typer.Option(help="model or hardware (default: both).")] = "",
    from_: Annotated[str, typer.Option("--from", help="new: the preset to copy.",
                                       show_default=False)] = "",
    new_name: Annotated[str, typer.Option("--name", help="new: the copy's name (default: "
                                          "the source's, overriding the built-in).",
                                          show_default=False)] = "",
    json_mode: JsonOpt = False,
) -> None:
    """List the model and hardware presets (and the accelerator aliases); `presets show NAME`
    prints one preset's TOML, `presets new --from NAME [--name NEW]` copies one into
    <config>/presets/ to edit."""
    if kind not in ("", "model", "hardware"):
        raise LlmplanError(f"--kind {kind!r}: use model or hardware")
    if action not in ("", "show", "new"):
        raise LlmplanError(f"presets {action!r}: use `presets`, `presets show NAME` or "
                           "`presets new --from NAME [--name NEW]`")
    if action == "show":
        if not target or from_ or new_name:
            raise LlmplanError("presets show takes one preset name (and --kind, --json)")
        return _show_preset(target, kind, json_mode)
    if action == "new":
        if target or not from_:
            raise LlmplanError("presets new takes --from NAME [--name NEW] (no positional name)")
        return _new_preset(from_, new_name, kind, json_mode)
    if target or from_ or new_name:
        raise LlmplanError("presets: a name, --from and --name go with `show` or `new`")
    _list_presets(kind, json_mode)


def _show_preset(name: str, kind: str, json_mode: bool) -> None:
    import sys

    from presets import find_preset, is_user_preset, read_toml_text

    found_kind, resolved, path = find_preset(name, kind)
    text, source = read_toml_text(path)
    data = {"name": resolved, "kind": found_kind, "path": str(path),
            "user": is_user_preset(path), "source": source, "toml": text}
    if resolved != name:
        data["alias"] = name

    def human() -> None:
        origin = "user" if data["user"] else "built-in"
        alias = f" (alias {name})" if resolved != name else ""
        sys.stdout.write(f"# {origin} {found_kind} preset {resolved}{alias}: {path}\n"
                         f"# source: {source or '(none given)'}\n{text}"
                         + ("" if text.endswith("\n") else "\n"))

    output.render(json_mode, data, human)


def _new_preset(source: str, name: str, kind: str, json_mode: bool) -> None:
    import sys

    from presets import BUILTIN_DIR, PRESET_KINDS, find_preset, new_user_preset

    _, resolved, _ = find_preset(source, kind)
    found_kind, path = new_user_preset(source, name, kind)
    final = path.stem
    shadows = (BUILTIN_DIR / PRESET_KINDS[found_kind] / f"{final}.toml").exists()
    data = {"name": final, "kind": found_kind, "from": resolved, "path": str(path),
            "overrides_builtin": shadows}

    def human() -> None:
        note = f" (overrides the built-in {final})" if shadows else ""
        sys.stdout.write(f"wrote {found_kind} preset {final}{note}: {path}\n")

    output.render(json_mode, data, human)


def _list_presets(kind: str, json_mode: bool) -> None:
    from presets import HARDWARE_ALIASES, canonical_hardware, load_hardware, load_model, preset_files
    from planner.params import count_params

    data: dict[str, Any] = {}
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
        data["hardware_aliases"] = {a: canonical_hardware(a) for a in sorted(HARDWARE_ALIASES)}

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
            by_target: dict[str, list[str]] = {}
            for alias, target in data["hardware_aliases"].items():
                by_target.setdefault(target, []).append(alias)
            tables.append(output.table("Hardware aliases", ["preset", "aliases"],
                                       [(t, ", ".join(a)) for t, a in sorted(by_target.items())]))
        output.show(*tables)

    output.render(json_mode, data, human)


def params_cmd(
    model: ModelArg,
    set_: SetOpt = None,
    method: MethodOpt = "full", policy: PolicyOpt = "full",
    lora_rank: LoraRankOpt = DEFAULT_RANK,
    lora_alpha: LoraAlphaOpt = DEFAULT_ALPHA, lora_targets: LoraTargetsOpt = None,
    lora_dropout: LoraDropoutOpt = 0.0, base_bits: BaseBitsOpt = None,
    double_quant: DoubleQuantOpt = False,
    json_mode: JsonOpt = False,
) -> None:
    """Exact parameter count with a breakdown (total, active per token, non-embedding) and,
    with --method lora or qlora, the adapters' trainable parameters and the frozen base's
    bytes at its bits."""
    flags = dict(locals())
    params_report(model, set_, json_mode, adapters=options.adapters(flags))


def params_report(model: str, sets: list[str] | None, json_mode: bool, *,
                  adapters=None) -> None:
    from planner.params import count_params

    cfg = load(model, sets)
    counts = count_params(cfg)
    data = {"model": cfg.name, **counts.to_dict(), "method": "full", "trainable": counts.total}
    if adapters is not None:
        from planner.finetune import summary

        data.update(summary(cfg, adapters))

    def human() -> None:
        rows = [(name, output.fmt_int(n), f"{100 * n / counts.total:.2f}%")
                for name, n in counts.breakdown.items() if n]
        rows += [("total", output.fmt_int(counts.total), "100.00%"),
                 ("active per token", output.fmt_int(counts.active),
                  f"{100 * counts.active / counts.total:.2f}%"),
                 ("non-embedding", output.fmt_int(counts.non_embedding),
                  f"{100 * counts.non_embedding / counts.total:.2f}%")]
        if adapters is not None:
            rows.append((f"trainable (LoRA r={adapters.rank}: {', '.join(data['lora_targets'])})",
                         output.fmt_int(data["trainable"]),
                         f"{100 * data['trainable'] / counts.total:.2f}%"))
            dq = " + double quant" if adapters.double_quant else ""
            rows.append((f"frozen base at {data['base_bits']} bits{dq} (bytes)",
                         output.fmt_int(data["frozen_base_bytes"]), ""))
        output.show(output.table(f"Parameters of {cfg.name} ({output.fmt_count(counts.total)})",
                                 ["component", "parameters", "share"], rows))

    output.render(json_mode, data, human)


COMMANDS = {"presets": presets_cmd, "params": params_cmd}
