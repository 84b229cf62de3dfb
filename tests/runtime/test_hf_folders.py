"""Bad Hugging Face folders: one line naming what is wrong (exit 2), before any process starts."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from hf_models import write_hf_folder, write_tokenizer


def refused(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout[-500:], proc.stderr[-1500:])
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert '"event": "start"' not in proc.stdout  # nothing started
    return proc.stderr


@pytest.fixture()
def folder(tmp_path):
    write_hf_folder("llama", tmp_path / "llama")
    return tmp_path / "llama"


def rewrite(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_a_missing_tensor_is_named(folder):
    rewrite(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    err = refused("launch", str(folder), "--steps", "1")
    assert "checkpoint has no tensor model.layers.1.mlp.up_proj.weight" in err
    assert "layers.1.feed_forward.w3.weight, shape [96, 64]" in err


def test_a_wrong_shape_names_both_shapes(folder):
    def narrow(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    rewrite(folder, narrow)
    err = refused("generate", str(folder), "--prompt", "the")
    assert ("tensor model.layers.0.self_attn.k_proj.weight has shape [16, 64], the model's "
            "layers.0.attention.wk.weight needs [32, 64]") in err


def test_a_corrupt_header_is_one_line(folder):
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:20] = b"\x00garbage!!!\x00"
    path.write_bytes(bytes(raw))
    assert "corrupt safetensors header" in refused("generate", str(folder), "--prompt", "the")


def test_a_tokenizer_larger_than_the_vocabulary(folder):
    config = json.loads((folder / "config.json").read_text())
    write_tokenizer(folder, config["vocab_size"] + 40)
    err = refused("generate", str(folder), "--prompt", "the")
    assert f"exceeds the model's vocab({config['vocab_size']})" in err


def test_an_unsupported_family(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    assert "unknown architecture model_type='t5'" in refused("launch", str(folder))


def test_a_16_bit_folder_keeps_its_dtype_unless_told(tmp_path):
    from hf_models import build_hf_model

    folder = tmp_path / "bf16"
    build_hf_model("llama").to(torch.bfloat16).save_pretrained(folder)

    def dry(*extra):
        proc = subprocess.run([sys.executable, "-m", "tui.cli", "launch", str(folder), "--dry-run",
                               "--json", "--device", "cpu", *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert dry()["setup"]["dtype"] == "bf16"
    assert dry("--dtype", "fp32")["setup"]["dtype"] == "fp32"
