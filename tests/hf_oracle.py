"""Test-only oracle: the real Hugging Face model, built on the meta device, counts parameters.

``to_hf_config`` writes a ModelConfig back in each family's own field names; the count is
``sum(p.numel() for p in model.parameters())`` (tied weights are one parameter). Nothing of
llmplan's counting code is used here.
"""

from __future__ import annotations

from typing import Any

from planner.config import ModelConfig

HF_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "gemma", "gpt2", "gpt_neox", "opt",
               "bloom", "falcon", "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "deepseek_v2",
               "deepseek_v3", "mamba", "mamba2", "jamba", "rwkv"}


def _layer_types(cfg: ModelConfig) -> list[str]:
    return ["sliding_attention" if cfg.layer_is_sliding(i) else "full_attention"
            for i in range(cfg.num_layers)]


def _variant_config(cfg: ModelConfig) -> dict[str, Any]:
    """The families with layer variants, in their own field names."""
    V, h, L, a, g, d, f = (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.ffn_hidden_size)
    fam = cfg.family
    common = dict(model_type=fam, vocab_size=V, hidden_size=h, num_hidden_layers=L,
                  tie_word_embeddings=cfg.tie_embeddings)
    attn = dict(num_attention_heads=a, num_key_value_heads=g, intermediate_size=f,
                max_position_embeddings=cfg.max_context)
    if fam in ("qwen3", "qwen3_moe"):
        out = dict(common, **attn, head_dim=d, attention_bias=cfg.bias == "attention")
        if fam == "qwen3_moe":
            out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
                       moe_intermediate_size=cfg.moe_ffn_hidden_size,
                       decoder_sparse_step=cfg.moe_layer_period,
                       mlp_only_layers=list(cfg.mlp_only_layers))
        return out
    if fam in ("gemma2", "gemma3_text"):
        return dict(common, **attn, head_dim=d, sliding_window=cfg.sliding_window or 4096,
                    layer_types=_layer_types(cfg), query_pre_attn_scalar=cfg.attention_scale_dim)
    if fam in ("deepseek_v2", "deepseek_v3"):
        return dict(common, **attn, q_lora_rank=cfg.q_lora_rank or None,
                    kv_lora_rank=cfg.kv_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
                    qk_nope_head_dim=d - cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
                    n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
                    n_shared_experts=cfg.num_shared_experts,
                    moe_intermediate_size=cfg.moe_ffn_hidden_size,
                    first_k_dense_replace=cfg.first_dense_layers)
    if fam in ("mamba", "mamba2"):
        out = dict(common, state_size=cfg.ssm_state_size, expand=cfg.recurrent_width // h,
                   conv_kernel=cfg.ssm_conv_kernel, use_bias=cfg.ssm_proj_bias,
                   use_conv_bias=cfg.ssm_conv_bias)
        if fam == "mamba":
            out["time_step_rank"] = cfg.ssm_dt_rank
        else:
            out.update(num_heads=cfg.ssm_heads, head_dim=cfg.recurrent_width // cfg.ssm_heads,
                       n_groups=cfg.ssm_groups, chunk_size=cfg.ssm_chunk_size)
        return out
    if fam == "jamba":
        return dict(common, **attn, num_experts=cfg.num_experts or 1,
                    num_experts_per_tok=cfg.experts_per_token or 1,
                    expert_layer_period=cfg.moe_layer_period,
                    expert_layer_offset=cfg.moe_layer_offset,
                    attn_layer_period=cfg.attention_layer_period,
                    attn_layer_offset=cfg.attention_layer_offset,
                    mamba_d_state=cfg.ssm_state_size, mamba_d_conv=cfg.ssm_conv_kernel,
                    mamba_expand=cfg.recurrent_width // h, mamba_dt_rank=cfg.ssm_dt_rank,
                    mamba_conv_bias=cfg.ssm_conv_bias, mamba_proj_bias=cfg.ssm_proj_bias)
    if fam == "rwkv":
        return dict(common, attention_hidden_size=cfg.recurrent_width, intermediate_size=f,
                    context_length=cfg.max_context)
    raise ValueError(f"no HF family for {fam}")


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
    return _variant_config(cfg)


def hf_param_count(config: dict[str, Any], *, active_experts: int | None = None) -> int:
    """Parameters of the HF model built from ``config`` on the meta device.

    With ``active_experts``, an MoE model is rebuilt with that many experts: the per-token
    active count of a top-k model equals the total of the same model with k experts.
    """
    return sum(p.numel() for p in hf_meta_model(config, active_experts=active_experts).parameters())


EXPERT_FIELDS = {"mixtral": "num_local_experts", "qwen3_moe": "num_experts",
                 "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts",
                 "jamba": "num_experts"}
"""The field each MoE family names its routed experts by."""


def hf_meta_model(config: dict[str, Any], *, active_experts: int | None = None,
                  device: str = "meta", **overrides: Any):
    """The HF causal LM of ``config`` (on the meta device unless ``device``); with
    ``active_experts``, rebuilt with that many routed experts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    if active_experts is not None:
        config[EXPERT_FIELDS[config["model_type"]]] = active_experts
        config["num_experts_per_tok"] = min(config["num_experts_per_tok"], active_experts)
        if config["model_type"] == "deepseek_v3":  # expert groups must divide the experts
            config.update(n_group=1, topk_group=1)
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config, **overrides)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(hf_config)
