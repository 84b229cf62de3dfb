"""LoRA's FLOPs and saved tensors against peft on real transformers models (CPU, fp32).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts every matmul of a forward and
backward of the peft-wrapped model (eager attention, no causal halving: the planner is asked
for causal=False); the planner's per-token training FLOPs with adapters must equal it: 2 x
forward for frozen linears, 3 x for the attention core and the adapters, and nothing for the
first layer's input gradient, which autograd skips.

Saved tensors: ``torch.autograd.graph.saved_tensors_hooks`` records what the forward saves
for backward (each storage once); what a change of rank adds must equal the planner's
per-layer adapter terms (B saves A's output).
"""

import pytest

from hf_oracle import to_hf_config
from planner.config import ModelConfig
from planner.finetune import Adapters

LLAMA = ModelConfig(family="llama", vocab_size=1000, hidden_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, ffn_hidden_size=344, max_context=256)
GPT2 = ModelConfig(family="gpt2", vocab_size=1000, hidden_size=128, num_layers=2, num_heads=4,
                   ffn_hidden_size=512, max_context=256, mlp="gelu", norm="layernorm",
                   position="learned", bias="all", tie_embeddings=True)
BATCH, SEQ = 2, 64


def peft_model(cfg: ModelConfig, *, rank: int, targets: list[str], dropout: float = 0.0):
    import peft
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = to_hf_config(cfg)
    hf_cfg = AutoConfig.for_model(hf.pop("model_type"), **hf, attn_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_cfg)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=targets,
                                                         lora_dropout=dropout))
    return wrapped.train()


def ids(cfg):
    import torch

    return torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cfg,targets", [
    (LLAMA, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    (LLAMA, ["q_proj", "v_proj"]),
    (GPT2, ["c_attn", "c_proj", "c_fc"]),
], ids=["llama-all", "llama-qv", "gpt2-all"])
def test_lora_training_flops_equal_flop_counter(cfg, targets):
    from torch.utils.flop_counter import FlopCounterMode

    from planner.flops import FlopConventions, flops_report

    model = peft_model(cfg, rank=8, targets=targets)
    x = ids(cfg)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x, labels=x).loss.backward()
    measured = counter.get_total_flops() / (BATCH * SEQ)
    adapters = Adapters(rank=8, targets=tuple(targets))
    planned = flops_report(cfg, SEQ, FlopConventions(causal=False), adapters=adapters)
    assert planned.train_flops_per_token == pytest.approx(measured, rel=1e-9)
    full = flops_report(cfg, SEQ, FlopConventions(causal=False))
    assert planned.train_flops_per_token < 0.75 * full.train_flops_per_token


def saved_bytes(model, x) -> int:
    """Bytes of the distinct storages the forward saves for backward (parameters excluded)."""
    import torch
    from torch.autograd.graph import saved_tensors_hooks

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=x, labels=x).loss
    del loss
    torch.manual_seed(0)
    return sum(seen.values())


def test_what_the_adapters_save_equals_peft():
    import torch

    from planner.finetune import layer_adapter_activation_bytes

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    x = ids(LLAMA)

    def measured(rank: int) -> int:
        torch.manual_seed(0)
        return saved_bytes(peft_model(LLAMA, rank=rank, targets=targets), x)

    def planned(rank: int) -> int:
        a = Adapters(rank=rank, targets=tuple(targets))
        return BATCH * LLAMA.num_layers * layer_adapter_activation_bytes(
            LLAMA, a, seq_len=SEQ, act_bytes=4, moe=False)

    # B saves A's output: r floats per token per adapted module (7 per layer), nothing else
    assert measured(16) - measured(8) == planned(16) - planned(8) == BATCH * SEQ * 2 * 7 * 8 * 4
