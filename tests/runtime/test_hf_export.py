"""Models out: `launch --save-hf` and `llmplan export` write folders `transformers` loads.

The oracle for "the folder holds the trained model" is the run's own DCP checkpoint of the
same step, loaded into the runtime's model by DCP (a separate path from the Hugging Face
writer): ``transformers``' logits on the written folder must equal that model's.
"""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import ROOT, launch
from hf_models import write_hf_folder


def runtime_logits(ckpt_dir, tokens):
    from planner.config import ModelConfig
    from planner.planfile import read_plan
    from runtime.generate import build_model, load_weights

    cfg = ModelConfig.from_dict(read_plan(ckpt_dir / "run.toml")["model"])
    model = build_model(cfg, tp=1, device=torch.device("cpu"),
                        opts={"weights": "", "weights_seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_weights(model, str(ckpt_dir))
    with torch.no_grad():
        return model.eval()(tokens)


def hf_logits(folder, tokens):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).float().eval()
    with torch.no_grad():
        return model(tokens).logits


def test_a_folder_trained_in_a_layout_is_saved_as_the_trained_model(tmp_path):
    source = tmp_path / "llama"
    write_hf_folder("llama", source, shard="40KB")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"add {i % 7} and {i % 5}: ",
                                        "completion": f"{i % 7 + i % 5}."}) + "\n"
                            for i in range(64)))
    events, _ = launch(str(source), "--data", str(data), "--sft", "--tp", "2", "--dp", "2",
                       "--zero", "3", "--steps", "8", "--seq", "16", "--gbs", "4", "--lr", "3e-3",
                       "--dtype", "fp32", "--save-hf", str(out), "--ckpt-dir", str(ckpt),
                       "--ckpt-every", "8", env={"LLMPLAN_CACHE_DIR": str(tmp_path / "cache")})
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses[-1] < losses[0]  # the completions are learnable
    assert any(e["event"] == "checkpoint" and e["format"] == "hf" for e in events)
    assert not list(tmp_path.glob(".*partial"))
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    tokens = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(3))
    saved, trained = hf_logits(out, tokens), runtime_logits(ckpt, tokens)
    assert float((saved - trained).abs().max()) <= 1e-4
    assert float((saved - hf_logits(source, tokens)).abs().max()) > 1e-3  # it did train


@pytest.mark.parametrize(("model", "layout"), [
    pytest.param("tiny-moe", ("--dp", "2", "--zero", "3"),  # experts, config.json written by llmplan
                 marks=pytest.mark.extended),
    ("tiny-gpt2", ("--pp", "2", "--tp", "2")),   # tied head over stages, Conv1D transposed
])
def test_export_of_a_preset_checkpoint_loads_in_transformers(tmp_path, model, layout):
    from presets import load_model
    from presets.hf import from_hf_config

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    launch(model, *layout, "--steps", "2", "--seq", "16", "--gbs", "4", "--dtype", "fp32",
           "--ckpt-dir", str(ckpt), "--ckpt-every", "2")
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "export", str(ckpt), str(out),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["step"] == 2
    back = from_hf_config(json.loads((out / "config.json").read_text()), name=model)
    assert back.replace(source="") == load_model(model).replace(source="")
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(4))
    assert float((hf_logits(out, tokens) - runtime_logits(ckpt, tokens)).abs().max()) <= 1e-4


def test_outputs_are_never_overwritten_and_inexpressible_models_are_refused(tmp_path):
    def refused(*args):
        proc = subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        return proc.stderr

    assert "already exists (nothing is overwritten)" in refused(
        "launch", "tiny", "--save-hf", str(tmp_path), "--device", "cpu")
    assert "ALiBi" in refused("launch", "tiny-falcon", "--save-hf", str(tmp_path / "x"),
                              "--device", "cpu")
    assert "not a checkpoint folder" in refused("export", str(tmp_path), str(tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
