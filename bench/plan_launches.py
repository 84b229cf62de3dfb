"""Every layout `plan` ranks launches: for each tiny preset, the top candidates of
`llmplan plan MODEL --hardware cpu --gpus 8 --gbs 16 --seq 64 --top 10 --json` each run
through `llmplan launch` with the candidate's own fields for 2 steps on CPU processes,
model-parallel layouts (tp x pp > 1) first.

Prints one line per candidate and `N candidates, N finished`; exits 1 if any failed.
``--model-parallel K`` launches instead the K best-ranked candidates with tp x pp > 1 among
the top ``--top`` (a small model on CPU ranks data parallelism first).
Usage: python bench/plan_launches.py [--top 10] [--model-parallel K] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import events  # noqa: E402

LLMPLAN = [sys.executable, "-m", "tui.cli"]
MODELS = ("tiny", "tiny-moe", "tiny-gpt2", "tiny-falcon")


def candidates(model: str, top: int) -> list[dict]:
    out = subprocess.run([*LLMPLAN, "plan", model, "--hardware", "cpu", "--gpus", "8", "--gbs",
                          "16", "--seq", "64", "--top", str(top), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["candidates"]


def launch_args(c: dict) -> list[str]:
    return ["--tp", str(c["tp"]), "--pp", str(c["pp"]), "--vpp", str(c["vpp"]), "--dp", str(c["dp"]),
            "--zero", str(c["zero"]), "--sp" if c["sp"] else "--no-sp", "--recompute",
            c["recompute"], "--mbs", str(c["mbs"]), "--gbs", "16", "--seq", "64",
            "--steps", "2", "--device", "cpu", "--json"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--model-parallel", type=int, default=0)
    ap.add_argument("models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    total = finished = 0
    for model in args.models:
        ranked = candidates(model, args.top)
        if args.model_parallel:
            ranked = [c for c in ranked if c["tp"] * c["pp"] > 1][:args.model_parallel]
        # model-parallel layouts first: they exercise the most runtime code
        for c in sorted(ranked, key=lambda c: c["tp"] * c["pp"] == 1):
            total += 1
            t0 = time.perf_counter()
            run = subprocess.run([*LLMPLAN, "launch", model, *launch_args(c)], cwd=root,
                                 capture_output=True, text=True)
            seen = [ev for ev in map(events.parse, run.stdout.splitlines()) if ev]
            ok = run.returncode == 0 and any(isinstance(ev, events.Done) for ev in seen)
            errors = [ev.message for ev in seen if isinstance(ev, events.Error)]
            finished += ok
            label = " ".join(f"{k}={c[k]}" for k in ("tp", "pp", "vpp", "dp", "zero", "sp",
                                                     "recompute", "mbs"))
            why = errors or run.stderr.strip().splitlines()[-1:] or [f"exit code {run.returncode}"]
            tail = "" if ok else " | " + why[-1][:200]
            print(f"{model:12s} {label:70s} {'ok' if ok else 'FAILED'} "
                  f"{time.perf_counter() - t0:5.1f} s{tail}", flush=True)
    print(f"{total} candidates, {finished} finished")
    return 0 if finished == total else 1


if __name__ == "__main__":
    sys.exit(main())
