"""One state-dict adapter per Hugging Face family: which checkpoint tensor (and which rows of
it) holds each of the runtime's parameters.

The runtime's names are ``runtime.model``'s (``layers.<i>.attention.wq.weight``, ...; a tied
LM head is the embedding). A :class:`Piece` says that the runtime tensor ``ours`` is the rows
``rows`` of the checkpoint tensor ``theirs`` (dimension 0, or dimension 1 of a ``transposed``
one), minus ``offset``. The layout differences each family brings live here and nowhere else:

- fused QKV: Falcon (``query_key_value`` viewed as (g, a/g + 2, d): each kv group's query
  heads, then its key, then its value; multi-query is g = 1 and the classic layout g = a),
  BLOOM and GPT-NeoX (the same view with g = a: q, k, v interleaved per head), as their
  ``_split_heads`` / ``forward`` in ``transformers`` read them;
- GPT-2's ``Conv1D`` stores (in, out): every matrix transposed, ``c_attn`` holding q | k | v
  along its columns;
- Gemma's RMSNorm multiplies by ``1 + weight`` (``GemmaRMSNorm``): the runtime stores the
  factor itself, so the checkpoint holds it minus one;
- Mixtral's experts (``block_sparse_moe.experts.<e>.w1/w2/w3`` as saved) and router (``gate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.config import ConfigError, ModelConfig


@dataclass(frozen=True, kw_only=True, eq=False)
class Piece:
    ours: str
    theirs: str
    rows: torch.Tensor | None = None
    """Indices into the checkpoint tensor's split dimension, one per row of ours (None: all)."""
    transposed: bool = False
    offset: float = 0.0


def grouped_qkv_rows(heads: int, kv_heads: int, head_dim: int):
    """Row indices of q, k and v in a fused projection viewed as (g, a/g + 2, d)."""
    per = heads // kv_heads
    grid = torch.arange(kv_heads * (per + 2) * head_dim).view(kv_heads, per + 2, head_dim)
    return grid[:, :per].reshape(-1), grid[:, per].reshape(-1), grid[:, per + 1].reshape(-1)


