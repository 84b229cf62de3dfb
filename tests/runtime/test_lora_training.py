"""LoRA and QLoRA training against peft + transformers: from the same initial adapter (a
peft folder, its B drawn non-zero so both matrices train from the first step), five steps of
the same AdamW recipe on the same SFT windows give the same losses and adapter gradient
norms, single-process and on dp2 (LoRA: ZeRO-3, FSDP2 over the frozen base; QLoRA: ZeRO-1);
the adapter the run saves loads into peft, and the merged folder into transformers, with the
same logits; every memory category is predicted within 10%.

QLoRA's reference is peft over the base as torchao's NF4 tensor dequantises it (bitsandbytes,
peft's own 4-bit path, needs CUDA)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import launch
from hf_models import write_hf_folder

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, STEPS, LR, SEQ = 8, 16, 5, 1e-5, 16


def nf4_folder(folder):
    """A llama folder whose every block linear holds a whole number of NF4 scale groups
    (64 x 256 weights): 128 wide, 4 kv heads of 32, MLP 256."""
    import transformers

    from hf_models import build_hf_model, write_tokenizer

    model = build_hf_model("llama")
    config = transformers.LlamaConfig(**{**model.config.to_dict(), "hidden_size": 128,
                                         "num_key_value_heads": 4, "head_dim": 32,
                                         "intermediate_size": 256})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    write_tokenizer(folder, 300)


def dequantised(model):
    """The reference QLoRA base: each block linear's weight as torchao's NF4 tensor gives it
    back (4-bit codes, double-quantised block-64 scales), embedding and head untouched."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}" and "lora_" not in name:
                m.weight.copy_(to_nf4(m.weight.detach(), 64, 256).get_original_weight())
    return model


@pytest.fixture(scope="module", params=["lora", "qlora"])
def job(tmp_path_factory, request):
    import peft

    root = tmp_path_factory.mktemp(request.param)
    folder = root / "llama"
    if request.param == "qlora":
        nf4_folder(folder)
    else:
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
    return request.param, root, folder, data, windows[:n], labels[:n]


def load_base(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def load_bytes(folder) -> int:
    return sum(p.numel() * 4 for p in load_base(folder).parameters())


def lr_factor(step: int, warmup: int = 2, total: int = STEPS, floor: float = 0.1) -> float:
    """The runtime's schedule as its docs state it: linear warm-up, cosine to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def peft_run(method, root, folder, windows, labels):
    """peft + transformers: the losses and gradient norms of the same recipe (QLoRA: over
    the dequantised NF4 base)."""
    import peft

    base = load_base(folder)
    if method == "qlora":
        base = dequantised(base)
    model = peft.PeftModel.from_pretrained(base, root / "init", is_trainable=True)
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


@pytest.mark.parametrize("layout", ["single", "dp2"])
def test_lora_training_equals_peft(job, tmp_path, layout):
    import peft
    from transformers import AutoModelForCausalLM

    method, root, folder, data, windows, labels = job
    # FSDP2 ZeRO-3 over a 16-bit base; QLoRA's NF4 base replicated (ZeRO-1 over the adapters)
    layout = {"single": (), "dp2": ("--dp", "2", "--zero", "3" if method == "lora" else "1")
              }[layout]
    quant = ("--double-quant",) if method == "qlora" else ()
    saved, merged = tmp_path / "adapter", tmp_path / "merged"
    events, _ = launch(str(folder), "--method", method, *quant, "--lora-rank", str(RANK),
                       "--lora-alpha", str(ALPHA), "--init-adapter", str(root / "init"),
                       "--data", str(data), "--sft", "--steps", str(STEPS), "--lr", str(LR),
                       "--seq", str(SEQ), "--gbs", str(windows.shape[0]), "--dtype", "fp32",
                       "--save-adapter", str(saved), "--merge", str(merged), *layout)
    steps = [e for e in events if e["event"] == "step"]
    reference, losses, norms = peft_run(method, root, folder, windows, labels)
    assert [s["loss"] for s in steps] == pytest.approx(losses, rel=1e-5)
    assert [s["grad_norm"] for s in steps] == pytest.approx(norms, rel=1e-4)
    # the adapters moved the loss by 10x the tolerance it is compared at
    assert abs(losses[-1] - losses[0]) > 1e-4 * losses[0]

    x = windows[:, :-1]
    with torch.no_grad():
        want = reference(input_ids=x).logits
        base = dequantised(load_base(folder)) if method == "qlora" else load_base(folder)
        loaded = peft.PeftModel.from_pretrained(base, saved)(input_ids=x).logits
        folded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(input_ids=x).logits
    assert torch.allclose(loaded, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(folded, loaded, atol=1e-5, rtol=1e-4)
    done = next(e for e in events if e["event"] == "done")
    trained = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    shards = 2 if layout else 1
    for category in ("parameters", "frozen_base", "gradients", "optimizer_states",
                     "activations"):  # predicted within 10% of measured, every category
        assert done[f"measured_{category}_bytes"] == pytest.approx(
            done[f"predicted_{category}_bytes"], rel=0.1), category
    assert done["measured_parameters_bytes"] == done["predicted_parameters_bytes"]
    assert done["measured_parameters_bytes"] >= 4 * trained // shards
    if method == "qlora":  # about 4.1 bits a block weight, not 32
        assert done["measured_frozen_base_bytes"] < load_bytes(folder) / 3
