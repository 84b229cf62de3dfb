"""What the runtime implements, checked before any process starts (standard library only)."""

from __future__ import annotations

import argparse
import os
import traceback
from typing import Callable

from planner import layout
from planner.config import ConfigError, LlmplanError, ModelConfig
from planner.setup import Parallel, TrainSetup

def check_runtime_layout(cfg: ModelConfig, setup: TrainSetup, par: Parallel, *,
                         rounds: int = 1) -> None:
    """Refuse, before any process starts, a layout this runtime does not run: the layout
    contract's rules for runtime "llmplan" (``planner.layout``), every problem in one line."""
    layout.check(cfg, setup, par, runtime="llmplan", rounds=rounds)


def check_runtime_model(cfg: ModelConfig) -> None:
    """Refuse a model this runtime cannot build, whatever the layout."""
    refused = layout.refusals(layout.model_problems(cfg), "llmplan")
    if refused:
        raise ConfigError(refused[0].message)


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
            events.emit(events.Error(message=str(err)))
        return 2
    except Exception as err:
        if rank0:
            text = f"{type(err).__name__}: {err}"
            if any(k in text for k in ("Connection closed by peer", "Read error", "NCCL")):
                text = f"another rank failed (its log is on stderr): {text[:300]}"
            events.emit(events.Error(message=text))
        traceback.print_exc()
        return 1
