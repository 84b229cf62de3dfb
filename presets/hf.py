"""Hugging Face ``config.json`` -> :class:`ModelConfig`, one explicit mapping per family.

Each family's own field names and defaults (as in its ``configuration_*.py`` in transformers)
are mapped; nothing is guessed from ratios (llm-analysis decides "gated" from ``f/h == 3.5``
and gets Llama-2 wrong). A missing required field or an unknown ``model_type`` is an error
that names it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from planner.config import ConfigError, ModelConfig

_MISSING = object()


class _Fields:
    """Typed reads from a config dict, with errors that name the file and the field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def get(self, *names: str, default: Any = _MISSING) -> Any:
        for name in names:
            if name in self.data and self.data[name] is not None:
                return self.data[name]
        if default is _MISSING:
            raise ConfigError(f"{self.where}: missing field {' / '.join(names)}")
        return default

    def int(self, *names: str, default: Any = _MISSING) -> int:
        value = self.get(*names, default=default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.where}: {names[0]}({value!r}) must be an integer")
        return value


def _activation(act: str, *, gated: bool, where: str) -> dict[str, str]:
    """The MLP kind and, for GELU, its form: "gelu" is the exact erf form in transformers'
    ``ACT2FN``; gelu_new, gelu_fast, gelu_pytorch_tanh are the tanh approximation."""
    act = act.lower()
    if gated:
        table = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu",
                 "gelu_pytorch_tanh": "geglu", "gelu_fast": "geglu", "relu": "reglu"}
    else:
        table = {"gelu": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu",
                 "gelu_pytorch_tanh": "gelu", "relu": "relu"}
    if act not in table:
        raise ConfigError(f"{where}: unsupported activation {act!r}")
    out = {"mlp": table[act]}
    if out["mlp"] in ("gelu", "geglu"):
        out["gelu_approximate"] = "none" if act == "gelu" else "tanh"
    return out


