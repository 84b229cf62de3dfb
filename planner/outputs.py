"""Output paths: the one rule that checks where llmplan will write, and the one atomic writer.

Every command that writes (plan files, exports, checkpoints, Hugging Face folders, tokenizers,
profiles, validation reports) asks :func:`writable_file` or :func:`writable_folder` before any
work starts, so a bad path is refused in one line before a process is spawned or a minute of
training is spent; then writes with :func:`write_text` (a temporary file beside the target,
renamed over it once complete, removed if anything fails), so a reader never sees half a
file and nothing stray is left behind. Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.config import ConfigError


def _first_existing(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _probe(folder: Path, what: str, path: Path) -> None:
    """Create and remove a file in ``folder``: the only check that holds for root, read-only
    mounts and pseudo file systems alike (``os.access`` says yes to root everywhere)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".llmplan-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot write in {folder} "
                          f"({err.strerror or err})") from None


def _creatable(path: Path, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    base = _first_existing(path.parent if path.parent != Path("") else Path("."))
    if not base.is_dir():
        raise ConfigError(f"{what} {path}: {base} is a file, not a folder")
    _probe(base, what, path)


def writable_file(path: str | os.PathLike, what: str = "output", *,
                  overwrite: bool = True) -> Path:
    """``path`` as a file llmplan may (over)write: not a folder, in a folder that exists or can
    be created, writable; an existing file is refused when ``overwrite`` is False. One-line
    ``ConfigError`` naming ``what`` and the path otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give a file name")
    if path.exists():
        if not overwrite:
            raise ConfigError(f"{what} {path} exists: remove it or choose another name")
        _probe(path.parent, what, path)
        return path
    _creatable(path, what)
    return path


def writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a folder llmplan may write files into: an existing writable folder, or one
    that can be created. One-line ``ConfigError`` naming ``what`` and the path otherwise."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{what} {path} is a file, not a folder")
        _probe(path, what, path)
        return path
    _creatable(path, what)
    return path


def write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` atomically (parents created): a temporary file beside it,
    renamed over it once complete; on any failure the temporary file is removed and a
    one-line ``ConfigError`` names the path. Returns the path."""
    path = writable_file(path, what)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{what} {path}: cannot write ({err.strerror or err})") from None
    return path
