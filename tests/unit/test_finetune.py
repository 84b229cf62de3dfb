"""Adapter fine-tuning in ``memory``, ``flops`` and ``plan``: the frozen base to the byte,
states for the adapters only (ZeRO paper's 2 + 2 + 12 bytes a trained parameter, sharded),
the dequantised weight of a quantised base, and the one-line refusals."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

# Llama-2-7B (Touvron et al. 2023, Table 1): h 4096, f 11008, 32 layers, vocab 32000
H, F, L, V = 4096, 11008, 32, 32000
LINEAR = L * (4 * H * H + 3 * H * F)
KEPT = 2 * V * H + (2 * L + 1) * H
NF4 = LINEAR // 2 + 4 * LINEAR // 64          # QLoRA §3: 4 bits + an fp32 absmax per 64
R64 = 64 * L * (4 * (H + H) + 3 * (H + F))    # r (in + out) on q, k, v, o, gate, up, down


def cli(command, *args):
    return subprocess.run([sys.executable, "-m", "tui.cli", command, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def memory(*args):
    out = cli("memory", "llama-2-7b", "--method", "qlora", "--lora-rank", "64", "--seq", "512",
              *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_qlora_memory_holds_the_nf4_base_and_states_for_the_adapters_only():
    data = memory()
    st = data["per_gpu"]
    assert data["frozen_base_bytes"] == st["frozen_base_bytes"] == NF4 + 2 * KEPT
    assert data["trainable"] == R64
    # bf16 adapter weights and gradients, fp32 master + Adam moments (ZeRO paper §3)
    assert (st["weights_bytes"], st["gradients_bytes"], st["optimizer_bytes"]) == \
        (2 * R64, 2 * R64, 12 * R64)
    # a block's input gradient dequantises one weight at a time, the largest h x f in bf16:
    # the one difference from the same adapters over a 16-bit base, besides the base itself
    lora = json.loads(cli("memory", "llama-2-7b", "--method", "lora", "--lora-rank", "64",
                          "--seq", "512", "--json").stdout)["per_gpu"]
    for phase, extra in (("backward_start", 0), ("after_loss", 2 * H * F)):
        assert st["phases_bytes"][phase] - st["frozen_base_bytes"] == \
            lora["phases_bytes"][phase] - lora["frozen_base_bytes"] + extra
    full = json.loads(cli("memory", "llama-2-7b", "--seq", "512", "--json").stdout)["per_gpu"]
    assert st["total_bytes"] < full["total_bytes"] / 10


def test_zero3_shards_the_frozen_base_and_the_adapter_states():
    one, eight = memory()["per_gpu"], memory("--dp", "8", "--zero", "3")["per_gpu"]
    assert eight["frozen_base_bytes"] == -(-(NF4 + 2 * KEPT) // 8)
    assert eight["optimizer_bytes"] == 12 * -(-R64 // 8)
    assert eight["gradients_bytes"] == 2 * -(-R64 // 8)
    assert eight["activations_bytes"] == one["activations_bytes"]


def test_lora_flops_drop_the_frozen_weight_gradient():
    # 2 x forward for the frozen linears, 3 x for the adapters: about 4N + 6N_lora (the
    # exact count is checked against FlopCounterMode on peft in tests/oracle)
    full = json.loads(cli("flops", "llama-2-7b", "--seq", "2048", "--json").stdout)
    lora = json.loads(cli("flops", "llama-2-7b", "--seq", "2048", "--method", "lora",
                          "--lora-rank", "64", "--json").stdout)
    fwd = full["forward_breakdown"]
    linears = sum(v for k, v in fwd.items() if k not in ("scores", "attn_values"))
    # no weight gradient for the base's linears; the adapters' 3 passes; the first layer's
    # q, k, v (and their adapters' A) need no input gradient
    skipped = 2 * H * 3 * H + 3 * 2 * 64 * H
    assert lora["train_flops_per_token"] == \
        full["train_flops_per_token"] - linears + 3 * 2 * R64 - skipped
    assert 0.66 < lora["train_flops_per_token"] / full["train_flops_per_token"] < 0.71
    assert lora["adapter_forward_flops_per_token"] == 2 * R64
    qlora = json.loads(cli("flops", "llama-2-7b", "--method", "qlora", "--json").stdout)
    assert qlora["dequantised_weights_per_micro_batch"] == 2 * LINEAR


def test_plan_qlora_searches_dp_and_zero_and_fits_where_full_training_does_not():
    def plan(*args, code=0):
        out = cli("plan", "llama-2-7b", "--hardware", "rtx-4090", "--gpus", "1", "--gbs", "8",
                  "--seq", "1024", "--runtime", "any", "--json", *args)
        assert out.returncode == code, out.stderr  # 1: no answer (no layout fits)
        return json.loads(out.stdout)

    assert not plan(code=1)["candidates"]
    q = plan("--method", "qlora")
    assert q["candidates"] and all(c["tp"] == c["pp"] == 1 for c in q["candidates"])
    multi = json.loads(cli("plan", "llama-2-7b", "--gpus", "8", "--gbs", "64", "--seq", "1024",
                           "--runtime", "any", "--method", "lora", "--json").stdout)
    assert multi["rejected"]["adapter_layout"] > 0
    assert {c["dp"] for c in multi["candidates"]} == {8}


@pytest.mark.parametrize("args, needle", [
    (("--lora-rank", "0"), "--lora-rank(0) must be a positive integer"),
    (("--lora-targets", "q_proj,wq"), "LoRA target(s) wq not in llama-2-7b"),
    (("--base-bits", "4"), "--base-bits 4 is QLoRA"),
    (("--lora-dropout", "1.5"), "--lora-dropout(1.5) must be in [0, 1)"),
    (("--tp", "2"), "--method lora is planned over dp x ZeRO: tp(2) must be 1"),
])
def test_bad_adapter_input_is_one_line_exit_2(args, needle):
    out = cli("memory", "llama-2-7b", "--method", "lora", *args)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# Llama-3-8B (Meta's config.json): h 4096, 32 layers, vocab 128256, 8 kv heads of 128
P8B, H8, V8 = 8_030_261_248, 4096, 128256


def json_of(*args):
    out = cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_dpo_holds_a_frozen_reference_and_two_sequences_an_example():
    base = ("memory", "llama-3-8b", "--seq", "1024", "--dp", "8", "--zero", "3")
    lm, dpo = json_of(*base)["per_gpu"], json_of(*base, "--method", "dpo")["per_gpu"]
    assert dpo["frozen_base_bytes"] == -(-2 * P8B // 8)  # bf16 copy, sharded like the policy
    assert (dpo["weights_bytes"], dpo["optimizer_bytes"]) == (lm["weights_bytes"], lm["optimizer_bytes"])
    # an example is two sequences (chosen and rejected): the activations of a micro-batch of 2
    lm2 = json_of(*base, "--mbs", "2", "--gbs", "16")["per_gpu"]
    assert dpo["activations_bytes"] == lm2["activations_bytes"] > lm["activations_bytes"]
    # with adapters the reference is the base with them off: nothing more is held
    lora = json_of("memory", "llama-3-8b", "--seq", "1024", "--method", "lora")["per_gpu"]
    dpo_lora = json_of("memory", "llama-3-8b", "--seq", "1024", "--method", "dpo",
                       "--policy", "lora")["per_gpu"]
    assert dpo_lora["frozen_base_bytes"] == lora["frozen_base_bytes"] == 2 * P8B
    # FLOPs: the policy's training plus the reference's forward, per token
    fl, fd = json_of("flops", "llama-3-8b"), json_of("flops", "llama-3-8b", "--method", "dpo")
    assert fd["train_flops_per_token"] == fl["train_flops_per_token"] + fl["forward_flops_per_token"]


def test_ppo_phases_hold_the_four_models():
    d = json_of("memory", "llama-3-8b", "--method", "ppo", "--dp", "8", "--zero", "3",
                "--prompt-tokens", "512", "--response-tokens", "512", "--rollout", "8")
    parts = d["parts_bytes"]
    critic = P8B - V8 * H8 + H8  # the LM head replaced by a value head
    assert parts["reference_weights"] == 2 * -(-P8B // 8)
    assert parts["reward_weights"] == 2 * -(-critic // 8)
    assert parts["critic_states"] == 16 * -(-critic // 8)  # 2 + 2 + 12 bytes, ZeRO-3
    assert parts["kv_cache"] == 8 * 1024 * 2 * 32 * 8 * 128 * 2  # K and V, bf16
    assert d["peak_bytes"] == max(d["phases_bytes"].values())
    flops = d["flops_per_step"]
    # decoding each response token at its context costs what a causal forward of it does
    assert flops["generation"] == pytest.approx(flops["reference_forward"], rel=0.02)
    assert flops["actor_training"] == pytest.approx(3 * flops["reference_forward"], rel=1e-9)


def test_ppo_split_into_groups_holds_each_model_on_its_own_gpus():
    base = ("memory", "llama-3-8b", "--method", "ppo", "--dp", "8", "--zero", "3")
    split = json_of(*base, "--actor-gpus", "4", "--critic-gpus", "2", "--reference-gpus", "1",
                    "--reward-gpus", "1")
    together = json_of(*base)
    critic = P8B - V8 * H8 + H8
    phases = split["phases_bytes"]
    assert phases["reference_forward"] == 2 * P8B and phases["reward_forward"] == 2 * critic
    assert split["parts_bytes"]["critic_states"] == 16 * -(-critic // 2)
    # the actor's group holds the actor alone: less than co-located, each state over 4 GPUs
    assert split["parts_bytes"]["actor_states"] == 16 * -(-P8B // 4)
    assert phases["actor_training"] < together["phases_bytes"]["actor_training"]
    # the rollout is per generating GPU: half the GPUs generate half the sequences
    assert split["flops_per_step"]["generation"] == \
        pytest.approx(together["flops_per_step"]["generation"] / 2, rel=1e-12)


@pytest.mark.parametrize("args, needle", [
    (("--method", "ppo", "--dp", "8", "--actor-gpus", "4", "--critic-gpus", "2",
      "--reference-gpus", "1", "--reward-gpus", "2"),
     "actor(4) + critic(2) + reference(1) + reward(2) = 9 GPUs, not dp(8)"),
    (("--method", "ppo", "--rollout", "0"), "--rollout(0) must be a positive integer"),
    (("--method", "lora", "--policy", "lora"), "--policy lora is the policy of --method dpo or ppo"),
    (("--method", "rlhf"), "--method('rlhf') is not one of full, lora, qlora, dpo, ppo"),
])
def test_bad_alignment_input_is_one_line_exit_2(args, needle):
    out = cli("memory", "llama-3-8b", *args)
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["plan", "flops"])
def test_ppo_is_sized_by_memory_not_treated_as_one_run(command):
    out = cli(command, "llama-3-8b", "--method", "ppo")
    needle = f"{command} --method ppo: PPO's actor, critic, reference and reward are sized"
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_plan_every_layout_of_which_one_rule_refuses_says_that_rule():
    out = cli("plan", "llama-3-8b", "--method", "qlora", "--gpus", "8", "--gbs", "64", "--json")
    assert out.returncode == 1, out.stderr  # no answer
    d = json.loads(out.stdout)
    assert d["candidates"] == [] and d["evaluated"] == 0
    assert d["no_answer"].startswith("no layout passes the rules: of ")
    assert "runtime_adapters rejected" in d["no_answer"]
    assert any("torchao's NF4 base always quantises its constants: add --double-quant" in s
               for s in d["suggestions"])
