"""Where a run's weights and data come from, resolved before any process starts: a Hugging
Face folder's weights (every tensor checked), ``--data`` / ``--eval-data`` tokenised and
cached (``runtime.dataset``), the ``--save-hf`` folder's family checked expressible.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

    folder = weights or (req.target if (Path(req.target) / "config.json").exists() else "")
    tokenizer = load_tokenizer(folder, model_vocab=cfg.vocab_size)
    if pairs:
        from runtime.preferences import prepare_pairs

        return prepare_pairs(path, tokenizer, vocab_size=cfg.vocab_size, seq_len=seq)
    prefix = prepare(path, tokenizer, vocab_size=cfg.vocab_size, sft=req.sft, progress=progress)
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


def hf_weights(target: str, cfg: ModelConfig) -> str:
    """A Hugging Face folder's weights ("" for a preset, a file, or a folder without
    safetensors), every tensor the model needs checked before any process starts."""
    from runtime.hf_checkpoint import has_weights

    if not has_weights(target):
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
