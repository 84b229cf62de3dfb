"""`llmplan export` of a LoRA / QLoRA run's checkpoint writes the model the run trained: the
base with its adapters merged, as peft's ``merge_and_unload`` folds them (W + (alpha / r) B A).

The oracle is peft + transformers: the adapters the same run saved in peft's format
(``--save-adapter``, a path apart from the DCP checkpoint that export reads) loaded over the
base folder and merged by peft; the exported folder's every weight and its logits must equal
that model's, and must differ from the untouched base (the export used to write the base);
`generate` of the checkpoint generates that model's greedy tokens.
QLoRA's base is the folder's weights as torchao's NF4 tensor dequantises them (peft's own
4-bit merge needs bitsandbytes and CUDA); export dequantises and merges, as ``--merge`` does.
"""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, launch
from test_lora_training import dequantised, load_base, nf4_folder

RANK, ALPHA = 4, 16
PROMPT, NEW = "the fox 7 jumps over", 8


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_export_of_a_lora_checkpoint_is_the_peft_merged_model(tmp_path, method):
    import peft
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "llama"
    nf4_folder(folder)  # block linears a whole number of NF4 groups: QLoRA runs on it too
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"the fox {i} jumps over the dog {i % 5}."})
                            + "\n" for i in range(32)))
    ckpt, adapter, out = tmp_path / "ckpt", tmp_path / "adapter", tmp_path / "out"
    quant = ("--double-quant",) if method == "qlora" else ()
    launch(str(folder), "--method", method, *quant, "--lora-rank", str(RANK), "--lora-alpha",
           str(ALPHA), "--data", str(data), "--steps", "2", "--seq", "16", "--gbs", "2",
           "--lr", "1e-2", "--dtype", "fp32", "--ckpt-dir", str(ckpt), "--ckpt-every", "2",
           "--save-adapter", str(adapter), env={"LLMPLAN_CACHE_DIR": str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "export", str(ckpt), str(out),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    base = load_base(folder)
    if method == "qlora":
        base = dequantised(base)
    merged = peft.PeftModel.from_pretrained(base, adapter).merge_and_unload()
    want = {k: v.detach() for k, v in merged.state_dict().items()}
    got = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    original = load_file(folder / "model.safetensors")
    assert set(got) <= set(want) and "model.layers.0.self_attn.q_proj.weight" in got
    for name, tensor in got.items():
        assert torch.allclose(tensor, want[name], atol=1e-6, rtol=1e-5), name
    moved = [n for n in got if float((got[n] - original[n]).abs().max()) > 1e-4]
    assert any("q_proj" in n for n in moved) and any("down_proj" in n for n in moved)

    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(tokens).logits
        reference = merged(tokens).logits
    assert torch.allclose(exported, reference, atol=1e-5, rtol=1e-4)
    assert json.loads(proc.stdout)["merged_adapters"] is True

    # `generate CKPT` runs the same merged model: greedy tokens equal peft's merged model's,
    # which differ from the base's (the adapters change what is generated)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(ckpt), "--prompt",
                           PROMPT, "--max-new-tokens", str(NEW), "--device", "cpu",
                           "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads(proc.stdout.splitlines()[-1])
    assert done["prompt_tokens"] == len(ids)
    assert done["tokens"][0] == greedy(merged, ids)
    assert greedy(merged, ids) != greedy(load_base(folder), ids)

    from planner.config import ConfigError
    from runtime.inputs import checkpoint_folder

    with pytest.raises(ConfigError, match=r"use --tp 1 \(not 2\)"):
        checkpoint_folder(str(ckpt), 2)  # merged in one process: tp 2 is refused up front


def greedy(model, ids):
    """Greedy tokens, stopping after the folder's EOS (id 0) as `generate` does."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                             eos_token_id=0, pad_token_id=0)
    return out[0, len(ids):].tolist()
