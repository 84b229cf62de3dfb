"""Model architecture: one typed, frozen description of a decoder-only transformer.

Everything in the planner and the runtime is computed from a :class:`ModelConfig`. Field names
are descriptive; the formulas use the project's vocabulary as local names (V vocab, h hidden,
L layers, a query heads, g kv heads, d head dim, f ffn hidden, E experts, k experts per token).

Validation happens at construction and names the offending numbers, e.g.
``kv heads(3) does not divide query heads(32)``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping


class LlmplanError(ValueError):
    """A user-facing error: the CLI prints its one-line message and exits 2."""


class ConfigError(LlmplanError):
    """An invalid configuration value or combination."""


class NoAnswer(LlmplanError):
    """Nothing wrong with the input, but no answer to give (runs too noisy to fit): the CLI
    prints its one line and exits 1."""

    exit_code = 1


MLP_KINDS = ("gelu", "relu", "swiglu", "geglu", "reglu", "rwkv")
"""Two-matrix MLPs (gelu, relu), gated three-matrix GLU variants (swiglu, geglu, reglu) and
RWKV-4's channel mix (squared-ReLU key/value gated by an h x h receptance; ``planner.recurrent``)."""
GATED_MLPS = frozenset({"swiglu", "geglu", "reglu"})
GELU_FORMS = ("tanh", "none")
"""GELU as torch's ``approximate`` argument: the tanh approximation or the exact erf form."""
NORMS = ("rmsnorm", "layernorm", "layernorm_nobias")
BLOCKS = ("pre_norm", "post_norm", "parallel")
POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "relative", "none")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")
BIASES = ("none", "qkv", "attention", "mlp", "all")
"""Which linears carry a bias: none; q/k/v only (Qwen2); q/k/v/o; the MLP's only (Llama's
``mlp_bias`` without ``attention_bias``); every linear."""
ATTENTIONS = ("mha", "mla")
"""Attention layers: "mha" (multi-head with g kv heads: MHA, GQA, MQA) or "mla" (DeepSeek-V2's
multi-head latent attention, arXiv 2405.04434 §2.1; ``planner.mla``)."""
MIXERS = ("attention", "mamba", "mamba2", "rwkv")
"""What mixes tokens in a layer: attention, or a recurrence with a fixed per-sequence state
(Mamba, arXiv 2312.00752; Mamba-2, arXiv 2405.21060; RWKV-4, arXiv 2305.13048;
``planner.recurrent``). Hybrids (Jamba) put attention every ``attention_layer_period``."""

# Short vocabulary names accepted by ``--set`` next to the field names.
ALIASES = {
    "V": "vocab_size",
    "h": "hidden_size",
    "L": "num_layers",
    "a": "num_heads",
    "g": "num_kv_heads",
    "d": "head_dim",
    "f": "ffn_hidden_size",
    "E": "num_experts",
    "k": "experts_per_token",
}


MAX_LAYERS = 10_000
MAX_WIDTH = 2**24
"""The largest vocabulary, width, head count or expert count a model may have (16,777,216:
far above any real model, small enough that every count and byte stays exact in a float)."""
MAX_CONTEXT = 2**30
"""The longest sequence (and ``max_context``) the planner accepts: 1,073,741,824 tokens."""


