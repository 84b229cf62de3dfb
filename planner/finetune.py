"""Adapter fine-tuning (LoRA, QLoRA): what it trains, what it saves, what it computes.

LoRA (Hu et al. 2021, arXiv 2106.09685 §4.1) freezes the base and trains ``B A`` beside each
targeted linear W: ``y = W x + (alpha / r) B A dropout(x)``, A (r x in), B (out x r). QLoRA
(Dettmers et al. 2023, arXiv 2305.14314 §3) holds the frozen base in 4-bit NormalFloat and
dequantises each weight to the compute dtype when a matmul needs it.

What follows from freezing the base, per micro-batch of ``s`` tokens (``B`` bytes per
activation element, the adapters in the compute dtype as peft keeps them under mixed
precision):

* states: gradients and optimizer states exist for the adapters only; the base is held at
  its bits with no master copy (``planner.frozen_base``).
* saved tensors: an adapted linear's input is saved for A's weight gradient (the base's own
  matmul saves it too, the same tensor, counted once in ``planner.activations``); B saves A's
  output, ``B s r``; with dropout, CUDA's fused dropout saves its 1-byte mask ``s in`` and A
  saves the dropped input ``B s in``; the undropped input, which only the adapters needed, is
  counted as saved still, an upper bound of ``B s in`` per distinct input (CPU's unfused
  dropout keeps a ``B``-byte mask instead). Linears the adapters skip are counted as saving
  their input (an upper bound where only some projections are targeted).
* QLoRA's transient: the forward and the input-gradient matmul each dequantise one weight
  at a time (bitsandbytes' ``MatMul4Bit``), ``B out in`` bytes alive at once.
* FLOPs: a frozen linear costs its forward and its input gradient, 2 x forward, not 3 x
  (no weight gradient); the attention core and the adapters 3 x forward; the adapters'
  forward is ``2 r (in + out)`` per token per applied module. Per token that is about 4N +
  6N_lora instead of 6N, less the first layer's gradients that autograd skips (its input
  comes from the frozen embedding: :func:`skipped_input_gradient_flops_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig

METHODS = ("full", "lora", "qlora", "dpo", "ppo")
"""Training methods: every parameter trained, adapters over a frozen base, or an alignment
method whose policy is trained either way (``--policy``)."""
POLICIES = ("full", "lora", "qlora")
ALIGNMENT = ("dpo", "ppo")

DEFAULT_RANK = 16
DEFAULT_ALPHA = 32.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Adapters:
    """LoRA adapters over a frozen base held at ``base_bits`` (4: QLoRA's NF4)."""

    method: str = "lora"
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    targets: tuple[str, ...] = ()
    """peft's module names; empty: every attention and MLP projection."""
    dropout: float = 0.0
    base_bits: int = 16
    double_quant: bool = False

    def __post_init__(self) -> None:
        from planner.frozen_base import check_method_bits

        if self.method not in POLICIES[1:]:
            raise ConfigError(f"method({self.method!r}) has no adapters: use lora or qlora")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"--lora-rank({self.rank}) must be a positive integer")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"--lora-alpha({self.alpha}) must be a positive finite number")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout({self.dropout}) must be in [0, 1)")
        check_method_bits(self.method, self.base_bits)
        if self.double_quant and self.base_bits != 4:
            raise ConfigError(f"--double-quant quantises NF4's constants: it needs --base-bits "
                              f"4, not {self.base_bits}")

    @property
    def scaling(self) -> float:
        """alpha / r, the factor on B A (Hu et al. §4.1)."""
        return self.alpha / self.rank



def objective_for(method: str) -> str:
    """The training objective a ``--method`` means: DPO's preference pairs, else next-token
    prediction (``planner.setup.OBJECTIVES``)."""
    return "dpo" if method == "dpo" else "lm"


