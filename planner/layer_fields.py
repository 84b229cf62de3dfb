"""Validation of the layer-variant fields of :class:`planner.config.ModelConfig`: attention
kind (MHA / MLA), per-head q/k norms, sandwich norms, soft-capping, the local/global window
pattern, hybrid and MoE layer patterns, recurrent mixers (Mamba, Mamba-2, RWKV) and
DeepSeek-V3's multi-token-prediction modules. Every error names the offending numbers, e.g.
``kv_lora_rank(0) must be positive for attention 'mla'``. The fields are described here;
the formulas that use them live in ``planner.mla`` and ``planner.recurrent``.

Layer pattern (``layer_mixer``, ``layer_is_moe``, ``layer_is_sliding``): layer i is MoE
when ``i >= first_dense_layers``, ``i % moe_layer_period == moe_layer_offset`` and i is not
in ``mlp_only_layers`` (Qwen3-MoE's ``decoder_sparse_step`` s is period s, offset s - 1;
Jamba's ``expert_layer_period/offset``); with ``mixer`` other than attention, layer i is
attention when ``i % attention_layer_period == attention_layer_offset`` (Jamba, arXiv
2403.19887 §2). With ``sliding_window_pattern`` P > 0 every P-th layer ((i + 1) % P == 0)
attends globally and the others within ``sliding_window`` (Gemma 2: P = 2, arXiv
2408.00118 §2; Gemma 3: P = 6); P = 0 windows every layer (Mistral).

Attention variants: ``attention = "mla"`` (``planner.mla``) with ``head_dim`` the query/key
head dim (nope + rope), ``qk_rope_head_dim`` its rotary part, ``v_head_dim``,
``kv_lora_rank`` and ``q_lora_rank`` (0: a plain q projection, DeepSeek-V2-Lite);
``qk_norm``: an RMSNorm of head_dim on each query and key head (Qwen3, Gemma 3);
``sandwich_norms``: four norms per layer, before and after attention and the MLP (Gemma 2);
``attention_scale_dim``: scores scaled by its -1/2 power (Gemma 2's
``query_pre_attn_scalar``; 0 = head_dim); ``attn_logit_softcap`` / ``final_logit_softcap``:
``c tanh(x / c)`` on scores / logits (0 = off; no parameters).

Recurrent mixers (``planner.recurrent``): ``recurrent_width`` is Mamba's d_inner (expand x
h) or RWKV's attention_hidden_size; ``ssm_state_size`` N, ``ssm_conv_kernel``,
``ssm_dt_rank`` (Mamba's time_step_rank), ``ssm_heads`` / ``ssm_groups`` /
``ssm_chunk_size`` (Mamba-2), ``ssm_conv_bias``, ``ssm_proj_bias`` (in/out projections),
``ssm_inner_norms`` (Jamba's RMSNorms on dt, B, C). ``ffn_hidden_size = 0`` means the
blocks have no MLP (pure Mamba).

``mtp_layers``: DeepSeek-V3's multi-token-prediction modules (``num_nextn_predict_layers``,
arXiv 2412.19437 §2.2); transformers does not build them, so they are counted only with
``count_mtp_layers`` (``planner.params``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.config import ModelConfig

RECURRENT_FIELDS = ("recurrent_width", "ssm_state_size", "ssm_conv_kernel", "ssm_dt_rank",
                    "ssm_heads", "ssm_chunk_size")
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
NON_NEGATIVE = ("moe_layer_offset", *MLA_FIELDS, "attention_scale_dim", "sliding_window_pattern",
                "attention_layer_period", "attention_layer_offset", *RECURRENT_FIELDS,
                "mtp_layers")


VARIANT_FIELDS = ("moe_layer_period", "moe_layer_offset", "mlp_only_layers", "attention",
                  *MLA_FIELDS, "qk_norm", "sandwich_norms", "attention_scale_dim",
                  "attn_logit_softcap", "final_logit_softcap", "sliding_window_pattern",
                  "mixer", "attention_layer_period", "attention_layer_offset",
                  *RECURRENT_FIELDS, "ssm_groups", "ssm_conv_bias", "ssm_proj_bias",
                  "ssm_inner_norms", "mtp_layers", "count_mtp_layers")
"""The layer-variant fields (described above): views of a plain transformer leave them out
while they hold their defaults."""


def attention_free(cfg: "ModelConfig") -> bool:
    """No layer of the model is an attention layer (pure Mamba, Mamba-2, RWKV)."""
    return cfg.mixer != "attention" and not cfg.attention_layer_period


def _fail(message: str) -> None:
    from planner.config import ConfigError

    raise ConfigError(message)


def _integer(label: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        _fail(f"{label}({value}) must be {kind} integer")


def check_layer_fields(cfg: "ModelConfig") -> None:
    """Raise ConfigError naming the numbers when the layer-variant fields disagree."""
    from planner.config import ATTENTIONS, MIXERS

    for label, value, allowed in (("attention", cfg.attention, ATTENTIONS),
                                  ("mixer", cfg.mixer, MIXERS)):
        if value not in allowed:
            _fail(f"{label}({value!r}) is not one of {', '.join(allowed)}")
    for name in NON_NEGATIVE:
        _integer(name, getattr(cfg, name), minimum=0)
    _integer("moe_layer_period", cfg.moe_layer_period, minimum=1)
    _integer("ssm_groups", cfg.ssm_groups, minimum=1)
    for name in ("attn_logit_softcap", "final_logit_softcap"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            _fail(f"{name}({value}) must be a finite number >= 0 (0: no soft-capping)")
    _check_patterns(cfg)
    _check_attention(cfg)
    _check_mixer(cfg)
    if cfg.count_mtp_layers and not cfg.mtp_layers:
        _fail("count_mtp_layers needs mtp_layers > 0")


def _check_patterns(cfg: "ModelConfig") -> None:
    L = cfg.num_layers
    if cfg.moe_layer_offset >= cfg.moe_layer_period:
        _fail(f"moe_layer_offset({cfg.moe_layer_offset}) must be below "
              f"moe_layer_period({cfg.moe_layer_period})")
    bad = [i for i in cfg.mlp_only_layers if not 0 <= i < L]
    if bad:
        _fail(f"mlp_only_layers({bad[0]}) is not a layer index below layers({L})")
    if cfg.attention_layer_period:
        if cfg.mixer == "attention":
            _fail(f"attention_layer_period({cfg.attention_layer_period}) needs a recurrent "
                  "mixer (every layer is attention already)")
        if cfg.attention_layer_offset >= cfg.attention_layer_period:
            _fail(f"attention_layer_offset({cfg.attention_layer_offset}) must be below "
                  f"attention_layer_period({cfg.attention_layer_period})")
    elif cfg.attention_layer_offset:
        _fail(f"attention_layer_offset({cfg.attention_layer_offset}) needs "
              "attention_layer_period > 0")
    if cfg.sliding_window_pattern and not cfg.sliding_window:
        _fail(f"sliding_window_pattern({cfg.sliding_window_pattern}) needs sliding_window > 0")


def _check_attention(cfg: "ModelConfig") -> None:
    if attention_free(cfg):
        for label, value in (("query heads", cfg.num_heads), ("kv heads", cfg.num_kv_heads),
                             ("head_dim", cfg.head_dim)):
            if value:
                _fail(f"{label}({value}) must be 0: mixer {cfg.mixer!r} has no attention layer "
                      "(attention_layer_period makes a hybrid)")
        for name in ("qk_norm", "sliding_window", "attn_logit_softcap", "attention_scale_dim"):
            if getattr(cfg, name):
                _fail(f"{name}({getattr(cfg, name)}) needs attention layers (mixer "
                      f"{cfg.mixer!r} has none)")
        if cfg.attention != "mha":
            _fail(f"attention({cfg.attention!r}) needs attention layers")
    if cfg.attention == "mla":
        for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            if getattr(cfg, name) <= 0:
                _fail(f"{name}({getattr(cfg, name)}) must be positive for attention 'mla'")
        if cfg.qk_rope_head_dim > cfg.head_dim:
            _fail(f"qk_rope_head_dim({cfg.qk_rope_head_dim}) exceeds head_dim({cfg.head_dim}) "
                  "(head_dim is the query/key head: nope + rope)")
        if cfg.num_kv_heads != cfg.num_heads:
            _fail(f"kv heads({cfg.num_kv_heads}) must equal query heads({cfg.num_heads}) for "
                  "attention 'mla' (every head's key and value is expanded from the latent)")
        if cfg.bias not in ("none", "attention"):
            _fail(f"bias({cfg.bias!r}) is not one of none, attention for attention 'mla'")
        if cfg.qk_norm:
            _fail("qk_norm does not apply to attention 'mla' (it normalises its latents)")
    else:
        for name in MLA_FIELDS:
            if getattr(cfg, name):
                _fail(f"{name}({getattr(cfg, name)}) needs attention 'mla'")


def _check_mixer(cfg: "ModelConfig") -> None:
    m = cfg.mixer
    if (cfg.mlp == "rwkv") != (m == "rwkv"):
        _fail(f"mlp({cfg.mlp!r}) and mixer({m!r}): RWKV's channel mix goes with its time mix")
    if m == "attention":
        for name in RECURRENT_FIELDS:
            if getattr(cfg, name):
                _fail(f"{name}({getattr(cfg, name)}) needs a recurrent mixer (mamba, mamba2, "
                      "rwkv)")
        return
    needed = {"mamba": ("recurrent_width", "ssm_state_size", "ssm_conv_kernel", "ssm_dt_rank"),
              "mamba2": ("recurrent_width", "ssm_state_size", "ssm_conv_kernel", "ssm_heads",
                         "ssm_chunk_size"),
              "rwkv": ("recurrent_width",)}[m]
    for name in needed:
        if getattr(cfg, name) <= 0:
            _fail(f"{name}({getattr(cfg, name)}) must be positive for mixer {m!r}")
    if m == "mamba2":
        if cfg.recurrent_width % cfg.ssm_heads:
            _fail(f"ssm_heads({cfg.ssm_heads}) does not divide recurrent_width"
                  f"({cfg.recurrent_width})")
        if cfg.ssm_heads % cfg.ssm_groups:
            _fail(f"ssm_groups({cfg.ssm_groups}) does not divide ssm_heads({cfg.ssm_heads})")
    if cfg.ffn_hidden_size == 0 and cfg.is_moe:
        _fail(f"ffn hidden(0) must be positive with experts({cfg.num_experts})")
