"""What the runtime implements, checked before any process starts (standard library only)."""

from __future__ import annotations

import argparse
import os
import traceback
from typing import Callable

from planner.config import ConfigError, LlmplanError, ModelConfig, Parallel, TrainSetup

SUPPORTED_POSITIONS = ("rope", "learned", "none")


def check_runtime_layout(cfg: ModelConfig, setup: TrainSetup, par: Parallel) -> None:
    """What the planner allows but this runtime does not implement yet, named clearly."""
    par.check(cfg, setup)
    if cfg.position not in SUPPORTED_POSITIONS:
        raise ConfigError(f"the runtime does not implement position({cfg.position!r}); "
                          f"supported: {', '.join(SUPPORTED_POSITIONS)}")
    if par.tp > 1 and cfg.is_moe:
        raise ConfigError(f"tp({par.tp}) with MoE experts is not implemented by the runtime; use dp/pp")
    if par.tp > 1 and cfg.position == "learned":
        raise ConfigError(f"tp({par.tp}) with learned positions is not implemented by the runtime")
    if par.tp > 1 and cfg.num_kv_heads % par.tp:
        raise ConfigError(f"tp({par.tp}) does not divide kv heads({cfg.num_kv_heads}); the "
                          "runtime does not replicate kv heads in training")
    if par.tp > 1 and cfg.vocab_size % par.tp:
        raise ConfigError(f"tp({par.tp}) does not divide vocab({cfg.vocab_size})")
    if par.pp > 1 and cfg.tie_embeddings:
        raise ConfigError(f"pp({par.pp}) with tied embeddings is not implemented by the runtime")
    if par.pp > 1 and setup.grad_accum % par.pp:
        raise ConfigError(f"micro-batches({setup.grad_accum}) must be a multiple of pp({par.pp})")
    if par.schedule == "gpipe" and par.vpp > 1:
        raise ConfigError("gpipe has no virtual stages")


def entry_point(prog: str, run: Callable[[str], int], argv: list[str] | None = None) -> int:
    """``python -m <prog> --plan FILE`` for torchrun: a user error becomes one ``error`` event
    (exit 2); a crash becomes an ``error`` event on rank 0 and a traceback on stderr (exit 1)."""
    from runtime import events

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--plan", required=True, help="run specification (TOML)")
    args = parser.parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        return run(args.plan)
    except LlmplanError as err:
        if rank0:
            events.emit("error", message=str(err))
        return 2
    except Exception as err:
        if rank0:
            text = f"{type(err).__name__}: {err}"
            if any(k in text for k in ("Connection closed by peer", "Read error", "NCCL")):
                text = f"another rank failed (its log is on stderr): {text[:300]}"
            events.emit("error", message=text)
        traceback.print_exc()
        return 1
