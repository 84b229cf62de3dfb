"""Real training data: local text, JSONL or Parquet files (or a folder of them), read with
``datasets`` (memory-mapped Arrow), tokenised once and cached, packed to the sequence length.

Documents: a ``.txt`` file is one document; a JSONL / Parquet row is one, from its ``text``
field, its ``prompt`` + ``completion`` or its chat ``messages`` (rendered with the folder's
``chat_template``, as ``transformers``' ``apply_chat_template`` does). Under ``sft`` only the
completion / assistant tokens count in the loss (a per-token mask); otherwise every token does.

Packing: documents are concatenated with the tokenizer's EOS between them and cut into
windows of seq + 1 tokens advancing by seq, so every token is a label exactly once per epoch.
The global batch of step n takes the next ``batch`` windows of a per-epoch permutation drawn
from (seed, epoch): a pure function of (seed, n), so every layout sees the same tokens and a
resumed run continues at the exact next sample.

Cache: ``<cache>/<key>.tokens.npy`` and ``.mask.npy``, the key a hash of the files' bytes, the
tokenizer file and the options; written atomically, read memory-mapped by every rank.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path
from typing import Callable

from planner.config import ConfigError

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
CACHE_VERSION = 1
IGNORE = -100  # the label cross_entropy skips


def data_files(path: str, flag: str = "--data") -> list[Path]:
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ConfigError(f"{flag} {path}: no .txt, .jsonl, .json or .parquet files in it")
        return files
    if not root.is_file() or not os.access(root, os.R_OK):
        raise ConfigError(f"{flag} {path}: no readable file there")
    if root.suffix not in SUFFIXES:
        raise ConfigError(f"{flag} {path}: unknown format {root.suffix or '(no suffix)'} "
                          "(use .txt, .jsonl, .json, .parquet or a folder of them)")
    return [root]


def cache_dir() -> Path:
    env = os.environ.get("LLMPLAN_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmplan")) / "data"


def _key(files: list[Path], tokenizer_file: str, sft: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} sft={sft}".encode())
    for path in [*files, *([Path(tokenizer_file)] if tokenizer_file else [])]:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:24]


def documents(path: Path, tokenizer, flag: str = "--data"):
    """Each document of one file as ([(text, trained)] segments, fraction of the file read);
    line numbers in errors, which name ``flag`` (the option, or command, that gave the file)."""
    if _blank(path):
        raise ConfigError(f"{flag} {path}: the file is empty (no documents)")
    rows = _rows(path, flag)
    kind = SUFFIXES[path.suffix]
    count = len(rows)
    for i, row in enumerate(rows):
        done = (i + 1) / count
        where = f"{flag} {path}: {'line' if kind == 'json' else 'row'} {i + 1}"
        if row.get("prompt") is not None and row.get("completion") is not None:
            yield [(_string(row, "prompt", where), False),
                   (_string(row, "completion", where), True)], done
        elif row.get("messages") is not None:
            yield _chat(row["messages"], tokenizer, where), done
        elif row.get("text") is not None:
            yield [(_string(row, "text", where), True)], done
        else:
            raise ConfigError(f"{where}: no 'text', 'prompt' + 'completion' or 'messages' field")


def _blank(path: Path, probe: int = 1 << 20) -> bool:
    """The file holds nothing but white space (read whole only when small)."""
    size = path.stat().st_size
    return size == 0 or (size <= probe and not path.read_bytes().strip())


def _string(row, field: str, where: str) -> str:
    """A document field's text; any other type is refused, not converted."""
    value = row[field]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {field} must be a string, not {type(value).__name__} "
                          f"({' '.join(repr(value).split())[:40]})")
    return value


