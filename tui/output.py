"""One output sink: JSON on stdout for scripts, rich tables for people; diagnostics on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence


PHASES = {"backward_start": "bwd start", "after_loss": "after loss", "backward_end": "bwd end",
          "optimizer_step": "optimizer"}
"""Short labels for the phases of the step's memory timeline (``planner.peak.PHASES``)."""


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def console():
    from rich.console import Console  # deferred: ~30 ms, not needed for --json

    return Console()


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
          *, caption: str | None = None) -> Any:
    from rich.table import Table

    out = Table(title=title, caption=caption, title_justify="left")
    for i, header in enumerate(headers):
        out.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    return out


def show(*renderables: Any) -> None:
    con = console()
    for item in renderables:
        con.print(item)


def warn(message: str) -> None:
    sys.stderr.write(f"llmplan: {message}\n")


def progress(label: str):
    """A progress line on stderr, redrawn in place: ``callback(done, total)`` in bytes."""
    def update(done: int, total: int) -> None:
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\rllmplan: {label} [{bar:<30}] {share:4.0%} of {fmt_bytes(total)}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return update


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_count(n: float) -> str:
    """1.23 B / 456.7 M style for headline numbers."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def gib(n_bytes: float) -> str:
    """The number of GiB (2**30 bytes), two decimals, for tables that name the unit once."""
    return f"{n_bytes / 2**30:,.2f}"


def fmt_gib(n_bytes: float) -> str:
    return f"{gib(n_bytes)} GiB"


def fmt_bytes(n_bytes: float) -> str:
    """Binary units (KiB = 2**10 ... GiB = 2**30), labelled as such."""
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:,.2f} {unit}"
    return f"{n_bytes:,.0f} B"


def fmt_flops(n: float) -> str:
    for scale, unit in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"),
                        (1e9, "G"), (1e6, "M")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}FLOP"
    return f"{n:g} FLOP"


def render(json_mode: bool, data: Any, human: Callable[[], None]) -> None:
    if json_mode:
        emit_json(data)
    else:
        human()


def comparison_rows(done: Any, fmt_bytes: Callable[[float], str] = fmt_bytes) -> list[tuple[str, str, str, str]]:
    """(quantity, predicted, measured, error) rows of a run's ``done`` event
    (``runtime.events.Done``): the memory categories of its most loaded rank, then step time
    with the planner's band and whether the measurement fell inside it."""
    from planner.memory import CATEGORIES, OPTIONAL_CATEGORIES

    rows = []
    for cat in CATEGORIES:
        p, m = done.predicted(cat), done.measured(cat)
        if cat in OPTIONAL_CATEGORIES and not p and not m:  # a run without a frozen base
            continue
        rows.append((cat, "-" if p is None else fmt_bytes(p), "-" if m is None else fmt_bytes(m),
                     f"{(m - p) / p:+.1%}" if p and m is not None else "-"))
    pt, mt = done.predicted_step_time_s, done.measured_step_time_s
    band = done.predicted_step_time_band_s
    predicted = f"{pt:.4f} s" if pt else "-"
    error = f"{(mt - pt) / pt:+.1%}" if pt and mt else "-"
    if pt and band:
        predicted += f" ({band['low']:.4f}-{band['high']:.4f})"
        if mt:
            error += " in band" if band["low"] <= mt <= band["high"] else " outside band"
    rows.append(("step time", predicted, f"{mt:.4f} s" if mt else "-", error))
    return rows
