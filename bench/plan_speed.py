"""Full layout search time: Llama-3.1-405B on 16,384 H100s (tp x cp x pp x dp x ZeRO, every
valid layout: ``runtime="any"``), Mixtral-8x7B on 1,024 (with ep), Llama-2-7B on 8 GPUs.

Prints each search's wall time with the number of layouts considered and evaluated, and the
time per evaluated layout against a baseline in the same process: building a full
``memory_report`` for each of a sample of those layouts.

Goal (issues 6 and 16): under 1 s for the largest (405B on 16,384 GPUs, the 5D search) on
a 2-core machine; the others are shown for scale (Mixtral's ep multiplies its layouts).
Run: `.venv/bin/python bench/plan_speed.py`.
"""

from __future__ import annotations

import statistics
import time

from planner.setup import Parallel, TrainSetup
from planner.cost import Cluster
from planner.memory import memory_report
from planner.search import search
from presets import load_hardware, load_model

CASES = [
    ("llama-3.1-405b", "h100-sxm", 16384, 2048, 8192, "any"),
    ("llama-3.1-405b", "h100-sxm", 16384, 2048, 8192, "llmplan"),
    ("mixtral-8x7b", "h100-sxm", 1024, 1024, 4096, "any"),
    ("llama-2-7b", "a100-80gb", 8, 256, 4096, "llmplan"),
    ("llama-3-70b", "h100-sxm", 1024, 1024, 8192, "llmplan"),
]


def main() -> None:
    for model, hw, gpus, gbs, seq, runtime in CASES:
        cfg = load_model(model)
        cluster = Cluster(hardware=load_hardware(hw), gpus=gpus)
        setup = TrainSetup(seq_len=seq)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = search(cfg, cluster, setup, global_batch=gbs, runtime=runtime)
            times.append(time.perf_counter() - start)
        best_s = statistics.median(times)
        sample = result.candidates[:200]
        start = time.perf_counter()
        for c in sample:
            memory_report(cfg, TrainSetup(seq_len=seq, micro_batch=c.mbs, grad_accum=c.grad_accum,
                                          recompute=c.recompute),
                          Parallel(tp=c.tp, pp=c.pp, vpp=c.vpp, dp=c.dp, zero=c.zero, sp=c.sp,
                                   cp=c.cp, ep=c.ep))
        report_each = (time.perf_counter() - start) / max(len(sample), 1)
        per_eval = best_s / max(result.evaluated, 1)
        goal = ("; goal < 1 s: " + ("met" if best_s < 1 else "NOT met")) if gpus == 16384 else ""
        print(f"{model} on {gpus} x {hw} (runtime {runtime}): {best_s * 1e3:.1f} ms median for {result.total:,} layouts "
              f"({result.evaluated:,} evaluated, {len(result.candidates):,} fit); "
              f"{per_eval * 1e6:.1f} us per evaluated layout vs {report_each * 1e6:.1f} us for a "
              f"full memory_report ({report_each / per_eval:.1f}x){goal}")


if __name__ == "__main__":
    main()
