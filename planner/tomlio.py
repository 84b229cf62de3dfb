"""The one TOML reader and writer: plan files, presets, profiles and settings all use it.

Reading is the standard library's ``tomllib``; writing is ``tomlkit`` (imported when a file is
written, so the planner stays standard-library-only at import). TOML has no null: a ``None``
value is left out, so a reader sees the key as absent. Floats keep their infinities and NaN
(``inf``, ``-inf``, ``nan`` are TOML values). Files are written atomically: a temporary
file beside the target, renamed over it once complete.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from planner.config import ConfigError


def read_toml(path: Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The file's tables; ``error`` (one line, naming the file) for an unreadable or
    malformed file."""
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise error(f"{path}: malformed TOML ({err})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: malformed TOML (not UTF-8 text)") from None


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value


def dumps(data: Mapping[str, Any], *, comment: str = "") -> str:
    """TOML text for nested mappings of scalars, lists, tables and arrays of tables, in any
    order (a scalar given after a table is still written as the outer table's key)."""
    import tomlkit  # deferred: only writers pay for it

    doc = tomlkit.document()
    for line in comment.splitlines():
        doc.add(tomlkit.comment(line))
    try:
        doc.update(_without_none(data))
        return tomlkit.dumps(doc)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot write TOML: {err}") from None


def write_toml(path: Path, data: Mapping[str, Any], *, comment: str = "") -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns the path."""
    from planner.outputs import write_text

    return write_text(path, dumps(data, comment=comment), "TOML file")