def _rows(path: Path, flag: str):
    """The file read by ``datasets``, whose own log lines and progress bars are silenced
    (llmplan says what went wrong, once); its error is reported by its innermost cause."""
    import datasets
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    kind = SUFFIXES[path.suffix]
    options = {"sample_by": "document"} if kind == "text" else {}
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        return load_dataset(kind, data_files=str(path), split="train",
                            cache_dir=str(cache_dir() / "arrow"), **options)
    except Exception as err:  # datasets / pyarrow raise their own types for malformed files
        raise ConfigError(f"{flag} {path}: cannot read ({_cause(err)})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def _cause(err: BaseException) -> str:
    """The innermost message of an exception chain, on one line (datasets wraps a parse
    error in "An error occurred while generating the dataset")."""
    said = ""
    while err is not None:
        text = " ".join(str(err).split())
        said = text or said or type(err).__name__
        err = err.__cause__ or err.__context__
    return said[:160]


def _chat(messages, tokenizer, where: str) -> list[tuple[str, bool]]:
    """A conversation rendered by the chat template, cut at each assistant turn: the text
    before it (system, user, the template's markup) is context, the turn itself is trained."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: chat messages need the model folder's chat_template "
                          "(tokenizer_config.json)")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m
                                                 and "content" in m for m in messages):
        raise ConfigError(f"{where}: messages must be a list of {{role, content}}")
    segments: list[tuple[str, bool]] = []
    done = ""
    for n, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.render_chat(messages[:n], add_generation_prompt=True)
        full = tokenizer.render_chat(messages[:n + 1], add_generation_prompt=False)
        if not full.startswith(before) or not before.startswith(done):
            raise ConfigError(f"{where}: the chat template does not render turns as prefixes")
        segments += [(before[len(done):], False), (full[len(before):], True)]
        done = full
    return segments


def prepare(path: str, tokenizer, *, vocab_size: int, sft: bool,
            progress: Callable[[int, int], None] | None = None, flag: str = "--data") -> str:
    """Tokenise ``path`` once (or find it cached); the cache key to pass to the ranks."""
    import numpy as np

    files = data_files(path, flag)
    key = _key(files, getattr(tokenizer, "path", ""), sft)
    root = cache_dir()
    if (root / f"{key}.tokens.npy").exists() and (root / f"{key}.mask.npy").exists():
        return str(root / key)
    root.mkdir(parents=True, exist_ok=True)
    eos = list(tokenizer.eos[:1])
    ids = array("i")   # 4 bytes a token while tokenising, not a Python int's 28
    mask = array("b")
    total = sum(p.stat().st_size for p in files)
    seen = 0
    for path_i in files:
        size = path_i.stat().st_size
        for n, (segments, done) in enumerate(documents(path_i, tokenizer, flag)):
            for k, (text, trained) in enumerate(segments):  # specials (BOS) once, at the start
                piece = tokenizer.encode(text, special=k == 0) if text else []
                ids.extend(piece)
                mask.extend([trained or not sft] * len(piece))
            ids.extend(eos)
            mask.extend([True] * len(eos))
            if progress and n % 2000 == 0:
                progress(seen + int(size * done), total)
        seen += size
    if progress:
        progress(total, total)
    if ids and max(ids) >= vocab_size:
        raise ConfigError(f"{flag} {path}: token id {max(ids)} exceeds the model's vocab({vocab_size})")
    stored = {"tokens": np.frombuffer(ids, dtype=np.int32),
              "mask": np.frombuffer(mask, dtype=np.int8).astype(np.bool_)}
    for name, values in stored.items():
        tmp = root / f"{key}.{name}.tmp.npy"
        np.save(tmp, values)
        os.replace(tmp, root / f"{key}.{name}.npy")
    return str(root / key)


class PackedData:
    """Windows of seq + 1 tokens of a prepared stream, shuffled per epoch from the seed."""

    def __init__(self, prefix: str, seq_len: int, seed: int) -> None:
        import numpy as np

        self.tokens = np.load(f"{prefix}.tokens.npy", mmap_mode="r")
        self.mask = np.load(f"{prefix}.mask.npy", mmap_mode="r")
        self.s, self.seed = seq_len, seed
        self.windows = (len(self.tokens) - 1) // seq_len
        if self.windows < 1:
            raise ConfigError(f"the data holds {len(self.tokens)} tokens: fewer than "
                              f"seq({seq_len}) + 1")
        self._perms: dict[int, object] = {}

    @staticmethod
    def count(prefix: str, seq_len: int) -> int:
        """Windows of seq + 1 tokens a prepared stream holds (read from its header only)."""
        import numpy as np

        return max(0, (len(np.load(f"{prefix}.tokens.npy", mmap_mode="r")) - 1) // seq_len)

    def _perm(self, epoch: int):
        import torch

        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (epoch + 1))
            self._perms = {epoch: torch.randperm(self.windows, generator=gen)}
        return self._perms[epoch]

    def ordered_batch(self, index: int, batch: int):
        """Windows index * batch ... (index + 1) * batch in file order (held-out evaluation)."""
        return self._rows(range(index * batch, (index + 1) * batch))

    def global_batch(self, step: int, batch: int):
        """(tokens, mask) of shape (batch, seq + 1): the mask says which tokens are labels."""
        return self._rows(int(self._perm(k // self.windows)[k % self.windows])
                          for k in range((step - 1) * batch, step * batch))

    def _rows(self, windows):
        import numpy as np
        import torch

        rows_t, rows_m = [], []
        for w in windows:
            lo, hi = w * self.s, w * self.s + self.s + 1
            rows_t.append(np.asarray(self.tokens[lo:hi], dtype=np.int64))
            rows_m.append(np.asarray(self.mask[lo:hi]))
        return torch.from_numpy(np.stack(rows_t)), torch.from_numpy(np.stack(rows_m))

