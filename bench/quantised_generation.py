"""Int8 weight-only generation against bf16 and fp32 over five random-weight Llama folders:
the greedy tokens of each, where they part, and the int8 logit change.

    .venv/bin/python bench/quantised_generation.py

Random weights give flat next-token distributions: where bf16 already leaves fp32's tokens
the seed only shows a near-tie, so int8 is judged on the seeds where bf16 keeps them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "runtime")]

from hf_models import write_hf_folder  # noqa: E402
from test_quantised_generation import generate  # noqa: E402


def main() -> int:
    agree = stable = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(5):
            folder = Path(tmp) / f"llama-{seed}"
            write_hf_folder("llama", folder, seed=seed)
            fp32 = generate(folder, "--dtype", "fp32")["tokens"][0]
            bf16 = generate(folder)["tokens"][0]
            int8_run = generate(folder, "--weight-bits", "8")
            int8 = int8_run["tokens"][0]
            keeps = bf16 == fp32
            stable += keeps
            agree += keeps and int8 == bf16
            print(f"seed {seed}: fp32 {fp32}\n        bf16 {bf16} ({'= fp32' if keeps else 'leaves fp32'})\n"
                  f"        int8 {int8} ({'= bf16' if int8 == bf16 else 'differs'}; max logit change "
                  f"{int8_run['quantisation_logit_max_abs_diff']:.3g}; weights "
                  f"{int8_run['measured_weights_bytes']:,} B measured = "
                  f"{int8_run['predicted_weights_bytes']:,} B predicted)")
    print(f"int8 keeps bf16's 8 tokens on {agree} of the {stable} seeds where bf16 keeps fp32's")
    return 0 if agree == stable else 1


if __name__ == "__main__":
    sys.exit(main())
