"""Hugging Face model folders: read each rank's own slices of the safetensors weights, write a
folder ``transformers`` loads.

Reading: the folder's ``model.safetensors.index.json`` (or its ``*.safetensors`` files) says
which file holds each tensor; headers are parsed here (8-byte length + JSON, the format's
whole framing) so a corrupt file is one clear error before any rank starts. A rank reads a
parameter's rows and columns through ``safe_open(...).get_slice`` in contiguous runs: it never
reads a tensor it does not hold, nor the rows of one it holds only a shard of. Which tensor and
rows hold each runtime parameter is ``runtime.hf_names``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from planner.config import ConfigError

INDEX = "model.safetensors.index.json"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_header(path: Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of one safetensors file, checked."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file's {size} bytes")
            meta = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta.pop("__metadata__", None)
    for name, entry in meta.items():
        try:
            start, end = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            ok = (entry["dtype"] in DTYPE_BYTES and 0 <= start <= end <= size - 8 - n
                  and end - start == count * DTYPE_BYTES[entry["dtype"]])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{path}: corrupt safetensors header (entry {name!r})")
    return meta


def weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{index}: not a safetensors index ({err})") from None
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def has_weights(folder: str | Path) -> bool:
    path = Path(folder)
    return path.is_dir() and bool(weight_files(path))


class Checkpoint:
    """The tensors of a model folder: shapes from the headers, values read slice by slice."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.where: dict[str, Path] = {}
        self.meta: dict[str, dict] = {}
        files = weight_files(self.folder)
        if not files:
            raise ConfigError(f"{self.folder}: no *.safetensors weights")
        for path in files:
            if not path.exists():
                raise ConfigError(f"{path}: listed in {INDEX} but missing")
            for name, entry in read_header(path).items():
                self.where[name], self.meta[name] = path, entry
        self._open: dict[Path, object] = {}

    def shape(self, name: str) -> tuple[int, ...] | None:
        entry = self.meta.get(name)
        return tuple(entry["shape"]) if entry else None

    def _slice(self, name: str):
        from safetensors import safe_open

        path = self.where[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path].get_slice(name)

    def read(self, name: str, index: list):
        """The tensor ``name`` at ``index``: per dimension None (all) or sorted-or-not global
        indices, read as the product of their contiguous runs."""
        import torch

        view = self._slice(name)
        shape = self.shape(name)
        runs = [[(0, shape[d])] if idx is None else _runs(idx.tolist())
                for d, idx in enumerate(index)]
        if len(index) == 1:
            return torch.cat([view[a:b] for a, b in runs[0]])
        if len(index) == 2:
            return torch.cat([torch.cat([view[a:b, c:e] for c, e in runs[1]], dim=1)
                              for a, b in runs[0]], dim=0)
        raise ConfigError(f"{name}: {len(index)}-D checkpoint tensors are not read here")

    def close(self) -> None:
        self._open.clear()


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """[(start, stop)] covering ``indices`` in their order, each run consecutive."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
