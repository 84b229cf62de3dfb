"""One output sink: JSON on stdout for scripts, rich tables for people; diagnostics on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence


PHASES = {"backward_start": "bwd start", "after_loss": "after loss", "backward_end": "bwd end",
          "optimizer_step": "optimizer"}
"""Short labels for the phases of the step's memory timeline (``planner.peak.PHASES``)."""


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def console(width: int | None = None):
    from rich.console import Console  # deferred: ~30 ms, not needed for --json

    return Console(width=width)


@dataclass(frozen=True)
class Table:
    """A table as data (title, headers, rows of strings, caption), drawn by ``show`` in the
    format the command was asked for: a rich table on a terminal or a pipe, GitHub markdown,
    or CSV. The first column is left-aligned, the others right-aligned (numbers)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str | None = None


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
          *, caption: str | None = None) -> Table:
    return Table(title, tuple(headers), tuple(tuple(str(c) for c in row) for row in rows),
                 caption)


FORMAT = "table"
"""The format ``show`` draws in: ``table``, ``markdown`` or ``csv`` (``render`` sets it for
the command's ``human`` function; ``json`` never reaches ``show``)."""


def rich_table(t: Table) -> Any:
    """``t`` as a rich Table whose cells fold onto more lines when the console is too narrow:
    a cell is never cut to "…" (rich's default overflow)."""
    from rich.table import Table as RichTable

    out = RichTable(title=t.title, caption=t.caption, title_justify="left")
    for i, header in enumerate(t.headers):
        out.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
    for row in t.rows:
        out.add_row(*row)
    return out


def show(*renderables: Any) -> None:
    """Print tables (``table``) and notes (strings) in ``FORMAT``. In rich form, when stdout
    is not a terminal (``| cat``, a file), the console is made as wide as the widest table, so
    a piped table is never squeezed; on a terminal the cells fold rather than being cut."""
    if FORMAT == "markdown":
        sys.stdout.write(markdown(renderables))
        return
    if FORMAT == "csv":
        sys.stdout.write(csv_text(renderables))
        return
    items = [rich_table(r) if isinstance(r, Table) else r for r in renderables]
    con = console()
    if not con.is_terminal:
        from rich.measure import Measurement

        wide = con.options.update(max_width=1_000_000)
        need = max((Measurement.get(con, wide, item).maximum
                    for item, r in zip(items, renderables) if isinstance(r, Table)), default=0)
        if need > con.width:
            con = console(need)
    for item in items:
        con.print(item)


def plain(text: str) -> str:
    """``text`` as rich prints it, without its markup (``[b]x[/b]`` -> ``x``)."""
    if "[" not in text:
        return text
    try:
        from rich.markup import render
    except ImportError:  # pragma: no cover
        return text
    try:
        return render(text).plain
    except Exception:  # not markup after all (rich.errors.MarkupError): print it as it is
        return text


def markdown(renderables: Sequence[Any]) -> str:
    """Tables as GitHub pipe tables (``### title``, the caption in italics under it), notes
    as paragraphs; ``|`` in a cell escaped."""
    def cell(text: str) -> str:
        return plain(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")

    parts = []
    for r in renderables:
        if isinstance(r, Table):
            lines = [f"### {plain(r.title)}", ""] if r.title else []
            lines.append("| " + " | ".join(cell(h) for h in r.headers) + " |")
            lines.append("|" + "|".join(":---" if i == 0 else "---:"
                                         for i in range(len(r.headers))) + "|")
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in r.rows]
            if r.caption:
                lines += ["", f"*{cell(r.caption)}*"]
            parts.append("\n".join(lines))
        else:
            parts.append(plain(str(r)))
    return "\n\n".join(parts) + "\n"


def csv_text(renderables: Sequence[Any]) -> str:
    """Each table's header row and rows as CSV (RFC 4180 quoting), tables apart by one blank
    line; titles, captions and notes left out (they are not rows)."""
    import csv
    import io

    blocks = []
    for r in renderables:
        if isinstance(r, Table):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow([plain(h) for h in r.headers])
            writer.writerows([plain(c) for c in row] for row in r.rows)
            blocks.append(buf.getvalue())
    return "\n".join(blocks)


_progress_open = False
"""Whether a progress line is drawn on stderr without its newline yet."""


def stderr_line(text: str) -> None:
    """One whole line on stderr, on a line of its own even when a progress line is drawn."""
    global _progress_open
    sys.stderr.write(("\n" if _progress_open else "") + text + "\n")
    _progress_open = False


def warn(message: str) -> None:
    stderr_line(f"llmplan: {message}")


def progress(label: str):
    """A progress line on stderr, redrawn in place: ``callback(done, total)`` in bytes."""
    def update(done: int, total: int) -> None:
        global _progress_open
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\rllmplan: {label} [{bar:<30}] {share:4.0%} of {fmt_bytes(total)}")
        _progress_open = done < total
        if not _progress_open:
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


def render(json_mode: bool, data: Any, human: Callable[[], None], fmt: str = "table") -> None:
    """``data`` as JSON (``--json`` or ``--format json``), else ``human()``, whose ``show``
    calls draw in ``fmt`` (table, markdown or csv)."""
    global FORMAT
    if json_mode or fmt == "json":
        emit_json(data)
        return
    FORMAT = fmt
    try:
        human()
    finally:
        FORMAT = "table"


def comparison_rows(done: Any, fmt_bytes: Callable[[float], str] = fmt_bytes) -> list[tuple[str, str, str, str]]:
    """(quantity, predicted, measured, error) rows of a run's ``done`` event, the error as
    ``planner.accuracy.relative_error`` (measured - predicted) / predicted, as ``validate``
    (``runtime.events.Done``): the memory categories of its most loaded rank, then step time
    with the planner's band and whether the measurement fell inside it."""
    from planner.accuracy import relative_error
    from planner.memory import CATEGORIES, OPTIONAL_CATEGORIES

    rows = []
    for cat in CATEGORIES:
        p, m = done.predicted(cat), done.measured(cat)
        if cat in OPTIONAL_CATEGORIES and not p and not m:  # a run without a frozen base
            continue
        rows.append((cat, "-" if p is None else fmt_bytes(p), "-" if m is None else fmt_bytes(m),
                     f"{relative_error(m, p):+.1%}" if p and m is not None else "-"))
    pt, mt = done.predicted_step_time_s, done.measured_step_time_s
    band = done.predicted_step_time_band_s
    predicted = f"{pt:.4f} s" if pt else "-"
    error = f"{relative_error(mt, pt):+.1%}" if pt and mt else "-"
    if pt and band:
        predicted += f" ({band['low']:.4f}-{band['high']:.4f})"
        if mt:
            error += " in band" if band["low"] <= mt <= band["high"] else " outside band"
    rows.append(("step time", predicted, f"{mt:.4f} s" if mt else "-", error))
    return rows
