"""Exported files read by the frameworks themselves: accelerate's launcher turns the YAML into
the environment its ``ParallelismConfig`` and FSDP plugin read; DeepSpeed's ``DeepSpeedConfig``
accepts the JSON (and checks the batch against the data-parallel size); and for llama-3-70b
on 64 H100s the torchtitan file, the Megatron-LM arguments and the plan file describe the
same layout, field by field. torchtitan 0.2.2 parses its file in bench/export_parsers.py."""

import json
import os
import subprocess
import sys
import tomllib

import pytest

from helpers import ROOT
from export_readers import megatron_layout, megatron_read, torchtitan_layout

DEEPSPEED_READ = r"""
import json, sys
import deepspeed.comm as dist
dist.get_rank = lambda *a, **k: 0  # rank 0 of the planned job, without a process group
from deepspeed.runtime.config import DeepSpeedConfig
class Mpu:
    def __init__(self, dp): self.dp = dp
    def get_data_parallel_world_size(self): return self.dp
    def get_data_parallel_rank(self): return 0
    def get_model_parallel_world_size(self): return 1
    def get_sequence_parallel_world_size(self): return 1
try:
    c = DeepSpeedConfig(sys.argv[1], mpu=Mpu(int(sys.argv[2])))
except AssertionError as err:
    print(json.dumps({"refused": str(err)})); sys.exit()
print(json.dumps({"zero": int(c.zero_optimization_stage), "gbs": c.train_batch_size,
                  "mbs": c.train_micro_batch_size_per_gpu, "m": c.gradient_accumulation_steps,
                  "bf16": c.bfloat16_config.enabled, "tp": c.tensor_parallel_config.autotp_size}))
"""

ACCELERATE_READ = r"""
import json, os, sys
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env
args = launch_command_parser().parse_args(["--config_file", sys.argv[1], "train.py"])
args, _, _ = _validate_launch_command(args)
os.environ.update(prepare_multi_gpu_env(args))
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import FullyShardedDataParallelPlugin
fsdp = FullyShardedDataParallelPlugin()
print(json.dumps({**ParallelismConfig()._sizes, "processes": args.num_processes,
                  "fsdp_version": fsdp.fsdp_version, "reshard": fsdp.reshard_after_forward,
                  "checkpointing": fsdp.activation_checkpointing,
                  "mixed_precision": args.mixed_precision,
                  "fp8_backend": os.environ.get("ACCELERATE_FP8_BACKEND")}))
"""


def plan(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "plan", *args, "--out", str(tmp_path),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def read(script, *args):
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pins", [["--tp", "2", "--zero", "3", "--recompute", "full"],
                                  ["--tp", "1", "--zero", "2", "--recompute", "none"],
                                  ["--tp", "1", "--zero", "3", "--dtype", "fp8"]])
def test_accelerate_reads_the_sizes_back(tmp_path, pins):
    data = plan(tmp_path, "llama-3-8b", "--gpus", "16", "--gbs", "64", "--seq", "4096",
                "--export", "accelerate", *pins)
    best = data["candidates"][0]
    got = read(ACCELERATE_READ, str(tmp_path / "accelerate_config.yaml"))
    assert (got["dp_replicate"], got["dp_shard"], got["tp"], got["cp"]) == (1, best["dp"], best["tp"], 1)
    assert got["processes"] == 16 and got["fsdp_version"] == 2
    assert got["reshard"] == (best["zero"] == 3)
    assert got["checkpointing"] == (best["recompute"] == "full")
    fp8 = "fp8" in pins
    assert got["mixed_precision"] == ("fp8" if fp8 else "bf16")
    assert got["fp8_backend"] == ("AO" if fp8 else None)  # torchao, as planner.fp8 plans


def test_deepspeed_accepts_the_json_for_its_data_parallel_size_only(tmp_path):
    data = plan(tmp_path, "llama-3-8b", "--gpus", "16", "--gbs", "64", "--seq", "4096",
                "--export", "deepspeed", "--tp", "2", "--zero", "1", "--mbs", "2")
    best = data["candidates"][0]
    path = str(tmp_path / "ds_config.json")
    got = read(DEEPSPEED_READ, path, str(best["dp"]))
    assert got == {"zero": 1, "gbs": 64, "mbs": 2, "m": best["grad_accum"], "bf16": True, "tp": 2}
    assert "refused" in read(DEEPSPEED_READ, path, str(best["dp"] * 2))


def test_llama_70b_on_64_h100_torchtitan_megatron_and_plan_agree(tmp_path):
    job = ["llama-3-70b", "--hardware", "h100-sxm", "--gpus", "64", "--gbs", "512", "--seq", "8192"]
    # ZeRO-0: torchtitan's best here is ZeRO-3 with pp > 1, which Megatron-LM cannot run
    # (Megatron-FSDP has no pipeline parallelism: tests/unit/test_exports.py)
    titan = plan(tmp_path / "titan", *job, "--zero", "0", "--export", "torchtitan")["candidates"][0]
    pins = ["--tp", str(titan["tp"]), "--pp", str(titan["pp"]), "--vpp", str(titan["vpp"]),
            "--dp", str(titan["dp"]), "--zero", str(titan["zero"]), "--mbs", str(titan["mbs"]),
            "--recompute", titan["recompute"], "--sp" if titan["sp"] else "--no-sp"]
    plan(tmp_path / "megatron", *job, *pins, "--export", "megatron")
    layout = tomllib.loads((tmp_path / "titan" / "plan.toml").read_text())["layout"]
    setup = tomllib.loads((tmp_path / "titan" / "plan.toml").read_text())["setup"]
    t = torchtitan_layout(tomllib.loads((tmp_path / "titan" / "torchtitan.toml").read_text()))
    m = megatron_layout(megatron_read((tmp_path / "megatron" / "megatron_args.sh").read_text()))
    gbs = setup["micro_batch"] * setup["grad_accum"] * layout["dp"]
    assert gbs == 512
    for field, want in [("tp", layout["tp"]), ("pp", layout["pp"]), ("zero", layout["zero"]),
                        ("mbs", setup["micro_batch"]), ("gbs", gbs), ("recompute", setup["recompute"])]:
        assert t[field] == want == m[field], field
    assert t["dp"] == layout["dp"] == 64 // (m["tp"] * m["pp"])
    assert m["vpp"] == layout["vpp"] and m["sp"] == layout["sp"]
    if layout["pp"] > 1:
        assert t["per_stage"] * layout["pp"] * layout["vpp"] == 80


def test_export_refusal_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "plan", "tiny", "--gpus", "8",
                           "--gbs", "32", "--seq", "256", "--pp", "2", "--export", "accelerate"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "llmplan: error: --export accelerate: pp(2) > 1: accelerate has no pipeline parallelism "
        "(its ParallelismConfig has dp_replicate, dp_shard, tp and cp) (all "
        f"{proc.stderr.split('(all ')[1].split(' ')[0]} layouts that fit; first reason)"]
