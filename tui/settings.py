"""User settings (last preset, accelerator, theme) in the platformdirs config folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from planner.config import LlmplanError
from planner.tomlio import read_toml, write_toml
from presets import config_dir


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    preset: str = "llama-3-8b"
    hardware: str = "h100-sxm"
    gpus: int = 8
    theme: str = "textual-dark"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


def settings_path() -> Path:
    return config_dir() / "settings.toml"


def load() -> Settings:
    """The saved settings; defaults when there are none or the file is unreadable (settings
    are a convenience: a broken file never stops the app)."""
    try:
        data = read_toml(settings_path())
    except LlmplanError:
        return Settings()
    known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__
             and isinstance(v, type(getattr(Settings(), k)))}
    return Settings(**known)


def save(settings: Settings) -> None:
    write_toml(settings_path(), asdict(settings), comment="llmplan settings (written by the TUI)")
