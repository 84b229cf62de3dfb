"""Hugging Face ``config.json`` -> :class:`ModelConfig` for the families with layer variants:
Qwen3 and Qwen3-MoE (q/k norms), Gemma 2 and 3 (sandwich norms, soft-capping, local/global
layers), DeepSeek-V2/V3 (MLA, shared experts), Mamba, Mamba-2, Jamba and RWKV-4.

One explicit mapping per family, in its own field names, with transformers' class defaults
(``presets.hf_defaults``) for what a file leaves out and transformers' own derivations for
what its config class computes (Mamba's ``intermediate_size = expand * hidden`` and
``time_step_rank = ceil(hidden / 16)`` for "auto", DeepSeek's ``head_dim``, Gemma's and
Qwen3's ``layer_types``). A field of the wrong type, an unknown value, or a switch that
changes the architecture in a way llmplan does not count is an error naming the file and
the field. Fields transformers keeps but that change no count (routing options such as
``n_group``, ``topk_method``, kernel switches) are accepted as transformers accepts them.
"""

from __future__ import annotations

import math
from typing import Any

from planner.config import ConfigError
from presets.hf import _decoder, _Fields, _rope, _shown

LAYER_TYPES = ("full_attention", "sliding_attention")


def _int_list(f: _Fields, name: str) -> list[int]:
    value = f.get(name, default=None)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ConfigError(f"{f.where}: {name}({_shown(value)}) must be a list of integers")
    return value


def _window_pattern(f: _Fields, layer_types: Any, layers: int) -> dict[str, Any]:
    """``layer_types`` (one "sliding_attention" / "full_attention" per layer) as
    ``sliding_window`` + ``sliding_window_pattern``: every layer sliding (P = 0), every
    P-th layer full ((i + 1) % P == 0, Gemma 2 P = 2, Gemma 3 P = 6), or none sliding."""
    if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
        raise ConfigError(f"{f.where}: layer_types({_shown(layer_types)}) must be a list of "
                          f"names ({', '.join(LAYER_TYPES)})")
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown:
        raise ConfigError(f"{f.where}: layer_types({unknown[0]!r}) is not one of "
                          f"{', '.join(LAYER_TYPES)}")
    if len(layer_types) != layers:
        raise ConfigError(f"{f.where}: layer_types has {len(layer_types)} entries for "
                          f"num_hidden_layers({layers})")
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    if len(full) == layers:
        return {}
    window = {"sliding_window": f.int("sliding_window")}
    if not full:
        return window
    period = full[0] + 1
    if all((t == "full_attention") == ((i + 1) % period == 0) for i, t in enumerate(layer_types)):
        return {**window, "sliding_window_pattern": period}
    raise ConfigError(f"{f.where}: layer_types: full attention must be every P-th layer "
                      f"(layers {full[:4]} are)")


def _qwen3(f: _Fields, family: str) -> dict[str, Any]:
    """Qwen3 (and Qwen3-MoE): Llama's block with an RMSNorm of head_dim on every query and
    key head (``Qwen3Attention.q_norm / k_norm``). Layers ``i >= max_window_layers`` use the
    window when ``use_sliding_window`` (transformers' ``Qwen3Config``)."""
    out = {**_decoder(f, family), "position": "rope", "qk_norm": True, **_rope(f)}
    out["bias"] = "attention" if f.bool("attention_bias") else "none"
    L = out["num_layers"]
    types = f.get("layer_types", default=None)
    if types is None and f.bool("use_sliding_window") and f.get("sliding_window", default=None):
        first = f.int("max_window_layers")
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(L)]
    if types is not None:
        if f.get("sliding_window", default=None) is None or not f.bool("use_sliding_window"):
            types = ["full_attention"] * L  # transformers drops the window without the switch
        out.update(_window_pattern(f, types, L))
    if family == "qwen3_moe":
        E = f.int("num_experts", "num_local_experts")
        step = f.int("decoder_sparse_step")
        if step < 1:
            raise ConfigError(f"{f.where}: decoder_sparse_step({step}) must be positive")
        f.bool("norm_topk_prob")  # routing only: no parameter
        if E:
            out.update(num_experts=E, experts_per_token=f.int("num_experts_per_tok"),
                       moe_ffn_hidden_size=f.int("moe_intermediate_size"),
                       moe_layer_period=step, moe_layer_offset=step - 1,
                       mlp_only_layers=tuple(_int_list(f, "mlp_only_layers")))
    return out


