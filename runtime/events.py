"""The run event stream: one JSON object per line on rank 0's stdout (standard library only).

Each kind is a typed, frozen dataclass; ``emit`` writes one, ``parse`` reads a line back into
one (``None`` for any other line: logs, warnings). Every event has ``event`` (its kind) and
``time``; ``start`` and ``done`` also carry ``mode`` ("train" or "inference"), which tells a
training run's from a generation's. The runtime writes these, and the CLI, the TUI,
calibration and the benches read them; no torch is needed to read them. JSON keys are a
public surface: add fields freely, never rename one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO



@dataclass(frozen=True, kw_only=True)
class Event:
    KIND: ClassVar[str] = ""
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class Start(Event):
    """A training run has built its model: the layout it runs and what the planner predicts."""

    KIND: ClassVar[str] = "start"
    mode: str = "train"
    model: str
    layout: dict[str, Any]
    world: int
    device: str
    steps: int
    start_step: int = 0
    global_batch: int
    seq_len: int
    micro_batch: int
    grad_accum: int
    recompute: str
    dtype: str
    optimizer: str
    recipe: str
    attention: str
    predicted_stages: list[dict[str, Any]] = field(default_factory=list)
    predicted_step_time_s: float | None = None
    predicted_tokens_per_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class GenerationStart(Event):
    KIND: ClassVar[str] = "start"
    mode: str = "inference"
    model: str
    world: int
    device: str
    checkpoint_step: int | None = None
    batch: int
    max_new_tokens: int
    predicted_kv_cache_bytes: int
    predicted_weights_bytes: int
    predicted_decode_tokens_per_s: float
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    KIND: ClassVar[str] = "step"
    step: int
    loss: float
    grad_norm: float
    lr: float
    step_time_s: float
    tokens_per_s: float
    mfu: float | None = None
    mem_peak_bytes: int = 0
    reward_margin: float | None = None
    """DPO: the mean of beta (log-ratio chosen - log-ratio rejected) over the global batch."""
    reward_accuracy: float | None = None
    """DPO: the share of pairs whose chosen completion has the higher implicit reward."""


@dataclass(frozen=True, kw_only=True)
class Eval(Event):
    KIND: ClassVar[str] = "eval"
    step: int
    loss: float
    """Held-out mean loss over ``tokens`` label tokens."""
    perplexity: float | None = None
    tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    KIND: ClassVar[str] = "checkpoint"
    step: int
    path: str
    format: str = "dcp"
    """dcp (a resumable distributed checkpoint) or hf (a Hugging Face folder)."""


@dataclass(frozen=True, kw_only=True)
class Token(Event):
    """New tokens of sequence ``index`` (and their text, one string per token)."""

    KIND: ClassVar[str] = "token"
    index: int
    tokens: list[int]
    text: list[str]


@dataclass(frozen=True, kw_only=True)
class LayoutResult(Event):
    """One layout of a matrix run (runtime.matrix): its losses and gradient norms per step."""

    KIND: ClassVar[str] = "layout"
    index: int
    layout: dict[str, Any]
    losses: list[float]
    grad_norms: list[float]


@dataclass(frozen=True, kw_only=True)
class Done(Event):
    """A training run finished: measured next to predicted for its most loaded rank (the
    top-level ``predicted_<category>_bytes`` / ``measured_<category>_bytes``, categories as
    ``planner.memory.CATEGORIES``; a unit test holds the two together), every rank in ``ranks``, and the step time."""

    KIND: ClassVar[str] = "done"
    mode: str = "train"
    steps: int
    ranks: list[dict[str, Any]] = field(default_factory=list)
    predicted_parameters_bytes: int | None = None
    measured_parameters_bytes: int | None = None
    predicted_frozen_base_bytes: int | None = None
    measured_frozen_base_bytes: int | None = None
    predicted_gradients_bytes: int | None = None
    measured_gradients_bytes: int | None = None
    predicted_optimizer_states_bytes: int | None = None
    measured_optimizer_states_bytes: int | None = None
    predicted_activations_bytes: int | None = None
    measured_activations_bytes: int | None = None
    predicted_total_bytes: int | None = None
    measured_max_allocated_bytes: int | None = None
    measured_host_peak_bytes: int | None = None
    measured_host_build_peak_bytes: int | None = None
    measured_step_time_s: float | None = None
    predicted_step_time_s: float | None = None
    predicted_step_time_band_s: dict[str, float] | None = None
    predicted_step_time_band_source: str | None = None
    measured_tokens_per_s: float | None = None
    predicted_tokens_per_s: float | None = None

    def predicted(self, category: str) -> int | None:
        return getattr(self, f"predicted_{category}_bytes")

    def measured(self, category: str) -> int | None:
        return getattr(self, f"measured_{category}_bytes")


@dataclass(frozen=True, kw_only=True)
class GenerationDone(Event):
    KIND: ClassVar[str] = "done"
    mode: str = "inference"
    tokens: list[list[int]]
    texts: list[str]
    text: str | None = None
    """The one sequence's text when a single prompt was generated."""
    ttft_s: float
    """Measured time to first token, after an untimed warm-up on the same shapes."""
    warmup_s: float | None = None
    """The warm-up prefill and decode step (a cold start's first-call cost)."""
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None = None
    tpot_s: float | None = None
    """Measured seconds per decode step (each sequence's time per output token)."""
    predicted_decode_tokens_per_s: float
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None
    predicted_kv_cache_bytes: int
    measured_kv_cache_bytes: int
    peak_memory_bytes: int
    predicted_weights_bytes: int | None = None
    measured_weights_bytes: int | None = None
    """Bytes of the weights as held (quantised tensors counted by their components)."""
    prompt_tokens: int | None = None
    """The longest prompt's tokens (what the predictions are for)."""
    quantisation_logit_max_abs_diff: float | None = None
    """Quantised weights: the largest change of the prompts' next-token logits from bf16."""


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    KIND: ClassVar[str] = "error"
    message: str
    exit_code: int | None = None


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    """The launcher stopped every rank on a signal (Ctrl-C: SIGINT, or SIGTERM); ``exit_code``
    is the launcher's (128 + the signal number, the shell's convention)."""

    KIND: ClassVar[str] = "cancelled"
    signal: str
    message: str
    exit_code: int


_BY_KIND: dict[tuple[str, str], type[Event]] = {
    ("start", "train"): Start, ("start", "inference"): GenerationStart,
    ("done", "train"): Done, ("done", "inference"): GenerationDone,
    **{(cls.KIND, ""): cls for cls in (Step, Eval, Checkpoint, Token, LayoutResult, Error,
                                       Cancelled)},
}
KINDS = tuple(dict.fromkeys(kind for kind, _ in _BY_KIND))
ENDINGS = (Done, GenerationDone, Error, Cancelled)
"""The events that end a run: after one of them, nothing more is said."""


def emit(ev: Event, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(ev.to_json() + "\n")
    out.flush()


def from_dict(data: dict[str, Any]) -> Event | None:
    """The typed event of a decoded JSON object (unknown keys are ignored: a newer writer
    may add fields), or None when it is not one."""
    kind = data.get("event")
    mode = data.get("mode", "train") if kind in ("start", "done") else ""
    cls = _BY_KIND.get((kind, mode)) if isinstance(kind, str) and isinstance(mode, str) else None
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a required field is missing
        return None


def parse(line: str) -> Event | None:
    """An event from one output line, or None for any other line (logs, warnings)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return from_dict(data) if isinstance(data, dict) else None
