"""What a training step does (TrainSetup) and how it is laid out over ranks (Parallel): the
typed, validated inputs of every calculation; which combinations are valid is the layout
contract's to say (``planner.layout``)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import MAX_CONTEXT, ConfigError
from planner.finetune import Adapters


DTYPES = ("bf16", "fp16", "fp32", "fp8")
"""Compute dtypes; fp8 runs the linears' GEMMs in fp8 and the rest in bf16 (``planner.fp8``)."""
RECIPES = ("mixed", "mixed_fp32_grads", "fp32", "runtime")
OPTIMIZERS = ("adamw", "adafactor", "sgd_momentum", "adam8bit")
RECOMPUTES = ("none", "selective", "full")
ATTENTIONS = ("flash", "eager")
SCHEDULES = ("1f1b", "gpipe", "interleaved")
MAX_RANKS = 2**20
"""The most accelerators (and so the largest tp, pp, dp, ...) a layout may have: 1,048,576."""
OBJECTIVES = ("lm", "dpo")
"""Next-token prediction, or DPO (Rafailov et al. 2023, arXiv 2305.18290 §4): a preference
pair (chosen, rejected) per example, scored against a frozen reference."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSetup:
    """What a training step does, independent of how it is parallelised.

    ``micro_batch`` is b (sequences per micro-batch per data-parallel rank) and ``grad_accum``
    is m (micro-batches per optimizer step per data-parallel rank; with pipelining these are
    the micro-batches of one pipeline flush). Global batch = b * m * dp sequences.
    """

    seq_len: int
    micro_batch: int = 1
    grad_accum: int = 1
    dtype: str = "bf16"
    recipe: str = "mixed"
    optimizer: str = "adamw"
    recompute: str = "none"
    attention: str = "flash"
    dropout: bool = False
    adapters: Adapters | None = None
    """LoRA / QLoRA over a frozen base (``planner.finetune``); None trains every parameter."""
    fp8_scaling: str = ""
    """With dtype fp8: ``tensor`` (one scale per tensor, the default) or ``block`` scaling."""
    objective: str = "lm"
    """``lm``, or ``dpo``: each example is two sequences, and a frozen reference scores them
    (a copy of the policy; with adapters, the base with its adapters off, as TRL does)."""

    def __post_init__(self) -> None:
        for label, value in (("seq", self.seq_len), ("micro-batch", self.micro_batch),
                             ("grad accumulation", self.grad_accum)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
            if value > MAX_CONTEXT:
                raise ConfigError(f"{label}({value}) must be at most {MAX_CONTEXT:,}")
        for label, value, allowed in (("dtype", self.dtype, DTYPES),
                                      ("recipe", self.recipe, RECIPES),
                                      ("optimizer", self.optimizer, OPTIMIZERS),
                                      ("recompute", self.recompute, RECOMPUTES),
                                      ("attention", self.attention, ATTENTIONS),
                                      ("objective", self.objective, OBJECTIVES)):
            if value not in allowed:
                raise ConfigError(f"{label}({value!r}) is not one of {', '.join(allowed)}")
        if self.adapters is not None and not isinstance(self.adapters, Adapters):
            raise ConfigError(f"adapters({self.adapters!r}) must be planner.finetune.Adapters")
        if self.recipe == "fp32" and self.dtype != "fp32":
            raise ConfigError(f"recipe('fp32') needs dtype fp32, not {self.dtype}")
        from planner.fp8 import SCALINGS

        if self.dtype == "fp8" and not self.fp8_scaling:
            object.__setattr__(self, "fp8_scaling", "tensor")
        if self.fp8_scaling and self.dtype != "fp8":
            raise ConfigError(f"fp8 scaling({self.fp8_scaling!r}) needs dtype fp8, not "
                              f"{self.dtype}")
        if self.fp8_scaling and self.fp8_scaling not in SCALINGS:
            raise ConfigError(f"fp8 scaling({self.fp8_scaling!r}) is not one of "
                              f"{', '.join(SCALINGS)}")

    @property
    def sequences_per_example(self) -> int:
        """Sequences a micro-batch's example runs: 2 for a DPO pair, else 1."""
        return 2 if self.objective == "dpo" else 1

    @property
    def reference_copy(self) -> bool:
        """DPO over a fully trained policy holds a frozen copy of it as the reference."""
        return self.objective == "dpo" and self.adapters is None

    @property
    def activation_bytes(self) -> int:
        """Bytes per activation element: 2 for bf16/fp16 compute (and fp8's, whose
        activations are bf16 but for the linears' saved inputs: ``planner.fp8``), 4 for fp32."""
        return 4 if self.dtype == "fp32" else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallel:
    """A layout: t tensor x cp context x p pipeline (v virtual stages each) x dp data, ZeRO
    stage z, with the experts of MoE layers split over ep of the dp ranks.

    World size = tp * cp * pp * dp. ``cp`` splits every sequence over cp ranks (ring
    attention passes K/V between them; Liu et al. 2023, arXiv 2310.01889); ``ep`` is carved
    from dp, as in Megatron-Core: each group of ep data-parallel ranks holds E/ep experts
    apiece and exchanges tokens by all-to-all (Lepikhin et al. 2020, GShard §2.3), so expert
    weights are replicated over dp/ep ranks and the rest over dp. ``sp`` is Megatron
    sequence parallelism. ``schedule`` is the
    pipeline schedule; left empty it is the default for ``vpp`` (interleaved 1F1B with virtual
    stages, else 1F1B). Which combinations are valid is the layout contract's to say
    (``planner.layout``): this class checks only each field's own range.
    """

    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp: int = 1
    zero: int = 0
    cp: int = 1
    ep: int = 1
    sp: bool = False
    schedule: str = ""

    def __post_init__(self) -> None:
        for label, value in (("tp", self.tp), ("pp", self.pp), ("vpp", self.vpp), ("dp", self.dp),
                             ("cp", self.cp), ("ep", self.ep)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
            if value > MAX_RANKS:
                raise ConfigError(f"{label}({value}) must be at most {MAX_RANKS:,}")
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"zero({self.zero}) must be 0, 1, 2 or 3")
        if not isinstance(self.sp, bool):
            raise ConfigError(f"sp({self.sp!r}) must be true or false")
        if not self.schedule:
            object.__setattr__(self, "schedule", default_schedule(self.vpp))
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule({self.schedule!r}) is not one of {', '.join(SCHEDULES)}")

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def shard_ranks(self) -> int:
        """Ranks holding the same dense weights, over which ZeRO shards them: dp x cp (the
        context ranks of a sequence hold the same weights; Megatron's distributed optimizer
        shards over the data-parallel group with context parallelism)."""
        return self.dp * self.cp

    @property
    def expert_shard_ranks(self) -> int:
        """Ranks holding the same experts, over which ZeRO shards them: dp x cp / ep."""
        return self.dp * self.cp // self.ep


def default_schedule(vpp: int) -> str:
    """Interleaved 1F1B with virtual stages, else 1F1B (Narayanan et al. 2021 §2.2)."""
    return "interleaved" if vpp > 1 else "1f1b"