def _gemma(f: _Fields, family: str) -> dict[str, Any]:
    """Gemma 2 / Gemma 3 text: four norms per layer (``input``, ``post_attention``,
    ``pre_feedforward``, ``post_feedforward`` layernorms), scores scaled by
    ``query_pre_attn_scalar**-0.5``, tanh soft-capping (Gemma 2 §2, arXiv 2408.00118), local
    and global layers by ``layer_types``; Gemma 3 adds q/k norms. Embeddings scaled by
    sqrt(hidden) (a buffer, no parameter)."""
    out = {**_decoder(f, family, act=("hidden_activation",)), "position": "rope",
           "sandwich_norms": True, "qk_norm": family == "gemma3_text"}
    if f.bool("attention_bias"):
        raise ConfigError(f"{f.where}: {family} attention_bias=true is not supported")
    if f.get("use_bidirectional_attention", default=None):
        raise ConfigError(f"{f.where}: use_bidirectional_attention=true is not a causal "
                          "decoder (not supported)")
    out["embedding_multiplier"] = out["hidden_size"] ** 0.5
    out["attention_scale_dim"] = f.int("query_pre_attn_scalar")
    for name, field in (("attn_logit_softcapping", "attn_logit_softcap"),
                        ("final_logit_softcapping", "final_logit_softcap")):
        if f.get(name, default=None) is not None:
            out[field] = f.float(name)
    L = out["num_layers"]
    types = f.get("layer_types", default=None)
    if types is None:
        period = f.int("sliding_window_pattern", default=2 if family == "gemma2" else 6)
        if period < 1:
            raise ConfigError(f"{f.where}: sliding_window_pattern({period}) must be positive")
        if period > 1:  # every period-th layer full: the pattern as it stands (1: all full)
            out.update({"sliding_window": f.int("sliding_window"), "sliding_window_pattern": period})
    else:
        out.update(_window_pattern(f, types, L))
    rope = f.table("rope_parameters")
    if isinstance(rope.get("full_attention"), dict):  # transformers 5: per layer type
        out.update(_rope(_Fields({"rope_parameters": rope["full_attention"]}, f.where)))
    else:  # 4.x names; Gemma 3's global base defaults to 1e6 (Gemma3TextConfig.default_theta)
        out.update(_rope(_Fields({**f.data, "rope_theta": f.get(
            "rope_theta", default=1e6 if family == "gemma3_text" else 10000.0)}, f.where)))
    return out


def _deepseek(f: _Fields, family: str) -> dict[str, Any]:
    """DeepSeek-V2 / V3: MLA (``planner.mla``) and an MoE of ``n_routed_experts`` with
    ``n_shared_experts`` shared experts after ``first_k_dense_replace`` dense layers.
    ``head_dim`` here is the query/key head (nope + rope); transformers' own ``head_dim`` is
    the rotary part and is ignored. ``num_nextn_predict_layers`` (V3's MTP modules, not built
    by transformers) is kept as ``mtp_layers``, not counted unless ``count_mtp_layers``."""
    out = _decoder(f, family)
    out.update(position="rope", attention="mla", **_rope(f))
    if out["num_kv_heads"] != out["num_heads"]:
        raise ConfigError(f"{f.where}: num_key_value_heads({out['num_kv_heads']}) must equal "
                          f"num_attention_heads({out['num_heads']}) for MLA")
    rope = f.int("qk_rope_head_dim")
    q_lora = f.get("q_lora_rank", default=None)
    out.update(head_dim=f.int("qk_nope_head_dim") + rope, qk_rope_head_dim=rope,
               v_head_dim=f.int("v_head_dim"), kv_lora_rank=f.int("kv_lora_rank"),
               q_lora_rank=0 if q_lora is None else f.int("q_lora_rank"))
    out["bias"] = "attention" if f.bool("attention_bias") else "none"
    if family == "deepseek_v2" and f.bool("mlp_bias"):
        raise ConfigError(f"{f.where}: deepseek_v2 mlp_bias=true is not supported (its routed "
                          "experts have no bias, the dense MLPs would)")
    E = f.int("n_routed_experts")
    if E:
        out.update(num_experts=E, experts_per_token=f.int("num_experts_per_tok"),
                   num_shared_experts=f.int("n_shared_experts"),
                   moe_ffn_hidden_size=f.int("moe_intermediate_size"),
                   first_dense_layers=f.int("first_k_dense_replace"))
    if family == "deepseek_v3":
        out["mtp_layers"] = f.int("num_nextn_predict_layers", "num_mtp_layers", default=0)
    return out


def _mamba_fields(f: _Fields, names: dict[str, str]) -> dict[str, Any]:
    h = f.int("hidden_size")
    expand = f.get(names["expand"])
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) \
            or not math.isfinite(expand * h) or expand <= 0 or int(expand * h) < 1:
        raise ConfigError(f"{f.where}: {names['expand']}({_shown(expand)}) must be a positive "
                          "number")
    out = {"recurrent_width": int(expand * h), "ssm_state_size": f.int(names["state"]),
           "ssm_conv_kernel": f.int(names["conv"]), "ssm_conv_bias": f.bool(names["conv_bias"]),
           "ssm_proj_bias": f.bool(names["proj_bias"])}
    if "dt_rank" in names:
        rank = f.get(names["dt_rank"], default="auto")  # the class default, computed
        out["ssm_dt_rank"] = math.ceil(h / 16) if rank == "auto" else f.int(names["dt_rank"])
    return out


