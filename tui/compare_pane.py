"""Compare two configurations side by side, differences highlighted."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Select

from planner.config import ModelConfig
from planner.flops import flops_report
from planner.kv import kv_bytes_per_token
from planner.params import count_params
from presets import preset_files


def comparison_rows(a: ModelConfig, b: ModelConfig, seq: int = 4096) -> list[tuple[str, str, str, bool]]:
    """(label, left, right, differs) for every field and the headline numbers."""
    from dataclasses import fields

    from planner.layer_fields import VARIANT_FIELDS

    rows = []
    da, db = a.to_dict(), b.to_dict()
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key in da:
        if key in ("source",):
            continue
        if key in VARIANT_FIELDS and da[key] == db[key] == defaults[key]:
            continue  # a layer variant neither model uses
        rows.append((key, str(da[key]), str(db[key]), da[key] != db[key]))
    pa, pb = count_params(a), count_params(b)
    fa = flops_report(a, min(seq, a.max_context)).train_flops_per_token
    fb = flops_report(b, min(seq, b.max_context)).train_flops_per_token
    for label, x, y in (("params total", f"{pa.total:,}", f"{pb.total:,}"),
                        ("params active", f"{pa.active:,}", f"{pb.active:,}"),
                        ("train GFLOP/token", f"{fa / 1e9:,.2f}", f"{fb / 1e9:,.2f}"),
                        ("KV bytes/token", f"{kv_bytes_per_token(a):,}", f"{kv_bytes_per_token(b):,}")):
        rows.append((label, x, y, x != y))
    return rows


class ComparePane(Vertical):
    def __init__(self, left: str, right: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pair = (left, right)

    @dataclass
    class PairChosen(Message):
        left: str
        right: str

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-pick"):
            names = [(n, n) for n in preset_files("models")]
            yield Select(names, id="left", allow_blank=False, compact=True, value=self.pair[0])
            yield Select(names, id="right", allow_blank=False, compact=True, value=self.pair[1])
        yield DataTable(id="compare-table", show_cursor=False, zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#compare-table", DataTable).add_columns("field", "left", "right")

    @on(Select.Changed, "#left, #right")
    def _changed(self, event: Select.Changed) -> None:
        event.stop()
        left, right = self.query_one("#left", Select).value, self.query_one("#right", Select).value
        if isinstance(left, str) and isinstance(right, str):
            self.post_message(self.PairChosen(left, right))

    def show(self, rows: list[tuple[str, str, str, bool]]) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear()
        for label, x, y, differs in rows:
            if differs:
                table.add_row(f"[b yellow]{label}[/]", f"[yellow]{x}[/]", f"[yellow]{y}[/]")
            else:
                table.add_row(label, x, y)