def adapters_for(method: str, *, policy: str = "full", rank: int = DEFAULT_RANK,
                 alpha: float = DEFAULT_ALPHA, targets: tuple[str, ...] = (),
                 dropout: float = 0.0, base_bits: int | None = None,
                 double_quant: bool = False) -> Adapters | None:
    """The adapters a command's ``--method`` (and, for DPO and PPO, ``--policy``) asks for
    (None for full training); the base's bits default to 16 for LoRA and 4 for QLoRA.
    Adapter options without adapters are an error, never ignored."""
    if method not in METHODS:
        raise ConfigError(f"--method({method!r}) is not one of {', '.join(METHODS)}")
    if policy not in POLICIES:
        raise ConfigError(f"--policy({policy!r}) is not one of {', '.join(POLICIES)}")
    if method not in ALIGNMENT and policy != "full":
        raise ConfigError(f"--policy {policy} is the policy of --method dpo or ppo; "
                          f"--method {method} trains {method}")
    method = policy if method in ALIGNMENT else method
    if method == "full":
        if base_bits is not None or double_quant:
            raise ConfigError("--base-bits and --double-quant describe a frozen base: they "
                              "need --method lora or qlora")
        return None
    bits = base_bits if base_bits is not None else (4 if method == "qlora" else 16)
    return Adapters(method=method, rank=rank, alpha=alpha, targets=tuple(targets),
                    dropout=dropout, base_bits=bits, double_quant=double_quant)


def summary(cfg: ModelConfig, adapters: Adapters, *, dtype_bytes: int = 2) -> dict[str, object]:
    """What commands report of adapters: the method and its options (targets resolved), the
    trainable parameters and the frozen base as held (``planner.frozen_base``)."""
    from planner.frozen_base import frozen_base
    from planner.lora import default_targets

    a = adapters
    base = frozen_base(cfg, bits=a.base_bits, double_quant=a.double_quant,
                       dtype_bytes=dtype_bytes)
    return {"method": a.method, "lora_rank": a.rank, "lora_alpha": a.alpha,
            "lora_targets": list(a.targets or default_targets(cfg)), "lora_dropout": a.dropout,
            "trainable": trainable_params(cfg, a), **base.to_dict()}


def adapted(cfg: ModelConfig, adapters: Adapters):
    """The linear modules the adapters sit on (``planner.lora.linear_modules``); an unknown
    target is an error listing the model's names."""
    from planner.lora import default_targets, linear_modules, lora_parameters

    lora_parameters(cfg, rank=adapters.rank, targets=adapters.targets or None)  # validates
    chosen = adapters.targets or default_targets(cfg)
    return [m for m in linear_modules(cfg) if m.name in chosen]


def trainable_params(cfg: ModelConfig, adapters: Adapters) -> int:
    """Adapter parameters: sum over adapted modules of r (in + out) (``planner.lora``)."""
    from planner.lora import lora_parameters

    return lora_parameters(cfg, rank=adapters.rank, targets=adapters.targets or None)


def applied_per_token(cfg: ModelConfig, part: str) -> int:
    """How many modules of one ``part`` a token passes through in one layer that has it:
    one, or the k routed experts' copy of an expert linear."""
    return cfg.experts_per_token if part == "expert" else 1


def layers_with(cfg: ModelConfig, part: str) -> int:
    """Layers holding linears of ``part`` (the LM head: one)."""
    return {"attention": cfg.num_attention_layers,
            "recurrent": cfg.num_layers - cfg.num_attention_layers, "mlp": cfg.num_dense_layers,
            "expert": cfg.num_moe_layers, "shared": cfg.num_moe_layers, "head": 1}[part]


def adapter_forward_flops_per_token(cfg: ModelConfig, adapters: Adapters) -> float:
    """Forward FLOPs of the adapters per token: ``2 r (in + out)`` per module applied (the
    k routed experts of an MoE layer, not all E)."""
    r = adapters.rank
    return float(sum(2 * r * (m.in_features + m.out_features) * layers_with(cfg, m.part)
                     * applied_per_token(cfg, m.part) for m in adapted(cfg, adapters)))


BLOCK_INPUT_LINEARS = {
    "attention": ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value"),
    "mlp": ("gate_proj", "up_proj", "c_fc", "dense_h_to_4h", "fc1"),
}
"""Linears that read a block's (normed) input: the attention's q / k / v, the MLP's first."""


