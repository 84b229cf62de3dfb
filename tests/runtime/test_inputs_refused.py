"""Hostile inputs to `generate`, `export`, `tokenizer train` and `--data`: each is refused
before anything runs with exit 2 and exactly one stderr line (`llmplan: error: ...`) that
names the offending value and what is wrong with it, never a traceback, never a silent
substitute (the default prompt for an empty prompts file, a bare-alphabet tokenizer trained
on nothing). A model folder without weights is allowed, and said on one warning line.
`/sys` is the folder nobody can write in, root included."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

UNWRITABLE = "/sys/llmplan-test/out"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def refused(*args, env=None) -> str:
    proc = cli(*args, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("llmplan: error: ") and "Traceback" not in proc.stderr
    return proc.stderr


@pytest.fixture
def files(tmp_path):
    """Small hostile files by name."""
    made = {"empty.txt": b"", "blank.txt": b"\n  \n", "empty.jsonl": b"",
            "binary.txt": bytes(range(128, 256)) * 4,
            "text5.jsonl": b'{"text": "fine"}\n{"text": 5}\n',
            "prompt5.jsonl": b'{"prompt": 5, "completion": "x"}\n',
            "corpus.txt": b"the quick brown fox jumps over the lazy dog\n" * 20,
            "not.parquet": b"this is not a parquet file\n"}
    for name, content in made.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize(("name", "said"), [
    ("empty.txt", "no prompts in the file"),
    ("blank.txt", "no prompts in the file"),
    ("binary.txt", "not UTF-8 text (byte 0x80 at offset 0)"),
])
def test_generate_refuses_a_prompts_file_without_prompts(files, name, said):
    line = refused("generate", "tiny", "--prompts", str(files / name), "--device", "cpu")
    assert f"--prompts {files / name}: {said}" in line


@pytest.mark.parametrize("eos", ["256", "99999", "-2"])
def test_generate_refuses_an_eos_outside_the_vocabulary(eos):
    line = refused("generate", "tiny", "--eos", eos, "--device", "cpu")
    assert f"--eos({eos})" in line and "vocab(256)" in line


def test_generate_names_the_missing_config_json(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    assert f"no config.json in {folder}" in refused("generate", str(folder), "--device", "cpu")


@pytest.mark.parametrize(("name", "said"), [
    ("empty.txt", "the file is empty (no documents)"),
    ("blank.txt", "the file is empty (no documents)"),
    ("binary.txt", "cannot read ('utf-8' codec can't decode"),
])
def test_tokenizer_train_refuses_files_without_text(files, name, said):
    out = files / "tok"
    out.mkdir()
    line = refused("tokenizer", "train", str(files / name), "--out", str(out))
    assert f"tokenizer train {files / name}: {said}" in line
    assert not list(out.iterdir())


@pytest.mark.parametrize("vocab", ["1000000000", "16777217", "0", "-1", "256"])
def test_tokenizer_train_bounds_the_vocabulary(files, vocab):
    line = refused("tokenizer", "train", str(files / "corpus.txt"), "--vocab", vocab,
                   "--out", str(files))
    assert f"--vocab({vocab}) must be at least 257" in line and "16,777,216" in line


def test_tokenizer_train_at_the_bound_is_accepted(files):
    """2**24 itself trains (the trainer's up-front allocation is about 1.2 GB)."""
    proc = cli("tokenizer", "train", str(files / "corpus.txt"), "--vocab", str(2**24),
               "--out", str(files), "--json")
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert json.loads(proc.stdout)["vocab_size"] > 257


@pytest.mark.parametrize("out", [UNWRITABLE, "/sys"])
def test_tokenizer_train_refuses_an_unwritable_out(files, out):
    line = refused("tokenizer", "train", str(files / "corpus.txt"), "--out", out)
    assert f"--out {out}: cannot write in /sys" in line


@pytest.mark.parametrize("out", [UNWRITABLE, "/sys/llmplan-export"])
def test_export_refuses_an_unwritable_out(tmp_path, out):
    line = refused("export", str(tmp_path), out)
    assert f"export {out}: cannot write in /sys" in line


@pytest.mark.parametrize(("name", "said"), [
    ("empty.jsonl", "the file is empty (no documents)"),
    ("empty.txt", "the file is empty (no documents)"),
    ("text5.jsonl", "line 2: text must be a string, not int (5)"),
    ("prompt5.jsonl", "line 1: prompt must be a string, not int (5)"),
    ("not.parquet", "cannot read (Parquet magic bytes not found"),  # datasets' log silenced
])
def test_data_names_what_is_wrong_with_the_file(files, name, said):
    line = refused("launch", "tiny", "--data", str(files / name), "--steps", "1",
                   "--device", "cpu", "--dry-run", "--json",
                   env={"LLMPLAN_CACHE_DIR": str(files / "cache")})
    assert f"--data {files / name}: {said}" in line


def test_eval_data_is_named_as_eval_data(files):
    line = refused("launch", "tiny", "--data", str(files / "corpus.txt"), "--eval-data",
                   str(files / "empty.jsonl"), "--steps", "1", "--device", "cpu", "--dry-run",
                   "--json", env={"LLMPLAN_CACHE_DIR": str(files / "cache")})
    assert f"--eval-data {files / 'empty.jsonl'}: the file is empty" in line


def test_a_model_folder_without_weights_says_so_once(tmp_path):
    import transformers

    folder = tmp_path / "model"
    transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=128).save_pretrained(folder)
    proc = cli("launch", str(folder), "--steps", "1", "--device", "cpu", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (f"llmplan: warning: {folder}: config.json but no *.safetensors "
                           "weights: the model starts from random weights\n")


def test_an_unreadable_chat_template_is_one_line(tmp_path):
    from hf_models import write_hf_folder

    folder = tmp_path / "llama"
    write_hf_folder("llama", folder)
    (folder / "chat_template.jinja").write_bytes(b"\xff\xfe{{ messages }}")
    line = refused("generate", str(folder), "--device", "cpu")
    assert f"{folder / 'chat_template.jinja'}: cannot read (not UTF-8 text" in line
