"""Megatron-LM exports that Megatron-LM would refuse at start-up are refused here instead:
Megatron-FSDP (our ZeRO-2/3) with pipeline parallelism (NVIDIA/Megatron-LM issue 1455),
Megatron-FSDP without ``--ckpt-format fsdp_dtensor`` (``validate_args`` asserts it), a
multi-node torchrun without rendezvous, cp written twice."""

import json
import subprocess
import sys

import pytest

from export_readers import megatron_read
from helpers import ROOT
from planner import exports
from planner.config import ConfigError
from planner.exports.job import Job
from planner.setup import Parallel, TrainSetup
from presets import load_model


def job(*, tp=1, pp=1, vpp=1, dp=8, cp=1, zero=0, seq=4096, gpus_per_node=8) -> Job:
    setup = TrainSetup(seq_len=seq, micro_batch=1, grad_accum=8)
    par = Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, cp=cp, zero=zero, sp=tp > 1)
    return Job(cfg=load_model("llama-3-70b"), setup=setup, par=par, hardware="h100-sxm",
               gpus=tp * pp * dp * cp, gpus_per_node=gpus_per_node, step_time_s=1.0,
               memory_per_gpu_bytes=2**30, command="llmplan plan llama-3-70b")


@pytest.mark.parametrize("zero", [2, 3])
def test_megatron_fsdp_with_pipeline_parallelism_is_refused(zero, tmp_path):
    j = job(tp=4, pp=4, vpp=4, dp=4, zero=zero)
    found = exports.megatron.problems(j)
    assert found and "Megatron-FSDP, which does not support pipeline parallelism" in found[0]
    assert "issue 1455" in found[0]
    with pytest.raises(ConfigError, match="--export megatron: zero 2/3 with pp > 1"):
        exports.export("megatron", j, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("zero", [2, 3])
def test_megatron_fsdp_is_written_with_its_only_checkpoint_format(zero):
    j = job(tp=8, dp=8, zero=zero)
    assert not exports.megatron.problems(j)
    text = exports.megatron.render(j)
    args = megatron_read(text)
    assert args["--use-megatron-fsdp"] and args["--ckpt-format"] == "fsdp_dtensor"
    assert "unset CUDA_DEVICE_MAX_CONNECTIONS" in text
    # ZeRO-0/1 keep Megatron's default checkpoint format
    assert megatron_read(exports.megatron.render(job(tp=8, dp=8, zero=1)))["--ckpt-format"] is None


def test_multi_node_torchrun_has_rendezvous_and_one_node_has_none():
    many = exports.megatron.render(job(tp=8, dp=8, zero=1)).splitlines()[-1]
    assert many.startswith("torchrun --nproc-per-node 8 --nnodes 8 ")
    for flag in ('--node-rank "$NODE_RANK"', "--rdzv-backend c10d",
                 '--rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}"'):
        assert flag in many
    one = exports.megatron.render(job(tp=8, dp=1)).splitlines()[-1]
    assert "--nnodes 1 " in one and "rdzv" not in one and "node-rank" not in one


def test_context_parallel_size_is_written_once_with_its_value():
    text = exports.megatron.render(job(tp=8, cp=2, dp=4, seq=8192))
    assert text.count("--context-parallel-size") == 1
    assert megatron_read(text)["--context-parallel-size"] == "2"


def test_a_sequence_past_max_position_embeddings_is_refused():
    found = exports.megatron.problems(job(tp=8, dp=1, seq=16384))
    assert any("max_position_embeddings(8192)" in p for p in found)


def test_plan_export_megatron_70b_on_64_h100_runs_in_megatron(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "llama-3-70b", "--gpus", "64",
                           "--gbs", "512", "--export", "megatron", "--out", str(tmp_path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)["candidates"][0]
    assert not (best["zero"] >= 2 and best["pp"] > 1)
    text = (tmp_path / "megatron_args.sh").read_text()
    args = megatron_read(text)
    assert (args["--ckpt-format"] == "fsdp_dtensor") == bool(args["--use-megatron-fsdp"])
    assert "--rdzv-backend c10d" in text.splitlines()[-1]
