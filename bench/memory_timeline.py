"""Peak, not sum: the planner's per-GPU total against torch's MemTracker at real size.

For llama-3.2-1b at s=2048 (recompute none / selective / full, fp32 and bf16 autocast, one
and four sequences per micro-batch) and a
0.4 B model under ZeRO-3 over 8 (fake) ranks, each measured with ``runtime.memtrack``
(MemTracker / FSDPMemTracker under FakeTensorMode, llmplan's own model and step), prints the
measured peak, the planner's peak and its phase, and the sum of every category's largest
value (what a calculator that adds them up would say), with both ratios to the measurement.
Usage: python bench/memory_timeline.py [--quick]   (--quick: 4 layers of the 1B)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
FSDP_04B = ("tiny", "--set", "hidden_size=2048", "--set", "num_layers=4", "--set",
            "ffn_hidden_size=8192", "--set", "num_heads=16", "--set", "num_kv_heads=8",
            "--set", "vocab_size=32000", "--seq", "16", "--dp", "8", "--zero", "3")


def measure(args: tuple[str, ...]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "runtime.memtrack", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"memtrack {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    layers = ("--set", "num_layers=4") if "--quick" in sys.argv else ()
    cases = {f"llama-3.2-1b s=2048 {label}": ("llama-3.2-1b", *layers, "--seq", "2048", *extra)
             for label, extra in (("fp32 none", ()), ("fp32 selective", ("--recompute", "selective")),
                                  ("fp32 full", ("--recompute", "full")),
                                  ("bf16 none", ("--dtype", "bf16")),
                                  ("bf16 full", ("--dtype", "bf16", "--recompute", "full")),
                                  ("fp32 none b=4", ("--mbs", "4")),
                                  ("fp32 selective b=4", ("--mbs", "4", "--recompute", "selective")),
                                  ("fp32 full b=4", ("--mbs", "4", "--recompute", "full")))}
    cases["0.4B ZeRO-3 dp8 fp32"] = FSDP_04B
    print(f"{'case':34s} {'measured':>9s} {'planner':>9s} {'ratio':>6s}  {'phase':15s} "
          f"{'sum':>8s} {'ratio':>6s}")
    worst = 0.0
    for name, args in cases.items():
        out = measure(args)
        got, pred = out["peak_bytes"], out["predicted"]
        summed = sum(pred[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes",
                                       "activations_bytes"))
        ratio = pred["total_bytes"] / got
        worst = max(worst, abs(ratio - 1))
        print(f"{name:34s} {got / GIB:8.3f}G {pred['total_bytes'] / GIB:8.3f}G {ratio:6.3f}  "
              f"{pred['peak_phase']:15s} {summed / GIB:7.3f}G {summed / got:6.3f}", flush=True)
    print(f"worst planner/measured deviation {worst:.1%} (goal 5%)")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
