"""The parameter tensors one rank of a pipeline stage holds, by shape, after the tensor-
parallel split (before any ZeRO sharding).

What is per tensor rather than per parameter: a factored optimizer's state (Adafactor keeps a
row and a column vector per matrix, the whole size per vector), the per-tensor step counter
of ``torch.optim``'s AdamW and Adafactor, and how FSDP2 and llmplan's ZeRO-1 split each
tensor over dp (dim 0 / flat, each padded up to a whole chunk). Shapes are torch's:
``(out, in)`` for a linear, ``(rows, width)`` for an embedding. The sizes add up to
``planner.memory.stage_params_per_rank`` (a test holds the two together).
"""

from __future__ import annotations

from collections import Counter

from planner.activations import ceil_div
from planner.config import ModelConfig

from planner.setup import Parallel

Shape = tuple[int, ...]


def _norm(cfg: ModelConfig) -> list[Shape]:
    h = cfg.hidden_size
    return [(h,), (h,)] if cfg.norm == "layernorm" else [(h,)]


def _mlp(cfg: ModelConfig, ffn: int, tp: int) -> list[Shape]:
    if cfg.mlp == "rwkv":
        from planner.recurrent import channel_mix_tensors

        return channel_mix_tensors(cfg, ffn, tp)
    h, f = cfg.hidden_size, ffn // tp
    out = [(f, h), (h, f)] + ([(f, h)] if cfg.gated else [])
    if cfg.mlp_bias:  # column-parallel biases are split, the row-parallel one replicated
        out += [(f,), (h,)] + ([(f,)] if cfg.gated else [])
    return out


def kv_weight_heads(cfg: ModelConfig, tp: int, *, runtime: bool = False) -> int:
    """KV heads whose K and V projections one TP rank holds: g/t, or with tp > g one
    (Megatron-LM keeps its head's rows) -- all g in llmplan's runtime, which replicates the
    whole projections and computes its head's rows (``runtime.tensor_parallel``)."""
    g = cfg.num_kv_heads
    return g // tp if g >= tp else (g if runtime else 1)


