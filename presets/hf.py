"""Hugging Face ``config.json`` -> :class:`ModelConfig`, one explicit mapping per family.

Each family's own field names are mapped; a field the file leaves out takes the value
``transformers`` gives it (``presets.hf_defaults``), so any config.json ``transformers``
accepts is accepted. Nothing is guessed from ratios (llm-analysis decides "gated" from
``f/h == 3.5`` and gets Llama-2 wrong). A field of the wrong type or an unknown
``model_type`` is an error that names it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from planner.config import ConfigError, ModelConfig
from presets.hf_defaults import DEFAULTS

_MISSING = object()


class _Fields:
    """Typed reads from a config dict, with errors that name the file and the field.

    ``get(*names, default=...)`` returns the first of ``names`` the file has; a ``null`` there
    means ``default`` (a value computed from other fields, or None), as in the config class.
    A field the file lacks takes the family's ``transformers`` default, then ``default``."""

    def __init__(self, data: Mapping[str, Any], where: str,
                 defaults: Mapping[str, Any] | None = None) -> None:
        self.data, self.where, self.defaults = data, where, defaults or {}

    def get(self, *names: str, default: Any = _MISSING) -> Any:
        for name in names:
            if self.data.get(name) is not None:
                return self.data[name]
        if any(name in self.data for name in names):  # given as null
            return None if default is _MISSING else default
        for name in names:
            if name in self.defaults:
                return self.defaults[name]
        if default is _MISSING:
            raise ConfigError(f"{self.where}: missing field {' / '.join(names)}")
        return default

    def int(self, *names: str, default: Any = _MISSING) -> int:
        value = self.get(*names, default=default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.where}: {names[0]}({_shown(value)}) must be an integer")
        return value

    def float(self, *names: str, default: Any = _MISSING) -> float:
        value = self.get(*names, default=default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where}: {names[0]}({_shown(value)}) must be a number")
        return float(value)

    def bool(self, *names: str, default: Any = _MISSING) -> bool:
        value = self.get(*names, default=default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where}: {names[0]}({_shown(value)}) must be true or false")
        return value

    def str(self, *names: str, default: Any = _MISSING) -> str:
        value = self.get(*names, default=default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where}: {names[0]}({_shown(value)}) must be a non-empty string")
        return value

    def table(self, name: str) -> dict[str, Any]:
        value = self.get(name, default=None)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where}: {name}({_shown(value)}) must be an object")
        return dict(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__} value"


def _activation(act: str, *, gated: bool, where: str) -> dict[str, str]:
    """The MLP kind and, for GELU, its form: "gelu" is the exact erf form in transformers'
    ``ACT2FN``; gelu_new, gelu_fast, gelu_pytorch_tanh are the tanh approximation."""
    if not isinstance(act, str):
        raise ConfigError(f"{where}: activation({_shown(act)}) must be a string")
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
    merged = {**f.table("rope_parameters"), **f.table("rope_scaling")}
    rope = _Fields(merged, f"{f.where} rope_parameters")
    theta = rope.float("rope_theta", default=f.float("rope_theta", default=10000.0))
    kind = rope.get("rope_type", "type", default="default")
    out: dict[str, Any] = {"rope_theta": theta}
    names = {"default": "none", "linear": "linear", "dynamic": "ntk", "ntk": "ntk",
             "yarn": "yarn", "llama3": "llama3"}
    if not isinstance(kind, str) or kind not in names:
        raise ConfigError(f"{f.where}: unsupported rope scaling type {_shown(kind)}")
    if names[kind] != "none":
        out["rope_scaling"] = names[kind]
        out["rope_scaling_factor"] = rope.float("factor", default=1.0)
        original = rope.get("original_max_position_embeddings", default=None)
        if original:
            out["rope_original_context"] = rope.int("original_max_position_embeddings")
    return out


