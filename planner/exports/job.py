"""What an export describes: one training job (model, setup, layout, cluster) and the
planner's prediction for it: a ranked layout of the search, as ``plan --out`` writes it into
a plan file (``planner.planfile.candidate_layout`` serves both)."""

from __future__ import annotations

from dataclasses import dataclass
from planner.config import ModelConfig
from planner.setup import Parallel, TrainSetup


@dataclass(frozen=True, kw_only=True)
class Job:
    cfg: ModelConfig
    setup: TrainSetup
    par: Parallel
    hardware: str
    gpus: int
    gpus_per_node: int
    step_time_s: float
    memory_per_gpu_bytes: int
    command: str
    """The llmplan command line that produced the plan (written into each file's header)."""

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: b x m x dp."""
        return self.setup.micro_batch * self.setup.grad_accum * self.par.dp

    def layout_label(self) -> str:
        p, s = self.par, self.setup
        beyond = (f" x cp {p.cp}" if p.cp > 1 else "")
        experts = f" (ep {p.ep})" if p.ep > 1 else ""
        return (f"tp {p.tp}{beyond} x pp {p.pp} (vpp {p.vpp}) x dp {p.dp}{experts}, zero {p.zero}, "
                f"sp {'on' if p.sp else 'off'}, recompute {s.recompute}, "
                f"micro-batch {s.micro_batch} x {s.grad_accum} accumulation")

    def header(self) -> list[str]:
        """The comment each exported file starts with (without the comment marker)."""
        return [
            f"llmplan export: {self.cfg.name} on {self.gpus} x {self.hardware} "
            f"({self.nodes} node(s)), gbs {self.global_batch} x {self.setup.seq_len} tokens",
            f"layout: {self.layout_label()}",
            f"predicted: step {self.step_time_s:.3f} s, "
            f"{self.memory_per_gpu_bytes / 2**30:.1f} GiB per GPU",
            f"produced by: {self.command}",
        ]
