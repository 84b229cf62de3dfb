"""``llmplan validate --serving``: generation runs on this machine against the serving model.

A sweep of ``llmplan generate`` runs (``tiny`` over batch and TP, and GPT-2's 124M shape)
measures time to first token and time per output token; the serving model
(``planner.serving``) predicts both for the same layout. Fitted, in log space, to the fit
cases: the achieved fraction of memory bandwidth (decode), the matmul ceiling (prefill), the
GEMM size at half that ceiling, the per-layer framework time of a forward, the fixed cost of
a collective call, the achieved fraction of the link's bandwidth (gloo between processes
reaches little of the preset's nominal figure; the TP cases at batch 1 and 8 separate it from
the call's cost) and the attention core's own ceiling (small heads reach little); the
held-out cases (a batch or model the fit did not see) judge it. Measured, not fitted: how
the host's BLAS streams a few-row GEMM's weights (``runtime.gemm_probe``: on a CPU, decode
at batch 4 reads the weights twice). Each case runs three times and keeps its fastest TTFT and TPOT
(timing noise on a shared host only adds). The constants go into the hardware profile beside
the training calibration's. Standard library only: torch runs in the launched processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any, Callable

from planner.accuracy import relative_error

BASE = {"prompt": "the quick brown fox jumps over the lazy dog " * 3, "max_new": 16}
FIT_CASES: dict[str, dict[str, Any]] = {
    "tiny-b1": {"model": "tiny", "batch": 1},
    "tiny-b8": {"model": "tiny", "batch": 8},
    "tiny-tp2-b1": {"model": "tiny", "batch": 1, "tp": 2},
    "tiny-tp2-b8": {"model": "tiny", "batch": 8, "tp": 2},
    "gpt2-b1": {"model": "gpt2", "batch": 1},
    "gpt2-b2": {"model": "gpt2", "batch": 2},
}
HELD_OUT: dict[str, dict[str, Any]] = {
    "tiny-b4": {"model": "tiny", "batch": 4},
    "tiny-tp2-b4": {"model": "tiny", "batch": 4, "tp": 2},
    "gpt2-b4": {"model": "gpt2", "batch": 4},
}
REPEATS = 3
FITTED = ("hbm_efficiency", "matmul_efficiency", "matmul_half_dim", "infer_layer_overhead_s",
          "collective_call_s", "attention_efficiency", "link_efficiency")


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    """One generation, its ``done`` event (measured and predicted times)."""
    cmd = [sys.executable, "-m", "tui.cli", "generate", case["model"], "--prompt", BASE["prompt"],
           "--max-new-tokens", str(BASE["max_new"]), "--batch", str(case["batch"]),
           "--tp", str(case.get("tp", 1)), "--device", device, "--dtype", "fp32", "--eos", "-1",
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = [json.loads(line) for line in proc.stdout.splitlines() if '"done"' in line]
    if proc.returncode or not done:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        from planner.config import LlmplanError

        raise LlmplanError(f"generate {case}: {tail[0]}")
    return done[0]


def probe_packing(device: str) -> dict[str, int]:
    """``gemv_rows`` and ``gemv_rows_limit`` of this host (``runtime.gemm_probe``); a GPU's
    kernels read the weights once per GEMM (both 0)."""
    if device != "cpu":
        return {"gemv_rows": 0, "gemv_rows_limit": 0}
    from runtime.gemm_probe import packing_from_times

    proc = subprocess.run([sys.executable, "-m", "runtime.gemm_probe"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        from planner.config import LlmplanError

        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LlmplanError(f"gemm probe: {tail[0]}")
    per_pass, limit = packing_from_times({int(k): v for k, v in json.loads(proc.stdout).items()})
    return {"gemv_rows": per_pass if limit else 0, "gemv_rows_limit": limit}


def predict(case: dict[str, Any], model, hardware, prompt_tokens: int) -> tuple[float, float]:
    """(ttft, tpot) of the serving model for this case, from the same formulas generate uses."""
    from planner.kv import cached_tokens, kv_bytes_per_token
    from planner.serving import ServeEstimator, weight_bytes_per_gpu
    from presets import load_model

    cfg = load_model(case["model"])
    tp, b = case.get("tp", 1), case["batch"]
    est = ServeEstimator(cfg, hardware, model, dtype="fp32")
    w = weight_bytes_per_gpu(cfg, weight_bits=32, tp=tp)
    context = prompt_tokens + BASE["max_new"] // 2
    kv = kv_bytes_per_token(cfg, "fp32", tp) * cached_tokens(cfg, context) * b
    return (est.prefill_s(prompt_tokens, tp=tp, weights_bytes=w, batch=b),
            est.decode_step_s(b, context, tp=tp, weights_bytes=w, kv_bytes=kv))


def rows_of(results: dict[str, dict[str, Any]], cases: dict[str, dict[str, Any]], model,
            hardware) -> list[dict[str, Any]]:
    rows = []
    for name, done in results.items():
        ttft, tpot = predict(cases[name], model, hardware, done["prompt_tokens"])
        rows.append({"case": name, "predicted_ttft_s": ttft, "measured_ttft_s": done["ttft_s"],
                     "predicted_tpot_s": tpot, "measured_tpot_s": done["tpot_s"],
                     "ttft_error": relative_error(done["ttft_s"], ttft),
                     "tpot_error": relative_error(done["tpot_s"], tpot)})
    return rows


def fit(results: dict[str, dict[str, Any]], cases, base, hardware):
    """The constants :data:`FITTED` minimising the squared log error of TTFT and TPOT."""
    from planner.published_fit import nelder_mead

    def model_from(x: list[float]):
        values = {n: math.exp(v) for n, v in zip(FITTED, x)}
        for n in ("hbm_efficiency", "matmul_efficiency", "attention_efficiency", "link_efficiency"):
            values[n] = min(1.0, values[n])
        return base.replace(**values)

    def loss(x: list[float]) -> float:
        rows = rows_of(results, cases, model_from(x), hardware)
        return sum(math.log(1 + r["ttft_error"]) ** 2 + math.log(1 + r["tpot_error"]) ** 2 for r in rows)

    start = [math.log(v) for v in (0.5, 0.1, 256.0, 1e-4, 1e-3, 0.1, 0.5)]
    best = nelder_mead(loss, start, steps=600, scale=1.0)
    for scale in (0.3, 0.05):
        best = nelder_mead(loss, best, steps=300, scale=scale)
    return model_from(best)


def validate_serving(*, device: str, hardware: str,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the sweep, fit on the fit cases, report every case before and after (held-out
    cases apart), and save the constants in the hardware's profile."""
    from presets import load_cost_model, load_hardware, load_profile, profile_path
    from planner.tomlio import write_toml

    hw = load_hardware(hardware)
    progress("gemm probe: how a few-row GEMM reads its weights")
    packing = probe_packing(device)
    base = load_cost_model(hardware, serving=True).replace(**packing)
    every = {**FIT_CASES, **HELD_OUT}
    results = {}
    for i, (name, case) in enumerate(every.items()):
        progress(f"generate {name} ({i + 1}/{len(every)})")
        runs = [run_case(case, device) for _ in range(REPEATS)]
        results[name] = {**runs[0], "ttft_s": min(r["ttft_s"] for r in runs),
                         "tpot_s": min(r["tpot_s"] for r in runs)}
    fitted_on = {k: v for k, v in results.items() if k in FIT_CASES}
    model = fit(fitted_on, every, base, hw)
    before, after = rows_of(results, every, base, hw), rows_of(results, every, model, hw)
    held = [r for r in after if r["case"] in HELD_OUT]
    worst = max(max(abs(r["ttft_error"]), abs(r["tpot_error"])) for r in held)
    profile = load_profile(hardware)
    profile["hardware"] = hardware
    profile["serving"] = {**{n: getattr(model, n) for n in FITTED}, **packing}
    path = write_toml(profile_path(hardware), profile)
    return {"hardware": hardware, "device": device, "before": before, "after": after,
            "held_out": sorted(HELD_OUT), "worst_held_out_error": worst,
            "constants": profile["serving"], "profile": str(path)}
