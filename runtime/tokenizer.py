"""The byte-level tokenizer (standard library only): token i is byte i, vocab 256.

Training on a text file (``runtime.data.ByteData``) and generation share it, so a model
trained on bytes generates text again; a model with a larger vocabulary simply never sees
ids of 256 and above from it.
"""

from __future__ import annotations

BYTE_VOCAB = 256


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    """Bytes back to text; ids outside the byte range are dropped, broken UTF-8 replaced."""
    return bytes(t for t in tokens if 0 <= t < BYTE_VOCAB).decode("utf-8", errors="replace")
