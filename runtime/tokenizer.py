"""Tokenizers: the byte-level one (standard library only: token i is byte i, vocab 256) for
models without their own, and a model folder's ``tokenizer.json`` through the ``tokenizers``
library (special tokens added as the file's post-processor says, as ``transformers`` does by
default).

A model trained on bytes generates text again; a model with a larger vocabulary simply never
sees ids of 256 and above from the byte tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.config import ConfigError

BYTE_VOCAB = 256


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    """Bytes back to text; ids outside the byte range are dropped, broken UTF-8 replaced."""
    return bytes(t for t in tokens if 0 <= t < BYTE_VOCAB).decode("utf-8", errors="replace")


class ByteTokenizer:
    vocab_size = BYTE_VOCAB
    eos: list[int] = []
    path = ""
    chat_template = ""

    def encode(self, text: str, special: bool = True) -> list[int]:
        return encode(text)

    def decode(self, tokens: list[int]) -> str:
        return decode(tokens)


class FolderTokenizer:
    """A model folder's ``tokenizer.json``; end-of-sequence ids from its
    ``generation_config.json`` or ``config.json`` (``eos_token_id``, an id or a list)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        try:
            self.inner = Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises its own exception type
            raise ConfigError(f"{path}: not a tokenizer file ({' '.join(str(err).split())[:120]})"
                              ) from None
        self.vocab_size = self.inner.get_vocab_size(with_added_tokens=True)
        self.eos = _eos_ids(folder)
        self.path = str(path)
        settings = _json(folder / "tokenizer_config.json")
        self.chat_template = _template(folder) or settings.get("chat_template") or ""
        self.specials = {k: _token_text(settings.get(k)) for k in ("bos_token", "eos_token")}
        if not self.eos and self.specials["eos_token"]:  # a folder with no eos_token_id
            found = self.inner.token_to_id(self.specials["eos_token"])
            self.eos = [found] if found is not None else []

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids; ``special``: the file's post-processor adds its tokens (BOS)."""
        return self.inner.encode(text, add_special_tokens=special).ids

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        """The chat template rendered as ``transformers``' ``apply_chat_template`` does
        (a sandboxed Jinja environment, trim_blocks and lstrip_blocks, raise_exception)."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise ConfigError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.specials)

    def decode(self, tokens: list[int]) -> str:
        return self.inner.decode(tokens, skip_special_tokens=True)


def prompt_ids(tokenizer, text: str, *, chat: bool = False) -> list[int]:
    """A prompt's token ids; with ``chat`` the text is one user turn rendered by the chat
    template with the assistant's opening (``add_generation_prompt``), tokenised without
    further special tokens, as ``apply_chat_template(..., tokenize=True)`` does."""
    if not chat:
        return tokenizer.encode(text)
    if not getattr(tokenizer, "chat_template", ""):
        raise ConfigError("--chat needs a model folder with a chat_template (tokenizer_config.json)")
    rendered = tokenizer.render_chat([{"role": "user", "content": text}],
                                     add_generation_prompt=True)
    return tokenizer.encode(rendered, special=False)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _template(folder: Path) -> str:
    """The folder's ``chat_template.jinja`` ("" when it has none); one line if unreadable."""
    path = folder / "chat_template.jinja"
    if not path.exists():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text: {err.reason}"
        raise ConfigError(f"{path}: cannot read ({reason})") from None


def _token_text(value) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _eos_ids(folder: Path) -> list[int]:
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.exists():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                return [value]
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                return list(value)
    return []


def load_tokenizer(folder: str = "", *, model_vocab: int | None = None):
    """The folder's tokenizer when it has a ``tokenizer.json``, else the byte tokenizer; a
    vocabulary larger than the model's is refused (its ids would index past the embedding)."""
    path = Path(folder) if folder else None
    tok = FolderTokenizer(path) if path and (path / "tokenizer.json").exists() else ByteTokenizer()
    if model_vocab is not None and isinstance(tok, FolderTokenizer) and tok.vocab_size > model_vocab:
        raise ConfigError(f"{path / 'tokenizer.json'}: vocabulary({tok.vocab_size}) exceeds the "
                          f"model's vocab({model_vocab})")
    return tok
