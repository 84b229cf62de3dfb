"""Uncertainty bands: what a record of measured/predicted ratios says about a new estimate."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT
from planner.accuracy import DEFAULT_ACCURACY, Accuracy, fmt_band
from presets import PresetError, load_accuracy


def test_a_band_spans_the_ratios_seen_and_always_holds_the_estimate():
    acc = Accuracy.from_runs([0.9, 1.3, 1.1], [1.02, 1.05], source="three runs")
    assert acc.step_time_ratio == (0.9, 1.3) and acc.memory_ratio == (1.02, 1.05) and acc.runs == 3
    t = acc.time(2.0)
    assert (t.low, t.expected, t.high) == pytest.approx((1.8, 2.0, 2.6))
    m = acc.memory(100.0)  # every run measured more than predicted: the band still holds 100
    assert (m.low, m.expected, m.high) == pytest.approx((100.0, 100.0, 105.0))


def test_a_rate_band_is_the_reciprocal_of_the_time_band():
    acc = Accuracy.from_runs([0.8, 1.25], [1.0], source="two runs")
    rate, time = acc.rate(1000.0), acc.time(1 / 1000.0)
    assert rate.low == pytest.approx(1 / time.high) and rate.high == pytest.approx(1 / time.low)


def test_a_record_round_trips_and_rejects_impossible_ratios():
    acc = Accuracy.from_runs([0.7, 1.2], [0.95, 1.01], source="s")
    assert Accuracy.from_dict(json.loads(json.dumps(acc.to_dict()))) == acc
    with pytest.raises(ValueError, match=r"step_time_ratio\(1.2, 0.7\)"):
        Accuracy(step_time_ratio=(1.2, 0.7), memory_ratio=(1, 1), source="s")
    with pytest.raises(ValueError, match="at least one run"):
        Accuracy.from_runs([], [1.0], source="s")


def test_fmt_band():
    acc = Accuracy.from_runs([0.5, 2.0], [1.0], source="s")
    assert fmt_band(acc.time(1.0), "{:.1f}".format, " s") == "1.0 s (0.5-2.0)"


def test_profiles_supply_the_record_and_a_broken_one_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path))
    assert load_accuracy("cpu") == DEFAULT_ACCURACY
    (tmp_path / "profiles").mkdir()
    path = tmp_path / "profiles" / "cpu.toml"
    path.write_text('[accuracy]\nstep_time_ratio = [0.5, 2.0]\nmemory_ratio = [0.97, 1.02]\n'
                    'source = "5 held-out runs"\nruns = 5\n')
    assert load_accuracy("cpu").step_time_ratio == (0.5, 2.0)
    path.write_text('[accuracy]\nstep_time_ratio = [2.0, 0.5]\nmemory_ratio = [1, 1]\nsource = "x"\n')
    with pytest.raises(PresetError, match="cpu.toml: accuracy: step_time_ratio"):
        load_accuracy("cpu")


def cli(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_plan_and_memory_put_the_profile_band_on_every_estimate(tmp_path):
    import os

    env = {**os.environ, "LLMPLAN_CONFIG_DIR": str(tmp_path)}
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "h100-sxm.toml").write_text(
        '[accuracy]\nstep_time_ratio = [0.5, 2.0]\nmemory_ratio = [0.9, 1.2]\nsource = "s"\nruns = 4\n')
    plan = json.loads(cli("plan", "llama-2-7b", "--gbs", "32", "--tokens", "1e12", "--json", env=env))
    assert plan["accuracy"]["runs"] == 4
    for c in plan["candidates"]:
        assert c["step_time_band_s"] == pytest.approx(
            {"low": 0.5 * c["step_time_s"], "expected": c["step_time_s"], "high": 2 * c["step_time_s"]})
        assert c["memory_band_bytes"]["high"] == pytest.approx(1.2 * c["memory_per_gpu_bytes"])
        assert c["tokens_per_s_band"]["low"] == pytest.approx(c["tokens_per_s"] / 2)
        assert c["time_to_train_band_s"]["high"] == pytest.approx(2 * c["time_to_train_s"])
    mem = json.loads(cli("memory", "llama-2-7b", "--hardware", "h100-sxm", "--json", env=env))
    assert mem["per_gpu_band_bytes"]["low"] == pytest.approx(0.9 * mem["per_gpu"]["total_bytes"])
    human = cli("plan", "llama-2-7b", "--gbs", "32", env=env)
    assert "bands: s" in human


def test_a_runs_comparison_says_whether_the_measurement_fell_in_its_band():
    from dataclasses import replace

    from runtime.events import Done
    from tui.output import comparison_rows

    done = Done(steps=1, predicted_parameters_bytes=1024, measured_parameters_bytes=1100,
                predicted_step_time_s=0.1, measured_step_time_s=0.12,
                predicted_step_time_band_s={"low": 0.08, "expected": 0.1, "high": 0.125})
    rows = comparison_rows(done, lambda n: f"{n:.0f} B")
    assert rows[0] == ("parameters", "1024 B", "1100 B", "+7.4%")
    assert rows[1] == ("gradients", "-", "-", "-")
    assert rows[-1] == ("step time", "0.1000 s (0.0800-0.1250)", "0.1200 s", "+20.0% in band")
    assert comparison_rows(replace(done, measured_step_time_s=0.2))[-1][-1] == "+100.0% outside band"


def test_launch_points_at_calibrate_when_a_run_leaves_the_uncalibrated_band(capsys):
    from dataclasses import replace

    from runtime.events import Done
    from tui.commands.run import _calibration_hint

    done = Done(steps=1, measured_step_time_s=0.2,
                predicted_step_time_band_source=DEFAULT_ACCURACY.source,
                predicted_step_time_band_s={"low": 0.075, "expected": 0.1, "high": 0.125})
    _calibration_hint(done, "cpu", "cpu")
    assert "llmplan calibrate --device cpu --hardware cpu" in capsys.readouterr().err
    _calibration_hint(replace(done, measured_step_time_s=0.11), "cpu", "cpu")   # inside: silent
    _calibration_hint(replace(done, predicted_step_time_band_source="5 held-out runs"), "cpu", "cpu")
    # a GPU preset is never calibrated from CPU processes: no hint to do it
    _calibration_hint(done, "h100-sxm", "cpu")
    assert capsys.readouterr().err == ""


def test_a_gpu_profile_is_never_fitted_from_cpu_processes(tmp_path):
    """CPU runs calibrate the cpu preset only: their host terms would stretch every H100 plan."""
    for args in (["calibrate"], ["validate", "--out", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--device", "cpu",
                               "--hardware", "h100-sxm"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "runs on --device cpu measure a CPU preset, not hardware(h100-sxm)" in proc.stderr
