"""Exact-matmul forward FLOPs against torch.utils.flop_counter on real models (within 0.5%).

The models are Hugging Face ``transformers`` models of the same configuration, run for real
on CPU in fp32. FlopCounterMode counts every matmul (including SDPA's two) without causal
halving, so the planner is asked for causal=False. torch is pinned in CI (2.13), which
matters: FlopCounterMode double-counted SDPA in torch 2.5 (pytorch/pytorch#134804).
"""

import pytest

from hf_oracle import to_hf_config
from planner.config import ModelConfig
from planner.flops import FlopConventions, forward_flops_per_token

BASE = dict(family="llama", vocab_size=1000, hidden_size=256, num_layers=2, num_heads=8,
            ffn_hidden_size=688, max_context=512)
CASES = {
    "dense-mha": ModelConfig(**BASE),
    "dense-gqa": ModelConfig(**{**BASE, "num_kv_heads": 2}),
    "mqa-headdim": ModelConfig(**{**BASE, "num_kv_heads": 1, "head_dim": 48}),
    "moe-top2": ModelConfig(**{**BASE, "family": "mixtral", "num_kv_heads": 4,
                               "num_experts": 4, "experts_per_token": 2}),
    "gpt2-gelu": ModelConfig(family="gpt2", vocab_size=1000, hidden_size=256, num_layers=2,
                             num_heads=8, ffn_hidden_size=1024, max_context=512, mlp="gelu",
                             norm="layernorm", position="learned", bias="all",
                             tie_embeddings=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_flops_match_flop_counter(name):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = CASES[name]
    hf = to_hf_config(cfg)
    model_type = hf.pop("model_type")
    # Eager attention and experts: on CPU, FlopCounterMode (torch 2.13) has no formula for
    # SDPA's CPU flash kernel nor for grouped_mm, so those paths would count 0 for attention
    # scores and experts. Eager runs every matmul as aten.mm / aten.bmm, which it counts.
    hf_cfg = AutoConfig.for_model(model_type, **hf, attn_implementation="eager",
                                  experts_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_cfg).eval()
    batch, seq = 2, 128
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    measured = counter.get_total_flops() / (batch * seq)
    planned = forward_flops_per_token(cfg, seq, FlopConventions(causal=False)).total
    assert planned == pytest.approx(measured, rel=0.005)
