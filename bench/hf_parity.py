"""Hugging Face folders, every family, every entry point, against ``transformers``.

For each of the ten families (tests/hf_models.py writes a small random-weight folder with
``transformers`` and a ``tokenizers`` BPE): ``llmplan generate FOLDER --temperature 0
--max-new-tokens 16 --json`` on 1 and 2 tensor-parallel ranks against ``transformers``'
greedy ``generate``; under tp2 x pp2 and dp2 ZeRO-3, the layout's forward logits
(``runtime.logits``, max abs difference <= 1e-4) and ``llmplan launch FOLDER --steps 1``'s loss
and gradient norm against ``transformers``' on the same batch. The suite runs a sample
(tests/oracle/test_hf_models.py); this runs them all and prints one row per family.
Usage: python bench/hf_parity.py [FAMILY ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

LAYOUTS = {"tp2-pp2": ("--tp", "2", "--pp", "2"), "dp2-zero3": ("--dp", "2", "--zero", "3")}
SIZES = {"tp2-pp2": {"tp": 2, "pp": 2}, "dp2-zero3": {"dp": 2, "zero": 3}}


def cli(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--device", "cpu", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1:])
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from hf_models import FAMILIES, write_hf_folder
    from runtime.data import SyntheticData
    from runtime.logits import launch_logits
    from runtime.runspec import TrainRequest

    families = sys.argv[1:] or list(FAMILIES)
    root = Path(tempfile.mkdtemp(prefix="llmplan-hf-parity-"))
    print(f"{'family':10} {'greedy tp1':>10} {'greedy tp2':>10} "
          + " ".join(f"{name + ' logits':>18} {name + ' loss / grad':>26}" for name in LAYOUTS))
    failures = 0
    for family in families:
        folder = root / family
        hf = write_hf_folder(family, folder)
        prompt = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("the quick brown").ids
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=16,  # both stop at EOS
                           do_sample=False)[0, len(prompt):].tolist()
        cells = []
        for tp in ("1", "2"):
            done = cli("generate", str(folder), "--prompt", "the quick brown", "--max-new-tokens",
                       "16", "--temperature", "0", "--tp", tp)[-1]
            same = done["tokens"] == [want]
            failures += not same
            cells.append(f"{'equal' if same else 'DIFFER':>10}")
        tokens = SyntheticData(320, 16, 0).global_batch(1, 4)
        hf.zero_grad()
        loss = F.cross_entropy(hf(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in hf.parameters()
                                                    if p.grad is not None]))
        probe = torch.randint(0, 320, (4, 12), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            want_logits = hf(probe).logits
        for name, layout in LAYOUTS.items():
            got = launch_logits(TrainRequest(target=str(folder), seq=12, gbs=4, dtype="fp32",
                                             device="cpu", **SIZES[name]), probe,
                                tempfile.mkdtemp(dir=root))
            diff = float((got - want_logits).abs().max())
            failures += diff > 1e-4
            cells.append(f"{diff:>18.1e}")
            step = next(e for e in cli("launch", str(folder), *layout, "--steps", "1", "--seq",
                                       "16", "--gbs", "4", "--dtype", "fp32")
                        if e["event"] == "step")
            dl = abs(step["loss"] / float(loss.detach()) - 1)
            dg = abs(step["grad_norm"] / norm - 1)
            failures += dl > 1e-5 or dg > 1e-4
            cells.append(f"{dl:>12.1e} / {dg:>11.1e}")
        print(f"{family:10} " + " ".join(cells), flush=True)
    print(f"{len(families)} families, {failures} disagreements "
          "(logits 1e-4 absolute; loss 1e-5 and gradient norm 1e-4 relative)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
