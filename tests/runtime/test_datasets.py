"""Real data: JSONL / text files tokenised with the model folder's tokenizer, packed with EOS
between documents; under --sft only completion tokens count. The oracle for the loss is
``transformers`` on windows built here from ``tokenizers`` directly: a step whose global
batch holds every window once has the same mean whatever the shuffle."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, launch
from hf_models import write_hf_folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "llama"
    return folder, write_hf_folder("llama", folder)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CACHE_DIR", str(tmp_path / "cache"))


def examples(n: int = 12):
    return [{"prompt": f"the fox {i} jumps over ", "completion": f"the lazy dog {i % 5}."}
            for i in range(n)]


def expected_windows(folder, rows, seq: int, sft: bool):
    """The packed stream built from the tokenizer file alone."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    ids, mask = [], []
    for row in rows:
        p = tok.encode(row["prompt"]).ids
        c = tok.encode(row["completion"], add_special_tokens=False).ids
        ids += p + c + [eos]
        mask += [not sft] * len(p) + [True] * (len(c) + 1)
    n = (len(ids) - 1) // seq
    t = torch.tensor(ids[:n * seq + 1])
    m = torch.tensor(mask[:n * seq + 1])
    windows = torch.stack([t[i * seq:i * seq + seq + 1] for i in range(n)])
    labels = torch.stack([m[i * seq:i * seq + seq + 1] for i in range(n)])
    return windows, labels


@pytest.mark.parametrize("sft", [True, pytest.param(False, marks=pytest.mark.extended)],
                         ids=["sft", "all-tokens"])
def test_the_loss_counts_exactly_the_label_tokens(llama, tmp_path, sft):
    folder, hf = llama
    seq = 16
    rows = next(examples(k) for k in range(12, 24)  # an even window count: dp 2 splits it
                if expected_windows(folder, examples(k), seq, sft)[0].shape[0] % 2 == 0)
    windows, labels = expected_windows(folder, rows, seq, sft)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events, _ = launch(str(folder), "--data", str(data), *(["--sft"] if sft else []),
                       "--steps", "1", "--seq", str(seq), "--gbs", str(windows.shape[0]),
                       "--dp", "2", "--dtype", "fp32")
    step = next(e for e in events if e["event"] == "step")
    hf.zero_grad()
    logits = hf(windows[:, :-1]).logits
    y = windows[:, 1:].masked_fill(~labels[:, 1:], -100)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in hf.parameters() if p.grad is not None])
    assert step["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert step["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    if sft:
        assert int(labels[:, 1:].sum()) < labels[:, 1:].numel() // 2  # most tokens masked


def test_resume_continues_at_the_exact_next_sample_of_real_data(tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i}: " + "abc " * (i % 7)}) + "\n"
                            for i in range(40)))
    common = ("tiny", "--data", str(data), "--steps", "6", "--seq", "32", "--gbs", "4",
              "--dtype", "fp32", "--lr", "3e-3")
    straight, _ = launch(*common)
    ckpt = tmp_path / "ckpt"
    killed, _ = launch(*common, "--ckpt-dir", str(ckpt), "--ckpt-every", "3", check=False,
                       env={"LLMPLAN_FAIL_AT_STEP": "4", "LLMPLAN_FAIL_RANK": "0"})
    resumed, _ = launch(*common, "--ckpt-dir", str(ckpt), "--resume")
    want = {e["step"]: e["loss"] for e in straight if e["event"] == "step"}
    got = {e["step"]: e["loss"] for e in resumed if e["event"] == "step"}
    assert sorted(got) == [4, 5, 6]
    for s, loss in got.items():
        assert loss == pytest.approx(want[s], rel=1e-5)
    assert want[6] < want[1]  # real text is learnable


