"""The command palette's own entries: every model preset and every accelerator."""

from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider

from presets import preset_files


class PresetCommands(Provider):
    """Command palette: every model preset, and every accelerator."""

    async def search(self, query: str) -> Hits:
        app = self.app  # the PlanApp: choose_preset / choose_hardware
        matcher = self.matcher(query)
        for name in preset_files("models"):
            score = matcher.match(f"model {name}")
            if score > 0:
                yield Hit(score, matcher.highlight(f"model {name}"), partial(app.choose_preset, name),
                          help="load this model preset")
        for name in preset_files("hardware"):
            score = matcher.match(f"accelerator {name}")
            if score > 0:
                yield Hit(score, matcher.highlight(f"accelerator {name}"),
                          partial(app.choose_hardware, name), help="plan for this accelerator")
