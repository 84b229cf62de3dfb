"""Exact parameter counts with a breakdown.

"Exact" means equal to ``sum(p.numel() for p in model.parameters())`` of the real model built
from the same configuration (tests check this against Hugging Face ``transformers`` models
instantiated on the ``meta`` device).

Per layer (a query heads, g kv heads, d head dim, h hidden, f ffn hidden, E experts):

* attention: Q ``h*a*d`` + K, V ``2*h*g*d`` + O ``a*d*h``; biases ``a*d + 2*g*d`` for
  q/k/v-only bias (Qwen2), ``+ h`` more when the output projection has one too.
  Note ``a*d`` may differ from ``h`` (Gemma-7B: 16 x 256 = 4096 vs h = 3072).
* relative positions (Transformer-XL style, Gopher/Chinchilla): one ``h x a*d`` projection of
  the relative encodings per layer. This is what makes Gopher 280B and Chinchilla 70B add up
  (Rae et al. 2021, Table 1; Hoffmann et al. 2022, Table 4).
* MLP: ``2*h*f`` two-matrix or ``3*h*f`` gated (GLU family); biases ``f + h`` or ``2f + h``.
* MoE layer: ``E`` expert MLPs of width ``f_e`` + router ``h*E`` + shared experts.
* norms: RMSNorm ``h``, LayerNorm ``2h`` (``h`` without bias); two per sequential block, one
  or two per parallel block, plus the final norm (and BLOOM's embedding norm).

Model level: token embedding ``V*h``; learned positions ``(max_context + offset)*h`` (OPT keeps
2 extra rows); an untied LM head ``V*h``.

Layer variants, per layer of each kind (``ModelConfig.layer_kinds``): q/k norms ``2d``
(Qwen3, Gemma 3; in "norms"); sandwich norms, four per layer (Gemma 2/3); MLA's projections
and latent norms (``planner.mla``); Mamba, Mamba-2 and RWKV mixers in "recurrent" and RWKV's
channel mix as the MLP (``planner.recurrent``); MoE every ``moe_layer_period`` (Qwen3-MoE,
Jamba). Shared experts count as ``n_shared`` experts of ``f_e`` (DeepSeek fuses them into one
MLP of width ``n_shared f_e``: the same count). DeepSeek-V3's router also keeps
``e_score_correction_bias`` (E floats per MoE layer): transformers registers it as a buffer,
not a parameter, so it is not counted. Multi-token-prediction modules (DeepSeek-V3 §2.2:
a projection ``h x 2h``, two input RMSNorms, one MoE block and the head's RMSNorm; embedding
and head shared) are not built by transformers and count only with ``count_mtp_layers``, in
"mtp".

Where other tools disagree: llm-analysis (cli99/llm-analysis) and accelerate's
``estimate-memory`` (a headless ``AutoModel``) drop the untied LM head; EleutherAI always adds learned positions and ignores
gating of the MLP; gpu_poor ignores GQA.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ModelConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class ParamCounts:
    """Integer parameter counts; ``breakdown`` sums to ``total``."""

    embedding: int
    position_embedding: int
    attention: int
    mlp: int
    experts: int
    router: int
    norms: int
    lm_head: int
    total: int
    active: int
    non_embedding: int
    recurrent: int = 0
    mtp: int = 0

    @property
    def breakdown(self) -> dict[str, int]:
        return {
            "embedding": self.embedding,
            "position_embedding": self.position_embedding,
            "attention": self.attention,
            "mlp": self.mlp,
            "experts": self.experts,
            "router": self.router,
            "norms": self.norms,
            "lm_head": self.lm_head,
            "recurrent": self.recurrent,
            "mtp": self.mtp,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "active": self.active,
            "non_embedding": self.non_embedding,
            "breakdown": self.breakdown,
        }


def norm_params(cfg: ModelConfig) -> int:
    """Parameters of one norm: RMSNorm and bias-free LayerNorm ``h``; LayerNorm ``2h``."""
    return 2 * cfg.hidden_size if cfg.norm == "layernorm" else cfg.hidden_size


def attention_params_per_layer(cfg: ModelConfig) -> int:
    """Q, K, V, O projections (+ biases, + relative-position projection)."""
    h, qw, kvw = cfg.hidden_size, cfg.q_width, cfg.kv_width
    weights = h * qw + 2 * h * kvw + qw * h
    biases = 0
    if cfg.qkv_bias:
        biases += qw + 2 * kvw
    if cfg.out_bias:
        biases += h
    relative = qw * h if cfg.position == "relative" else 0
    return weights + biases + relative


def qk_norm_params(cfg: ModelConfig) -> int:
    """The per-head query and key norms of one attention layer: one norm of head_dim each."""
    return 2 * norm_params(cfg) // cfg.hidden_size * cfg.head_dim if cfg.qk_norm else 0


def mixer_params(cfg: ModelConfig, mixer: str) -> dict[str, int]:
    """Breakdown part -> parameters of one layer's token mixer (attention, MLA, recurrent)."""
    if mixer == "attention" and cfg.attention == "mha":
        return {"attention": attention_params_per_layer(cfg), "norms": qk_norm_params(cfg)}
    from planner.mla import mla_tensors
    from planner.recurrent import mixer_tensors
    from planner.tensors import numel

    parts: dict[str, int] = {}
    for part, shape in (mla_tensors(cfg) if mixer == "attention" else mixer_tensors(cfg, mixer)):
        parts[part] = parts.get(part, 0) + numel(shape)
    return parts