def _decoder(f: _Fields, family: str, *, act: tuple[str, ...] = ("hidden_act",)) -> dict[str, Any]:
    """The fields every Llama-style config names alike (``LlamaConfig``): sizes, RMSNorm, a
    gated MLP, tied embeddings."""
    h = f.int("hidden_size")
    a = f.int("num_attention_heads")
    return {
        "family": family,
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": a,
        "num_kv_heads": f.int("num_key_value_heads", default=a),
        "head_dim": f.int("head_dim", default=h // a if a else 0),
        "ffn_hidden_size": f.int("intermediate_size"),
        "norm": "rmsnorm",
        "norm_eps": f.float("rms_norm_eps"),
        "max_context": f.int("max_position_embeddings"),
        "tie_embeddings": f.bool("tie_word_embeddings"),
        **_activation(f.get(*act), gated=True, where=f.where),
    }


def _llama_like(f: _Fields, family: str) -> dict[str, Any]:
    """Llama, Mistral, Mixtral, Qwen2 and Gemma share field names (``LlamaConfig``)."""
    h = f.int("hidden_size")
    out = {**_decoder(f, family, act=("hidden_activation", "hidden_act")), "position": "rope",
           **_rope(f)}
    attention_bias = f.bool("attention_bias", default=False)
    mlp_bias = f.bool("mlp_bias", default=False)
    if family == "qwen2":
        out["bias"] = "qkv"
    else:
        out["bias"] = {(True, True): "all", (True, False): "attention", (False, True): "mlp",
                       (False, False): "none"}[attention_bias, mlp_bias]
    window = f.get("sliding_window", default=None)
    if family == "qwen2" and not f.bool("use_sliding_window", default=False):
        window = None
    if window:
        out["sliding_window"] = f.int("sliding_window")
    if family == "gemma":  # GemmaModel.forward: inputs_embeds * hidden_size ** 0.5
        out["embedding_multiplier"] = h ** 0.5
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
        **_activation(f.get("activation_function"), gated=False, where=f.where),
        "norm": "layernorm",
        "norm_eps": f.float("layer_norm_epsilon"),
        "position": "learned",
        "max_context": f.int("n_positions", "max_position_embeddings"),
        "bias": "all",
        "tie_embeddings": f.bool("tie_word_embeddings"),
    }


def _gpt_neox(f: _Fields) -> dict[str, Any]:
    if not f.bool("attention_bias"):
        raise ConfigError(f"{f.where}: gpt_neox attention_bias=false is not supported")
    rope_params = _Fields(f.table("rope_parameters"), f"{f.where} rope_parameters")
    fraction = rope_params.get("partial_rotary_factor", default=None)
    if fraction is None:  # transformers 4.x names, then the class default
        fraction = f.get("partial_rotary_factor", "rotary_pct")
    return {
        "family": "gpt_neox",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": f.int("hidden_size"),
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": f.int("num_attention_heads"),
        "ffn_hidden_size": f.int("intermediate_size"),
        **_activation(f.get("hidden_act"), gated=False, where=f.where),
        "norm": "layernorm",
        "norm_eps": f.float("layer_norm_eps"),
        "block": "parallel" if f.bool("use_parallel_residual") else "pre_norm",
        "parallel_norms": 2,
        "position": "rope",
        "rope_fraction": _Fields({"partial_rotary_factor": fraction}, f.where).float(
            "partial_rotary_factor"),
        "max_context": f.int("max_position_embeddings"),
        "bias": "all",
        "tie_embeddings": f.bool("tie_word_embeddings"),
        **_rope(f),
    }


def _opt(f: _Fields) -> dict[str, Any]:
    h = f.int("hidden_size")
    if f.int("word_embed_proj_dim", default=h) != h:
        raise ConfigError(f"{f.where}: OPT word_embed_proj_dim != hidden_size (project_in/out) "
                          "is not supported")
    if not f.bool("enable_bias"):
        raise ConfigError(f"{f.where}: OPT enable_bias=false is not supported")
    pre_norm = f.bool("do_layer_norm_before")
    return {
        "family": "opt",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers"),
        "num_heads": f.int("num_attention_heads"),
        "ffn_hidden_size": f.int("ffn_dim"),
        **_activation(f.get("activation_function"), gated=False, where=f.where),
        "norm": "layernorm",
        "block": "pre_norm" if pre_norm else "post_norm",
        "final_norm": pre_norm and not f.bool("_remove_final_layer_norm", default=False),
        "position": "learned",
        "position_offset": 2,  # OPTLearnedPositionalEmbedding keeps 2 extra rows
        "max_context": f.int("max_position_embeddings"),
        "bias": "all",
        "tie_embeddings": f.bool("tie_word_embeddings"),
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
        "norm_eps": f.float("layer_norm_epsilon"),
        "embedding_norm": True,
        "position": "alibi",
        # ALiBi has no maximum; BLOOM was trained on 2048-token sequences (arXiv 2211.05100 §3.3).
        "max_context": f.int("seq_length", default=2048),
        "bias": "all",
        "tie_embeddings": f.bool("tie_word_embeddings"),
    }


