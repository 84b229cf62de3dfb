"""DPO in the runtime against its definition (Rafailov et al. 2023, Eq. 7) computed here on
peft + transformers: from the same initial adapter, three steps give the same losses, reward
margins and gradient norms; at step 1 the policy is the reference, so the loss is ln 2; on
a separable toy set the margin grows; a full policy against its frozen copy runs on dp2
ZeRO-3 with every memory category predicted; bad preference data is one line."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, launch
from hf_models import write_hf_folder

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ, BETA, LR, STEPS = 24, 0.1, 1e-3, 3


def pairs(n: int = 8):
    return [{"prompt": f"question {i}: is it ", "chosen": "yes, it is.", "rejected": "no."}
            for i in range(n)]


def tokenised(folder, rows):
    """Rows 2i / 2i + 1: prompt + chosen / rejected + EOS, padded with EOS, the completion's
    tokens scored (written from the tokenizer file, not the runtime's preparation)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    ids, mask = [], []
    for row in rows:
        p = tok.encode(row["prompt"]).ids
        for side in ("chosen", "rejected"):
            c = tok.encode(row[side], add_special_tokens=False).ids + [eos]
            seq = (p + c)[:SEQ + 1]
            ids.append(seq + [eos] * (SEQ + 1 - len(seq)))
            mask.append([False] * len(p) + [True] * (len(seq) - len(p)) + [False] * (SEQ + 1 - len(seq)))
    return torch.tensor(ids), torch.tensor(mask)


def logps(logits, y):
    per = -F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
    return per.view(y.shape).sum(-1)


def test_dpo_with_a_lora_policy_equals_its_definition_on_peft(tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "llama"
    write_hf_folder("llama", folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    model.save_pretrained(tmp_path / "init")  # B = 0: the policy starts as the reference
    data = tmp_path / "prefs.jsonl"
    rows = pairs()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events, _ = launch(str(folder), "--method", "dpo", "--policy", "lora", "--lora-rank", "8",
                       "--lora-alpha", "16", "--init-adapter", str(tmp_path / "init"),
                       "--data", str(data), "--seq", str(SEQ), "--gbs", str(len(rows)),
                       "--steps", str(STEPS), "--lr", str(LR), "--dtype", "fp32")
    steps = [e for e in events if e["event"] == "step"]
    tokens, mask = tokenised(folder, rows)
    x, y = tokens[:, :-1], tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(  # warm-up 2, then cosine to 10%
        opt, lambda s: (s + 1) / 2 if s < 2 else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - 2) / (STEPS - 2))))
    for step in steps:
        opt.zero_grad()
        with torch.no_grad(), model.disable_adapter():
            ref = logps(model(input_ids=x).logits, y)
        rewards = BETA * (logps(model(input_ids=x).logits, y) - ref)
        margin = rewards[0::2] - rewards[1::2]
        loss = -F.logsigmoid(margin).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(trained, 1.0)
        assert step["loss"] == pytest.approx(float(loss), rel=1e-5, abs=1e-7)
        assert step["reward_margin"] == pytest.approx(float(margin.mean()), rel=1e-4, abs=1e-7)
        assert step["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
        opt.step()
        sched.step()
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_a_full_policy_learns_a_separable_preference_against_its_frozen_copy(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs(16)))
    events, _ = launch("tiny", "--method", "dpo", "--data", str(data), "--seq", "32",
                       "--gbs", "8", "--steps", "8", "--lr", "1e-3", "--dtype", "fp32",
                       "--dp", "2", "--zero", "3")
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    margins = [s["reward_margin"] for s in steps]
    assert margins[-1] > margins[1] > 0 and steps[-1]["reward_accuracy"] == 1.0
    assert steps[-1]["loss"] < 0.5
    done = next(e for e in events if e["event"] == "done")
    # the reference is a frozen copy of the policy, sharded as it is
    assert done["measured_frozen_base_bytes"] == done["measured_parameters_bytes"] > 0
    for category in ("parameters", "frozen_base", "gradients", "optimizer_states", "activations"):
        assert done[f"measured_{category}_bytes"] == pytest.approx(
            done[f"predicted_{category}_bytes"], rel=0.1), category


@pytest.mark.parametrize("line, args, needle", [
    ({"prompt": "a", "chosen": "b"}, (), "line 2: a preference needs 'prompt', 'chosen' and "
                                         "'rejected' (no 'rejected')"),
    (None, ("--method", "ppo"), "--method ppo is planned (memory, flops, plan), not trained"),
    (None, ("--tp", "2"), "DPO is trained over dp x ZeRO: tp(2) must be 1"),
    (None, ("--save-adapter", "out"), "--save-adapter need(s) adapters: --method lora or qlora"),
    (None, ("--eval-data", "held.jsonl"), "--eval-data is a held-out language-model loss"),
])
def test_bad_preference_input_is_one_line(tmp_path, line, args, needle):
    data = tmp_path / "prefs.jsonl"
    rows = pairs(2)
    if line is not None:
        rows[1] = line
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "held.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    args = tuple(str(tmp_path / a) if a.endswith(".jsonl") else a for a in args)
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "launch", "tiny", "--method", "dpo",
                           "--data", str(data), "--device", "cpu", *args, "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
