"""Typed reads of configuration values: a TOML / JSON value checked against a field's
declared type, and a ``--set key=value`` string parsed by it (``planner.config`` re-exports
both). Errors name the field and the value."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from planner.config import ConfigError, field_types


def check_type(key: str, value: Any, expected: Any, *, where: str) -> Any:
    """Accept ``value`` for a field of type ``expected`` (ints are allowed for floats)."""
    if isinstance(expected, types.UnionType):  # an optional field: its declared type
        expected = expected.__args__[0]
    if typing.get_origin(expected) is tuple:  # a TOML / JSON list of names or of integers
        item = typing.get_args(expected)[0]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(x, item) and not isinstance(x, bool) for x in value)
        if not ok:
            shown = repr(value) if len(repr(value)) <= 40 else f"{type(value).__name__} value"
            what = "names" if item is str else "integers"
            raise ConfigError(f"{where}: {key}({shown}) must be a list of {what}")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{where}: {key}({value!r}) must be an integer")
    if not isinstance(value, expected):
        shown = repr(value) if len(repr(value)) <= 40 else f"{type(value).__name__} value"
        raise ConfigError(f"{where}: {key}({shown}) must be {expected.__name__}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}({value!r}) must be a finite number")
    return value


def parse_field(key: str, raw: str) -> Any:
    """Parse one ``--set`` value by the field's declared type."""
    types_by_name = field_types()
    if key not in types_by_name:
        raise ConfigError(f"--set {key}: unknown field (known: {', '.join(sorted(types_by_name))})")
    expected = types_by_name[key]
    text = raw.strip()
    try:
        if expected is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if expected is int:
            return int(text.replace("_", ""))
        if expected is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if typing.get_origin(expected) is tuple:  # comma-separated; "" is the empty list
            item = typing.get_args(expected)[0]
            parts = [p.strip() for p in text.split(",") if p.strip()]
            return tuple(int(p.replace("_", "")) if item is int else p for p in parts)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: expected {'a finite ' if expected is float else ''}"
                          f"{expected.__name__}") from None
    return text
