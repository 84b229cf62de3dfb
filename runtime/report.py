"""What the planner predicted for a run and what the run measured, side by side: the
``start`` event's predictions and the ``done`` event's comparison, per rank (the most loaded
rank at the top level, as ``runtime.events.Done`` describes).
"""

from __future__ import annotations

import resource
from dataclasses import replace
from typing import Any

from planner.config import LlmplanError
from runtime import events


def steady_step_time_s(step_times: list[float | None]) -> float | None:
    """Median of the steady-state steps: the first two (allocator growth, lazy init, gloo
    connection set-up) are dropped when at least three others remain; ``None`` marks a step
    that ran the memory meter."""
    warm = step_times[2:] if sum(t is not None for t in step_times[2:]) >= 3 else step_times[1:]
    timed = sorted(t for t in (warm or step_times) if t is not None)
    return timed[len(timed) // 2] if timed else None


def predictions(cfg, setup, par, hardware: str, rounds: int = 1) -> dict[str, Any]:
    """What the planner says this run will use, with the ``runtime`` recipe; ``setup`` holds
    one pipeline flush, run ``rounds`` times per step."""
    from planner.cost import Cluster, CostEstimator
    from planner.memory import memory_report
    from presets import load_hardware

    rsetup = replace(setup, recipe="runtime")
    report = memory_report(cfg, rsetup, par)
    out: dict[str, Any] = {"stages": [s.to_dict() for s in report.stages]}
    try:
        from presets import load_accuracy, load_cost_model

        hw = load_hardware(hardware)
        cost = CostEstimator(cfg, rsetup, Cluster(hardware=hw, gpus=par.world),
                             load_cost_model(hardware))
        out["step_time_s"] = cost.layout_step_time(par).total_s * rounds
        accuracy = load_accuracy(hardware)
        out["step_time_band_s"] = accuracy.time(out["step_time_s"]).to_dict()
        out["step_time_band_source"] = accuracy.source
        tokens = setup.seq_len * setup.micro_batch * setup.grad_accum * par.dp * rounds
        out["tokens_per_s"] = tokens / out["step_time_s"]
        out["peak_flops"] = hw.peak_flops(setup.dtype)
    except LlmplanError:
        pass
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report(trainer, measured: dict[str, int], predicted: dict[str, Any],
           step_times: list[float | None], say, *, cuda: bool, rss_baseline: int = 0) -> None:
    """Measured next to predicted, per rank; the most loaded rank at the top level of ``done``."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    mine = {"rank": rank, "stage": trainer.built.mesh["pp"].get_local_rank(), **measured}
    if cuda:
        mine["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    else:  # on CPU the whole build and run is host memory above what imports took
        mine["host_peak_bytes"] = max(0, peak_rss_bytes() - rss_baseline)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if rank != 0:
        return
    from planner.memory import CATEGORIES as names

    done: dict[str, Any] = {"steps": int(trainer.opts["steps"]), "ranks": []}
    best = None
    for r in gathered:
        pred = predicted["stages"][r["stage"]]
        entry = {"rank": r["rank"], "stage": r["stage"]}
        for cat, key in names.items():
            entry[f"predicted_{cat}_bytes"] = pred[key]
            entry[f"measured_{cat}_bytes"] = r.get(f"{cat}_bytes")
        # What saved-tensor hooks can see: the working set of a layer being recomputed
        # lives inside torch.utils.checkpoint, so it is compared on CUDA (allocator peak).
        entry["predicted_activations_bytes"] -= pred["activations_recompute_bytes"]
        entry["predicted_total_bytes"] = pred["total_bytes"]
        if "max_memory_allocated_bytes" in r:
            entry["measured_max_allocated_bytes"] = r["max_memory_allocated_bytes"]
        if "host_peak_bytes" in r:
            entry["measured_host_peak_bytes"] = r["host_peak_bytes"]
            entry["measured_host_build_peak_bytes"] = r["host_build_peak_bytes"]
        done["ranks"].append(entry)
        total = sum(entry[f"measured_{c}_bytes"] or 0 for c in names)
        if best is None or total > best[0]:
            best = (total, entry)
    done.update({k: v for k, v in best[1].items() if k.startswith(("predicted_", "measured_"))})
    median = steady_step_time_s(step_times)
    tokens = trainer.global_batch * trainer.setup.sequences_per_example * trainer.setup.seq_len
    done["measured_step_time_s"] = median
    done["predicted_step_time_s"] = predicted.get("step_time_s")
    done["predicted_step_time_band_s"] = predicted.get("step_time_band_s")
    done["predicted_step_time_band_source"] = predicted.get("step_time_band_source")
    done["measured_tokens_per_s"] = tokens / median if median else None
    done["predicted_tokens_per_s"] = predicted.get("tokens_per_s")
    say(events.Done(**done))
