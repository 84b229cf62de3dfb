"""How this host's BLAS streams the weights of a GEMM with few rows (``python -m
runtime.gemm_probe`` prints the timings as JSON; ``validate --serving`` runs it).

Decode multiplies a batch of b rows by each weight matrix. A GPU kernel reads the weights
once whatever b is. A CPU BLAS's small-row kernel keeps a few rows in registers and streams
the whole weight matrix once per group of them: on an AVX-512 Xeon with PyTorch's oneDNN,
the time of ``(b x 4096) @ (4096 x 4096)`` fp32 is a staircase, 1x for b = 1..3, 2x for
b = 4..6, 3x for 7..9, until a blocked GEMM (which packs the weights once) takes over
at 16 rows. So a decode step at batch 4 takes twice batch 2's time though both are
bandwidth-bound. Timed here on a 64 MiB matrix (beyond the caches), one thread, best of
five; :func:`packing_from_times` reads the staircase off the timings.
"""

from __future__ import annotations

import json
import math

SIZE = 4096
MAX_ROWS = 24


def packing_from_times(times: dict[int, float]) -> tuple[int, int]:
    """(rows per weight pass, rows from which a blocked GEMM reads the weights once) from the
    time of a GEMM per row count (``rows -> seconds``, rows 1, 2, ...).

    Rows per pass: the most rows whose time stays within 1.3x of one row's. The limit: the
    first row count whose time falls half a pass below the staircase ``ceil(rows / per
    pass)`` (past the last probed count when none does). (1, 0) when the time grows with
    every row: no staircase to model."""
    one = times[1]
    per_pass = max(m for m in times if all(times[k] <= 1.3 * one for k in range(1, m + 1)))
    if per_pass == 1:
        return 1, 0
    for m in sorted(times):
        if times[m] / one < math.ceil(m / per_pass) - 0.5:
            return per_pass, m
    return per_pass, max(times) + 1


def measure(rows: int = MAX_ROWS, size: int = SIZE, repeats: int = 5) -> dict[int, float]:
    import time

    import torch

    torch.set_num_threads(1)
    weight = torch.randn(size, size)
    times = {}
    for m in range(1, rows + 1):
        x = torch.randn(m, size)
        torch.nn.functional.linear(x, weight)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            best = min(best, time.perf_counter() - start)
        times[m] = best
    return times


if __name__ == "__main__":
    print(json.dumps(measure()))
