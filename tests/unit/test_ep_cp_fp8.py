"""Expert parallelism, context parallelism and fp8 in the planner: memory, time and search
against closed forms (parameter counts from ``planner.params``, Korthikanti's per-token
activations at the local sequence, the alpha-beta all-to-all) and published practice."""

import json
import subprocess
import sys

import pytest

from planner import ep_cp
from planner.cost import Cluster, CostEstimator, CostModel
from planner.memory import memory_report
from planner.params import count_params
from planner.search import search
from planner.setup import Parallel, TrainSetup
from presets import load_hardware, load_model

MIXTRAL = load_model("mixtral-8x7b")


def per_gpu(cfg, setup, par):
    return memory_report(cfg, setup, par).per_gpu


@pytest.mark.parametrize("ep", [1, 2, 4, 8])
def test_expert_states_divide_by_ep(ep):
    # ZeRO-0, mixed AdamW: 2 + 2 + 12 bytes per parameter held; a rank holds every dense
    # parameter and E/ep of the routed experts (count_params' "experts" breakdown)
    counts = count_params(MIXTRAL)
    held = counts.total - counts.experts + counts.experts // ep
    st = per_gpu(MIXTRAL, TrainSetup(seq_len=4096), Parallel(dp=8, ep=ep))
    assert st.params == held and st.expert_params == counts.experts // ep
    assert (st.weights_bytes, st.gradients_bytes, st.optimizer_bytes) == (2 * held, 2 * held,
                                                                           12 * held)
    assert st.all_to_all_bytes == (0 if ep == 1 else 2 * 2 * 4096 * 4096 * 2)  # 2 x k s h B