MAMBA_NAMES = {"expand": "expand", "state": "state_size", "conv": "conv_kernel",
               "conv_bias": "use_conv_bias", "proj_bias": "use_bias", "dt_rank": "time_step_rank"}


def _mamba(f: _Fields, family: str) -> dict[str, Any]:
    """Mamba / Mamba-2 (``MambaForCausalLM``, ``Mamba2ForCausalLM``): an RMSNorm and a mixer
    per layer, no MLP, no positions; no maximum context (2048, the pretraining length of
    both papers, sizes the context search)."""
    names = dict(MAMBA_NAMES)
    if family == "mamba2":
        names.pop("dt_rank")  # Mamba-2's dt is per head (dt_bias); time_step_rank is unused
    out = {"family": family, "vocab_size": f.int("vocab_size"), "hidden_size": f.int("hidden_size"),
           "num_layers": f.int("num_hidden_layers"), "num_heads": 0, "ffn_hidden_size": 0,
           "norm": "rmsnorm", "norm_eps": f.float("layer_norm_epsilon"), "position": "none",
           "max_context": 2048, "tie_embeddings": f.bool("tie_word_embeddings"),
           "mixer": family, **_mamba_fields(f, names)}
    if family == "mamba2":
        heads, head_dim = f.int("num_heads"), f.int("head_dim")
        if heads * head_dim != out["recurrent_width"]:
            raise ConfigError(f"{f.where}: num_heads({heads}) x head_dim({head_dim}) must equal "
                              f"expand x hidden_size({out['recurrent_width']})")
        out.update(ssm_heads=heads, ssm_groups=f.int("n_groups"),
                   ssm_chunk_size=f.int("chunk_size"))
    return out


def _jamba(f: _Fields) -> dict[str, Any]:
    """Jamba (arXiv 2403.19887 §2): attention (GQA, no positions) at layers ``i %
    attn_layer_period == attn_layer_offset``, Mamba elsewhere with RMSNorms on Δ, B and C;
    an MoE of ``num_experts`` at ``i % expert_layer_period == expert_layer_offset`` (one
    expert means a plain MLP)."""
    out = _decoder(f, "jamba")
    out.update(position="none", bias="none", mixer="mamba", ssm_inner_norms=True,
               attention_layer_period=f.int("attn_layer_period"),
               attention_layer_offset=f.int("attn_layer_offset"),
               **_mamba_fields(f, {"expand": "mamba_expand", "state": "mamba_d_state",
                                   "conv": "mamba_d_conv", "conv_bias": "mamba_conv_bias",
                                   "proj_bias": "mamba_proj_bias", "dt_rank": "mamba_dt_rank"}))
    E = f.int("num_experts", "num_local_experts")
    if E > 1:
        out.update(num_experts=E, experts_per_token=f.int("num_experts_per_tok"),
                   moe_layer_period=f.int("expert_layer_period"),
                   moe_layer_offset=f.int("expert_layer_offset"))
    return out


def _rwkv(f: _Fields) -> dict[str, Any]:
    """RWKV-4 (``RwkvForCausalLM``): block 0's ``pre_ln`` is the embedding norm, each block
    LayerNorms ``ln1``/``ln2``, a time mix of width ``attention_hidden_size`` (default h) and
    a channel mix of ``intermediate_size`` (default 4h); ``ln_out`` and the head."""
    h = f.int("hidden_size")
    return {"family": "rwkv", "vocab_size": f.int("vocab_size"), "hidden_size": h,
            "num_layers": f.int("num_hidden_layers"), "num_heads": 0,
            "ffn_hidden_size": f.int("intermediate_size", default=4 * h), "mlp": "rwkv",
            "norm": "layernorm", "norm_eps": f.float("layer_norm_epsilon"),
            "embedding_norm": True, "position": "none",
            "max_context": f.int("context_length", "max_position_embeddings"),
            "tie_embeddings": f.bool("tie_word_embeddings"), "mixer": "rwkv",
            "recurrent_width": f.int("attention_hidden_size", default=h)}


VARIANT_FAMILIES = {
    "qwen3": lambda f: _qwen3(f, "qwen3"),
    "qwen3_moe": lambda f: _qwen3(f, "qwen3_moe"),
    "gemma2": lambda f: _gemma(f, "gemma2"),
    "gemma3_text": lambda f: _gemma(f, "gemma3_text"),
    "deepseek_v2": lambda f: _deepseek(f, "deepseek_v2"),
    "deepseek_v3": lambda f: _deepseek(f, "deepseek_v3"),
    "mamba": lambda f: _mamba(f, "mamba"),
    "mamba2": lambda f: _mamba(f, "mamba2"),
    "jamba": _jamba,
    "rwkv": _rwkv,
}
