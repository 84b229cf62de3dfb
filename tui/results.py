"""Everything the model screen shows, computed from a model and a few choices (no Textual).

Kept pure so the TUI recomputes it on every edit and a bench can time it (goal: under 50 ms
for a 405B preset, bench/tui_recompute.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ModelConfig

from planner.hardware import Hardware

from planner.setup import Parallel, TrainSetup
from planner.flops import flops_report
from planner.kv import kv_bytes_per_token, max_batch
from planner.memory import memory_report
from planner.params import ParamCounts, count_params
from planner.scaling import DEFAULT_FIT, FITS, optimal_for_params


@dataclass(frozen=True, kw_only=True, slots=True)
class Choices:
    """The training setup the model screen assumes (from the run defaults and the header)."""

    hardware: Hardware
    gpus: int = 8
    seq_len: int = 4096
    micro_batch: int = 1
    tp: int = 1
    pp: int = 1
    zero: int = 3
    recompute: str = "selective"
    kv_dtype: str = "bf16"
    method: str = "full"
    """full, lora, qlora (rank 16 on every projection; QLoRA's NF4 base double-quantised) or
    dpo (a full policy against its frozen copy)."""

    def setup(self, *, micro_batch: int = 1, grad_accum: int = 1) -> TrainSetup:
        """The training setup these choices describe (one place for the model and plan
        screens)."""
        from planner.finetune import adapters_for, objective_for

        return TrainSetup(seq_len=self.seq_len, micro_batch=micro_batch, grad_accum=grad_accum,
                          recompute=self.recompute,
                          adapters=adapters_for(self.method, double_quant=self.method == "qlora"),
                          objective=objective_for(self.method))


@dataclass(frozen=True, kw_only=True)
class Results:
    params: ParamCounts
    flops: dict[str, float]                 # convention -> training FLOPs per token
    memory_stages: list[dict]               # per pipeline stage: StageMemory.to_dict()
    capacity_bytes: int
    kv_bytes_per_token: int
    kv_by_context: list[tuple[int, int]]    # (context, bytes for one sequence)
    max_batch_at_seq: int
    chinchilla_tokens: float
    chinchilla_loss: float
    loss_curve: list[tuple[float, float]]   # (params, loss) at the model's optimal compute
    memory_error: str = ""


def compute(cfg: ModelConfig, choices: Choices) -> Results:
    counts = count_params(cfg)
    setup = choices.setup(micro_batch=choices.micro_batch, grad_accum=max(choices.pp, 1))
    rep = flops_report(cfg, min(choices.seq_len, cfg.max_context), recompute=choices.recompute,
                       adapters=setup.adapters, objective=setup.objective)
    dp = max(1, choices.gpus // (choices.tp * choices.pp))
    stages: list[dict[str, int]] = []
    error = ""
    try:
        par = Parallel(tp=choices.tp, pp=choices.pp, dp=dp, zero=choices.zero if dp > 1 else 0)
        stages = [s.to_dict() for s in memory_report(cfg, setup, par).stages]
    except ValueError as err:
        error = str(err)
    per_token = kv_bytes_per_token(cfg, choices.kv_dtype)
    contexts = []
    ctx = 1024
    while ctx <= cfg.max_context:
        contexts.append(ctx)
        ctx *= 2
    if not contexts or contexts[-1] != cfg.max_context:
        contexts.append(cfg.max_context)
    window = cfg.sliding_window
    kv_curve = [(c, per_token * (min(c, window) if window else c)) for c in contexts]
    budget = optimal_for_params(counts.total, DEFAULT_FIT)  # ~20 tokens per parameter
    law = FITS[DEFAULT_FIT]
    curve = []
    for i in range(25):  # N from N*/10 to 10 N* at the same compute
        n = budget.params * 10 ** (-1 + i / 12)
        curve.append((n, law.loss(n, budget.compute_flops / (6 * n))))
    return Results(
        params=counts, flops=rep.conventions(), memory_stages=stages,
        capacity_bytes=choices.hardware.memory_bytes, kv_bytes_per_token=per_token,
        kv_by_context=kv_curve,
        max_batch_at_seq=max_batch(cfg, memory_bytes=choices.hardware.memory_bytes,
                                   seq_len=min(choices.seq_len, cfg.max_context),
                                   kv_dtype=choices.kv_dtype),
        chinchilla_tokens=budget.tokens, chinchilla_loss=budget.loss or 0.0, loss_curve=curve,
        memory_error=error)
