""":class:`ModelConfig` -> a Hugging Face ``config.json`` in the family's own field names: the
inverse of ``presets.hf`` (``from_hf_config(to_hf_config(cfg))`` gives ``cfg`` back), for
writing a folder ``transformers`` loads. A configuration the family's class cannot express is
refused with the field that stops it.
"""

from __future__ import annotations

from typing import Any

from planner.config import ConfigError, ModelConfig

_ACT = {("swiglu", "tanh"): "silu", ("swiglu", "none"): "silu", ("geglu", "tanh"): "gelu_pytorch_tanh",
        ("geglu", "none"): "gelu", ("reglu", "tanh"): "relu", ("reglu", "none"): "relu",
        ("gelu", "tanh"): "gelu_new", ("gelu", "none"): "gelu", ("relu", "tanh"): "relu",
        ("relu", "none"): "relu"}
_ROPE_TYPES = {"linear": "linear", "ntk": "dynamic", "yarn": "yarn", "llama3": "llama3"}


def _need(cfg: ModelConfig, ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(f"{cfg.name}: a {cfg.family} config.json cannot express {what}")


def _rope(cfg: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != "none":
        scaling: dict[str, Any] = {"rope_type": _ROPE_TYPES[cfg.rope_scaling],
                                   "factor": cfg.rope_scaling_factor}
        if cfg.rope_original_context:
            scaling["original_max_position_embeddings"] = cfg.rope_original_context
        out["rope_scaling"] = scaling
    return out


def _common(cfg: ModelConfig) -> dict[str, Any]:
    return {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings}


def _llama_like(cfg: ModelConfig) -> dict[str, Any]:
    fam = cfg.family
    _need(cfg, cfg.norm == "rmsnorm" and cfg.block == "pre_norm" and cfg.position == "rope",
          f"norm({cfg.norm}) / block({cfg.block}) / position({cfg.position})")
    _need(cfg, cfg.gated, f"mlp({cfg.mlp})")
    _need(cfg, cfg.rope_fraction == 1.0, f"rope_fraction({cfg.rope_fraction})")
    _need(cfg, cfg.embedding_multiplier == (cfg.hidden_size ** 0.5 if fam == "gemma" else 1.0),
          f"embedding_multiplier({cfg.embedding_multiplier})")
    out = {**_common(cfg), "model_type": fam, "hidden_size": cfg.hidden_size,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
           "intermediate_size": cfg.ffn_hidden_size, "rms_norm_eps": cfg.norm_eps,
           "max_position_embeddings": cfg.max_context, **_rope(cfg)}
    act = _ACT[cfg.mlp, cfg.gelu_approximate]
    out["hidden_activation" if fam == "gemma" else "hidden_act"] = act
    if fam == "qwen2":
        _need(cfg, cfg.bias == "qkv", f"bias({cfg.bias})")
    elif fam == "llama":
        _need(cfg, cfg.bias in ("none", "attention", "mlp", "all"), f"bias({cfg.bias})")
        out["attention_bias"] = cfg.bias in ("attention", "all")
        out["mlp_bias"] = cfg.bias in ("mlp", "all")
    else:
        _need(cfg, cfg.bias == "none", f"bias({cfg.bias})")
    if cfg.sliding_window:
        _need(cfg, fam in ("mistral", "mixtral", "qwen2"), f"sliding_window({cfg.sliding_window})")
        out["sliding_window"] = cfg.sliding_window
        if fam == "qwen2":
            out["use_sliding_window"] = True
    elif fam in ("mistral", "mixtral"):
        out["sliding_window"] = None
    if fam == "mixtral":
        out.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token)
    _need(cfg, fam == "mixtral" or not cfg.is_moe, f"experts({cfg.num_experts})")
    _need(cfg, not cfg.num_shared_experts and not cfg.first_dense_layers,
          "shared experts or leading dense layers")
    return out


def _gpt2(cfg: ModelConfig) -> dict[str, Any]:
    _need(cfg, cfg.position == "learned" and cfg.bias == "all" and cfg.norm == "layernorm"
          and cfg.mlp in ("gelu", "relu"), "this position / bias / norm / mlp")
    return {**_common(cfg), "model_type": "gpt2", "n_embd": cfg.hidden_size,
            "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.ffn_hidden_size,
            "n_positions": cfg.max_context, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": _ACT[cfg.mlp, cfg.gelu_approximate]}


def _gpt_neox(cfg: ModelConfig) -> dict[str, Any]:
    _need(cfg, cfg.bias == "all" and cfg.position == "rope", f"bias({cfg.bias})")
    return {**_common(cfg), "model_type": "gpt_neox", "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_hidden_size, "layer_norm_eps": cfg.norm_eps,
            "hidden_act": _ACT[cfg.mlp, cfg.gelu_approximate], "attention_bias": True,
            "use_parallel_residual": cfg.block == "parallel", "rotary_pct": cfg.rope_fraction,
            "partial_rotary_factor": cfg.rope_fraction,
            "max_position_embeddings": cfg.max_context, **_rope(cfg)}


def _opt(cfg: ModelConfig) -> dict[str, Any]:
    _need(cfg, cfg.position == "learned" and cfg.position_offset == 2 and cfg.bias == "all",
          "positions without OPT's offset of 2, or partial bias")
    return {**_common(cfg), "model_type": "opt", "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "ffn_dim": cfg.ffn_hidden_size, "word_embed_proj_dim": cfg.hidden_size,
            "activation_function": _ACT[cfg.mlp, cfg.gelu_approximate],
            "do_layer_norm_before": cfg.block == "pre_norm", "enable_bias": True,
            "_remove_final_layer_norm": cfg.block == "pre_norm" and not cfg.final_norm,
            "max_position_embeddings": cfg.max_context}


def _bloom(cfg: ModelConfig) -> dict[str, Any]:
    _need(cfg, cfg.position == "alibi" and cfg.embedding_norm and cfg.ffn_hidden_size
          == 4 * cfg.hidden_size, "this position / embedding norm / ffn width")
    return {**_common(cfg), "model_type": "bloom", "hidden_size": cfg.hidden_size,
            "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "layer_norm_epsilon": cfg.norm_eps, "seq_length": cfg.max_context}


def _falcon(cfg: ModelConfig) -> dict[str, Any]:
    _need(cfg, cfg.position == "rope", "ALiBi as llmplan computes it (Falcon scales it by 1/sqrt(d))")
    _need(cfg, cfg.bias in ("none", "all"), f"bias({cfg.bias})")
    new_arch = cfg.block == "parallel" and cfg.parallel_norms == 2
    out = {**_common(cfg), "model_type": "falcon", "hidden_size": cfg.hidden_size,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "ffn_hidden_size": cfg.ffn_hidden_size, "layer_norm_epsilon": cfg.norm_eps,
           "activation": _ACT[cfg.mlp, cfg.gelu_approximate], "alibi": False,
           "bias": cfg.bias == "all", "new_decoder_architecture": new_arch,
           "parallel_attn": cfg.block == "parallel", "max_position_embeddings": cfg.max_context,
           **_rope(cfg)}
    if new_arch:
        out["num_kv_heads"] = cfg.num_kv_heads
    else:
        _need(cfg, cfg.num_kv_heads in (1, cfg.num_heads), f"kv heads({cfg.num_kv_heads})")
        out["multi_query"] = cfg.num_kv_heads == 1
    return out


WRITERS = {"llama": _llama_like, "mistral": _llama_like, "mixtral": _llama_like,
           "qwen2": _llama_like, "gemma": _llama_like, "gpt2": _gpt2, "gpt_neox": _gpt_neox,
           "opt": _opt, "bloom": _bloom, "falcon": _falcon}


def to_hf_config(cfg: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    if cfg.family not in WRITERS:
        raise ConfigError(f"{cfg.name}: family {cfg.family!r} has no Hugging Face config "
                          f"(supported: {', '.join(sorted(WRITERS))})")
    from dataclasses import fields

    from planner.layer_fields import VARIANT_FIELDS

    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for name in VARIANT_FIELDS:  # layer variants none of these families' classes has
        _need(cfg, getattr(cfg, name) == defaults[name], f"{name}({getattr(cfg, name)!r})")
    out = WRITERS[cfg.family](cfg)
    return {**out, "architectures": [_ARCH[cfg.family]], "torch_dtype": dtype, "dtype": dtype}


_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "mixtral": "MixtralForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM",
         "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "opt": "OPTForCausalLM",
         "bloom": "BloomForCausalLM", "falcon": "FalconForCausalLM"}