def _rope(f: _Fields) -> dict[str, Any]:
    """RoPE base and scaling: transformers 4.x ``rope_theta``/``rope_scaling`` or 5.x ``rope_parameters``."""
    params = f.get("rope_parameters", default=None) or {}
    scaling = f.get("rope_scaling", default=None) or {}
    merged = {**params, **scaling}
    theta = merged.get("rope_theta", f.get("rope_theta", default=10000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    out: dict[str, Any] = {"rope_theta": float(theta)}
    names = {"default": "none", "linear": "linear", "dynamic": "ntk", "ntk": "ntk",
             "yarn": "yarn", "llama3": "llama3"}
    if kind not in names:
        raise ConfigError(f"{f.where}: unsupported rope scaling type {kind!r}")
    if names[kind] != "none":
        out["rope_scaling"] = names[kind]
        out["rope_scaling_factor"] = float(merged.get("factor", 1.0))
        original = merged.get("original_max_position_embeddings")
        if original:
            out["rope_original_context"] = int(original)
    return out


def _llama_like(f: _Fields, family: str) -> dict[str, Any]:
    """Llama, Mistral, Mixtral, Qwen2 and Gemma share field names (``LlamaConfig``)."""
    h = f.int("hidden_size")
    a = f.int("num_attention_heads")
    out = {
        "family": family,
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": a,
        "num_kv_heads": f.int("num_key_value_heads", default=a),
        "head_dim": f.int("head_dim", default=h // a if a else 0),
        "ffn_hidden_size": f.int("intermediate_size"),
        "norm": "rmsnorm",
        "norm_eps": float(f.get("rms_norm_eps", default=1e-6)),
        "position": "rope",
        "max_context": f.int("max_position_embeddings"),
        **_rope(f),
    }
    act = f.get("hidden_activation", "hidden_act", default="silu")
    out.update(_activation(act, gated=True, where=f.where))
    attention_bias = bool(f.get("attention_bias", default=False))
    mlp_bias = bool(f.get("mlp_bias", default=False))
    if family == "qwen2":
        out["bias"] = "qkv"
    elif attention_bias and mlp_bias:
        out["bias"] = "all"
    elif attention_bias:
        out["bias"] = "attention"
    elif mlp_bias:
        raise ConfigError(f"{f.where}: mlp_bias without attention_bias is not supported")
    else:
        out["bias"] = "none"
    tie_default = family == "gemma"
    out["tie_embeddings"] = bool(f.get("tie_word_embeddings", default=tie_default))
    window = f.get("sliding_window", default=None)
    if family == "qwen2" and not f.get("use_sliding_window", default=False):
        window = None
    if window:
        out["sliding_window"] = int(window)
    if family == "mixtral":
        out["num_experts"] = f.int("num_local_experts")
        out["experts_per_token"] = f.int("num_experts_per_tok")
    return out


def _gpt2(f: _Fields) -> dict[str, Any]:
    h = f.int("n_embd", "hidden_size")
    return {
        "family": "gpt2",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("n_layer", "num_hidden_layers"),
        "num_heads": f.int("n_head", "num_attention_heads"),
        "ffn_hidden_size": f.int("n_inner", default=4 * h),
        **_activation(f.get("activation_function", default="gelu_new"), gated=False,
                           where=f.where),
        "norm": "layernorm",
        "norm_eps": float(f.get("layer_norm_epsilon", default=1e-5)),
        "position": "learned",
        "max_context": f.int("n_positions", "max_position_embeddings", default=1024),
        "bias": "all",
        "tie_embeddings": bool(f.get("tie_word_embeddings", default=True)),
    }


def _gpt_neox(f: _Fields) -> dict[str, Any]:
    if not f.get("attention_bias", default=True):
        raise ConfigError(f"{f.where}: gpt_neox attention_bias=false is not supported")
    parallel = bool(f.get("use_parallel_residual", default=True))
    rope_fraction = f.get("partial_rotary_factor", "rotary_pct", default=None)
    if rope_fraction is None:
        rope_fraction = (f.get("rope_parameters", default=None) or {}).get(
            "partial_rotary_factor", 0.25)
    return {
        "family": "gpt_neox",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": f.int("hidden_size"),
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": f.int("num_attention_heads"),
        "ffn_hidden_size": f.int("intermediate_size"),
        **_activation(f.get("hidden_act", default="gelu"), gated=False, where=f.where),
        "norm": "layernorm",
        "norm_eps": float(f.get("layer_norm_eps", default=1e-5)),
        "block": "parallel" if parallel else "pre_norm",
        "parallel_norms": 2,
        "position": "rope",
        "rope_fraction": float(rope_fraction),
        "max_context": f.int("max_position_embeddings"),
        "bias": "all",
        "tie_embeddings": bool(f.get("tie_word_embeddings", default=False)),
        **_rope(f),
    }


def _opt(f: _Fields) -> dict[str, Any]:
    h = f.int("hidden_size")
    if f.int("word_embed_proj_dim", default=h) != h:
        raise ConfigError(f"{f.where}: OPT word_embed_proj_dim != hidden_size (project_in/out) "
                          "is not supported")
    if not f.get("enable_bias", default=True):
        raise ConfigError(f"{f.where}: OPT enable_bias=false is not supported")
    pre_norm = bool(f.get("do_layer_norm_before", default=True))
    return {
        "family": "opt",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": f.int("num_attention_heads"),
        "ffn_hidden_size": f.int("ffn_dim"),
        **_activation(f.get("activation_function", default="relu"), gated=False,
                           where=f.where),
        "norm": "layernorm",
        "block": "pre_norm" if pre_norm else "post_norm",
        "final_norm": pre_norm and not f.get("_remove_final_layer_norm", default=False),
        "position": "learned",
        "position_offset": 2,  # OPTLearnedPositionalEmbedding keeps 2 extra rows
        "max_context": f.int("max_position_embeddings"),
        "bias": "all",
        "tie_embeddings": bool(f.get("tie_word_embeddings", default=True)),
    }


def _bloom(f: _Fields) -> dict[str, Any]:
    h = f.int("hidden_size", "n_embed")
    return {
        "family": "bloom",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("n_layer", "num_hidden_layers"),
        "num_heads": f.int("n_head", "num_attention_heads"),
        "ffn_hidden_size": 4 * h,  # BloomMLP is fixed at 4h
        "mlp": "gelu",
        "gelu_approximate": "tanh",  # bloom_gelu: the tanh approximation, written out
        "norm": "layernorm",
        "norm_eps": float(f.get("layer_norm_epsilon", default=1e-5)),
        "embedding_norm": True,
        "position": "alibi",
        # ALiBi has no maximum; BLOOM was trained on 2048-token sequences (arXiv 2211.05100 §3.3).
        "max_context": f.int("seq_length", default=2048),
        "bias": "all",
        "tie_embeddings": bool(f.get("tie_word_embeddings", default=True)),
    }


def _falcon(f: _Fields) -> dict[str, Any]:
    h = f.int("hidden_size")
    a = f.int("num_attention_heads", "n_head")
    new_arch = bool(f.get("new_decoder_architecture", default=False))
    if new_arch:
        g = f.int("num_kv_heads", "n_head_kv", default=a)
        block, norms = "parallel", f.int("num_ln_in_parallel_attn", default=2)
    else:
        g = 1 if f.get("multi_query", default=True) else a
        parallel = bool(f.get("parallel_attn", default=True))
        block, norms = ("parallel", 1) if parallel else ("pre_norm", 1)
    alibi = bool(f.get("alibi", default=False))
    return {
        "family": "falcon",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers", "n_layer"),
        "num_heads": a,
        "num_kv_heads": g,
        "ffn_hidden_size": f.int("ffn_hidden_size", default=4 * h),
        **_activation(f.get("activation", default="gelu"), gated=False, where=f.where),
        "norm": "layernorm",
        "norm_eps": float(f.get("layer_norm_epsilon", default=1e-5)),
        "block": block,
        "parallel_norms": norms,
        "position": "alibi" if alibi else "rope",
        "max_context": f.int("max_position_embeddings", default=2048),
        "bias": "all" if f.get("bias", default=False) else "none",
        "tie_embeddings": bool(f.get("tie_word_embeddings", default=True)),
        **({} if alibi else _rope(f)),
    }


FAMILIES: dict[str, Callable[[_Fields], dict[str, Any]]] = {
    "llama": lambda f: _llama_like(f, "llama"),
    "mistral": lambda f: _llama_like(f, "mistral"),
    "mixtral": lambda f: _llama_like(f, "mixtral"),
    "qwen2": lambda f: _llama_like(f, "qwen2"),
    "gemma": lambda f: _llama_like(f, "gemma"),
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "bloom": _bloom,
    "falcon": _falcon,
}


def from_hf_config(data: Mapping[str, Any], *, name: str = "hf", where: str = "config.json") -> ModelConfig:
    """Map a Hugging Face ``config.json`` dict to a :class:`ModelConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object")
    model_type = data.get("model_type")
    if model_type is None:
        raise ConfigError(f"{where}: missing field model_type")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{where}: unknown architecture model_type={model_type!r} "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    fields = FAMILIES[model_type](_Fields(data, where))
    try:
        return ModelConfig(name=name, source=where, **fields)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
