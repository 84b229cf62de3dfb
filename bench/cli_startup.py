"""Cold-start time of `llmplan params llama-2-7b --json`, as ratios against baselines.

Baselines run in the same command: `python -c pass` (the interpreter floor) and the same
question -- the parameter count of Llama-2-7B -- asked of llm-analysis 0.2.2 through its
library (its bundled model config, ``LLMAnalysis(...).get_num_params_total()``, printed),
installed on first use into its own venv under .bench/ (it pins transformers 4.x, which must
not share our venv).

Goal (issue 2): median under 0.35 s absolute on a 2-core machine, and at least 4x faster than
llm-analysis. Run: `.venv/bin/python bench/cli_startup.py [--runs 15] [--no-llm-analysis]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LA_VENV = ROOT / ".bench" / "llm-analysis-venv"
LLM_ANALYSIS_PARAMS = (
    "from llm_analysis.analysis import LLMAnalysis\n"
    "from llm_analysis.config import get_gpu_config_by_name, get_model_config_by_name\n"
    "a = LLMAnalysis(get_model_config_by_name('NousResearch_Llama-2-7b-hf'),\n"
    "                get_gpu_config_by_name('a100-sxm-80gb'))\n"
    "print(a.get_num_params_total())")
"""The same question of llm-analysis: Llama-2-7B's parameter count, through its library."""


def median_s(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def llm_analysis_python() -> Path | None:
    python = LA_VENV / "bin" / "python"
    if not python.exists():
        print("installing llm-analysis==0.2.2 into .bench/ ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LA_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "llm-analysis==0.2.2"])
        if done.returncode:
            return None
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-llm-analysis", action="store_true")
    args = parser.parse_args()

    llmplan = [sys.executable, "-m", "tui.cli", "params", "llama-2-7b", "--json"]
    floor = median_s([sys.executable, "-c", "pass"], args.runs)
    ours = median_s(llmplan, args.runs)
    print(f"python -c pass                 median {floor * 1000:7.1f} ms")
    print(f"llmplan params llama-2-7b      median {ours * 1000:7.1f} ms   "
          f"({ours / floor:.2f}x the interpreter floor; goal < 350 ms: "
          f"{'met' if ours < 0.35 else 'NOT met'})")
    if args.no_llm_analysis:
        return
    python = llm_analysis_python()
    if python is None:
        print("llm-analysis could not be installed; comparison skipped")
        return
    theirs = median_s([str(python), "-c", LLM_ANALYSIS_PARAMS], args.runs)
    print(f"llm-analysis params llama-2-7b median {theirs * 1000:7.1f} ms")
    print(f"ratio llm-analysis / llmplan   {theirs / ours:.2f}x (goal >= 4x: "
          f"{'met' if theirs / ours >= 4 else 'NOT met'})")


if __name__ == "__main__":
    main()
