"""Published measured runs: what each states, the step time it measured, and the planner's
prediction for the same job in the same layout.

A run (``presets/runs/*.toml``, each with its source) states a model, an accelerator, a GPU
count, a batch and sequence length, and as much of the layout as its source gives; the
dimensions it leaves out are searched, so the prediction is the planner's best layout
within what was published. Its measured step time comes from what the source reports, by
the source's own FLOP count where it reports FLOP/s (the formulas below, each from the
source's paper or code), never by the planner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from planner.config import ConfigError, ModelConfig
from planner.hardware import Hardware

PINNABLE = ("tp", "pp", "vpp", "dp", "zero", "sp", "recompute", "mbs")
FORMULAS = ("narayanan2021", "megatron-core-2024", "exact-causal")


@dataclass(frozen=True, kw_only=True)
class PublishedRun:
    name: str
    source: str
    hardware: Hardware
    gpus: int
    cfg: ModelConfig
    seq_len: int
    global_batch: int
    dtype: str = "bf16"
    attention: str = "flash"
    layout: Mapping[str, Any] = field(default_factory=dict)
    """The dimensions the source states (keys of :data:`PINNABLE`)."""
    tp_comm_overlap: bool | None = None
    """The source overlaps TP communication with compute (Megatron's ``--tp-comm-overlap``)."""
    eager: bool = False
    """Element-wise ops run unfused, one eager PyTorch kernel each (no torch.compile)."""
    tflops_per_gpu: float = 0.0
    flops_formula: str = ""
    tokens_per_s_per_gpu: float = 0.0
    step_time_s: float = 0.0
    notes: str = ""
    held_out: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layout) - set(PINNABLE))
        if unknown:
            raise ConfigError(f"run {self.name}: unknown layout key(s) {', '.join(unknown)}")
        given = [bool(self.step_time_s), bool(self.tokens_per_s_per_gpu), bool(self.tflops_per_gpu)]
        if sum(given) != 1:
            raise ConfigError(f"run {self.name}: [measured] needs exactly one of step_time_s, "
                              "tokens_per_s_per_gpu, tflops_per_gpu")
        if self.tflops_per_gpu and self.flops_formula not in FORMULAS:
            raise ConfigError(f"run {self.name}: flops_formula({self.flops_formula!r}) is not "
                              f"one of {', '.join(FORMULAS)}")

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def measured_step_time_s(self) -> float:
        """The step time the source measured: stated, or its tokens/s or FLOP/s per GPU
        turned back into seconds per step (FLOPs by the source's own count)."""
        if self.step_time_s:
            return self.step_time_s
        if self.tokens_per_s_per_gpu:
            return self.tokens_per_step / (self.tokens_per_s_per_gpu * self.gpus)
        return source_flops_per_step(self) / (self.tflops_per_gpu * 1e12 * self.gpus)


def narayanan2021_flops(*, batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """FLOPs per iteration as Narayanan et al. 2021 count them (arXiv 2104.04473, §5.1 eq. 3):
    ``96 B s l h^2 (1 + s / 6h + V / 16 l h)``: forward, backward and the recomputed forward
    of a GPT layer (24 B s h^2 + 4 B s^2 h each, no causal halving), and the logit layer."""
    B, s, l, h, V = batch, seq, layers, hidden, vocab
    return 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))


def megatron_core_2024_flops(cfg: ModelConfig, *, batch: int, seq: int) -> float:
    """FLOPs per iteration as Megatron-LM counts them for its MFU
    (``megatron/training/training.py`` ``num_floating_point_operations`` at commit
    937571cfd49d0194c06123af93e310cd3637cf50): ``12 B s L h^2 ((1 + g/a + s/h) (a d / h) +
    (f / h) k glu + V / (2 L h))`` with glu 3/2 for SwiGLU, k the experts a token is routed to
    (1 for a dense model), no causal halving and no recompute."""
    h, L, a, g, d = cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    routed = cfg.experts_per_token if cfg.is_moe else 1
    ffn = cfg.moe_ffn_hidden_size if cfg.is_moe else cfg.ffn_hidden_size
    glu = 1.5 if cfg.mlp == "swiglu" else 1.0
    return 12 * batch * seq * L * h * h * (
        (1 + g / a + seq / h) * (a * d / h) + (ffn / h) * routed * glu
        + cfg.vocab_size / (2 * L * h))


def source_flops_per_step(run: PublishedRun) -> float:
    """The FLOPs per step behind a run's reported FLOP/s, by the source's formula."""
    c = run.cfg
    if run.flops_formula == "narayanan2021":
        return narayanan2021_flops(batch=run.global_batch, seq=run.seq_len, layers=c.num_layers,
                                   hidden=c.hidden_size, vocab=c.vocab_size)
    if run.flops_formula == "megatron-core-2024":
        return megatron_core_2024_flops(c, batch=run.global_batch, seq=run.seq_len)
    from planner.flops import FlopConventions, flops_report

    per_token = flops_report(c, run.seq_len, FlopConventions(causal=True)).train_flops_per_token
    return per_token * run.tokens_per_step
