"""User settings (last preset, accelerator, theme) in the platformdirs config folder."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
    path = settings_path()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return Settings()
    known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__
             and isinstance(v, type(getattr(Settings(), k)))}
    return Settings(**known)


def save(settings: Settings) -> None:
    import tomlkit  # deferred: only when settings change

    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = tomlkit.document()
    doc.add(tomlkit.comment("llmplan settings (written by the TUI)"))
    for key, value in asdict(settings).items():
        doc[key] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomlkit.dumps(doc))
    tmp.replace(path)
