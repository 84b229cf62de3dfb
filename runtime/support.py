"""What the runtime implements, checked before any process starts (standard library only)."""

from __future__ import annotations

from planner.config import ConfigError, ModelConfig, Parallel, TrainSetup

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
