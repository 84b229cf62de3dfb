"""The whole layout matrix: for tiny, tiny-moe, tiny-gpt2 and tiny-falcon, every combination
of tp {1,2} x pp {1,2} x dp {1,2} x zero {0..3} x sp x recompute {none, selective, full}
that the layout contract accepts trains 8 fp32 steps on CPU processes (the layouts of a model
that use w ranks in one torchrun world of w processes, runtime.matrix: a layout never runs as
idle replicas) and must match single-process losses and gradient norms within a relative
1e-4. Refusals are listed with their reasons.

Prints one line per layout and `N layouts, N passed`; exits 1 on any mismatch.
Usage: python bench/layout_matrix.py [MODEL ...]   (make test-matrix)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from presets import load_model  # noqa: E402
from runtime.matrix import agrees, enumerate_layouts, launch_matrix, reference_layout  # noqa: E402

MODELS = ("tiny", "tiny-moe", "tiny-gpt2", "tiny-falcon")


def main() -> int:
    models = sys.argv[1:] or list(MODELS)
    total = passed = 0
    folder = Path(tempfile.mkdtemp(prefix="llmplan-matrix-"))
    for model in models:
        cfg = load_model(model)
        accepted, refused = enumerate_layouts(cfg, seq=32, gbs=8)
        reasons = Counter(why for _, why in refused)
        for why, n in sorted(reasons.items()):
            print(f"{model:12s} refused {n:3d}: {why}")
        t0 = time.perf_counter()
        reference: list = []

        def check(ev) -> None:
            nonlocal passed, total
            if ev.index == 0:
                reference.append(ev)
                return
            total += 1
            why = agrees(reference[0], ev)
            passed += not why
            label = " ".join(f"{k}={v}" for k, v in ev.layout.items())
            print(f"{model:12s} {label:70s} {why or 'ok'}", flush=True)

        by_world: dict[int, list] = {}
        for entry in accepted:
            by_world.setdefault(entry["tp"] * entry["pp"] * entry["dp"], []).append(entry)
        for world, group in sorted(by_world.items()):
            reference.clear()
            rc, got, error = launch_matrix(cfg, [reference_layout(8), *group], folder=folder,
                                           nproc=world, on_layout=check)
            if rc:
                print(f"{model} (world {world}): the matrix run failed: {error}")
                total += len(group) - max(0, len(got) - 1)
        print(f"{model}: {len(accepted)} layouts in {time.perf_counter() - t0:.0f} s")
    print(f"{total} layouts, {passed} passed")
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
