"""The frozen base of LoRA / QLoRA: its bytes at 16, 8 and 4 bits against the closed forms of
Dettmers et al. 2022 / 2023 written out here, and NF4's block counts against torchao's NF4
tensor (the library the runtime quantises with)."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

# Llama-2-7B (Touvron et al. 2023, Table 1 / its config.json): h 4096, f 11008, 32 layers,
# vocab 32000, untied head, RMSNorm weights only
H, F, L, V = 4096, 11008, 32, 32000
ATTN, MLP = 4 * H * H, 3 * H * F          # q, k, v, o; gate, up, down
LINEAR = L * (ATTN + MLP)
KEPT = 2 * V * H + (2 * L + 1) * H        # embedding + head, two norms a layer + the final one


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tui.cli", "params", "llama-2-7b", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, bits, linear_bytes", [
    (("--method", "lora"), 16, 2 * LINEAR),
    # LLM.int8(): an int8 byte per weight and an fp32 scale per output row
    (("--method", "lora", "--base-bits", "8"), 8, LINEAR + 4 * L * (4 * H + 2 * F + H)),
    # NF4: half a byte per weight and an fp32 absmax per 64 weights (QLoRA §3)
    (("--method", "qlora"), 4, LINEAR // 2 + 4 * LINEAR // 64),
    # double quantisation: 8-bit absmax per 64 weights, an fp32 constant per 256 of them
    (("--method", "qlora", "--double-quant"), 4,
     LINEAR // 2 + LINEAR // 64 + 4 * L * (4 * H * H // 64 // 256 + 3 * H * F // 64 // 256)),
])
def test_frozen_base_bytes_equal_the_closed_forms(args, bits, linear_bytes):
    data = json.loads(cli(*args, "--lora-rank", "64", "--json").stdout)
    assert data["quantised_params"] == LINEAR and data["kept_16bit_params"] == KEPT
    assert data["base_bits"] == bits
    assert data["frozen_base_bytes"] == linear_bytes + 2 * KEPT
    if bits == 4:  # about 4.5 bits a weight, 4.127 with double quantisation (QLoRA §3)
        per_weight = 8 * (data["frozen_base_bytes"] - 2 * KEPT) / LINEAR
        assert per_weight == pytest.approx(4.127 if "--double-quant" in args else 4.5, abs=1e-3)


def test_nf4_block_counts_match_torchaos_nf4_tensor():
    import torch
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    from planner.frozen_base import quantised_weight_bytes

    out, inp = 384, 2048  # 12,288 blocks of 64: 48 second-level blocks of 256
    nf4 = to_nf4(torch.randn(out, inp, dtype=torch.bfloat16), block_size=64, scaler_block_size=256)
    data = nf4.quantized_data.numel()               # uint8, two 4-bit codes each
    absmax = nf4.quantized_scalers.numel()          # int8, one per block of 64
    second = nf4.quantization_factor.numel()        # one per 256 blocks (torchao keeps bf16)
    assert quantised_weight_bytes(out, inp, bits=4, double_quant=True) == data + absmax + 4 * second


@pytest.mark.parametrize("args, needle", [
    (("--method", "lora", "--base-bits", "4"), "--base-bits 4 is QLoRA: use --method qlora"),
    (("--method", "qlora", "--base-bits", "8"), "--method qlora holds the base in 4-bit"),
    (("--method", "qlora", "--base-bits", "3"), "--base-bits(3) must be one of 16, 8, 4"),
    (("--method", "lora", "--double-quant"), "--double-quant quantises NF4's constants"),
    (("--base-bits", "8",), "need --method lora or qlora"),
])
def test_bad_frozen_base_options_are_one_line(args, needle):
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr
