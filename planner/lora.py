"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685 §4.1): trainable parameters, exactly.

A LoRA adapter on a linear map W (in -> out) adds B A with A (r x in) and B (out x r): r (in +
out) trainable parameters, no bias. Targets are named as ``peft`` names them: the last part of
a module's name in the family's ``transformers`` model, matching every module that ends so
(GPT-2's ``c_proj`` is both the attention output and the MLP's down projection). Each
family's linear modules, with their shapes from the configuration, are listed here; a target
the model does not have is an error that lists the names it does have.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    count: int
    """How many modules of the whole model carry this name and shape."""
    part: str = "attention"
    """Where it sits: "attention", "mlp" (dense layers' MLP), "expert" (each routed expert of
    an MoE layer) or "head"."""


def linear_modules(cfg: ModelConfig) -> list[Linear]:
    """Every linear map of the family's transformers model a LoRA target can name (the LM
    head included; MoE experts as their checkpoints name them, w1 / w3 / w2 per expert)."""
    h, f, V, L = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_layers
    q, kv = cfg.q_width, cfg.kv_width
    dense, moe = cfg.num_dense_layers, cfg.num_moe_layers
    fam = cfg.family
    if fam in ("gpt2",):
        out = [Linear(name="c_attn", in_features=h, out_features=q + 2 * kv, count=L),
               Linear(name="c_proj", in_features=q, out_features=h, count=L),
               Linear(name="c_fc", in_features=h, out_features=f, count=L, part="mlp"),
               Linear(name="c_proj", in_features=f, out_features=h, count=L, part="mlp")]
    elif fam in ("gpt_neox", "bloom", "falcon"):
        out = [Linear(name="query_key_value", in_features=h, out_features=q + 2 * kv, count=L),
               Linear(name="dense", in_features=q, out_features=h, count=L),
               Linear(name="dense_h_to_4h", in_features=h, out_features=f, count=L, part="mlp"),
               Linear(name="dense_4h_to_h", in_features=f, out_features=h, count=L, part="mlp")]
    elif fam == "opt":
        out = [Linear(name=n, in_features=h, out_features=w, count=L)
               for n, w in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
        out += [Linear(name="out_proj", in_features=q, out_features=h, count=L),
                Linear(name="fc1", in_features=h, out_features=f, count=L, part="mlp"),
                Linear(name="fc2", in_features=f, out_features=h, count=L, part="mlp")]
    else:  # Llama and the families that share its module names
        out = [Linear(name=n, in_features=h, out_features=w, count=L)
               for n, w in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
        out.append(Linear(name="o_proj", in_features=q, out_features=h, count=L))
        if dense:
            out += [Linear(name=n, in_features=i, out_features=o, count=dense, part="mlp")
                    for n, i, o in (("gate_proj", h, f), ("up_proj", h, f), ("down_proj", f, h))]
        if moe:
            fe, experts = cfg.moe_ffn_hidden_size, cfg.num_experts
            out += [Linear(name=n, in_features=i, out_features=o, count=moe * experts,
                           part="expert")
                    for n, i, o in (("w1", h, fe), ("w3", h, fe), ("w2", fe, h))]
    out.append(Linear(name="lm_head", in_features=h, out_features=V, count=1, part="head"))
    return out


def held_bytes(cfg: ModelConfig, linears: list[Linear], weight_bytes) -> tuple[int, int, int]:
    """A model whose ``linears`` are held as ``weight_bytes(module)`` bytes each, everything
    else at 16 bits: (the linears' weights, their bytes, every other parameter)."""
    from planner.params import count_params

    quantised = sum(m.in_features * m.out_features * m.count for m in linears)
    qbytes = sum(weight_bytes(m) * m.count for m in linears)
    return quantised, qbytes, count_params(cfg).total - quantised


def default_targets(cfg: ModelConfig) -> tuple[str, ...]:
    """Every attention and MLP projection (peft's "all-linear" without the LM head)."""
    names: list[str] = []
    for m in linear_modules(cfg):
        if m.name != "lm_head" and m.name not in names:
            names.append(m.name)
    return tuple(names)


def lora_parameters(cfg: ModelConfig, *, rank: int, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters of rank-``rank`` adapters on the ``targets`` (default: every
    attention and MLP projection): sum over matched modules of r (in + out)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"--lora-rank({rank}) must be a positive integer")
    modules = linear_modules(cfg)
    names = {m.name for m in modules}
    chosen = tuple(targets) if targets else default_targets(cfg)
    unknown = [t for t in chosen if t not in names]
    if unknown:
        known = ", ".join(dict.fromkeys(m.name for m in modules))
        raise ConfigError(f"LoRA target(s) {', '.join(unknown)} not in {cfg.name} "
                          f"(its linear modules: {known})")
    return sum(rank * (m.in_features + m.out_features) * m.count
               for m in modules if m.name in chosen)
