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
    """Where it sits: "attention", "recurrent" (a recurrent mixer), "mlp" (dense layers' MLP),
    "expert" (each routed expert of an MoE layer), "shared" (an MoE layer's shared experts)
    or "head"."""


EXPERT_NAMES = {family: ("gate_proj", "up_proj", "down_proj")
                for family in ("qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "jamba")}
"""Routed experts' linears as these families' checkpoints name them (``experts.{e}.gate_proj``);
Mixtral's, and llmplan's runtime's, are ``experts.{e}.w1`` / ``w3`` / ``w2``."""


UNADAPTABLE = {"mamba": ("out_proj",), "mamba2": ("out_proj",)}
"""Linears a family's adapters may not sit on: Mamba's fused CUDA kernel reads ``out_proj``'s
weight directly, bypassing any adapter (peft refuses it: ``_check_lora_target_modules_mamba``)."""


def linear_modules(cfg: ModelConfig) -> list[Linear]:
    """Every linear map of the family's transformers model a LoRA target can name (the LM
    head included, RWKV's named ``head``; MoE experts one linear each, as their checkpoints
    name them: ``EXPERT_NAMES``)."""
    h, f, V, L = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_layers
    q, kv = cfg.q_width, cfg.kv_width
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
        out = _mixer_linears(cfg) + _ffn_linears(cfg)
    head = "head" if fam == "rwkv" else "lm_head"
    out.append(Linear(name=head, in_features=h, out_features=V, count=1, part="head"))
    return out


def _mixer_linears(cfg: ModelConfig) -> list[Linear]:
    """The token mixers' linears: q / k / v / o (or MLA's, ``planner.mla``) in the attention
    layers, the recurrent mixer's (``planner.recurrent``) in the others."""
    from planner.mla import mla_linears
    from planner.recurrent import mixer_linears

    h, q, kv = cfg.hidden_size, cfg.q_width, cfg.kv_width
    attention, recurrent = cfg.num_attention_layers, cfg.num_layers - cfg.num_attention_layers
    mha = [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h)]
    shapes = [(attention, "attention", mla_linears(cfg) if cfg.attention == "mla" else mha)]
    if recurrent:
        shapes.append((recurrent, "recurrent", mixer_linears(cfg, cfg.mixer)))
    return [Linear(name=n, in_features=i, out_features=o, count=count, part=part)
            for count, part, linears in shapes if count for n, i, o in linears]


def _ffn_linears(cfg: ModelConfig) -> list[Linear]:
    """Dense layers' MLP (gate / up / down, or gate / down ungated, or RWKV's channel mix);
    MoE layers' routed experts (w1 / w3 / w2 each) and their shared experts, one MLP of
    ``num_shared_experts`` times the expert width as transformers' DeepSeek models hold it
    (so ``gate_proj`` names the dense MLPs', the shared experts' and every routed expert's)."""
    from planner.recurrent import channel_mix_linears

    h, f = cfg.hidden_size, cfg.ffn_hidden_size

    def mlp(width: int) -> list[tuple[str, int, int]]:
        if cfg.mlp == "rwkv":
            return channel_mix_linears(cfg, width)
        gate = [("gate_proj", h, width)] + ([("up_proj", h, width)] if cfg.gated else [])
        return gate + [("down_proj", width, h)]

    out, dense, moe = [], cfg.num_dense_layers, cfg.num_moe_layers
    if dense and cfg.has_mlp:
        out += [Linear(name=n, in_features=i, out_features=o, count=dense, part="mlp")
                for n, i, o in mlp(f)]
    if moe:
        fe, experts = cfg.moe_ffn_hidden_size, cfg.num_experts
        gate, up, down = EXPERT_NAMES.get(cfg.family, ("w1", "w3", "w2"))
        out += [Linear(name=n, in_features=i, out_features=o, count=moe * experts, part="expert")
                for n, i, o in ((gate, h, fe), (up, h, fe), (down, fe, h))]
        if cfg.num_shared_experts:
            out += [Linear(name=n, in_features=i, out_features=o, count=moe, part="shared")
                    for n, i, o in mlp(cfg.num_shared_experts * fe)]
    return out


def held_bytes(cfg: ModelConfig, linears: list[Linear], weight_bytes) -> tuple[int, int, int]:
    """A model whose ``linears`` are held as ``weight_bytes(module)`` bytes each, everything
    else at 16 bits: (the linears' weights, their bytes, every other parameter)."""
    from planner.params import count_params

    quantised = sum(m.in_features * m.out_features * m.count for m in linears)
    qbytes = sum(weight_bytes(m) * m.count for m in linears)
    return quantised, qbytes, count_params(cfg).total - quantised


def default_targets(cfg: ModelConfig) -> tuple[str, ...]:
    """Every attention and MLP projection an adapter may sit on (peft's "all-linear" without
    the LM head)."""
    names: list[str] = []
    for m in linear_modules(cfg):
        if m.part != "head" and m.name not in names + list(UNADAPTABLE.get(cfg.family, ())):
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
    refused = [t for t in chosen if t in UNADAPTABLE.get(cfg.family, ())]
    if refused:
        raise ConfigError(f"LoRA on {cfg.family}'s {', '.join(refused)} is refused: its fused "
                          "kernel reads the weight directly, bypassing the adapter")
    return sum(rank * (m.in_features + m.out_features) * m.count
               for m in modules if m.name in chosen)
