"""LoRA's trainable parameters against peft: ``get_peft_model(...).get_nb_trainable_parameters()``
on the family's transformers model built on the meta device from each config.json fixture,
for three target sets (attention, MLP, attention + LM head) at ranks 8, 16 and 64 each."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
# module names as transformers' models call them, per family (written here, not read from llmplan)
LLAMA = (("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"))
FUSED = (("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"))
NAMES = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "gemma": LLAMA,
         "mixtral": (LLAMA[0], ()),  # transformers 5 fuses the experts: no Linear to adapt
         "gpt2": (("c_attn", "c_proj"), ("c_fc", "c_proj")), "gpt_neox": FUSED, "bloom": FUSED,
         "falcon": FUSED, "opt": (("q_proj", "k_proj", "v_proj", "out_proj"), ("fc1", "fc2"))}


def peft_trainable(config: dict, rank: int, targets: list[str]) -> int:
    import peft
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=targets))
    return wrapped.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_trainable_parameters_equal_peft(path):
    from planner.lora import lora_parameters
    from presets import load_model

    config = json.loads(path.read_text())
    attention, mlp = NAMES[config["model_type"]]
    cfg = load_model(str(path))
    # every rank with every target set: attention, MLP, attention + LM head
    for targets in (attention, mlp, (*attention, "lm_head")):
        for rank in (8, 16, 64):
            if targets:
                ours = lora_parameters(cfg, rank=rank, targets=tuple(targets))
                assert ours == peft_trainable(config, rank, list(targets)), (targets, rank)


def test_params_reports_the_trainable_count_and_refuses_bad_targets():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tui.cli", "params", "llama-3-8b",
                               "--method", "lora", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    # Llama-3-8B, r = 16 on all seven projections, r (in + out) each (Hu et al. 2021 §4.1):
    # q and o are h <-> q, k and v h -> kv, gate / up / down h <-> f
    h, q, kv, f, L, r = 4096, 4096, 1024, 14336, 32, 16
    data = json.loads(run("--lora-rank", "16", "--json").stdout)
    assert data["trainable"] == r * L * (2 * (h + q) + 2 * (h + kv) + 3 * (h + f)) == 41_943_040
    bad = run("--lora-targets", "q_proj,query_key_value")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "query_key_value not in llama-3-8b (its linear modules: q_proj, k_proj" in bad.stderr
    zero = run("--lora-rank", "0")
    assert zero.returncode == 2 and "--lora-rank(0) must be a positive integer" in zero.stderr
