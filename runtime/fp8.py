"""FP8 training (``--dtype fp8``): the decoder's block linears run their three GEMMs in fp8
through torchao's ``Float8Linear`` (torchao.float8, the recipe torchtitan trains Llama 3
with), everything else in bf16: the split ``planner.fp8`` plans. Applied from outside
the model, on the meta device, before any parallelism (torchtitan's order: convert, then
TP, then FSDP).

* Which linears: every Linear under ``layers.`` (q, k, v, o; gate, up, down; each expert's,
  shared or routed) but MoE routers. The embedding and the LM head stay bf16.
* Scaling: tensor-wise, dynamic ("current") scaling: one fp32 scale per tensor, its amax
  taken at each cast (torchao's ``tensorwise`` recipe): inputs and weights in E4M3,
  gradients in E5M2 (Micikevicius et al. 2022, arXiv 2209.05433 §3).
* What is saved for backward: torchao saves the high-precision input and weight and casts
  again in backward, so a run's saved activations are bf16 (the planner's ``runtime``
  recipe counts them so) and no fp8 weight copy outlives its GEMM.
* Shapes: torch's ``_scaled_mm`` needs both dimensions of every weight (per TP rank) to be
  multiples of 16 (``planner.layout``'s ``fp8_dims`` rule); the token dimension, the inner
  dimension of the weight-gradient GEMM, is zero-padded to a multiple of 16
  (``pad_inner_dim``), so any batch and any expert's token count runs.
* Devices: on CUDA the GEMMs are fp8 tensor-core kernels (compute capability 8.9 and up:
  Ada, Hopper, Blackwell). Without one, torchao's emulation (``emulate``) runs the same
  casts, scales and rounding and multiplies the fp8 values in fp32; ``llmplan launch``
  refuses CPU runs (no fp8 peak to plan against), the worker emulates when handed one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

FP8_CAPABILITY = (8, 9)
"""The first CUDA compute capability with fp8 tensor cores (Ada; Hopper is 9.0)."""


def is_fp8_linear(fqn: str) -> bool:
    """The linears the fp8 recipe converts, by their name in ``runtime.model.Decoder``."""
    return fqn.startswith("layers.") and not fqn.endswith(".router")


@functools.cache
def _float8_linear_class():
    from torchao.float8.float8_linear import Float8Linear

    class RuntimeFloat8Linear(Float8Linear):
        """torchao's Float8Linear, for any device's autocast, and for an expert no token
        chose this micro-batch (zero rows: a bf16 GEMM on nothing, so the expert's
        gradient is zeros rather than an amax of an empty tensor)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            device = x.device.type
            if torch.is_autocast_enabled(device):
                x = x.to(torch.get_autocast_dtype(device))
            if x.numel() == 0:
                return F.linear(x, self.weight.to(x.dtype),
                                None if self.bias is None else self.bias.to(x.dtype))
            return super().forward(x)

    return RuntimeFloat8Linear


def apply_fp8(model: nn.Module, *, emulate: bool) -> int:
    """Swap the block linears of ``model`` for fp8 ones (in place, on any device, meta
    included); the number swapped."""
    from torchao.float8.config import Float8LinearConfig
    from torchao.float8.float8_linear_utils import swap_linear_layers

    cls = _float8_linear_class()
    config = Float8LinearConfig(pad_inner_dim=True, emulate=emulate)
    swapped = [0]

    def convert(linear: nn.Linear) -> nn.Module:
        swapped[0] += 1
        return cls.from_float(linear, config=config)

    swap_linear_layers(model, convert, module_filter_fn=lambda _, fqn: is_fp8_linear(fqn))
    return swapped[0]


def emulated(device: torch.device) -> bool:
    """Whether fp8 GEMMs on ``device`` are emulated: anything but a CUDA GPU with fp8
    tensor cores (compute capability ``FP8_CAPABILITY`` or newer)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_CAPABILITY
