"""Throughput of the planner's per-layout memory + FLOPs evaluation.

What is timed: for 100,000 (model, layout) pairs -- 5 presets x every valid layout of a grid
of tp, pp, vpp, dp, ZeRO, sp, recompute, micro-batch -- ``Estimator.peak_bytes`` (the peak of
the step's memory timeline on the most loaded stage, the search's memory test) plus the
step's FLOPs (a lookup of the per-recompute FLOPs computed once per model): the fast path the
layout search uses. The baseline, on a sample in the same process: a full ``memory_report``
(every stage, every phase, as ``llmplan memory`` prints it) + ``flops_report`` per layout.

Goal (issue 3): at least 200,000 evaluations per second on a 2-core machine.
Run: `.venv/bin/python bench/planner_speed.py [--n 100000]`.
"""

from __future__ import annotations

import argparse
import itertools
import time

from planner import layout
from planner.setup import Parallel, TrainSetup
from planner.flops import flops_report
from planner.memory import Estimator, memory_report
from presets import load_model

MODELS = ("llama-3-8b", "llama-3-70b", "mixtral-8x7b", "qwen2.5-72b", "gpt3-175b")


def layouts(cfg, seq: int, m: int):
    """Every layout of the grid the layout contract accepts (for any framework)."""
    for tp, pp, vpp, dp, zero, sp, recompute, mbs in itertools.product(
            (1, 2, 4, 8), (1, 2, 4, 8), (1, 2), (1, 2, 4, 8, 16), (0, 1, 2, 3), (False, True),
            ("none", "selective", "full"), (1, 2, 4)):
        setup = TrainSetup(seq_len=seq, micro_batch=mbs, grad_accum=m * pp, recompute=recompute)
        par = Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp)
        if layout.refusals(layout.problems(cfg, setup, par), "any"):
            continue
        yield tp, pp, vpp, dp, zero, sp, recompute, mbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    seq, m = 4096, 8
    work = []
    for name in MODELS:
        cfg = load_model(name)
        work.append((cfg, list(layouts(cfg, seq, m))))

    done = 0
    start = time.perf_counter()
    while done < args.n:
        for cfg, grid in work:
            setup = TrainSetup(seq_len=seq, grad_accum=m)
            est = Estimator(cfg, setup)
            hfu = {r: flops_report(cfg, seq, recompute=r).hardware_flops_per_token
                   for r in ("none", "selective", "full")}
            for tp, pp, vpp, dp, zero, sp, recompute, mbs in grid:
                schedule = "interleaved" if vpp > 1 else "1f1b"
                est.peak_bytes(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp,
                               recompute=recompute, mbs=mbs, m=m * pp, schedule=schedule)
                hfu[recompute] * seq * mbs * m * dp  # the step's FLOPs, a dict lookup
                done += 1
                if done >= args.n:
                    break
            if done >= args.n:
                break
    fast_s = time.perf_counter() - start

    sample = [(cfg, lay) for cfg, grid in work for lay in grid[::50]]
    start = time.perf_counter()
    for cfg, (tp, pp, vpp, dp, zero, sp, recompute, mbs) in sample:
        setup = TrainSetup(seq_len=seq, micro_batch=mbs, grad_accum=m * pp, recompute=recompute)
        memory_report(cfg, setup, Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp))
        flops_report(cfg, seq, recompute=recompute)
    slow_s = time.perf_counter() - start

    fast_rate = done / fast_s
    slow_rate = len(sample) / slow_s
    print(f"peak_bytes + FLOPs (the search's path)  {done:,} evaluations in {fast_s:.3f} s = "
          f"{fast_rate:,.0f} /s")
    print(f"memory_report + flops_report (baseline) {len(sample):,} evaluations in {slow_s:.3f} s = "
          f"{slow_rate:,.0f} /s")
    print(f"ratio fast / full reports: {fast_rate / slow_rate:.1f}x; goal >= 200,000 /s: "
          f"{'met' if fast_rate >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
