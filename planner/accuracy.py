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
from typing import Any, Callable, Iterable


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


def fmt_band(band: Band, fmt: Callable[[float], str] = "{:,.3g}".format, unit: str = "") -> str:
    """``expected unit (low-high)``: one format for all three, for tables and captions."""
    return f"{fmt(band.expected)}{unit} ({fmt(band.low)}-{fmt(band.high)})"
