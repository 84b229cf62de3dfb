"""Data commands: ``tokenizer train`` (a byte-level BPE for a model folder without one)."""

from __future__ import annotations

from typing import Annotated

import typer

from tui import output


def tokenizer_cmd(
    action: Annotated[str, typer.Argument(help="train")],
    files: Annotated[list[str], typer.Argument(help="Text, JSONL or Parquet files (or folders).")],
    vocab: Annotated[int, typer.Option(help="Vocabulary size, special tokens included (257 to 2^24).")] = 32_000,
    out: Annotated[str, typer.Option(help="Folder to write tokenizer.json into (a model folder; created if missing).")] = ".",
    json_mode: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer (the `tokenizers` library) on local files."""
    from planner.config import ConfigError
    from runtime.tokenizer_train import train_tokenizer

    if action != "train":
        raise ConfigError(f"tokenizer {action!r}: the only action is train")
    data = train_tokenizer(files, vocab_size=vocab, out=out)
    output.render(json_mode, data, lambda: output.show(
        f"{data['vocab_size']:,} tokens from {data['documents']:,} documents -> {data['path']}"))


COMMANDS = {"tokenizer": tokenizer_cmd}
