"""The frozen base of LoRA / QLoRA fine-tuning: bytes at 16, 8 or 4 bits, exactly.

Which tensors are quantised: every linear map of the blocks (``planner.lora.linear_modules``,
MoE experts included); the embedding, LM head, norms and biases stay 16-bit, as
``transformers`` loads a model with bitsandbytes (the LM head is skipped by default).

Bytes of one quantised weight of n elements (``out`` rows):

* 4-bit NormalFloat (Dettmers et al. 2023, "QLoRA", arXiv 2305.14314 §3): 4 bits per weight,
  ``ceil(n / 2)`` bytes, plus one fp32 absmax per block of 64 weights, ``4 ceil(n / 64)``.
  With double quantisation (§3, "Double Quantization") the absmax constants are themselves
  quantised to 8 bits, one byte per block, with a second-level fp32 constant per 256 blocks:
  ``ceil(n / 64) + 4 ceil(ceil(n / 64) / 256)``: 0.127 bits per weight instead of 0.5.
* 8-bit (LLM.int8(), Dettmers et al. 2022, arXiv 2208.07339 §3): one int8 byte per weight and
  an fp32 absmax scale per output row, ``n + 4 out``.
* 16-bit: ``2 n``.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig

BASE_BITS = (16, 8, 4)
NF4_BLOCK = 64          # weights per absmax constant (QLoRA §3)
NF4_DQ_BLOCK = 256      # absmax constants per second-level constant (double quantisation)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def quantised_weight_bytes(out_features: int, in_features: int, *, bits: int,
                           double_quant: bool) -> int:
    """Bytes of one ``out x in`` weight held at ``bits`` (the module docstring's forms)."""
    n = out_features * in_features
    if bits == 16:
        return 2 * n
    if bits == 8:
        return n + 4 * out_features
    if bits == 4:
        blocks = _ceil_div(n, NF4_BLOCK)
        constants = blocks + 4 * _ceil_div(blocks, NF4_DQ_BLOCK) if double_quant else 4 * blocks
        return _ceil_div(n, 2) + constants
    raise _bits_error(bits)


def _bits_error(bits: int) -> ConfigError:
    return ConfigError(f"--base-bits({bits}) must be one of {', '.join(map(str, BASE_BITS))}")


@dataclass(frozen=True, kw_only=True, slots=True)
class FrozenBase:
    bits: int
    double_quant: bool
    quantised_params: int
    """Weights of the linears held at ``bits``."""
    quantised_bytes: int
    kept_params: int
    """Everything else (embedding, LM head, norms, biases), in the compute dtype."""
    dtype_bytes: int = 2
    """Bytes of the compute dtype: 2 (bf16 / fp16), 4 for an fp32 run."""

    @property
    def bytes(self) -> int:
        return self.quantised_bytes + self.dtype_bytes * self.kept_params

    def to_dict(self) -> dict[str, int | bool]:
        return {"base_bits": self.bits, "double_quant": self.double_quant,
                "quantised_params": self.quantised_params, "quantised_bytes": self.quantised_bytes,
                "kept_16bit_params": self.kept_params, "frozen_base_bytes": self.bytes}


def frozen_base(cfg: ModelConfig, *, bits: int, double_quant: bool = False,
                dtype_bytes: int = 2) -> FrozenBase:
    """The whole frozen model's bytes with its block linears at ``bits`` (16: the compute
    dtype's ``dtype_bytes``) and everything else in the compute dtype."""
    from planner.lora import held_bytes, linear_modules

    if double_quant and bits != 4:
        raise ConfigError(f"--double-quant quantises NF4's constants: it needs --base-bits 4, "
                          f"not {bits}")
    linears = [m for m in linear_modules(cfg) if m.part != "head"]
    def held(m) -> int:
        if bits == 16:
            return dtype_bytes * m.out_features * m.in_features
        return quantised_weight_bytes(m.out_features, m.in_features, bits=bits,
                                      double_quant=double_quant)

    quantised, qbytes, kept = held_bytes(cfg, linears, held)
    return FrozenBase(bits=bits, double_quant=double_quant, quantised_params=quantised,
                      quantised_bytes=qbytes, kept_params=kept, dtype_bytes=dtype_bytes)


def check_method_bits(method: str, bits: int) -> None:
    """LoRA adapts a 16- or 8-bit base; QLoRA is LoRA on a 4-bit NormalFloat base."""
    if bits not in BASE_BITS:
        raise _bits_error(bits)
    if method == "lora" and bits == 4:
        raise ConfigError("--base-bits 4 is QLoRA: use --method qlora (--method lora keeps a "
                          "16- or 8-bit base)")
    if method == "qlora" and bits != 4:
        raise ConfigError(f"--method qlora holds the base in 4-bit NormalFloat, not "
                          f"--base-bits {bits} (use --method lora for a {bits}-bit base)")