def skipped_input_gradient_flops_per_token(cfg: ModelConfig, adapters: Adapters, *,
                                           keys: float) -> float:
    """The gradients autograd never computes in the first layer, whose input is the frozen
    embedding's output (through a frozen norm), per token (``keys`` attended per query):

    * the linears reading that input, the attention's (and, in a parallel block, the
      MLP's), need no input gradient, ``2 in out`` each, nor their adapters' A, ``2 r in``;
    * the attention core's backward (``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``,
      ``dK = dS^T Q``, ``2 a d keys`` each) computes dV only if v carries an adapter, dQ or
      dK only if q or k does, dP only if either of those does.

    Exact whenever one of the first layer's q / k / v carries an adapter; with none, the
    attention output's input gradient is skipped too, which is not subtracted."""
    from planner.lora import linear_modules

    parts = ("attention", "mlp") if cfg.block == "parallel" else ("attention",)
    names = {n for p in parts for n in BLOCK_INPUT_LINEARS[p]}
    chosen = {m.name for m in adapted(cfg, adapters)}
    linears = sum(2 * m.in_features * (m.out_features + (adapters.rank if m.name in chosen
                                                        else 0))
                  for m in linear_modules(cfg) if m.part in parts and m.name in names)
    fused = bool(chosen & {"c_attn", "query_key_value"})
    q, k, v = (fused or n in chosen for n in ("q_proj", "k_proj", "v_proj"))
    needed = v + q + k + (q or k)
    return float(linears + (4 - needed) * 2 * cfg.q_width * keys)


def layer_adapter_activation_bytes(cfg: ModelConfig, adapters: Adapters, *, seq_len: int,
                                   act_bytes: int, moe: bool) -> int:
    """What the adapters of one layer save for backward per sequence (module docstring):
    ``s r B`` per applied module, and with dropout ``s in (1 + B)``."""
    parts = ("attention", "expert", "shared") if moe else ("attention", "mlp")
    total = 0
    for m in adapted(cfg, adapters):
        if m.part not in parts:
            continue
        per_token = act_bytes * adapters.rank
        if adapters.dropout:
            per_token += m.in_features * (1 + act_bytes)
        total += seq_len * applied_per_token(cfg, m.part) * per_token
    return total


def head_adapter_activation_bytes(cfg: ModelConfig, adapters: Adapters, *, seq_len: int,
                                  act_bytes: int) -> int:
    """An adapter on the LM head, when targeted: its saved tensors per sequence."""
    return sum(seq_len * (act_bytes * adapters.rank + (m.in_features * (1 + act_bytes)
                                                       if adapters.dropout else 0))
               for m in adapted(cfg, adapters) if m.part == "head")


def dequantised_weight_bytes(cfg: ModelConfig, adapters: Adapters, *, compute_bytes: int) -> int:
    """QLoRA's (and 8-bit LoRA's) transient: the largest quantised weight in the compute
    dtype, ``B out in`` (0 for a 16-bit base)."""
    from planner.lora import linear_modules

    if adapters.base_bits == 16:
        return 0
    return max(compute_bytes * m.out_features * m.in_features
               for m in linear_modules(cfg) if m.part != "head")


def dequantised_weights_per_micro_batch(cfg: ModelConfig, adapters: Adapters) -> int:
    """Weights dequantised per micro-batch: every quantised weight twice (forward, input
    gradient); elementwise work, not counted in MFU."""
    from planner.frozen_base import frozen_base

    if adapters.base_bits == 16:
        return 0
    return 2 * frozen_base(cfg, bits=adapters.base_bits).quantised_params


def layer_base_bytes(cfg: ModelConfig, adapters: Adapters, *, moe: bool,
                     layer_params: int, dtype_bytes: int) -> int:
    """One layer's frozen weights as held (what ZeRO-3 gathers for it): its linears at the
    base's bits, its other ``layer_params`` (norms, biases, router) in ``dtype_bytes``."""
    from planner.frozen_base import quantised_weight_bytes
    from planner.lora import linear_modules

    parts = ("attention", "expert", "shared") if moe else ("attention", "mlp")
    held = linears = 0
    for m in linear_modules(cfg):
        if m.part not in parts:
            continue
        per_layer = m.count // layers_with(cfg, m.part)
        n = m.out_features * m.in_features
        linears += per_layer * n
        held += per_layer * (dtype_bytes * n if adapters.base_bits == 16 else
                             quantised_weight_bytes(m.out_features, m.in_features,
                                                    bits=adapters.base_bits,
                                                    double_quant=adapters.double_quant))
    return held + dtype_bytes * (layer_params - linears)


