"""One accelerator type and the node it sits in (a hardware preset, typed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from planner.config import ConfigError, check_type, dataclass_types


HARDWARE_KINDS = ("accelerator", "cpu")


@dataclass(frozen=True, kw_only=True, slots=True)
class Hardware:
    """One accelerator type and the node it sits in.

    Peaks are dense (no 2:4 sparsity) tensor-core FLOP/s in TFLOP/s (10**12); 0 means the
    format is not supported. ``memory_gib`` is the capacity the device reports (GiB = 2**30).
    Bandwidths are GB/s (10**9 bytes/s), links per direction per device.
    """

    name: str
    source: str = ""
    peak_tflops_bf16: float
    peak_tflops_fp16: float
    peak_tflops_fp8: float = 0.0
    peak_tflops_int8: float = 0.0
    peak_tflops_fp32: float
    memory_gib: float
    hbm_bandwidth_gbps: float
    gpus_per_node: int
    intra_node_bandwidth_gbps: float
    inter_node_bandwidth_gbps: float
    intra_node_latency_us: float = 5.0
    inter_node_latency_us: float = 10.0
    kind: str = "accelerator"
    """"accelerator" (one rank per device) or "cpu" (ranks are host processes sharing cores:
    only this kind takes the host terms a CPU calibration fits)."""
    mamf_tflops_bf16: float = 0.0
    """Maximum achievable matmul FLOP/s measured for bf16 (the best large GEMM; 0: not
    measured): the ceiling of the cost model's shape-dependent matmul efficiency."""
    price_per_gpu_hour_usd: float = 0.0
    """An hourly price per accelerator (a user's own preset; 0: none): serving costs."""
    family: str = ""
    """The chip the cost model's fitted constants are shared across (a100, h100: every
    memory size and form factor of one architecture); empty: the preset's own name."""

    @property
    def chip(self) -> str:
        return self.family or self.name

    def __post_init__(self) -> None:
        if self.kind not in HARDWARE_KINDS:
            raise ConfigError(f"hardware {self.name}: kind({self.kind!r}) is not one of "
                              f"{', '.join(HARDWARE_KINDS)}")
        for name in ("peak_tflops_bf16", "peak_tflops_fp32", "memory_gib", "hbm_bandwidth_gbps",
                     "intra_node_bandwidth_gbps", "inter_node_bandwidth_gbps"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"hardware {self.name}: {name}({value}) must be positive")
        if self.gpus_per_node < 1:
            raise ConfigError(f"hardware {self.name}: gpus_per_node({self.gpus_per_node}) must be >= 1")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a compute dtype (bf16, fp16, fp8, int8, fp32)."""
        tflops = {
            "bf16": self.peak_tflops_bf16,
            "fp16": self.peak_tflops_fp16,
            "fp8": self.peak_tflops_fp8,
            "int8": self.peak_tflops_int8,
            "fp32": self.peak_tflops_fp32,
        }.get(dtype)
        if tflops is None:
            raise ConfigError(f"dtype({dtype!r}) is not one of bf16, fp16, fp8, int8, fp32")
        if tflops <= 0:
            raise ConfigError(f"hardware {self.name} has no {dtype} peak")
        return tflops * 1e12

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "hardware") -> "Hardware":
        known = dataclass_types(cls)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        values = {k: check_type(k, v, known[k], where=where) for k, v in data.items()}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**values)