def layer_tensors(cfg: ModelConfig, tp: int, *, moe: bool, runtime: bool = False,
                  ep: int = 1, mixer: str = "") -> list[Shape]:
    """One transformer layer on one TP rank (kv heads replicated when tp > kv heads); an
    MoE layer holds E/ep of its routed experts (expert parallelism) and all shared ones.
    ``mixer`` (default: the model's ``mixer``) picks attention or a recurrent mixer; MLA and
    the recurrent mixers split as ``planner.mla`` and ``planner.recurrent`` say, q/k norms
    are replicated."""
    h, d = cfg.hidden_size, cfg.head_dim
    mixer = mixer or cfg.mixer
    if mixer != "attention" or cfg.attention == "mla":
        from planner.mla import mla_tensors
        from planner.recurrent import mixer_tensors

        parts = mla_tensors(cfg, tp) if mixer == "attention" else mixer_tensors(cfg, mixer, tp)
        out: list[Shape] = [shape for _, shape in parts]
    else:
        q = cfg.q_width // tp
        kv = kv_weight_heads(cfg, tp, runtime=runtime) * d
        out = [(q, h), (kv, h), (kv, h), (h, q)]
        if cfg.qkv_bias:
            out += [(q,), (kv,), (kv,)]
        if cfg.out_bias:
            out += [(h,)]
        if cfg.position == "relative":
            out += [(q, h)]
        if cfg.qk_norm:
            out += [(d,) for _ in range(2) for _ in _norm(cfg)]
    if moe:
        out += [(cfg.num_experts, h)]  # the router, replicated
        for _ in range(cfg.num_experts // ep + cfg.num_shared_experts):
            out += _mlp(cfg, cfg.moe_ffn_hidden_size, tp)
    elif cfg.has_mlp:
        out += _mlp(cfg, cfg.ffn_hidden_size, tp)
    for _ in range(cfg.norms_per_layer):
        out += _norm(cfg)
    return out


def stage_tensors(cfg: ModelConfig, par: Parallel, stage: int, *,
                  runtime: bool = False) -> Counter[Shape]:
    """Shape -> how many tensors of it one rank of pipeline stage ``stage`` holds (its
    layers in looped placement, the embedding on the first stage, the final norm and LM head
    on the last; a tied head is one tensor with one stage, a second copy with more)."""
    t, p = par.tp, par.pp
    chunk = cfg.num_layers // (p * par.vpp)
    layers = [c * chunk + j for c in range(stage, p * par.vpp, p) for j in range(chunk)]
    kinds = Counter((cfg.layer_is_moe(i), cfg.layer_mixer(i)) for i in layers)
    out: Counter[Shape] = Counter()
    for (moe, mixer), n in kinds.items():
        for shape in layer_tensors(cfg, t, moe=moe, runtime=runtime, ep=par.ep, mixer=mixer):
            out[shape] += n
    vocab = (ceil_div(cfg.vocab_size, t), cfg.hidden_size)
    if stage == 0:
        out[vocab] += 1
        if cfg.position == "learned":
            out[(cfg.max_context + cfg.position_offset, cfg.hidden_size)] += 1
        if cfg.embedding_norm:
            out.update(_norm(cfg))
    if stage == p - 1:
        if cfg.final_norm:
            out.update(_norm(cfg))
        if not cfg.tie_embeddings or p > 1:
            out[vocab] += 1
        for _ in range(cfg.mtp_layers if cfg.count_mtp_layers else 0):
            out.update(mtp_tensors(cfg, t, ep=par.ep, runtime=runtime))
    return out


def mtp_tensors(cfg: ModelConfig, tp: int, *, ep: int = 1, runtime: bool = False) -> list[Shape]:
    """One multi-token-prediction module on the last stage (DeepSeek-V3 §2.2,
    ``planner.params``): a block like the last layer, its ``h x 2h`` projection (replicated)
    and three norms (its two inputs', the shared head's)."""
    last = cfg.num_layers - 1
    h = cfg.hidden_size
    return (layer_tensors(cfg, tp, moe=cfg.layer_is_moe(last), runtime=runtime, ep=ep,
                          mixer=cfg.layer_mixer(last))
            + [(h, 2 * h)] + [shape for _ in range(3) for shape in _norm(cfg)])


def stage_expert_tensors(cfg: ModelConfig, par: Parallel, stage: int) -> Counter[Shape]:
    """The routed experts' tensors among :func:`stage_tensors` (E/ep per MoE layer): what is
    replicated over ``par.expert_shard_ranks`` rather than ``par.shard_ranks``."""
    chunk = cfg.num_layers // (par.pp * par.vpp)
    layers = [c * chunk + j for c in range(stage, par.pp * par.vpp, par.pp) for j in range(chunk)]
    n_moe = sum(map(cfg.layer_is_moe, layers))
    out: Counter[Shape] = Counter()
    for shape in _mlp(cfg, cfg.moe_ffn_hidden_size, par.tp) if n_moe else ():
        out[shape] += n_moe * (cfg.num_experts // par.ep)
    return out


def layer_params(cfg: ModelConfig, tp: int, *, moe: bool, runtime: bool = False,
                 ep: int = 1, mixer: str = "") -> int:
    return sum(numel(shape) for shape in layer_tensors(cfg, tp, moe=moe, runtime=runtime, ep=ep,
                                                        mixer=mixer))


def numel(shape: Shape) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def adafactor_elements(shape: Shape) -> int:
    """Second-moment elements ``torch.optim.Adafactor`` keeps for one tensor (Shazeer & Stern
    2018 §3): for a matrix a row factor (every dim but the last) and a column factor (every
    dim but the second last); for a vector the whole vector."""
    if len(shape) < 2:
        return numel(shape)
    return numel(shape[:-1]) + numel(shape[:-2] + shape[-1:])


def dim0_shard(shape: Shape, dp: int) -> int:
    """Elements of the largest dim-0 shard of a tensor split over dp ranks (FSDP2's
    ``Shard(0)``: ``ceil(rows/dp)`` rows on the first ranks)."""
    return ceil_div(shape[0], dp) * numel(shape[1:]) if shape else 1


def flat_shard(shape: Shape, dp: int) -> int:
    """Elements of the largest flat 1/dp slice of a tensor (llmplan's ZeRO-1)."""
    return min(numel(shape), ceil_div(numel(shape), dp))
