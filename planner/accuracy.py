"""How far the planner has been from measured runs, and the band that puts around an estimate.

An :class:`Accuracy` record holds, per quantity, the range of ``measured / predicted`` seen
on real runs: held-out layouts after ``llmplan calibrate``, or every case of ``llmplan
validate``. A new estimate ``x`` then reads as the band ``[x * lo, x, x * hi]`` (the range
widened to include 1, so the expected value always lies inside it). A rate such as
tokens/s is the reciprocal of a time, so its band divides by the time ratios instead.

Without a measured record the band is :data:`DEFAULT_ACCURACY`: the tolerances that the
published reference points are held to in the test suite (step time: 25%, GPT-3 175B on
1,024 A100s vs Narayanan et al. 2021 §5.1; memory: 10%, the gate ``llmplan validate``
enforces on real runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence


def relative_error(measured: float, predicted: float) -> float:
    """``(measured - predicted) / predicted``: the one sign convention of every error llmplan
    prints (``launch``'s comparison, ``validate``, ``calibrate``, ``validate --serving`` and
    ``--published``): positive when the run was slower or larger than predicted, and
    ``1 + error`` is the ``measured / predicted`` ratio the bands are made of."""
    return (measured - predicted) / predicted


NOISE_LIMIT = 0.75
"""The most a case's repeated step-time measurements may spread before its runs are too
noisy to fit or to set bands from: the interquartile range of its steady steps over their
median, and the range of its rounds' medians over their median (:func:`spread`)."""


def spread(values: Sequence[float]) -> float:
    """How much repeated measurements of one quantity disagree, relative to their median:
    the interquartile range over the median for four or more values, the whole range for two
    or three, 0 for fewer."""
    xs = sorted(v for v in values if v is not None)
    if len(xs) < 2:
        return 0.0
    n = len(xs)
    median = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    if median <= 0:
        return 0.0
    if n < 4:
        return (xs[-1] - xs[0]) / median
    return (xs[(3 * n) // 4] - xs[n // 4]) / median


@dataclass(frozen=True, kw_only=True, slots=True)
class Band:
    """One estimate with its uncertainty: ``low <= expected <= high``."""

    low: float
    expected: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "expected": self.expected, "high": self.high}


@dataclass(frozen=True, kw_only=True, slots=True)
class Accuracy:
    """Ranges of ``measured / predicted`` for step time and per-rank memory."""

    step_time_ratio: tuple[float, float]
    memory_ratio: tuple[float, float]
    source: str
    runs: int = 0

    def __post_init__(self) -> None:
        for name in ("step_time_ratio", "memory_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}({lo}, {hi}) must satisfy 0 < low <= high")

    def time(self, seconds: float) -> Band:
        lo, hi = self.step_time_ratio
        return Band(low=seconds * min(lo, 1.0), expected=seconds, high=seconds * max(hi, 1.0))

    def rate(self, per_second: float) -> Band:
        """A throughput: the reciprocal of a time, so a slow run is the low end."""
        lo, hi = self.step_time_ratio
        return Band(low=per_second / max(hi, 1.0), expected=per_second,
                    high=per_second / min(lo, 1.0))

    def memory(self, nbytes: float) -> Band:
        lo, hi = self.memory_ratio
        return Band(low=nbytes * min(lo, 1.0), expected=nbytes, high=nbytes * max(hi, 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {"step_time_ratio": list(self.step_time_ratio),
                "memory_ratio": list(self.memory_ratio), "source": self.source, "runs": self.runs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Accuracy":
        return cls(step_time_ratio=tuple(data["step_time_ratio"]),
                   memory_ratio=tuple(data["memory_ratio"]), source=str(data["source"]),
                   runs=int(data.get("runs", 0)))

    @classmethod
    def from_runs(cls, step_ratios: Iterable[float], memory_ratios: Iterable[float], *,
                  source: str) -> "Accuracy":
        """The record of a set of runs: each ratio is ``measured / predicted``."""
        steps, mems = list(step_ratios), list(memory_ratios)
        if not steps or not mems:
            raise ValueError("an accuracy record needs at least one run")
        return cls(step_time_ratio=(min(steps), max(steps)), memory_ratio=(min(mems), max(mems)),
                   source=source, runs=len(steps))


DEFAULT_ACCURACY = Accuracy(
    step_time_ratio=(0.75, 1.25), memory_ratio=(0.90, 1.10),
    source="uncalibrated (reference tolerances)")


def describe_change(old: "Accuracy | None", new: Accuracy) -> str:
    """One line saying how a profile's bands move (``step time x0.80-1.30 -> x3.97-19.73,
    memory x0.98-1.00 -> x0.98-1.01``), or that they are new or unchanged."""
    def fmt(r: tuple[float, float]) -> str:
        return f"x{r[0]:.2f}-{r[1]:.2f}"

    if old is None:
        return (f"new bands: step time {fmt(new.step_time_ratio)}, memory "
                f"{fmt(new.memory_ratio)}")
    parts = [f"{what} {fmt(a)} -> {fmt(b)}" for what, a, b in (
        ("step time", old.step_time_ratio, new.step_time_ratio),
        ("memory", old.memory_ratio, new.memory_ratio)) if fmt(a) != fmt(b)]
    return "bands changed: " + ", ".join(parts) if parts else "bands unchanged"


def fmt_band(band: Band, fmt: Callable[[float], str] = "{:,.3g}".format, unit: str = "") -> str:
    """``expected unit (low-high)``: one format for all three, for tables and captions."""
    return f"{fmt(band.expected)}{unit} ({fmt(band.low)}-{fmt(band.high)})"
