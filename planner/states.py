"""Model states on one rank: weights, gradients and optimizer states, per precision recipe,
optimizer and ZeRO stage.

The frameworks' recipes follow the ZeRO paper (Rajbhandari et al. 2020, §3, §5.1-5.3 and
Figure 1): with Ψ parameters per model-parallel rank, mixed-precision AdamW holds 2Ψ + 2Ψ +
12Ψ = 16Ψ bytes, ZeRO-1/2/3 shard 12Ψ, then the gradients, then the weights over dp as flat
buffers padded to a multiple of dp (DeepSpeed, Megatron's distributed optimizer).

The ``runtime`` recipe is exactly what llmplan's runtime allocates, tensor by tensor
(``planner.tensors``): fp32 weights and gradients, FSDP2's dim-0 shard of each tensor
(ZeRO-2/3) or ZeRO-1's flat slice of each, ``torch.optim`` states with a step counter per
tensor, and the optimizer step's own temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner import tensors as T
from planner.activations import ceil_div

# (weights, grads, master) bytes per parameter for each precision recipe.
RECIPE_BYTES = {
    "mixed": (2, 2, 4),            # ZeRO paper: bf16 weights + bf16 grads + fp32 master
    "mixed_fp32_grads": (2, 4, 4),  # Megatron/DeepSpeed: fp32 main grads (18 bytes with AdamW)
    "fp32": (4, 4, 0),             # pure fp32: the weights are the master copy
    "runtime": (4, 4, 0),          # llmplan's runtime: fp32 sharded params and grads (FSDP2
                                   # MixedPrecisionPolicy computes in bf16 from fp32 storage)
}
# Optimizer state bytes per parameter (besides any master copy).
OPTIMIZER_STATE_BYTES = {
    "adamw": 8,         # fp32 m and v
    "adam8bit": 2,      # int8 m and v (Dettmers et al. 2022); block statistics ignored (<1%)
    "sgd_momentum": 4,  # fp32 momentum buffer
    "adafactor": 0,     # factored second moment: per tensor, planner.tensors.adafactor_elements
}
STEP_COUNTER_BYTES = 4
"""``torch.optim``'s AdamW and Adafactor keep one fp32 ``step`` tensor per parameter tensor."""


def sharded_states(zero: int, recipe: str) -> tuple[bool, bool, bool]:
    """Which of (weights, gradients, optimizer states) ZeRO stage ``zero`` shards over dp
    (ZeRO paper §5.1-5.3). FSDP2, which runs llmplan's ZeRO-2 and -3 (``runtime`` recipe),
    always stores sharded parameters; its ZeRO-2 keeps the unsharded copy from forward to
    backward instead (a transient of the timeline)."""
    return (zero >= 3 or (zero == 2 and recipe == "runtime"), zero >= 2, zero >= 1)


def model_state_bytes(params: int, *, recipe: str, optimizer: str, zero: int, dp: int,
                      adafactor_elements: int = 0) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on one rank holding ``params`` parameters of a
    model-parallel shard, with ZeRO stage ``zero`` over ``dp`` ranks (ZeRO paper §5.1-5.3),
    for the frameworks' recipes: sharded states are flat buffers padded up to a multiple of
    dp (DeepSpeed, Megatron's distributed optimizer). ``adafactor_elements``: the factored
    second moment of those parameters (Shazeer & Stern 2018 §3)."""
    w, g, master = RECIPE_BYTES[recipe]
    shard = ceil_div(params, dp)
    w_sharded, g_sharded, o_sharded = sharded_states(zero, recipe)
    opt_params = shard if o_sharded else params
    if optimizer == "adafactor":
        states = 4 * (ceil_div(adafactor_elements, dp) if o_sharded else adafactor_elements)
    else:
        states = OPTIMIZER_STATE_BYTES[optimizer] * opt_params
    return w * (shard if w_sharded else params), g * (shard if g_sharded else params), \
        master * opt_params + states


@dataclass(frozen=True, kw_only=True, slots=True)
class States:
    """A rank's model states and what the timeline needs of them."""

    params: int
    weights: int
    gradients: int
    optimizer: int
    optimizer_temp: int = 0
    frozen: int = 0
    """A frozen base's weights as held (adapter fine-tuning; ``weights`` are the adapters')."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorCounts:
    """Elements of a rank's tensors as llmplan's runtime holds them (most loaded dp rank)."""

    params: int      # whole tensors (after TP, before ZeRO)
    local: int       # stored: FSDP2's dim-0 shard of each tensor, else the whole tensor
    stepped: int     # what the optimizer steps: the local shard, or ZeRO-1's flat slice
    tensors: int     # how many parameter tensors (one step counter each)
    largest: int     # the largest stepped tensor
    adafactor: int   # Adafactor's factored second moment of the stepped tensors


def runtime_counts(tensors, *, zero: int, dp: int) -> TensorCounts:
    """FSDP2 (ZeRO-2/3) keeps the dim-0 shard of each tensor; ZeRO-1 steps a flat 1/dp slice
    of each (``runtime.zero1``); the first rank holds the largest pieces."""
    fsdp = zero >= 2 and dp > 1
    params = local = stepped = largest = adafactor = count = 0
    for shape, n in tensors.items():
        full = T.numel(shape)
        mine = T.dim0_shard(shape, dp) if fsdp else full
        step = mine if fsdp else (T.flat_shard(shape, dp) if zero == 1 and dp > 1 else full)
        params += n * full
        local += n * mine
        stepped += n * step
        largest = max(largest, step)
        count += n
        local_shape = (ceil_div(shape[0], dp), *shape[1:]) if fsdp and shape else shape
        adafactor += n * T.adafactor_elements(local_shape)
    return TensorCounts(params=params, local=local, stepped=stepped, tensors=count,
                        largest=largest, adafactor=adafactor)


def runtime_states(tensors, *, optimizer: str, zero: int, dp: int) -> States:
    """What llmplan's runtime allocates for these tensors (``planner.tensors``): fp32 weights
    and gradients as :func:`runtime_counts` stores them; ``torch.optim`` states with a step
    counter per tensor; foreach AdamW holds one fp32 temporary the size of what it steps,
    single-tensor SGD and Adafactor one the size of their largest tensor."""
    n = runtime_counts(tensors, zero=zero, dp=dp)
    if optimizer == "adamw":
        opt, temp = 8 * n.stepped + STEP_COUNTER_BYTES * n.tensors, 4 * n.stepped
    elif optimizer == "sgd_momentum":  # one tensor at a time: its weight-decayed gradient
        opt, temp = 4 * n.stepped, 4 * n.largest
    elif optimizer == "adafactor":
        opt, temp = 4 * n.adafactor + STEP_COUNTER_BYTES * n.tensors, 4 * n.largest
    else:
        opt, temp = OPTIMIZER_STATE_BYTES[optimizer] * n.stepped, 0
    return States(params=n.params, weights=4 * n.local, gradients=4 * n.local, optimizer=opt,
                  optimizer_temp=temp)
