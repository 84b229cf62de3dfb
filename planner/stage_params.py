"""Parameters on one rank: of one layer after the tensor-parallel split, and of each pipeline
stage (exact, see ``planner.memory``'s docstring: TP splits every matrix, replicates norms,
row-parallel biases and KV heads when tp > kv heads; PP gives stage 0 the embedding and the
last stage the final norm and LM head; ep gives a rank E/ep routed experts)."""

from __future__ import annotations

from planner.activations import ceil_div, kv_heads_per_rank
from planner.config import ModelConfig
from planner.params import norm_params, qk_norm_params
from planner.setup import Parallel


def layer_params_per_rank(cfg: ModelConfig, tp: int, *, moe: bool, ep: int = 1,
                          mixer: str = "") -> int:
    """Parameters of one transformer layer on one TP rank (exact, see module docstring); an
    MoE layer holds E/ep routed experts under expert parallelism, every shared one. ``mixer``
    (default: the model's) is attention or a recurrent mixer; MLA and recurrent mixers are
    sized by their shape inventories (``planner.mla``, ``planner.recurrent``), q/k norms are
    replicated."""
    h, d, t = cfg.hidden_size, cfg.head_dim, tp
    mixer = mixer or cfg.mixer
    if mixer != "attention" or cfg.attention == "mla":
        from planner.mla import mla_tensors
        from planner.recurrent import mixer_tensors
        from planner.tensors import numel

        parts = mla_tensors(cfg, t) if mixer == "attention" else mixer_tensors(cfg, mixer, t)
        attn = sum(numel(shape) for _, shape in parts)
    else:
        q_rank = cfg.q_width // t
        kv_rank = kv_heads_per_rank(cfg, t) * d
        attn = h * q_rank + 2 * h * kv_rank + q_rank * h
        if cfg.qkv_bias:
            attn += q_rank + 2 * kv_rank
        if cfg.out_bias:
            attn += h  # row-parallel bias: replicated
        if cfg.position == "relative":
            attn += q_rank * h
        attn += qk_norm_params(cfg)  # replicated

    def mlp(ffn: int) -> int:
        if cfg.mlp == "rwkv":
            from planner.recurrent import channel_mix_tensors
            from planner.tensors import numel

            return sum(map(numel, channel_mix_tensors(cfg, ffn, t)))
        f_rank = ffn // t
        n = (3 if cfg.gated else 2) * h * f_rank
        if cfg.mlp_bias:
            n += (2 if cfg.gated else 1) * f_rank + h
        return n

    if moe:
        ffn_part = (cfg.num_experts // ep + cfg.num_shared_experts) * mlp(cfg.moe_ffn_hidden_size)
        ffn_part += h * cfg.num_experts  # router, replicated
    else:
        ffn_part = mlp(cfg.ffn_hidden_size) if cfg.has_mlp else 0
    return attn + ffn_part + cfg.norms_per_layer * norm_params(cfg)


def stage_params_per_rank(cfg: ModelConfig, par: Parallel) -> list[int]:
    """Parameters on one rank of each pipeline stage (before any ZeRO sharding)."""
    t, p = par.tp, par.pp
    per_stage = cfg.num_layers // p
    sizes = {kind: layer_params_per_rank(cfg, t, moe=kind[0], ep=par.ep, mixer=kind[1])
             for kind in {(m, x) for (x, m) in cfg.layer_kinds()}}
    vocab_rank = ceil_div(cfg.vocab_size, t) * cfg.hidden_size
    one_norm = norm_params(cfg)
    chunk = cfg.num_layers // (p * par.vpp)
    out = []
    for stage in range(p):
        # Stage `stage` owns chunks stage, stage + p, ... (interleaved round-robin).
        layers = [c * chunk + j for c in range(stage, p * par.vpp, p) for j in range(chunk)]
        assert len(layers) == per_stage
        n = sum(sizes[cfg.layer_is_moe(i), cfg.layer_mixer(i)] for i in layers)
        if stage == 0:
            n += vocab_rank
            if cfg.position == "learned":
                n += (cfg.max_context + cfg.position_offset) * cfg.hidden_size
            if cfg.embedding_norm:
                n += one_norm
        if stage == p - 1:
            if cfg.final_norm:
                n += one_norm
            if not cfg.tie_embeddings or p > 1:
                n += vocab_rank
            if cfg.count_mtp_layers:  # DeepSeek-V3's MTP modules sit after the last layer
                from planner.tensors import mtp_tensors, numel

                n += cfg.mtp_layers * sum(map(numel, mtp_tensors(cfg, t, ep=par.ep)))
        out.append(n)
    return out
