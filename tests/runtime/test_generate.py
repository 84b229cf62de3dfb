"""Inference: cached decoding is exact, TP agrees, sampling obeys its rules, cache bytes are
the planner's figure, bad input is a one-line error."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from presets import load_model
from runtime.generate import KVCache, _forward, sample
from runtime.init import init_weights
from runtime.model import Decoder


def gen(*args, check=True):
    cmd = [sys.executable, "-m", "tui.cli", "generate", *args, "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if check:
        assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    return events, proc


def cached_vs_full(cfg, lengths, total):
    torch.manual_seed(0)
    model = Decoder(cfg)
    init_weights(model, 1)
    model.eval()
    b = len(lengths)
    x = torch.randint(0, cfg.vocab_size, (b, total))
    capacity = min(total, cfg.sliding_window) if cfg.sliding_window else total
    caches = [KVCache(b, cfg.num_kv_heads, capacity, cfg.head_dim, window=cfg.sliding_window,
                      dtype=torch.float32, device=torch.device("cpu")) for _ in range(cfg.num_layers)]
    with torch.no_grad():
        p = max(lengths)
        pos = torch.arange(p)[None].expand(b, p)
        pos = torch.where(pos < torch.tensor(lengths)[:, None], pos, -1)
        first = _forward(model, x[:, :p], pos, caches)
        got = {i: [first[i, lengths[i] - 1]] for i in range(b)}
        cur = torch.tensor(lengths)
        for _ in range(total - p):
            tok = x[torch.arange(b), cur][:, None]
            out = _forward(model, tok, cur[:, None], caches)
            for i in range(b):
                got[i].append(out[i, -1])
            cur = cur + 1
        for i in range(b):
            n = lengths[i] + len(got[i]) - 1
            full = model(x[i:i + 1, :n])[0]
            expect = full[lengths[i] - 1:n]
            assert torch.allclose(torch.stack(got[i]), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-falcon", "sinusoidal"])
def test_cached_decoding_equals_a_full_forward_for_every_position_scheme(model):
    # learned + tied (gpt2-style), ALiBi + parallel block + MQA (falcon-style), sinusoidal
    cfg = load_model("tiny-gpt2").replace(position="sinusoidal") if model == "sinusoidal" \
        else load_model(model)
    cached_vs_full(cfg, [5, 9], 14)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_cached_decoding_equals_a_full_forward(kv_heads):
    cfg = load_model("tiny").replace(num_kv_heads=kv_heads)
    cached_vs_full(cfg, lengths=[9, 5, 12], total=24)


def test_sliding_window_cache_is_a_ring_and_stays_exact():
    cfg = load_model("tiny").replace(sliding_window=8, num_kv_heads=2)
    cached_vs_full(cfg, lengths=[11, 6], total=26)


def test_sampling_rules():
    gen_ = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=gen_)
    greedy = sample(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None)
    assert torch.equal(greedy, logits.argmax(-1))
    cold = sample(logits, temperature=1e-4, top_k=0, top_p=1.0, generator=gen_)
    assert torch.equal(cold, greedy)  # temperature -> 0 is greedy
    for _ in range(20):
        k = sample(logits, temperature=1.5, top_k=5, top_p=1.0, generator=gen_)
        top5 = logits.topk(5, dim=-1).indices
        assert bool((top5 == k[:, None]).any(-1).all())
        p = sample(logits, temperature=1.0, top_k=0, top_p=0.6, generator=gen_)
        probs = logits.softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p
        nucleus = [set(order[i][before[i] < 0.6].tolist()) for i in range(64)]
        assert all(int(p[i]) in nucleus[i] for i in range(64))
    a = sample(logits, temperature=1.0, top_k=0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = sample(logits, temperature=1.0, top_k=0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_greedy_tokens_are_identical_for_tp1_and_tp2_and_cache_bytes_are_exact():
    args = ("tiny", "--prompt", "hello world", "--prompt", "abc", "--max-new-tokens", "12")
    one = gen(*args)[0][-1]
    two = gen(*args, "--tp", "2")[0][-1]
    assert one["event"] == two["event"] == "done"
    assert one["tokens"] == two["tokens"]
    # K and V for every layer: 2 * L(4) * g(2) * d(16) * 4 bytes * (11 + 12 tokens) * 2 rows,
    # each tensor-parallel rank holding g / tp of the kv heads
    for done, tp in ((one, 1), (two, 2)):
        expected = 2 * 4 * 2 * 16 * 4 * 23 * 2 // tp
        assert done["measured_kv_cache_bytes"] == done["predicted_kv_cache_bytes"] == expected
    # a sliding window of 8 caches 8 tokens per row, whatever the sequence length
    windowed = gen(*args, "--set", "sliding_window=8")[0][-1]
    assert windowed["measured_kv_cache_bytes"] == windowed["predicted_kv_cache_bytes"] == 2 * 4 * 2 * 16 * 4 * 8 * 2


@pytest.mark.extended
def test_same_seed_repeats_the_same_text():
    args = ("tiny", "--prompt", "x", "--max-new-tokens", "10", "--temperature", "1.0",
            "--top-p", "0.9", "--seed", "3")
    assert gen(*args)[0][-1]["text"] == gen(*args)[0][-1]["text"]


def test_generates_from_a_training_checkpoint_of_another_layout(tmp_path):
    from helpers import launch
    launch("tiny", "--steps", "2", "--seq", "32", "--gbs", "2", "--mbs", "1", "--dp", "2",
           "--zero", "3", "--dtype", "fp32", "--ckpt-dir", str(tmp_path))
    events, _ = gen(str(tmp_path), "--prompt", "abc", "--max-new-tokens", "4", "--tp", "2")
    assert events[0]["checkpoint_step"] == 2 and events[-1]["event"] == "done"


@pytest.mark.parametrize(("args", "needle"), [
    (("tiny", "--prompt", "x" * 300), "exceeds the model's max context(256)"),
    (("tiny", "--tp", "16"), "tp(16) does not divide query heads(4)"),
    (("llama-2-7b-not-a-dir",), "unknown model preset"),
])
def test_bad_input_is_one_line(args, needle):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "generate", *args, "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.extended
def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    from helpers import launch
    launch("tiny", "--steps", "1", "--seq", "32", "--gbs", "1", "--mbs", "1", "--dtype", "fp32",
           "--ckpt-dir", str(tmp_path))
    run = (tmp_path / "run.toml").read_text().replace("hidden_size = 64", "hidden_size = 128")
    (tmp_path / "run.toml").write_text(run)
    events, proc = gen(str(tmp_path), "--max-new-tokens", "2", check=False)
    assert proc.returncode != 0
    assert events[-1]["event"] == "error" and "incompatible checkpoint" in events[-1]["message"]


def test_an_inference_plan_runs_through_launch(tmp_path):
    gen("tiny", "--prompt", "abc", "--max-new-tokens", "3", "--run-dir", str(tmp_path))
    plan = tmp_path / "generate.toml"
    assert 'kind = "inference"' in plan.read_text()
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "launch", str(plan), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    done = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    assert proc.returncode == 0 and done["event"] == "done" and done["text"].startswith("abc")


def test_timed_generation_after_its_warm_up_equals_greedy_full_forwards():
    """generate() warms up on the same shapes before timing, then clears the caches: its
    greedy tokens for a ragged batch through a ring-buffer cache still equal the argmax of
    uncached full forwards, and the warm-up's time is reported apart."""
    from runtime.generate import generate

    cfg = load_model("tiny").replace(sliding_window=6)
    torch.manual_seed(0)
    model = Decoder(cfg)
    init_weights(model, 1)
    model.eval()
    prompts = [[5, 9, 11, 3, 7, 2, 8], [4, 1, 6]]
    caches = [KVCache(2, cfg.num_kv_heads, 6, cfg.head_dim, window=6, dtype=torch.float32,
                      device=torch.device("cpu")) for _ in range(cfg.num_layers)]
    result = generate(model, prompts, max_new=6, caches=caches, temperature=0.0, top_k=0,
                      top_p=1.0, seed=0, eos=[-1])
    assert result["warmup_s"] > 0 and result["ttft_s"] > 0 and result["tpot_s"] > 0
    with torch.no_grad():
        for prompt, tokens in zip(prompts, result["tokens"]):
            seq = list(prompt)
            for _ in range(6):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            assert tokens == seq[len(prompt):]
