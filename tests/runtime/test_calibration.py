"""Closed loop: the fit recovers known constants; validate gates memory error in CI."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT
from planner.config import Parallel, TrainSetup
from planner.cost import CostModel
from presets import load_hardware, load_model
from runtime.calibration import Case, fit, nelder_mead, predict_step_s


def test_nelder_mead_finds_a_known_minimum():
    x = nelder_mead(lambda p: (p[0] - 3) ** 2 + 10 * (p[1] + 1) ** 2, [0.0, 0.0], steps=500)
    assert x[0] == pytest.approx(3, abs=1e-3) and x[1] == pytest.approx(-1, abs=1e-3)


def test_fit_recovers_step_times_generated_by_known_constants():
    hw = load_hardware("cpu")
    truth = CostModel(matmul_efficiency=0.3, layer_overhead_s=2e-3, step_overhead_s=5e-3,
                      link_efficiency=0.05, latency_scale=20.0, host_cores=2)
    cfg = load_model("tiny")
    layouts = [Parallel(), Parallel(dp=2, zero=3), Parallel(tp=2, sp=True), Parallel(pp=2),
               Parallel(dp=2), Parallel(tp=2), Parallel(pp=2, dp=2)]
    cases = []
    for i, par in enumerate(layouts):
        setup = TrainSetup(seq_len=64, micro_batch=1 + i % 2, grad_accum=2 * par.pp, recipe="runtime")
        case = Case(name=str(i), cfg=cfg, setup=setup, par=par, done={})
        case.done = {"measured_step_time_s": predict_step_s(case, truth, hw)}
        cases.append(case)
    fitted = fit(cases, hw, CostModel())
    for case in cases:
        assert predict_step_s(case, fitted, hw) == pytest.approx(case.measured_step_s, rel=0.02)


def test_validate_runs_real_cases_and_gates_memory_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "validate", "--out", str(tmp_path),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert len(data["cases"]) >= 10
    assert all({"memory_error", "step_time_error"} <= set(c) for c in data["cases"])
    assert data["worst_memory_error"] <= 0.10
    assert (tmp_path / "validation.md").read_text().startswith("| case |")
    assert json.loads((tmp_path / "validation.json").read_text())["cases"]
