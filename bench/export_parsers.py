"""Exported torchtitan job files parsed by torchtitan 0.2.2 itself, in its own environment
(it pins ``datasets<4.8``, so it cannot be a test dependency beside the project's pins).

    .venv/bin/python bench/export_parsers.py

Builds a virtual environment (once, under ``$LLMPLAN_CACHE_DIR`` or ~/.cache/llmplan) with
torchtitan==0.2.2 and tyro and the project's own packages behind them, exports the best
torchtitan layout of a few jobs, parses each file with torchtitan's ``ConfigManager`` and
compares the degrees it reads with the plan's layout. Exit 1 on any difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

JOBS = [
    ("llama-3-70b", 64, 512, 8192, ()),
    ("llama-3.1-8b", 8, 64, 8192, ()),
    ("llama-3.1-405b", 512, 1024, 8192, ()),
    ("tiny", 8, 32, 256, ()),
    ("llama-3.1-8b", 8, 64, 8192, ("--dtype", "fp8", "--hardware", "h100-sxm")),
]
READ = r"""
import json, sys, types, importlib.util
spec = importlib.util.find_spec("torchtitan")  # its __init__ imports GPU kernels: skip it
pkg = types.ModuleType("torchtitan"); pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["torchtitan"] = pkg
from torchtitan.config.manager import ConfigManager
c = ConfigManager().parse_args(["--job.config_file", sys.argv[1]])
p, t = c.parallelism, c.training
print(json.dumps({"tp": p.tensor_parallel_degree, "pp": p.pipeline_parallel_degree,
                  "dp_shard": p.data_parallel_shard_degree, "dp_replicate": p.data_parallel_replicate_degree,
                  "reshard": p.fsdp_reshard_after_forward, "layers_per_stage": p.pipeline_parallel_layers_per_stage,
                  "microbatch": p.pipeline_parallel_microbatch_size, "local_batch": t.local_batch_size,
                  "global_batch": t.global_batch_size, "seq": t.seq_len, "ac": c.activation_checkpoint.mode,
                  "flavor": c.model.flavor, "converters": c.model.converters,
                  "float8": [c.quantize.linear.float8.recipe_name, c.quantize.linear.float8.filter_fqns]}))
"""


def environment() -> Path:
    root = Path(os.environ.get("LLMPLAN_CACHE_DIR", Path.home() / ".cache" / "llmplan")) / "torchtitan-0.2.2"
    python = root / "bin" / "python"
    if not python.exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(root / "bin" / "pip"), "install", "-q", "--no-deps", "torchtitan==0.2.2"], check=True)
        subprocess.run([str(root / "bin" / "pip"), "install", "-q", "tyro"], check=True)
        site = next((root / "lib").glob("python3*/site-packages"))
        (site / "llmplan-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def main() -> int:
    python = environment()
    llmplan = Path(sys.executable).with_name("llmplan")
    bad = 0
    print(f"{'job':<28} {'layout (plan)':<44} torchtitan reads")
    for model, gpus, gbs, seq, extra in JOBS:
        with tempfile.TemporaryDirectory() as out:
            run = subprocess.run([str(llmplan), "plan", model, "--gpus", str(gpus), "--gbs", str(gbs),
                                  "--seq", str(seq), "--export", "torchtitan", "--out", out, "--json",
                                  *extra],
                                 capture_output=True, text=True, check=True)
            best = json.loads(run.stdout)["candidates"][0]
            got = json.loads(subprocess.run([str(python), "-c", READ, f"{out}/torchtitan.toml"],
                                            capture_output=True, text=True, check=True).stdout)
        sharded = best["zero"] in (2, 3)
        piped = best["pp"] > 1
        want = {"tp": best["tp"], "pp": best["pp"],
                "dp_shard": best["dp"] if sharded else 1, "dp_replicate": 1 if sharded else best["dp"],
                "local_batch": best["mbs"] * (best["grad_accum"] if piped else 1),
                "global_batch": gbs, "seq": seq, "ac": best["recompute"],
                "converters": ["quantize.linear.float8"] if "fp8" in extra else [],
                "float8": ["tensorwise", ["output"]] if "fp8" in extra else [None, []]}
        diff = {k: (v, got[k]) for k, v in want.items() if got[k] != v}
        bad += bool(diff)
        label = (f"tp{best['tp']} pp{best['pp']} v{best['vpp']} dp{best['dp']} z{best['zero']} "
                 f"{best['recompute']} b{best['mbs']} m{best['grad_accum']}")
        name = f"{model} on {gpus}{' fp8' if 'fp8' in extra else ''}"
        print(f"{name:<28} {label:<44} "
              f"{'same' if not diff else diff} (flavor {got['flavor']})")
    print(f"{len(JOBS) - bad}/{len(JOBS)} parsed by torchtitan 0.2.2 with the plan's layout")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
