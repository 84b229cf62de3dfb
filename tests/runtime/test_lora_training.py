"""LoRA training against peft + transformers: from the same initial adapter (a peft folder,
its B drawn non-zero so both matrices train from the first step), five steps of the same
AdamW recipe on the same SFT windows give the same losses and adapter gradient norms,
single-process and on dp2 ZeRO-3 (FSDP2 over the frozen base); the adapter the run saves
loads into peft, and the merged folder into transformers, with the same logits."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import launch
from hf_models import write_hf_folder

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, STEPS, LR, SEQ = 8, 16, 5, 1e-5, 16


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    import peft

    root = tmp_path_factory.mktemp("lora")
    folder = root / "llama"
    write_hf_folder("llama", folder)
    base = load_base(folder)
    model = peft.get_peft_model(base, peft.LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                      target_modules=TARGETS))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(root / "init")
    rows = [{"prompt": f"the fox {i} jumps over ", "completion": f"the lazy dog {i % 5}."}
            for i in range(16)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from test_datasets import expected_windows

    windows, labels = expected_windows(folder, rows, SEQ, True)
    n = windows.shape[0] // 2 * 2  # dp 2 splits it
    return root, folder, data, windows[:n], labels[:n]


def load_base(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def lr_factor(step: int, warmup: int = 2, total: int = STEPS, floor: float = 0.1) -> float:
    """The runtime's schedule as its docs state it: linear warm-up, cosine to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def peft_run(root, folder, windows, labels):
    """peft + transformers: the losses and gradient norms of the same recipe."""
    import peft

    model = peft.PeftModel.from_pretrained(load_base(folder), root / "init", is_trainable=True)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    y = windows[:, 1:].masked_fill(~labels[:, 1:], -100)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        logits = model(input_ids=windows[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(trained, 1.0)))
        losses.append(float(loss))
        opt.step()
        sched.step()
    return model, losses, norms


@pytest.mark.parametrize("layout", [(), ("--dp", "2", "--zero", "3")], ids=["single", "dp2-zero3"])
def test_lora_training_equals_peft(job, tmp_path, layout):
    import peft
    from transformers import AutoModelForCausalLM

    root, folder, data, windows, labels = job
    saved, merged = tmp_path / "adapter", tmp_path / "merged"
    events, _ = launch(str(folder), "--method", "lora", "--lora-rank", str(RANK),
                       "--lora-alpha", str(ALPHA), "--init-adapter", str(root / "init"),
                       "--data", str(data), "--sft", "--steps", str(STEPS), "--lr", str(LR),
                       "--seq", str(SEQ), "--gbs", str(windows.shape[0]), "--dtype", "fp32",
                       "--save-adapter", str(saved), "--merge", str(merged), *layout)
    steps = [e for e in events if e["event"] == "step"]
    reference, losses, norms = peft_run(root, folder, windows, labels)
    assert [s["loss"] for s in steps] == pytest.approx(losses, rel=1e-5)
    assert [s["grad_norm"] for s in steps] == pytest.approx(norms, rel=1e-4)
    # the adapters moved the loss by 10x the tolerance it is compared at
    assert abs(losses[-1] - losses[0]) > 1e-4 * losses[0]

    x = windows[:, :-1]
    with torch.no_grad():
        want = reference(input_ids=x).logits
        loaded = peft.PeftModel.from_pretrained(load_base(folder), saved)(input_ids=x).logits
        folded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(input_ids=x).logits
    assert torch.allclose(loaded, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(folded, loaded, atol=1e-5, rtol=1e-4)
    done = next(e for e in events if e["event"] == "done")
    trained = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    shards = 2 if layout else 1
    assert done["measured_parameters_bytes"] == done["predicted_parameters_bytes"]
    assert done["measured_frozen_base_bytes"] == done["predicted_frozen_base_bytes"]
    assert done["measured_optimizer_states_bytes"] == done["predicted_optimizer_states_bytes"]
    assert done["measured_parameters_bytes"] >= 4 * trained // shards