def mlp_params(cfg: ModelConfig, ffn: int) -> int:
    """One MLP of width ``ffn``: ``3*h*f`` gated or ``2*h*f``; biases when ``cfg.mlp_bias``;
    RWKV's channel mix ``2*h*f + h*h + 2h``."""
    h = cfg.hidden_size
    if cfg.mlp == "rwkv":
        from planner.recurrent import channel_mix_tensors
        from planner.tensors import numel

        return sum(map(numel, channel_mix_tensors(cfg, ffn)))
    if cfg.gated:
        weights, biases = 3 * h * ffn, 2 * ffn + h
    else:
        weights, biases = 2 * h * ffn, ffn + h
    return weights + (biases if cfg.mlp_bias else 0)


def router_params_per_layer(cfg: ModelConfig) -> int:
    """The MoE router (gate) is one bias-free ``h x E`` linear."""
    return cfg.hidden_size * cfg.num_experts


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts for ``cfg`` (see the module docstring for every term)."""
    V, h, L = cfg.vocab_size, cfg.hidden_size, cfg.num_layers

    embedding = V * h
    position = (cfg.max_context + cfg.position_offset) * h if cfg.position == "learned" else 0
    lm_head = 0 if cfg.tie_embeddings else V * h

    parts = {"attention": 0, "norms": 0, "recurrent": 0}
    for (mixer, _), n in cfg.layer_kinds().items():
        for part, count in mixer_params(cfg, mixer).items():
            parts[part] += n * count
    attention, recurrent = parts["attention"], parts["recurrent"]
    mlp = cfg.num_dense_layers * mlp_params(cfg, cfg.ffn_hidden_size) if cfg.has_mlp else 0
    expert = mlp_params(cfg, cfg.moe_ffn_hidden_size) if cfg.is_moe else 0
    experts = cfg.num_moe_layers * (cfg.num_experts + cfg.num_shared_experts) * expert
    router = cfg.num_moe_layers * router_params_per_layer(cfg)

    one_norm = norm_params(cfg)
    norms = L * cfg.norms_per_layer * one_norm + parts["norms"]
    norms += one_norm if cfg.final_norm else 0
    norms += one_norm if cfg.embedding_norm else 0

    mtp, mtp_inactive = mtp_params(cfg, expert)
    total = (embedding + position + attention + mlp + experts + router + norms + lm_head
             + recurrent + mtp)
    inactive = cfg.num_moe_layers * (cfg.num_experts - cfg.experts_per_token) * expert \
        + mtp_inactive
    return ParamCounts(
        embedding=embedding,
        position_embedding=position,
        attention=attention,
        mlp=mlp,
        experts=experts,
        router=router,
        norms=norms,
        lm_head=lm_head,
        recurrent=recurrent,
        mtp=mtp,
        total=total,
        active=total - inactive,
        # Kaplan et al. 2020 (§2.1): N excludes vocabulary and position embeddings; an untied
        # LM head is a second vocabulary matrix and is excluded with them.
        non_embedding=total - embedding - position - lm_head,
    )


def mtp_params(cfg: ModelConfig, expert: int) -> tuple[int, int]:
    """(parameters, of them inactive per token) of the multi-token-prediction modules when
    ``count_mtp_layers`` (module docstring): each a ``2h -> h`` projection, the RMSNorms of its
    two inputs and of the shared head's input, and one block like the last layer."""
    if not cfg.count_mtp_layers:
        return 0, 0
    last = cfg.num_layers - 1
    mixer, moe = cfg.layer_mixer(last), cfg.layer_is_moe(last)
    block = sum(mixer_params(cfg, mixer).values()) + cfg.norms_per_layer * norm_params(cfg)
    if moe:
        block += (cfg.num_experts + cfg.num_shared_experts) * expert \
            + router_params_per_layer(cfg)
    elif cfg.has_mlp:
        block += mlp_params(cfg, cfg.ffn_hidden_size)
    one = 2 * cfg.hidden_size * cfg.hidden_size + 3 * norm_params(cfg) + block
    inactive = (cfg.num_experts - cfg.experts_per_token) * expert if moe else 0
    return cfg.mtp_layers * one, cfg.mtp_layers * inactive