def test_zero_shards_experts_over_the_ranks_holding_them():
    counts = count_params(MIXTRAL)
    dense, experts = counts.total - counts.experts, counts.experts
    st = per_gpu(MIXTRAL, TrainSetup(seq_len=4096), Parallel(dp=16, ep=4, zero=3))
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    # dense over dp = 16, the rank's E/4 experts over the dp / ep = 4 ranks holding them
    assert st.optimizer_bytes == 12 * (ceil(dense, 16) + ceil(experts // 4, 4))
    assert st.weights_bytes == 2 * (ceil(dense, 16) + ceil(experts // 4, 4))


def test_zero_shards_over_dp_times_cp():
    cfg, setup = load_model("llama-3-8b"), TrainSetup(seq_len=8192)
    a = per_gpu(cfg, setup, Parallel(dp=4, cp=2, zero=1))
    b = per_gpu(cfg, setup, Parallel(dp=8, zero=1))
    assert a.optimizer_bytes == b.optimizer_bytes and a.weights_bytes == b.weights_bytes


@pytest.mark.parametrize("cp", [2, 4])
def test_context_rank_holds_the_activations_of_its_local_tokens(cp):
    # flash attention keeps no s^2 tensor: a cp rank's layers save what a whole model saves
    # for s / cp tokens (Korthikanti et al. 2022 per token); the ring adds its K/V blocks
    cfg = load_model("llama-3-8b")
    got = per_gpu(cfg, TrainSetup(seq_len=8192), Parallel(cp=cp))
    local = per_gpu(cfg, TrainSetup(seq_len=8192 // cp), Parallel())
    assert got.activations_bytes == local.activations_bytes
    kv_block = 2 * (8192 // cp) * cfg.num_kv_heads * cfg.head_dim * 2  # K and V, bf16
    assert got.ring_bytes == 2 * kv_block  # one block sent, one received


def test_eager_attention_scores_are_local_queries_against_every_key():
    cfg, s, cp = load_model("tiny"), 256, 4
    eager = lambda seq, c: per_gpu(cfg, TrainSetup(seq_len=seq, attention="eager"),  # noqa: E731
                                   Parallel(cp=c))
    flash = lambda seq, c: per_gpu(cfg, TrainSetup(seq_len=seq), Parallel(cp=c))  # noqa: E731
    quadratic = eager(s, cp).activations_bytes - flash(s, cp).activations_bytes
    # per layer: eager's softmax output, 2 bytes x a heads x (s/cp) x s, in place of flash's
    # fp32 log-sum-exp of the local rows, 4 bytes x a x (s/cp)
    a, local = cfg.num_heads, s // cp
    assert quadratic == cfg.num_layers * (2 * a * local * s - 4 * a * local)


def test_all_to_all_time_is_the_alpha_beta_closed_form():
    hw = load_hardware("h100-sxm")
    cluster = Cluster(hardware=hw, gpus=64)
    setup = TrainSetup(seq_len=4096)
    cost = CostEstimator(MIXTRAL, setup, cluster, CostModel())
    base = dict(tp=1, pp=1, vpp=1, dp=64, zero=1, sp=False, recompute="none", mbs=1, m=1)
    params, experts = cost.stage_params(tp=1, pp=1, vpp=1, ep=8)
    t = cost.step_time(**base, ep=8, params_per_rank=params, expert_params_per_rank=experts)
    bw = hw.intra_node_bandwidth_gbps * 1e9 * CostModel().link_efficiency
    lat = hw.intra_node_latency_us * 1e-6
    nbytes = 2 * 4096 * 4096 * 2  # k b s h B
    one = 7 * lat + 7 / 8 * nbytes / bw
    assert t.ep_comm_s == pytest.approx(32 * 4 * one, rel=1e-12)  # 32 MoE layers x 4


def test_ring_hides_behind_attention_at_long_context():
    cfg, cluster = load_model("llama-3-8b"), Cluster(hardware=load_hardware("h100-sxm"), gpus=8)
    cost = CostEstimator(cfg, TrainSetup(seq_len=65536), cluster, CostModel())
    params, _ = cost.stage_params(tp=1, pp=1, vpp=1)
    t = cost.step_time(tp=1, pp=1, vpp=1, dp=1, cp=8, zero=0, sp=False, recompute="none",
                       mbs=1, m=1, params_per_rank=params)
    assert t.cp_comm_total_s > 0 and t.cp_comm_s == 0.0  # 8k-token blocks: attention is longer


def test_search_picks_expert_parallelism_for_mixtral_and_never_for_a_dense_model():
    cluster = Cluster(hardware=load_hardware("h100-sxm"), gpus=64)
    moe = search(MIXTRAL, cluster, TrainSetup(seq_len=4096), global_batch=512, runtime="any")
    assert moe.best.ep > 1 and moe.best.tp * moe.best.cp * moe.best.ep <= 8  # a2a in a node
    dense = search(load_model("llama-3-8b"), cluster, TrainSetup(seq_len=4096),
                   global_batch=512, runtime="any")
    assert {c.ep for c in dense.candidates} == {1}


def test_search_picks_context_parallelism_at_128k():
    # Llama 3 405B's 128k stage ran cp 16 with tp 8 (arXiv 2407.21783 §3.3.2, Table 4)
    result = search(load_model("llama-3.1-405b"), Cluster(hardware=load_hardware("h100-sxm"),
                                                          gpus=16384),
                    TrainSetup(seq_len=131072), global_batch=128, runtime="any")
    assert result.best.cp >= 8 and result.best.tp == 8


def test_fp8_holds_weight_copies_and_saves_fp8_linear_inputs():
    cfg, s = load_model("llama-3-8b"), 4096
    bf16 = per_gpu(cfg, TrainSetup(seq_len=s), Parallel())
    fp8 = per_gpu(cfg, TrainSetup(seq_len=s, dtype="fp8"), Parallel())
    counts = count_params(cfg)
    linear = counts.attention + counts.mlp  # no biases in Llama
    assert fp8.fp8_weight_bytes == 2 * linear  # the fp8 copy and its transpose
    assert fp8.weights_bytes == bf16.weights_bytes + 2 * linear
    h, f, qd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.q_width
    # per layer, 1 byte fewer for the attention and MLP inputs, o's and down's inputs
    assert bf16.activations_bytes - fp8.activations_bytes == cfg.num_layers * s * (2 * h + qd + f)


def test_fp8_runs_the_linears_at_the_fp8_peak_and_reports_mfu_against_bf16_too():
    cluster = Cluster(hardware=load_hardware("h100-sxm"), gpus=8)
    cfg = load_model("llama-3-8b")
    bf16 = search(cfg, cluster, TrainSetup(seq_len=4096), global_batch=64, runtime="any").best
    fp8 = search(cfg, cluster, TrainSetup(seq_len=4096, dtype="fp8"), global_batch=64,
                 runtime="any").best
    assert 1.1 < fp8.tokens_per_s / bf16.tokens_per_s < 2.0
    assert fp8.mfu_bf16_peak == pytest.approx(fp8.mfu * 1978.9 / 989.4)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize(("args", "needle"), [
    (("memory", "mixtral-8x7b", "--dp", "2", "--ep", "4"),
     "ep(4) does not divide dp(2): expert parallelism is carved from data parallelism"),
    (("memory", "mixtral-8x7b", "--dp", "3", "--ep", "3"), "ep(3) does not divide experts(8)"),
    (("memory", "llama-3-8b", "--dp", "2", "--ep", "2"), "ep(2) needs a mixture-of-experts model"),
    (("memory", "tiny", "--cp", "2", "--seq", "30"),
     "2 x cp(2) = 4 does not divide seq(30): causal load balancing"),
    (("plan", "llama-3-8b", "--hardware", "a100-80gb", "--dtype", "fp8", "--gbs", "8"),
     "hardware a100-80gb has no fp8 peak"),
    (("memory", "llama-3-8b", "--hardware", "a100-80gb", "--dtype", "fp8"),
     "hardware a100-80gb has no fp8 peak"),
    (("memory", "llama-3-8b", "--fp8-scaling", "block"), "needs dtype fp8, not bf16"),
])
def test_bad_parallel_input_is_one_line_exit_2(args, needle):
    out = cli(*args)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_plan_candidates_carry_cp_and_ep():
    out = cli("plan", "mixtral-8x7b", "--gpus", "64", "--gbs", "512", "--seq", "4096",
              "--runtime", "any", "--top", "3", "--json")
    assert out.returncode == 0, out.stderr
    best = json.loads(out.stdout)["candidates"][0]
    assert {"cp", "ep"} <= set(best) and best["ep"] > 1
    assert set(best["breakdown"]["communication"]) == {"tp", "dp", "pp", "cp", "ep"}


def test_dispatch_bytes_are_k_copies_of_the_local_tokens():
    assert ep_cp.dispatch_bytes(MIXTRAL, local_seq=1024, micro_batch=2, act_bytes=2) == \
        2 * 2 * 1024 * 4096 * 2
