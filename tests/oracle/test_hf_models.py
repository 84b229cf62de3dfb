"""Hugging Face folders in: the runtime computes what ``transformers`` computes.

Each family's folder is written by ``transformers`` (random weights, ``save_pretrained``) and
a ``tokenizers`` BPE (tests/hf_models.py). The oracle is the ``transformers`` model itself:
its logits, its greedy ``generate``, its loss and gradient norm on the same batch.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, launch
from hf_models import FAMILIES, write_hf_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    made = {}
    for family in FAMILIES:  # llama and mixtral sharded: the index path and split tensors
        shard = "40KB" if family in ("llama", "mixtral") else None
        made[family] = (root / family, write_hf_folder(family, root / family, shard=shard))
    return made


def runtime_model(folder):
    from presets import load_model
    from runtime.generate import build_model

    cfg = load_model(str(folder))
    return cfg, build_model(cfg, tp=1, device=torch.device("cpu"),
                            opts={"weights": str(folder), "weights_seed": 0}).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(folders, family):
    folder, hf = folders[family]
    _, ours = runtime_model(folder)
    tokens = torch.randint(0, 320, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = ours(tokens), hf(tokens).logits
    assert want.abs().max() > 0.5  # the weights are not a near-zero trivial case
    assert float((got - want).abs().max()) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers(folders, family):
    from runtime.generate import KVCache, generate
    from runtime.tokenizer import load_tokenizer

    folder, hf = folders[family]
    cfg, ours = runtime_model(folder)
    prompt = load_tokenizer(str(folder)).encode("the quick brown fox")
    caches = [KVCache(1, cfg.num_kv_heads, len(prompt) + 16, cfg.head_dim,
                      window=cfg.sliding_window, dtype=torch.float32, device=torch.device("cpu"))
              for _ in range(cfg.num_layers)]
    eos = load_tokenizer(str(folder)).eos  # both stop at the folder's EOS
    got = generate(ours, [prompt], max_new=16, caches=caches, temperature=0.0, top_k=0,
                   top_p=1.0, seed=0, eos=eos)["tokens"][0]
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=16,
                       do_sample=False)[0, len(prompt):].tolist()
    assert got == want


def hf_loss_and_grad_norm(hf, vocab: int, seq: int, batch: int):
    """transformers' loss and gradient norm on the runtime's first synthetic batch."""
    from runtime.data import SyntheticData

    tokens = SyntheticData(vocab, seq, 0).global_batch(1, batch)
    hf.zero_grad()
    logits = hf(tokens[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in hf.parameters() if p.grad is not None]
    return float(loss.detach()), float(torch.nn.utils.get_total_norm(grads))


@pytest.mark.parametrize(("family", "layout"), [
    ("mixtral", ("--tp", "2", "--pp", "2")),          # experts under TP, sharded index
    ("gpt2", ("--tp", "2", "--pp", "2", "--sp")),      # Conv1D, tied head across stages
    pytest.param("falcon", ("--tp", "2", "--dp", "2", "--zero", "3"),  # fused MQA, TP + FSDP
                 marks=pytest.mark.extended),
])
def test_a_loaded_folder_trains_like_transformers_in_any_layout(folders, family, layout):
    folder, hf = folders[family]
    events, _ = launch(str(folder), *layout, "--steps", "1", "--seq", "16", "--gbs", "4",
                       "--dtype", "fp32")
    step = next(e for e in events if e["event"] == "step")
    loss, norm = hf_loss_and_grad_norm(hf, 320, 16, 4)
    assert step["loss"] == pytest.approx(loss, rel=1e-5)
    assert step["grad_norm"] == pytest.approx(norm, rel=1e-4)


def test_generate_from_a_folder_prints_the_tokenizers_text(folders):
    """Through the CLI, on two tensor-parallel ranks, each loading only its shard."""
    folder, hf = folders["gpt2"]
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(folder), "--prompt",
                           "the lazy dog", "--max-new-tokens", "8", "--temperature", "0",
                           "--tp", "2", "--device", "cpu", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = tok.encode("the lazy dog").ids
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                      eos_token_id=0)[0, len(prompt):].tolist()
    assert done["tokens"] == [out]
    assert done["text"] == tok.decode(prompt + out, skip_special_tokens=True)


def test_planner_commands_take_a_folder(folders):
    folder, hf = folders["qwen2"]
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "params", str(folder), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("family", ["bloom"])  # fused heads, ALiBi, tied (all ten: bench/hf_parity.py)
def test_logits_under_tp_and_pp_equal_transformers(folders, family, tmp_path):
    from runtime.logits import launch_logits
    from runtime.runspec import TrainRequest

    folder, hf = folders[family]
    tokens = torch.randint(0, 320, (4, 12), generator=torch.Generator().manual_seed(5))
    got = launch_logits(TrainRequest(target=str(folder), tp=2, pp=2, seq=12, gbs=4,
                                     dtype="fp32", device="cpu"), tokens, tmp_path)
    with torch.no_grad():
        want = hf(tokens).logits
    assert float((got - want).abs().max()) <= 1e-4
