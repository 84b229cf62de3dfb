"""Meta-device build: each rank's host memory is its own shard, as the planner predicts.

Launches a large `tiny`-shaped model with ZeRO-3 over 8 CPU processes for 2 steps and
prints, per rank, the peak RSS above the rank's baseline after its imports, once the model is
built and at the end of the run, next to the planner's per-rank peak (runtime recipe), and
the worst ratio (goal: within 15%). Shapes: ``0.4b`` (default; h=2048 L=4 f=8192, fp32, AdamW:
about 18 GiB of host memory for the 8 ranks), ``0.9b`` (h=2048 L=16 f=5632, bf16 compute
from fp32 masters, SGD with momentum: its 3.3 GiB fp32 model no rank ever holds; about 21 GiB),
``1b`` (h=4096 L=3 f=16384: its 243 M-parameter layers gathered whole on each rank need
about 47 GiB in fp32, which launch's host-memory check refuses on a 24 GiB machine).
Before the meta build every rank initialised the whole fp32 model first.
``--shape hf-0.5b`` loads a Hugging Face folder instead (a 0.5 B-parameter Llama written once
by ``transformers`` with random weights into .bench/, 2 GiB of fp32 safetensors): each rank
reads only its own rows, so its peak is its shard, not the checkpoint.
Usage: python bench/meta_build.py [--shape 0.4b|0.9b|1b|hf-0.5b]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # model fields, then launch options
    "0.4b": (("h=2048", "L=4", "f=8192", "a=16", "g=8", "V=32000"), ("--dtype", "fp32")),
    "0.9b": (("h=2048", "L=16", "f=5632", "a=16", "g=8", "d=128", "V=32000"),
             ("--dtype", "bf16", "--optimizer", "sgd_momentum")),
    "0.4b-bf16": (("h=2048", "L=4", "f=8192", "a=16", "g=8", "V=32000"), ("--dtype", "bf16")),
    "1b": (("h=4096", "L=3", "f=16384", "a=32", "g=8", "V=32000"), ("--dtype", "fp32")),
    "hf-0.5b": ((), ("--dtype", "fp32")),
}
HF_FOLDER = ROOT / ".bench" / "hf-llama-0.5b"


def hf_folder() -> Path:
    """The 0.5 B Llama folder (written once; ``transformers`` is a test dependency)."""
    if not (HF_FOLDER / "model.safetensors.index.json").exists():
        import torch
        import transformers

        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1536, num_hidden_layers=16,
                                          num_attention_heads=12, num_key_value_heads=4,
                                          intermediate_size=4096, max_position_embeddings=512)
        with torch.no_grad():
            model = transformers.LlamaForCausalLM(config)
        model.save_pretrained(HF_FOLDER, max_shard_size="500MB")
    return HF_FOLDER


def states(rank: dict) -> int:
    """What the build allocates: the rank's shard of the weights (grads and optimizer states
    come with the first step)."""
    return rank["predicted_parameters_bytes"]


def main() -> int:
    name = sys.argv[sys.argv.index("--shape") + 1] if "--shape" in sys.argv else "0.4b"
    shape, options = SHAPES[name]
    sets = [arg for s in shape for arg in ("--set", s)]
    target = str(hf_folder()) if name.startswith("hf-") else "tiny"
    cmd = [sys.executable, "-m", "tui.cli", "launch", target, *sets, "--dp", "8", "--zero", "3",
           "--seq", "16", "--gbs", "8", "--steps", "2", *options, "--device", "cpu", "--json"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    done = next((e for e in events if e["event"] == "done"), None)
    if run.returncode or done is None:
        print(f"run failed ({run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
        return 1
    worst = 0.0
    print(f"{' '.join(shape) or target}: dp 8, ZeRO-3, {' '.join(options)}")
    for r in done["ranks"]:
        measured, predicted = r["measured_host_peak_bytes"], r["predicted_total_bytes"]
        ratio = measured / predicted
        worst = max(worst, abs(ratio - 1))
        print(f"rank {r['rank']}: after the build {r['measured_host_build_peak_bytes'] / 2**30:5.2f}"
              f" GiB (its model states: {states(r) / 2**30:5.2f} GiB); peak of the run "
              f"{measured / 2**30:5.2f} GiB vs the planner's {predicted / 2**30:5.2f} GiB "
              f"(measured/predicted {ratio:.3f})")
    print(f"worst deviation {worst:.1%} (goal 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