def _llama(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    names = {"attention_norm.weight": p + "input_layernorm.weight",
             "ffn_norm.weight": p + "post_attention_layernorm.weight"}
    for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
        names[f"attention.{ours}.weight"] = p + f"self_attn.{theirs}.weight"
        names[f"attention.{ours}.bias"] = p + f"self_attn.{theirs}.bias"
    if cfg.is_moe and i >= cfg.first_dense_layers:
        names["feed_forward.router.weight"] = p + "block_sparse_moe.gate.weight"
        for e in range(cfg.num_experts):
            for w in ("w1", "w2", "w3"):
                names[f"feed_forward.experts.{e}.{w}.weight"] = (
                    p + f"block_sparse_moe.experts.{e}.{w}.weight")
    else:
        for ours, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            names[f"feed_forward.{ours}.weight"] = p + f"mlp.{theirs}.weight"
            names[f"feed_forward.{ours}.bias"] = p + f"mlp.{theirs}.bias"
    return names


def _opt(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"model.decoder.layers.{i}."
    names = {"attention_norm": p + "self_attn_layer_norm", "ffn_norm": p + "final_layer_norm",
             "attention.wq": p + "self_attn.q_proj", "attention.wk": p + "self_attn.k_proj",
             "attention.wv": p + "self_attn.v_proj", "attention.wo": p + "self_attn.out_proj",
             "feed_forward.w1": p + "fc1", "feed_forward.w2": p + "fc2"}
    return {f"{k}.{t}": f"{v}.{t}" for k, v in names.items() for t in ("weight", "bias")}


def _fused(prefix: str, attn: str, norms: dict[str, str], mlp: dict[str, str]) -> dict[str, str]:
    """BLOOM / GPT-NeoX / Falcon: one fused QKV (its rows in ``fused_rows``), a dense output."""
    names = {"attention.wqkv": prefix + attn + ".query_key_value",
             "attention.wo": prefix + attn + ".dense",
             **{k: prefix + v for k, v in norms.items()},
             **{k: prefix + v for k, v in mlp.items()}}
    return {f"{k}.{t}": f"{v}.{t}" for k, v in names.items() for t in ("weight", "bias")}


_DENSE_4H = {"feed_forward.w1": "mlp.dense_h_to_4h", "feed_forward.w2": "mlp.dense_4h_to_h"}


def _bloom(cfg: ModelConfig, i: int) -> dict[str, str]:
    return _fused(f"transformer.h.{i}.", "self_attention",
                  {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"},
                  _DENSE_4H)


def _gpt_neox(cfg: ModelConfig, i: int) -> dict[str, str]:
    return _fused(f"gpt_neox.layers.{i}.", "attention",
                  {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"},
                  _DENSE_4H)


def _falcon(cfg: ModelConfig, i: int) -> dict[str, str]:
    if cfg.block == "parallel" and cfg.parallel_norms == 2:
        norms = {"attention_norm": "ln_attn", "ffn_norm": "ln_mlp"}
    elif cfg.block == "parallel":
        norms = {"attention_norm": "input_layernorm"}
    else:
        norms = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    return _fused(f"transformer.h.{i}.", "self_attention", norms, _DENSE_4H)


def _gpt2(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"transformer.h.{i}."
    names = {"attention_norm": p + "ln_1", "ffn_norm": p + "ln_2",
             "attention.wqkv": p + "attn.c_attn", "attention.wo": p + "attn.c_proj",
             "feed_forward.w1": p + "mlp.c_fc", "feed_forward.w2": p + "mlp.c_proj"}
    return {f"{k}.{t}": f"{v}.{t}" for k, v in names.items() for t in ("weight", "bias")}


# family: (per-layer names, model-level names). Model-level keys: embedding, positions,
# embedding norm, final norm, LM head.
_LLAMA_ENDS = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
FAMILIES = {
    "llama": (_llama, _LLAMA_ENDS), "mistral": (_llama, _LLAMA_ENDS),
    "mixtral": (_llama, _LLAMA_ENDS), "qwen2": (_llama, _LLAMA_ENDS),
    "gemma": (_llama, _LLAMA_ENDS),
    "opt": (_opt, {"tok_embeddings": "model.decoder.embed_tokens",
                   "pos_embeddings": "model.decoder.embed_positions",
                   "norm": "model.decoder.final_layer_norm", "output": "lm_head"}),
    "bloom": (_bloom, {"tok_embeddings": "transformer.word_embeddings",
                       "embedding_norm": "transformer.word_embeddings_layernorm",
                       "norm": "transformer.ln_f", "output": "lm_head"}),
    "gpt_neox": (_gpt_neox, {"tok_embeddings": "gpt_neox.embed_in",
                             "norm": "gpt_neox.final_layer_norm", "output": "embed_out"}),
    "falcon": (_falcon, {"tok_embeddings": "transformer.word_embeddings",
                         "norm": "transformer.ln_f", "output": "lm_head"}),
    "gpt2": (_gpt2, {"tok_embeddings": "transformer.wte", "pos_embeddings": "transformer.wpe",
                     "norm": "transformer.ln_f", "output": "lm_head"}),
}


def check_family(cfg: ModelConfig, where: str) -> None:
    if cfg.family not in FAMILIES:
        raise ConfigError(f"{where}: no Hugging Face weight mapping for family {cfg.family!r} "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    if cfg.family == "falcon" and cfg.position == "alibi":
        raise ConfigError(f"{where}: Falcon with ALiBi scales its bias by 1/sqrt(d) in bf16 "
                          "slopes, which llmplan's runtime does not compute")


def pieces(cfg: ModelConfig, ours: list[str]) -> dict[str, Piece]:
    """For each runtime parameter name in ``ours`` (canonical: unwrapped, global layer
    indices), where its values live in the family's checkpoint."""
    check_family(cfg, cfg.source or cfg.name)
    per_layer, ends = FAMILIES[cfg.family]
    a, g, d, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    gpt2 = cfg.family == "gpt2"
    fused_g = g if cfg.family == "falcon" else a
    q_rows, k_rows, v_rows = (grouped_qkv_rows(a, fused_g, d) if not gpt2 else
                              (torch.arange(h), torch.arange(h, 2 * h), torch.arange(2 * h, 3 * h)))
    offset = 1.0 if cfg.family == "gemma" else 0.0
    layers: dict[int, dict[str, str]] = {}
    out: dict[str, Piece] = {}
    for name in ours:
        parts = name.split(".")
        if parts[0] == "layers":
            i = int(parts[1])
            table = layers.setdefault(i, per_layer(cfg, i))
            local = ".".join(parts[2:])
        else:
            table = {f"{k}.{t}": f"{v}.{t}" for k, v in ends.items() for t in ("weight", "bias")}
            local = name
        rows = None
        proj = local.split(".")
        if proj[0] == "attention" and proj[1] in ("wq", "wk", "wv") and "attention.wqkv.weight" in table:
            rows = {"wq": q_rows, "wk": k_rows, "wv": v_rows}[proj[1]]
            local = f"attention.wqkv.{proj[2]}"
        if local not in table:
            raise ConfigError(f"{cfg.family}: no checkpoint tensor holds {name}")
        norm = local.endswith("norm.weight")
        out[name] = Piece(ours=name, theirs=table[local], rows=rows,
                          transposed=gpt2 and local.endswith(".weight") and not norm
                          and parts[0] == "layers",
                          offset=offset if norm else 0.0)
    return out
