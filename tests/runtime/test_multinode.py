"""Multi-node is real: a plan for two nodes runs as two torchrun agents (c10d rendezvous on
localhost, as the Slurm script it writes does on a cluster) and gives the one-node run."""

import json
import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from helpers import ROOT, launch
from tui.cli import build

app = build()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_node_plan_runs_as_two_agents_and_matches_one_node(tmp_path):
    plan = tmp_path / "p.toml"
    made = CliRunner().invoke(app, ["plan", "tiny", "--hardware", "cpu", "--gpus", "4", "--nodes",
                                    "2", "--gbs", "8", "--seq", "32", "--dtype", "fp32",
                                    "--recipe", "fp32", "--out", str(plan)])
    assert made.exit_code == 0, made.output
    script = (tmp_path / "p.slurm").read_text()
    assert "--nnodes=2 --nproc-per-node=2" in script and "--rdzv-backend=c10d" in script

    one_node, _ = launch(str(plan), "--steps", "4")
    port = free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "launch", str(plan), "--steps", "4", "--device", "cpu",
         "--json", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--run-dir", str(tmp_path / f"node{i}")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in range(2)]
    outs = [a.communicate(timeout=300) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], [o[1][-1500:] for o in outs]
    events = [json.loads(line) for out, _ in outs for line in out.splitlines()
              if line.startswith("{")]  # rank 0 lives on one of the two agents
    two = [e for e in events if e["event"] == "step"]
    one = [e for e in one_node if e["event"] == "step"]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    start = next(e for e in events if e["event"] == "start")
    assert start["world"] == 4