@pytest.mark.parametrize(("lines", "needle"), [
    ([{"text": "fine"}, {"txt": "typo"}], "line 2: no 'text', 'prompt' + 'completion' or 'messages' field"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "need the model folder's chat_template"),
])
def test_bad_data_is_one_line(tmp_path, lines, needle):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "launch", "tiny", "--data", str(data),
                           "--device", "cpu", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_held_out_loss_is_transformers_loss_on_the_eval_windows(llama, tmp_path):
    """Evaluated after one step at lr 1e-30 (an update below fp32 resolution), the model is
    still the folder's; under pp2 this is the schedule's forward-only path."""
    folder, hf = llama
    rows = examples(16)
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))
    windows, labels = expected_windows(folder, rows[::-1], 16, False)
    gbs = 4
    events, _ = launch(str(folder), "--data", str(train), "--eval-data", str(held),
                       "--eval-every", "1", "--steps", "1", "--lr", "1e-30", "--seq", "16",
                       "--gbs", str(gbs), "--pp", "2", "--dtype", "fp32")
    ev = next(e for e in events if e["event"] == "eval")
    used = min(8, windows.shape[0] // gbs) * gbs  # the first eval_batches global batches
    w, m = windows[:used], labels[:used]
    with torch.no_grad():
        logits = hf(w[:, :-1]).logits
    y = w[:, 1:].masked_fill(~m[:, 1:], -100)
    loss = float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100))
    assert ev["step"] == 1 and ev["tokens"] == int(m[:, 1:].sum())
    assert ev["loss"] == pytest.approx(loss, rel=1e-5)
    assert ev["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_chat_messages_train_only_the_assistant_turns(llama, tmp_path):
    """The template rendered by transformers' own apply_chat_template is the oracle."""
    import transformers

    folder, hf = llama
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    try:
        talks = [[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": f"what is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{2 * i}."},
                  {"role": "user", "content": "and the fox?"},
                  {"role": "assistant", "content": "it jumps."}] for i in range(6)]
        data = tmp_path / "chat.jsonl"
        data.write_text("".join(json.dumps({"messages": t}) + "\n" for t in talks))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                   chat_template=CHATML)
        ids, mask = [], []
        for talk in talks:
            done, first = "", True
            for n, m in enumerate(talk):
                if m["role"] != "assistant":
                    continue
                before = tok.apply_chat_template(talk[:n], tokenize=False, add_generation_prompt=True)
                full = tok.apply_chat_template(talk[:n + 1], tokenize=False)
                for text, trained in ((before[len(done):], False), (full[len(before):], True)):
                    piece = tok(text, add_special_tokens=first)["input_ids"]
                    first = False
                    ids += piece
                    mask += [trained] * len(piece)
                done = full
            ids, mask = ids + [0], mask + [True]  # EOS between conversations
        seq = 16
        t, m = torch.tensor(ids), torch.tensor(mask)
        total = (len(ids) - 1) // seq  # every window in one step: the shuffle cannot matter
        events, _ = launch(str(folder), "--data", str(data), "--sft", "--steps", "1", "--seq",
                           str(seq), "--gbs", str(total), "--dtype", "fp32")
        step = next(e for e in events if e["event"] == "step")
        windows = torch.stack([t[i * seq:i * seq + seq + 1] for i in range(total)])
        labels = torch.stack([m[i * seq:i * seq + seq + 1] for i in range(total)])
        with torch.no_grad():
            logits = hf(windows[:, :-1]).logits
        y = windows[:, 1:].masked_fill(~labels[:, 1:], -100)
        loss = float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100))
        assert step["loss"] == pytest.approx(loss, rel=1e-5)
    finally:
        (folder / "tokenizer_config.json").unlink()


def test_parquet_folders_and_jsonl_give_the_same_stream(llama, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runtime.dataset import prepare
    from runtime.tokenizer import load_tokenizer

    folder, _ = llama
    rows = examples(10)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:4]), parts / "0.parquet")
    (parts / "1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    tok = load_tokenizer(str(folder), model_vocab=320)
    one = prepare(str(tmp_path / "a.jsonl"), tok, vocab_size=320, sft=True)
    two = prepare(str(parts), tok, vocab_size=320, sft=True)
    assert one != two  # different files, different cache entries
    for suffix in ("tokens", "mask"):
        assert np.array_equal(np.load(f"{one}.{suffix}.npy"), np.load(f"{two}.{suffix}.npy"))
    windows, labels = expected_windows(folder, rows, 16, True)
    stream = np.load(f"{one}.tokens.npy")
    assert np.array_equal(stream[:windows.shape[0] * 16 + 1],
                          torch.cat([windows[:, :-1].flatten(), windows[-1:, -1]]).numpy())


def test_a_trained_tokenizer_serves_a_folder_without_one(tmp_path):
    from tokenizers import Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "llama", "vocab_size": 300, "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "tokenizer", "train", str(corpus),
                           "--vocab", "290", "--out", str(folder), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert made["vocab_size"] == tok.get_vocab_size() <= 290
    ids = tok.encode("the lazy fox").ids
    assert tok.decode(ids) == "the lazy fox" and len(ids) < len("the lazy fox")  # merges learnt
    events, _ = launch(str(folder), "--data", str(corpus), "--steps", "3", "--seq", "16",
                       "--gbs", "2", "--lr", "3e-3", "--dtype", "fp32")
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]


def test_generate_chat_prompts_through_the_template(llama, tmp_path):
    import transformers

    folder, hf = llama
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    try:
        proc = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(folder), "--chat",
                               "--prompt", "what is the fox?", "--max-new-tokens", "8",
                               "--device", "cpu", "--json"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        done = json.loads(proc.stdout.strip().splitlines()[-1])
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                   chat_template=CHATML)
        ids = tok.apply_chat_template([{"role": "user", "content": "what is the fox?"}],
                                      add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        want = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        assert done["tokens"] == [want[0, len(ids):].tolist()]
    finally:
        (folder / "tokenizer_config.json").unlink()
    err = subprocess.run([sys.executable, "-m", "tui.cli", "generate", str(folder), "--chat",
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True).stderr
    assert "--chat needs a model folder with a chat_template" in err and err.count("\n") == 1