def _falcon(f: _Fields) -> dict[str, Any]:
    h = f.int("hidden_size")
    a = f.int("num_attention_heads", "n_head")
    if f.bool("new_decoder_architecture"):
        g = f.int("num_kv_heads", "n_head_kv", default=a)
        block, norms = "parallel", f.int("num_ln_in_parallel_attn", default=2)
    else:
        g = 1 if f.bool("multi_query") else a
        block, norms = ("parallel" if f.bool("parallel_attn") else "pre_norm"), 1
    alibi = f.bool("alibi")
    return {
        "family": "falcon",
        "vocab_size": f.int("vocab_size"),
        "hidden_size": h,
        "num_layers": f.int("num_hidden_layers", "n_layer"),
        "num_heads": a,
        "num_kv_heads": g,
        "ffn_hidden_size": f.int("ffn_hidden_size", default=4 * h),
        **_activation(f.get("activation"), gated=False, where=f.where),
        "norm": "layernorm",
        "norm_eps": f.float("layer_norm_epsilon"),
        "block": block,
        "parallel_norms": norms,
        "position": "alibi" if alibi else "rope",
        "max_context": f.int("max_position_embeddings"),
        "bias": "all" if f.bool("bias") else "none",
        "tie_embeddings": f.bool("tie_word_embeddings"),
        **({} if alibi else _rope(f)),
    }


# The config classes whose ``validate_architecture`` (transformers 5.x, run when the class is
# built, so ``from_pretrained`` refuses the folder) requires hidden_size % num_attention_heads
# == 0, whatever ``head_dim`` says. Mistral, Mixtral, Qwen2/3, Gemma (1) and the others do not
# check it: they compute head_dim = hidden // heads and build (o_proj maps heads x head_dim
# back to hidden), as ``_decoder`` does. Mamba2Config's and JambaConfig's own checks are read
# with those families (``presets.hf_variants``).
HEADS_DIVIDE_HIDDEN = {"llama": "LlamaConfig", "gpt_neox": "GPTNeoXConfig",
                       "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig",
                       "deepseek_v2": "DeepseekV2Config"}


def _refused_by_transformers(model_type: str, data: Mapping[str, Any], fields: dict[str, Any],
                             where: str) -> None:
    """What ``transformers`` refuses when it builds the family's config class, refused here
    too (a config.json no ``from_pretrained`` loads is not a model to count): the heads rule
    of :data:`HEADS_DIVIDE_HIDDEN`, and ``PreTrainedConfig.validate_layer_type``'s one
    ``layer_types`` entry per layer (every family)."""
    h, a = fields["hidden_size"], fields["num_heads"]
    if model_type in HEADS_DIVIDE_HIDDEN and isinstance(a, int) and a > 0 and h % a:
        given = f", head_dim({data['head_dim']}) notwithstanding" if data.get("head_dim") else ""
        raise ConfigError(f"{where}: hidden_size({h}) is not a multiple of "
                          f"num_attention_heads({a}){given}: transformers' "
                          f"{HEADS_DIVIDE_HIDDEN[model_type]} refuses it")
    types, layers = data.get("layer_types"), fields["num_layers"]
    if isinstance(types, list) and len(types) != layers:
        raise ConfigError(f"{where}: layer_types has {len(types)} entries for "
                          f"num_hidden_layers({layers}): transformers refuses it")


from presets.hf_variants import VARIANT_FAMILIES  # noqa: E402 (uses the helpers above)

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
    **VARIANT_FAMILIES,
}


def from_hf_config(data: Mapping[str, Any], *, name: str = "hf", where: str = "config.json") -> ModelConfig:
    """Map a Hugging Face ``config.json`` dict to a :class:`ModelConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object")
    model_type = data.get("model_type")
    if model_type is None:
        raise ConfigError(f"{where}: missing field model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ConfigError(
            f"{where}: unknown architecture model_type={_shown(model_type)} "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    fields = FAMILIES[model_type](_Fields(data, where, DEFAULTS[model_type]))
    _refused_by_transformers(model_type, data, fields, where)
    try:
        return ModelConfig(name=name, source=where, **fields)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
