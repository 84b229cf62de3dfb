"""`generate CKPT` of a run started from a Hugging Face folder tokenises with that folder's
tokenizer (the run's plan records it), so it generates what the same weights do after
`export`: the oracle is `tokenizers` on the folder's tokenizer.json for the prompt's ids and
`transformers`' greedy `generate` on the exported folder for the new tokens. A checkpoint
whose tokenizer has since gone is refused, not run on bytes."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, launch
from hf_models import write_hf_folder

PROMPT = "the quick brown fox jumps"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def generated(target):
    proc = cli("generate", str(target), "--prompt", PROMPT, "--max-new-tokens", "6",
               "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(json.loads(line) for line in proc.stdout.splitlines()
                if line.startswith("{") and json.loads(line)["event"] == "done")


def test_generate_of_a_checkpoint_uses_the_runs_tokenizer(tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from planner.config import ConfigError
    from runtime.hf_weights import export_checkpoint

    source, ckpt, out = tmp_path / "llama", tmp_path / "ckpt", tmp_path / "out"
    write_hf_folder("llama", source)
    launch(str(source), "--steps", "1", "--seq", "16", "--gbs", "1", "--dtype", "fp32",
           "--ckpt-dir", str(ckpt), "--ckpt-every", "1")
    ids = Tokenizer.from_file(str(source / "tokenizer.json")).encode(PROMPT).ids
    assert len(ids) < len(PROMPT.encode())  # BPE merges: bytes would be a different prompt

    done = generated(ckpt)
    assert done["prompt_tokens"] == len(ids)
    export_checkpoint(str(ckpt), str(out))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                              eos_token_id=0, pad_token_id=0)[0, len(ids):].tolist()
    assert done["tokens"][0] == want

    from runtime.inputs import checkpoint_folder

    (source / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json, which is gone"):
        checkpoint_folder(str(ckpt))