def _congruent(lo: int, hi: int, period: int, offset: int) -> int:
    """How many i in [lo, hi) have i = offset (mod period)."""
    if hi <= lo:
        return 0
    return (hi - 1 - offset) // period - (lo - 1 - offset) // period


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """A decoder-only transformer architecture.

    ``num_kv_heads`` and ``head_dim`` default to ``num_heads`` and ``hidden_size // num_heads``
    when left as 0. ``parallel_norms`` is the number of norms in a parallel block (1 for GPT-J,
    Falcon-7B, PaLM; 2 for GPT-NeoX and Falcon-40B); sequential blocks always have two.
    ``embedding_multiplier`` scales the token embeddings (Gemma: sqrt(hidden), Gemma Team
    2024 §2; a multiply that adds no parameter).
    Layer variants (MLA, q/k norms, sandwich norms, soft-capping, local/global windows,
    hybrid and MoE layer patterns, recurrent mixers, MTP): ``planner.layer_fields``.
    """

    name: str = "custom"
    family: str = "custom"
    source: str = ""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int = 0
    head_dim: int = 0
    ffn_hidden_size: int
    mlp: str = "swiglu"
    gelu_approximate: str = "tanh"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    block: str = "pre_norm"
    parallel_norms: int = 1
    final_norm: bool = True
    embedding_norm: bool = False
    embedding_multiplier: float = 1.0
    position: str = "rope"
    position_offset: int = 0
    rope_theta: float = 10_000.0
    rope_fraction: float = 1.0
    rope_scaling: str = "none"
    rope_scaling_factor: float = 1.0
    rope_original_context: int = 0
    tie_embeddings: bool = False
    bias: str = "none"
    max_context: int = 2048
    sliding_window: int = 0

    num_experts: int = 0
    experts_per_token: int = 0
    num_shared_experts: int = 0
    moe_ffn_hidden_size: int = 0
    first_dense_layers: int = 0
    moe_layer_period: int = 1
    moe_layer_offset: int = 0
    mlp_only_layers: tuple[int, ...] = ()

    attention: str = "mha"
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    qk_norm: bool = False
    sandwich_norms: bool = False
    attention_scale_dim: int = 0
    attn_logit_softcap: float = 0.0
    final_logit_softcap: float = 0.0
    sliding_window_pattern: int = 0

    mixer: str = "attention"
    attention_layer_period: int = 0
    attention_layer_offset: int = 0
    recurrent_width: int = 0
    ssm_state_size: int = 0
    ssm_conv_kernel: int = 0
    ssm_dt_rank: int = 0
    ssm_heads: int = 0
    ssm_groups: int = 1
    ssm_chunk_size: int = 0
    ssm_conv_bias: bool = True
    ssm_proj_bias: bool = False
    ssm_inner_norms: bool = False

    mtp_layers: int = 0
    count_mtp_layers: bool = False

    def __post_init__(self) -> None:
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim == 0 and self.num_heads > 0:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"query heads({self.num_heads}) does not divide hidden({self.hidden_size}); "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_experts and self.moe_ffn_hidden_size == 0:
            object.__setattr__(self, "moe_ffn_hidden_size", self.ffn_hidden_size)
        self._validate()

    def _validate(self) -> None:
        from planner.layer_fields import attention_free, check_layer_fields

        positive = {
            "vocab": self.vocab_size,
            "hidden": self.hidden_size,
            "layers": self.num_layers,
            "query heads": self.num_heads,
            "kv heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "ffn hidden": self.ffn_hidden_size,
            "max context": self.max_context,
        }
        if attention_free(self):  # no attention layer: no heads (checked to be 0)
            for label in ("query heads", "kv heads", "head_dim"):
                positive.pop(label)
        if self.mixer in ("mamba", "mamba2"):  # a Mamba block may have no MLP (ffn 0)
            positive.pop("ffn hidden")
        for label, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{label}({value}) must be a positive integer")
            limit = MAX_CONTEXT if label == "max context" else MAX_WIDTH
            if label != "layers" and value > limit:
                raise ConfigError(f"{label}({value}) is larger than any model has "
                                  f"(at most {limit:,})")
        if self.num_layers > MAX_LAYERS:
            raise ConfigError(f"layers({self.num_layers}) is more than any decoder has "
                              f"(at most {MAX_LAYERS:,}: layer patterns are counted per layer)")
        check_layer_fields(self)
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"kv heads({self.num_kv_heads}) does not divide query heads({self.num_heads})"
            )
        for label, value, allowed in (
            ("mlp", self.mlp, MLP_KINDS),
            ("gelu_approximate", self.gelu_approximate, GELU_FORMS),
            ("norm", self.norm, NORMS),
            ("block", self.block, BLOCKS),
            ("position", self.position, POSITIONS),
            ("rope_scaling", self.rope_scaling, ROPE_SCALINGS),
            ("bias", self.bias, BIASES),
        ):
            if value not in allowed:
                raise ConfigError(f"{label}({value!r}) is not one of {', '.join(allowed)}")
        if self.parallel_norms not in (1, 2):
            raise ConfigError(f"parallel_norms({self.parallel_norms}) must be 1 or 2")
        for label, value in (
            ("norm_eps", self.norm_eps),
            ("rope_theta", self.rope_theta),
            ("rope_scaling_factor", self.rope_scaling_factor),
            ("embedding_multiplier", self.embedding_multiplier),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{label}({value}) must be a positive finite number")
        if not 0 < self.rope_fraction <= 1:
            raise ConfigError(f"rope_fraction({self.rope_fraction}) must be in (0, 1]")
        non_negative = {
            "position_offset": self.position_offset,
            "rope_original_context": self.rope_original_context,
            "sliding_window": self.sliding_window,
            "experts": self.num_experts,
            "experts per token": self.experts_per_token,
            "shared experts": self.num_shared_experts,
            "moe ffn hidden": self.moe_ffn_hidden_size,
            "first dense layers": self.first_dense_layers,
        }
        for label, value in non_negative.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{label}({value}) must be a non-negative integer")
            limit = MAX_CONTEXT if label in ("position_offset", "rope_original_context",
                                             "sliding_window") else MAX_WIDTH
            if value > limit:
                raise ConfigError(f"{label}({value}) is larger than any model has "
                                  f"(at most {limit:,})")
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise ConfigError(
                    f"experts per token({self.experts_per_token}) must be between 1 and "
                    f"experts({self.num_experts})"
                )
            if self.first_dense_layers >= self.num_layers:
                raise ConfigError(
                    f"first dense layers({self.first_dense_layers}) leaves no MoE layer "
                    f"among layers({self.num_layers})"
                )
            if self.num_moe_layers == 0:
                raise ConfigError(
                    f"moe_layer_period({self.moe_layer_period}) / moe_layer_offset"
                    f"({self.moe_layer_offset}) / mlp_only_layers leave no MoE layer among "
                    f"layers({self.num_layers})")
        elif self.experts_per_token or self.num_shared_experts:
            raise ConfigError(
                f"experts per token({self.experts_per_token}) / shared experts"
                f"({self.num_shared_experts}) need experts > 0"
            )
        if self.rope_scaling != "none" and self.position != "rope":
            raise ConfigError(f"rope_scaling({self.rope_scaling!r}) needs position 'rope'")

    # ---- derived shape facts -------------------------------------------------------------
    @property
    def gated(self) -> bool:
        """Three-matrix GLU MLP (gate, up, down) rather than two-matrix (up, down)."""
        return self.mlp in GATED_MLPS

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers i >= first_dense_layers with i = offset (mod period), less mlp_only_layers
        (closed form: the search asks for it per layout)."""
        if not self.is_moe:
            return 0
        p, o = self.moe_layer_period, self.moe_layer_offset
        patterned = _congruent(self.first_dense_layers, self.num_layers, p, o)
        return patterned - sum(1 for i in set(self.mlp_only_layers)
                               if self.first_dense_layers <= i < self.num_layers and i % p == o)

    def layer_is_moe(self, i: int) -> bool:
        """Layer i's FFN is a mixture of experts (``planner.layer_fields``)."""
        return (self.num_experts > 0 and i >= self.first_dense_layers
                and i % self.moe_layer_period == self.moe_layer_offset
                and i not in self.mlp_only_layers)

    def layer_mixer(self, i: int) -> str:
        """What mixes tokens in layer i: "attention" or the recurrent ``mixer``."""
        period = self.attention_layer_period
        hybrid = self.mixer != "attention" and period and i % period == self.attention_layer_offset
        return "attention" if hybrid else self.mixer

    def layer_is_sliding(self, i: int) -> bool:
        """Attention layer i attends within ``sliding_window`` (not globally)."""
        P = self.sliding_window_pattern
        return bool(self.sliding_window) and (not P or (i + 1) % P != 0)

    def layer_kinds(self) -> dict[tuple[str, bool], int]:
        """(mixer, moe) -> how many layers are of that kind."""
        from collections import Counter

        return dict(Counter((self.layer_mixer(i), self.layer_is_moe(i))
                            for i in range(self.num_layers)))

    @property
    def num_attention_layers(self) -> int:
        """Every layer, or a hybrid's i = offset (mod attention_layer_period) ones."""
        if self.mixer == "attention":
            return self.num_layers
        period = self.attention_layer_period
        return _congruent(0, self.num_layers, period, self.attention_layer_offset) if period else 0

    @property
    def num_sliding_layers(self) -> int:
        """Attention layers that attend within the sliding window."""
        return sum(self.layer_mixer(i) == "attention" and self.layer_is_sliding(i)
                   for i in range(self.num_layers))

    @property
    def v_dim(self) -> int:
        """Value head dim: ``v_head_dim`` under MLA, else ``head_dim``."""
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    @property
    def has_mlp(self) -> bool:
        """Blocks have an FFN (dense or MoE); a pure Mamba block has none."""
        return self.ffn_hidden_size > 0 or self.is_moe

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def q_width(self) -> int:
        """a*d: the width of the query projection (may differ from hidden, e.g. Gemma-7B)."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """g*d: the width of each of the key and value projections."""
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_bias(self) -> bool:
        """Biases on the q, k and v projections."""
        return self.bias in ("qkv", "attention", "all")

    @property
    def out_bias(self) -> bool:
        """A bias on the attention output projection (row-parallel: replicated under TP)."""
        return self.bias in ("attention", "all")

    @property
    def mlp_bias(self) -> bool:
        """Biases on every MLP (and expert) linear."""
        return self.bias in ("mlp", "all")

    @property
    def norms_per_layer(self) -> int:
        """Block norms (hidden-sized): four with sandwich norms, one or two in a parallel
        block, one in a block without an MLP (Mamba), else two."""
        if self.sandwich_norms:
            return 4
        if self.block == "parallel":
            return self.parallel_norms
        return 2 if self.has_mlp else 1

    # ---- editing ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with ``changes`` applied (derived defaults are kept as given)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, str]) -> "ModelConfig":
        """Apply ``--set key=value`` strings, parsed by each field's type."""
        changes = {}
        for raw_key, raw_value in overrides.items():
            key = ALIASES.get(raw_key, raw_key)
            changes[key] = parse_field(key, raw_value)
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists, as JSON and TOML read them back)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "model") -> "ModelConfig":
        """Build from a mapping (a TOML table), rejecting unknown keys and wrong types."""
        known = field_types()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        values = {}
        for key, value in data.items():
            values[key] = check_type(key, value, known[key], where=where)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def dataclass_types(cls: type) -> dict[str, type]:
    """Field name -> declared type of a config dataclass (ModelConfig, Hardware, TrainSetup)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_types() -> dict[str, type]:
    return dataclass_types(ModelConfig)


from planner.field_parsing import check_type, parse_field  # noqa: E402 (re-exported)
