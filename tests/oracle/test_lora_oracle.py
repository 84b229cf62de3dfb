"""LoRA's trainable parameters against peft: ``get_peft_model(...).get_nb_trainable_parameters()``
on the family's transformers model built on the meta device from each config.json fixture,
for three target sets (token mixer, MLP, token mixer + LM head) at ranks 8, 16 and 64 each.

MoE models' MLP targets are counted from the transformers model's own tensors instead:
transformers 5 stacks the routed experts into ``experts.gate_up_proj`` (E, 2f, h) and
``experts.down_proj`` (E, h, f), and peft 0.21 moves expert names onto those stacked tensors
(its ``_MOE_TARGET_MODULE_MAPPING``) with a rank-E*r adapter, dropping the dense MLPs that
share the names. Each expert's linear as its checkpoint holds it (``experts.{e}.gate_proj``,
Mixtral's ``experts.{e}.w1``) takes r (in + out), as every other nn.Linear does."""

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
MLA = ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
NAMES = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "gemma": LLAMA, "qwen3": LLAMA,
         "gemma2": LLAMA, "gemma3_text": LLAMA,
         # MoE checkpoints name each routed expert's linears (Mixtral w1 / w3 / w2, the others
         # like the dense MLP): the MLP targets adapt dense MLPs, shared and routed experts
         "mixtral": (LLAMA[0], ("w1", "w3", "w2")), "qwen3_moe": LLAMA, "deepseek_v2": (MLA, LLAMA[1]),
         "deepseek_v3": (("q_a_proj", "q_b_proj", *MLA[1:]), LLAMA[1]),
         "jamba": (("in_proj", "x_proj", "dt_proj", "out_proj", *LLAMA[0]), LLAMA[1]),
         "mamba": (("in_proj", "x_proj", "dt_proj"), ()), "mamba2": (("in_proj",), ()),
         "rwkv": (("key", "value", "receptance", "output"), ("key", "receptance", "value")),
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


def linear_trainable(config: dict, rank: int, targets: list[str]) -> int:
    """r (in + out) over the transformers model's nn.Linear modules named by ``targets``, and
    over each expert of its stacked experts (gate and up halves of gate_up_proj, down_proj)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    family = config.pop("model_type")
    gate, up, down = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj",
                                                                     "down_proj")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **config))
    total = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf in targets:
            total += rank * (module.in_features + module.out_features)
        elif type(module).__name__.endswith("Experts"):
            experts, two_f, h = module.gate_up_proj.shape
            halves = (gate in targets) + (up in targets)
            total += halves * experts * rank * (h + two_f // 2)
            if down in targets:
                experts, h, f = module.down_proj.shape
                total += experts * rank * (f + h)
    return total


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_trainable_parameters_equal_peft(path):
    from planner.lora import lora_parameters
    from presets import load_model

    config = json.loads(path.read_text())
    attention, mlp = NAMES[config["model_type"]]
    cfg = load_model(str(path))
    moe = cfg.num_experts > 0
    # every rank with every target set: token mixer, MLP, token mixer + LM head
    head = "head" if config["model_type"] == "rwkv" else "lm_head"
    for targets in (attention, mlp, (*attention, head)):
        oracle = linear_trainable if moe and targets is mlp else peft_trainable
        for rank in (8, 16, 64):
            if targets:
                ours = lora_parameters(cfg, rank=rank, targets=tuple(targets))
                assert ours == oracle(config, rank, list(targets)), (targets, rank)


def test_lora_on_mamba_out_proj_is_refused_as_peft_refuses_it():
    """peft raises on Mamba's out_proj (its fused kernel reads the weight); so does llmplan,
    in one line, and its default targets leave it out."""
    from planner.config import ConfigError
    from planner.lora import default_targets, lora_parameters
    from presets import load_model

    config = json.loads((FIXTURES / "mamba-small.json").read_text())
    with pytest.raises(ValueError, match="out_proj"):
        peft_trainable(config, 8, ["out_proj"])
    cfg = load_model(str(FIXTURES / "mamba-small.json"))
    with pytest.raises(ConfigError, match="LoRA on mamba's out_proj is refused"):
        lora_parameters(cfg, rank=8, targets=("in_proj", "out_proj"))
    assert default_targets(cfg) == ("in_proj", "x_proj", "dt_proj")
    assert lora_parameters(cfg, rank=8) == peft_trainable(config, 8, list(default_targets(cfg)))


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
