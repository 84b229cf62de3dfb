"""What a training step does (TrainSetup) and how it is laid out over ranks (Parallel): the
typed, validated inputs of every calculation; which combinations are valid is the layout
contract's to say (``planner.layout``)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError
from planner.finetune import Adapters


DTYPES = ("bf16", "fp16", "fp32")
RECIPES = ("mixed", "mixed_fp32_grads", "fp32", "runtime")
OPTIMIZERS = ("adamw", "adafactor", "sgd_momentum", "adam8bit")
RECOMPUTES = ("none", "selective", "full")
ATTENTIONS = ("flash", "eager")
SCHEDULES = ("1f1b", "gpipe", "interleaved")
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
    objective: str = "lm"
    """``lm``, or ``dpo``: each example is two sequences, and a frozen reference scores them
    (a copy of the policy; with adapters, the base with its adapters off, as TRL does)."""

    def __post_init__(self) -> None:
        for label, value in (("seq", self.seq_len), ("micro-batch", self.micro_batch),
                             ("grad accumulation", self.grad_accum)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
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
        """Bytes per activation element: 2 for bf16/fp16 compute, 4 for fp32."""
        return 4 if self.dtype == "fp32" else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallel:
    """A 3D layout: t tensor x p pipeline (v virtual stages each) x dp data, ZeRO stage z.

    World size = tp * pp * dp. ``sp`` is Megatron sequence parallelism. ``schedule`` is the
    pipeline schedule; left empty it is the default for ``vpp`` (interleaved 1F1B with virtual
    stages, else 1F1B). Which combinations are valid is the layout contract's to say
    (``planner.layout``): this class checks only each field's own range.
    """

    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp: int = 1
    zero: int = 0
    sp: bool = False
    schedule: str = ""

    def __post_init__(self) -> None:
        for label, value in (("tp", self.tp), ("pp", self.pp), ("vpp", self.vpp), ("dp", self.dp)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
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
        return self.tp * self.pp * self.dp


def default_schedule(vpp: int) -> str:
    """Interleaved 1F1B with virtual stages, else 1F1B (Narayanan et al. 2021 §2.2)."""
    return "interleaved" if vpp > 1 else "1f1b"
