"""Where a run's weights and data come from, resolved before any process starts: a Hugging
Face folder's weights (every tensor checked), ``--data`` / ``--eval-data`` tokenised and
cached (``runtime.dataset``), the ``--save-hf`` folder's family checked expressible.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    from runtime.runspec import TrainRequest


def prepared(path: str, req: TrainRequest, cfg: ModelConfig, weights: str, progress, *,
             seq: int, least: int = 1, flag: str = "--data", pairs: bool = False) -> str:
    """A data set tokenised with the model folder's tokenizer (bytes for a preset) and
    cached; the prepared stream's prefix ("" for none: synthetic data). It must hold at
    least ``least`` windows of seq + 1 tokens (``pairs``: DPO's preference pairs, read a
    permutation an epoch, so any number of them)."""
    if not path:
        return ""
    from runtime.dataset import PackedData, prepare
    from runtime.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder(req.target, weights), model_vocab=cfg.vocab_size)
    if pairs:
        from runtime.preferences import prepare_pairs

        return prepare_pairs(path, tokenizer, vocab_size=cfg.vocab_size, seq_len=seq)
    prefix = prepare(path, tokenizer, vocab_size=cfg.vocab_size, sft=req.sft, progress=progress,
                     flag=flag)
    windows = PackedData.count(prefix, seq)
    if windows < least:
        raise ConfigError(f"{flag} {path}: {windows} windows of seq({seq}) + 1 tokens, fewer "
                          f"than {least}{' (the global batch)' if least > 1 else ''}")
    return prefix


def exportable(out: str, cfg: ModelConfig) -> str:
    """``--save-hf``'s folder once the family's mapping and config.json can express ``cfg``."""
    if not out:
        return ""
    from presets.hf_export import to_hf_config
    from runtime.hf_names import check_family

    check_family(cfg, f"--save-hf {out}")
    to_hf_config(cfg)
    return str(Path(out).resolve())


def tokenizer_folder(target: str, weights: str) -> str:
    """The folder whose ``tokenizer.json`` (if any) a run of ``target`` tokenises with: the
    weights' folder, else a model folder given without weights, when it has a
    ``tokenizer.json``; "" for bytes (a preset, or a folder without one).
    A launch records it in its plan (``[run] tokenizer``), so that ``generate`` and
    ``export`` of the checkpoint use the same tokenizer the run trained with."""
    folder = Path(weights or target)
    if not (weights or (folder / "config.json").exists()):
        return ""
    return str(folder.resolve()) if (folder / "tokenizer.json").exists() else ""


def warn(message: str) -> None:
    """A diagnostic the user must see although the request goes on: one stderr line (the
    CLI's ``llmplan: error:`` rule, for a warning)."""
    print(f"llmplan: warning: {message}", file=sys.stderr, flush=True)


def hf_weights(target: str, cfg: ModelConfig) -> str:
    """A Hugging Face folder's weights ("" for a preset, a file, or a folder without
    safetensors), every tensor the model needs checked before any process starts. A model
    folder with a config.json and no safetensors runs from random weights (allowed: a
    config is a model's shape), and says so on one stderr line."""
    from runtime.hf_checkpoint import has_weights

    if not has_weights(target):
        folder = Path(target)
        if folder.is_dir() and (folder / "config.json").exists():
            other = sorted(p.name for p in folder.glob("*.bin"))[:1]
            unread = f" ({other[0]} is not read: only safetensors are)" if other else ""
            warn(f"{folder}: config.json but no *.safetensors weights{unread}: the model "
                 "starts from random weights")
        return ""
    from runtime.hf_weights import check_folder

    check_folder(target, cfg)
    return str(Path(target).resolve())


def folder_dtype(target: str) -> str | None:
    """The runtime dtype a Hugging Face folder's weights are stored in (config.json's
    ``torch_dtype`` / ``dtype``): bf16 for 16-bit checkpoints, fp32 for fp32 ones, None for
    anything else (a preset, a file, a folder that does not say)."""
    import json

    path = Path(target) / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stored = config.get("torch_dtype") or config.get("dtype") if isinstance(config, dict) else None
    return {"bfloat16": "bf16", "float16": "bf16", "float32": "fp32"}.get(stored)


def checkpoint_folder(target: str, tp: int = 1) -> tuple[ModelConfig, str, str]:
    """``generate CKPT``: a training checkpoint folder's model, the folder, and the folder of
    the tokenizer the run trained with (its plan's ``[run] tokenizer``; a plan written before
    that key, its ``weights``). A folder that is neither a checkpoint nor a model folder is
    named for what it lacks; a run's tokenizer that has since gone is refused, not replaced
    by bytes (the prompts would be different tokens). A LoRA run's checkpoint generates with
    its adapters merged, in one process (``runtime.generate.checkpoint_model``)."""
    from planner.planfile import read_plan

    folder = Path(target)
    run_plan = folder / "run.toml"
    if not run_plan.exists():
        raise ConfigError(f"no config.json in {folder} (a Hugging Face model folder needs one; "
                          "a checkpoint folder has run.toml and latest)")
    if not (folder / "latest").exists():
        raise ConfigError(f"{folder}: a run folder with no saved checkpoint (no 'latest' file)")
    plan = read_plan(run_plan)
    cfg = ModelConfig.from_dict(plan["model"], where=str(run_plan))
    adapters = plan.get("setup", {}).get("adapters")
    if adapters and tp > 1:
        raise ConfigError(f"{folder}: a {adapters.get('method', 'lora')} checkpoint generates "
                          f"with its adapters merged in one process: use --tp 1 (not {tp}), "
                          "or `llmplan export` it and generate from that folder")
    return cfg, str(folder.resolve()), run_tokenizer(plan.get("run", {}), str(folder))


def run_tokenizer(run: dict[str, Any], where: str) -> str:
    """The tokenizer folder a run's plan records ("" for bytes), checked still there."""
    recorded = run.get("tokenizer", run.get("weights", ""))
    if not recorded:
        return ""
    if not isinstance(recorded, str):
        raise ConfigError(f"{where}/run.toml: [run] tokenizer({recorded!r}) must be a folder")
    if "tokenizer" in run and not (Path(recorded) / "tokenizer.json").exists():
        raise ConfigError(f"{where}: the run tokenised with {recorded}/tokenizer.json, which is "
                          "gone: put it back (without it the text would be other tokens)")
    return recorded


def check_eos(eos: Any, cfg: ModelConfig) -> None:
    """``--eos``: -1 (the folder's EOS, else none) or a token id the model has."""
    if isinstance(eos, bool) or not isinstance(eos, int) or not -1 <= eos < cfg.vocab_size:
        raise ConfigError(f"--eos({eos}) must be a token id below the model's "
                          f"vocab({cfg.vocab_size}), or -1 for the model folder's EOS")