@dataclass(frozen=True, kw_only=True, slots=True)
class AdapterMemory:
    """What the memory estimator needs of adapters over a frozen base, for one model and
    setup (tp = pp = 1: ``planner.layout.adapter_problems``)."""

    trainable: int
    base_bytes: int
    """The whole frozen base as held (``planner.frozen_base``)."""
    layer_activation_bytes: dict[bool, int]
    """Per sequence, by layer kind (MoE or not): what one layer's adapters save."""
    head_activation_bytes: int
    layer_base_bytes: dict[bool, int]
    """One layer's frozen weights as held, by kind (ZeRO-3 gathers a layer at a time)."""
    head_adapted: bool
    head_adapter_params: int
    dequantised_bytes: int
    tensors: dict[tuple[int, ...], int]
    """Shape -> count of the adapter tensors (A: r x in, B: out x r), as the runtime holds
    them (``planner.states.runtime_states``)."""
    dequantise_traffic_bytes: int
    """Per micro-batch, HBM traffic of dequantising a quantised base: each weight twice
    (forward, input gradient), reading its held bytes and writing then reading its
    compute-dtype copy (0 for a 16-bit base)."""

    def timeline_terms(self, *, num_layers: int, dp: int, zero: int, root_params: int,
                       grad_bytes: int, compute_bytes: int, fsdp_runtime: bool) -> dict:
        """The step timeline's terms (``planner.peak``) for adapters over a frozen base: the
        head and embedding have no gradient (an adapted head: its adapters' only); ZeRO-3
        gathers the running and the prefetched layer as held (llmplan's FSDP2 ZeRO-2 every
        layer from its forward to its backward, and the root unit throughout) and holds a
        layer's adapter gradients during its backward; a quantised base dequantises one
        weight at a time."""
        out = {"head_grad": self.head_adapter_params * grad_bytes, "embedding_end": 0,
               "block_temp": self.dequantised_bytes}
        if (zero >= 3 or fsdp_runtime) and dp > 1:
            layers = min(2, num_layers) if zero >= 3 else num_layers
            root = root_params * compute_bytes if fsdp_runtime else 0
            per_layer = (self.trainable - self.head_adapter_params) // num_layers
            out.update(unsharded_start=layers * max(self.layer_base_bytes.values()) + root,
                       unsharded_block=per_layer * grad_bytes, unsharded_end=root)
        return out


def adapter_memory(cfg: ModelConfig, adapters: Adapters, *, seq_len: int, act_bytes: int,
                   dtype_bytes: int) -> AdapterMemory:
    """``dtype_bytes``: the compute dtype, what the base's 16-bit tensors take as held or
    gathered and what a dequantised weight takes."""
    from planner.frozen_base import frozen_base
    from planner.stage_params import layer_params_per_rank

    kinds = (False, True) if cfg.is_moe else (False,)
    head = [m for m in adapted(cfg, adapters) if m.part == "head"]
    base = frozen_base(cfg, bits=adapters.base_bits, double_quant=adapters.double_quant,
                       dtype_bytes=dtype_bytes)
    traffic = 0 if adapters.base_bits == 16 else \
        2 * (base.quantised_bytes + 2 * dtype_bytes * base.quantised_params)
    tensors: dict[tuple[int, ...], int] = {}
    for m in adapted(cfg, adapters):
        for shape in ((adapters.rank, m.in_features), (m.out_features, adapters.rank)):
            tensors[shape] = tensors.get(shape, 0) + m.count
    return AdapterMemory(
        trainable=trainable_params(cfg, adapters), tensors=tensors,
        base_bytes=base.bytes, dequantise_traffic_bytes=traffic,
        layer_activation_bytes={moe: layer_adapter_activation_bytes(
            cfg, adapters, seq_len=seq_len, act_bytes=act_bytes, moe=moe) for moe in kinds},
        head_activation_bytes=head_adapter_activation_bytes(cfg, adapters, seq_len=seq_len,
                                                            act_bytes=act_bytes),
        layer_base_bytes={moe: layer_base_bytes(cfg, adapters, moe=moe, dtype_bytes=dtype_bytes,
                                                layer_params=layer_params_per_rank(cfg, 1, moe=moe))
                          for moe in kinds},
        head_adapted=bool(head),
        head_adapter_params=sum(adapters.rank * (m.in_features + m.out_features) for m in head),
        dequantised_bytes=dequantised_weight_bytes(cfg, adapters, compute_bytes=dtype_bytes))
