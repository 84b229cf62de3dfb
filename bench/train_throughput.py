"""Single-process step time of the runtime against a minimal plain PyTorch loop.

Both train the same model (runtime.model.Decoder, built from the same ModelConfig) on the same
batches with AdamW in fp32, each in a fresh process with the same environment
(OMP_NUM_THREADS): the runtime through `llmplan launch` (torchrun, one process, gloo; its
median step time comes from the `done` event), the plain loop as `--plain` of this script.
The two sides run in alternation, round after round (`--rounds`), so a shared host's slow or
fast spell falls on both; each side's median over its rounds is compared.

Goal (issue 4): ratio runtime / plain at most 1.10 on CPU.
Run: `.venv/bin/python bench/train_throughput.py [--steps 20] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = ["--set", "h=256", "--set", "L=4", "--set", "a=8", "--set", "g=4", "--set", "f=704",
        "--set", "max_context=512"]


def plain_loop(steps: int, seq: int, batch: int, device: str) -> float:
    import torch
    import torch.nn.functional as F

    from presets import load_model
    from runtime.data import SyntheticData
    from runtime.init import init_weights
    from runtime.model import Decoder

    overrides = {}
    for pair in SETS[1::2]:
        key, value = pair.split("=")
        overrides[key] = value
    cfg = load_model("tiny", overrides)
    model = Decoder(cfg)
    init_weights(model, 0)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            foreach=True)
    data = SyntheticData(cfg.vocab_size, seq, 0)
    times = []
    for step in range(1, steps + 1):
        tokens = data.global_batch(step, batch).to(device)
        x, y = tokens[:, :-1], tokens[:, 1:]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(0, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def runtime_loop(steps: int, seq: int, batch: int, device: str, threads: int) -> float:
    cmd = [sys.executable, "-m", "tui.cli", "launch", "tiny", *SETS, "--steps", str(steps),
           "--seq", str(seq), "--gbs", str(batch), "--mbs", str(batch), "--dtype", "fp32",
           "--device", device, "--json"]
    from runtime import events

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    done = [ev for ev in map(events.parse, out.stdout.splitlines()) if isinstance(ev, events.Done)]
    return done[-1].measured_step_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="run only the plain loop")
    args = parser.parse_args()
    if args.plain:
        print(plain_loop(args.steps, args.seq, args.batch, args.device))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    plains, runtimes = [], []
    for r in range(args.rounds):
        out = subprocess.run([sys.executable, __file__, "--plain", "--steps", str(args.steps),
                              "--seq", str(args.seq), "--batch", str(args.batch),
                              "--device", args.device], env=env, capture_output=True, text=True,
                             check=True)
        plains.append(float(out.stdout.strip().splitlines()[-1]))
        runtimes.append(runtime_loop(args.steps, args.seq, args.batch, args.device, args.threads))
        print(f"round {r + 1}: plain {plains[-1] * 1e3:7.1f} ms, runtime {runtimes[-1] * 1e3:7.1f} ms "
              f"({runtimes[-1] / plains[-1]:.3f})", flush=True)
    plain, runtime = statistics.median(plains), statistics.median(runtimes)
    ratio = runtime / plain
    print(f"plain PyTorch loop   median step {plain * 1e3:8.1f} ms")
    print(f"llmplan runtime      median step {runtime * 1e3:8.1f} ms")
    print(f"ratio runtime / plain: {ratio:.3f} (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
