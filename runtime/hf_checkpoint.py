"""Hugging Face model folders: read each rank's own slices of the safetensors weights, write a
folder ``transformers`` loads.

Reading: the folder's ``model.safetensors.index.json`` (or its ``*.safetensors`` files) says
which file holds each tensor; headers are parsed here (8-byte length + JSON, the format's
whole framing) so a corrupt file is one clear error before any rank starts. A rank reads a
parameter's rows and columns through ``safe_open(...).get_slice`` in contiguous runs: it never
reads a tensor it does not hold, nor the rows of one it holds only a shard of. Which tensor and
rows hold each runtime parameter is ``runtime.hf_names``.

Writing: each writing rank saves its tensors as ``part-*.safetensors`` files of at most
``SHARD_BYTES`` into a hidden temporary folder beside the output; rank 0 then names them
``model-0000i-of-0000n.safetensors``, writes the index, ``config.json`` and the tokenizer, and
renames the folder into place, so a failed save never leaves a half-written output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from planner.config import ConfigError

INDEX = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "generation_config.json", "chat_template.jinja")
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


def staging(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_output(out: str | Path, label: str = "--save-hf") -> None:
    """Before anything runs: the output folder must not exist (nothing is overwritten), and
    its parent must be a folder llmplan can write in (``planner.outputs``: the staging folder
    goes beside it)."""
    from planner.outputs import writable_folder

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{label} {out}: already exists (nothing is overwritten)")
    writable_folder(out, label)
    if not out.parent.is_dir():
        raise ConfigError(f"{label} {out}: parent folder {out.parent} does not exist")


class PartWriter:
    """Tensors in, ``part-<label>-<k>.safetensors`` files of at most ``max_bytes`` out."""

    def __init__(self, folder: Path, label: str, max_bytes: int = SHARD_BYTES) -> None:
        self.folder, self.label, self.max_bytes = folder, label, max_bytes
        self.pending: dict = {}
        self.bytes = 0
        self.count = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if self.pending:
            path = self.folder / f"part-{self.label}-{self.count:05d}.safetensors"
            save_file(self.pending, str(path), metadata={"format": "pt"})
            self.count += 1
        self.pending, self.bytes = {}, 0


def finish(tmp: Path, out: Path, *, config: dict, source: str = "") -> None:
    """Name the parts, write the index, config.json and (from ``source``) the tokenizer and
    generation settings, then move the folder into place."""
    parts = sorted(tmp.glob("part-*.safetensors"))
    n = len(parts)
    weight_map: dict[str, str] = {}
    total = 0
    for i, part in enumerate(parts, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors"
        for key, entry in read_header(part).items():
            weight_map[key] = name
            total += entry["data_offsets"][1] - entry["data_offsets"][0]
        os.replace(part, tmp / name)
    if n > 1:
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                             "weight_map": dict(sorted(weight_map.items()))},
                                            indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in COPIED if source else ():
        if (Path(source) / name).exists():
            shutil.copyfile(Path(source) / name, tmp / name)
    os.replace(tmp, out)
