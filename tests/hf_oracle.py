"""Test-only oracle: the real Hugging Face model, built on the meta device, counts parameters.

``to_hf_config`` writes a ModelConfig back in each family's own field names; the count is
``sum(p.numel() for p in model.parameters())`` (tied weights are one parameter). Nothing of
llmplan's counting code is used here.
"""

from __future__ import annotations

from typing import Any

from planner.config import ModelConfig

HF_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "gemma", "gpt2", "gpt_neox", "opt",
               "bloom", "falcon"}


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    V, h, L, a, g, d, f = (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.ffn_hidden_size)
    fam = cfg.family
    if fam in ("llama", "mistral", "mixtral", "qwen2", "gemma"):
        out = dict(model_type=fam, vocab_size=V, hidden_size=h, num_hidden_layers=L,
                   num_attention_heads=a, num_key_value_heads=g, head_dim=d,
                   intermediate_size=f, max_position_embeddings=cfg.max_context,
                   tie_word_embeddings=cfg.tie_embeddings)
        if fam == "llama":
            out["attention_bias"] = cfg.bias in ("attention", "all")
            out["mlp_bias"] = cfg.bias == "all"
        if fam == "mixtral":
            out.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token)
        return out
    if fam == "gpt2":
        return dict(model_type="gpt2", vocab_size=V, n_embd=h, n_layer=L, n_head=a, n_inner=f,
                    n_positions=cfg.max_context, tie_word_embeddings=cfg.tie_embeddings)
    if fam == "gpt_neox":
        return dict(model_type="gpt_neox", vocab_size=V, hidden_size=h, num_hidden_layers=L,
                    num_attention_heads=a, intermediate_size=f,
                    max_position_embeddings=cfg.max_context,
                    use_parallel_residual=cfg.block == "parallel",
                    tie_word_embeddings=cfg.tie_embeddings)
    if fam == "opt":
        return dict(model_type="opt", vocab_size=V, hidden_size=h, num_hidden_layers=L,
                    num_attention_heads=a, ffn_dim=f, word_embed_proj_dim=h,
                    max_position_embeddings=cfg.max_context,
                    do_layer_norm_before=cfg.block == "pre_norm")
    if fam == "bloom":
        return dict(model_type="bloom", vocab_size=V, hidden_size=h, n_layer=L, n_head=a)
    if fam == "falcon":
        new_arch = cfg.parallel_norms == 2
        out = dict(model_type="falcon", vocab_size=V, hidden_size=h, num_hidden_layers=L,
                   num_attention_heads=a, new_decoder_architecture=new_arch,
                   parallel_attn=cfg.block == "parallel", bias=cfg.bias == "all",
                   ffn_hidden_size=f, max_position_embeddings=cfg.max_context)
        if new_arch:
            out["num_kv_heads"] = g
        else:
            out["multi_query"] = g == 1
        return out
    raise ValueError(f"no HF family for {fam}")


def hf_param_count(config: dict[str, Any], *, active_experts: int | None = None) -> int:
    """Parameters of the HF model built from ``config`` on the meta device.

    With ``active_experts``, an MoE model is rebuilt with that many experts: the per-token
    active count of a top-k model equals the total of the same model with k experts.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    if active_experts is not None:
        config["num_local_experts"] = active_experts
        config["num_experts_per_tok"] = min(config["num_experts_per_tok"], active_experts)
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())
