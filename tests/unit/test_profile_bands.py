"""Profile bands: one sign convention for every error, a line on stderr whenever a profile's
bands change, and no fit or band saved from runs too noisy to measure (a busy host)."""

from types import SimpleNamespace

import pytest

from planner.accuracy import NOISE_LIMIT, Accuracy, describe_change, relative_error, spread
from planner.config import NoAnswer
from planner.setup import Parallel, TrainSetup
from presets import (load_accuracy, load_cost_model, load_hardware, load_model, profile_path,
                     save_profile)
from runtime import calibration as cal
from tui.output import comparison_rows


def case(name="quiet", *, measured=0.010, steps=None, rounds=()):
    done = {"measured_step_time_s": measured, "ranks": [], "step_times_s": steps or [measured] * 12}
    return cal.Case(name=name, cfg=load_model("tiny"), setup=TrainSetup(seq_len=64),
                    par=Parallel(), done=done, round_step_s=list(rounds))


def test_relative_error_is_measured_minus_predicted_over_predicted():
    assert relative_error(2.0, 1.0) == 1.0       # slower than predicted: positive
    assert relative_error(0.5, 1.0) == -0.5      # faster: negative
    assert 1 + relative_error(3.0, 2.0) == 3.0 / 2.0  # the band's measured / predicted ratio


def test_validate_and_launch_report_the_same_signed_error():
    hw = load_hardware("cpu")
    c = case(measured=0.5)  # far slower than any prediction of the tiny model
    row = cal.errors([c], load_cost_model("cpu"), hw)[0]
    assert row["step_time_error"] == pytest.approx(
        (row["measured_step_time_s"] - row["predicted_step_time_s"]) / row["predicted_step_time_s"])
    assert row["step_time_error"] > 0
    done = SimpleNamespace(predicted=lambda _: None, measured=lambda _: None,
                           predicted_step_time_s=row["predicted_step_time_s"],
                           measured_step_time_s=row["measured_step_time_s"],
                           predicted_step_time_band_s=None)
    launch_error = comparison_rows(done)[-1][3]
    assert launch_error == f"{row['step_time_error']:+.1%}"  # launch says what validate says


def test_spread_is_the_interquartile_range_over_the_median():
    assert spread([1.0] * 10) == 0.0
    assert spread([1.0, 1.2]) == pytest.approx(0.2 / 1.1)
    assert spread([1, 1, 1, 1, 1, 1, 1, 10]) == 0.0  # one outlier (a GC pause) is not noise
    assert spread([1, 2, 3, 4, 5, 6, 7, 8]) > NOISE_LIMIT


def test_noisy_runs_are_refused_with_the_rule_and_the_profile_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path))
    before = Accuracy(step_time_ratio=(0.8, 1.3), memory_ratio=(0.98, 1.0), source="old")
    save_profile("cpu", before)
    text = profile_path("cpu").read_text()
    noisy = case("busy", steps=[0.01, 0.01, 0.01, 0.05, 0.02, 0.09, 0.01, 0.2, 0.03, 0.12])
    assert noisy.noise > NOISE_LIMIT
    record = Accuracy(step_time_ratio=(3.97, 19.73), memory_ratio=(0.98, 1.0), source="busy")
    lines = []
    with pytest.raises(NoAnswer, match=r"profile not saved: 1 of 2 case\(s\) too noisy .*"
                                        r"worst busy: step times spread \d+% > 75%"):
        cal.save_checked("cpu", record, [case(), noisy], progress=lines.append)
    assert profile_path("cpu").read_text() == text and lines == []
    assert load_accuracy("cpu") == before
    # rounds that disagree are noise too, even when each run is steady
    with pytest.raises(NoAnswer):
        cal.check_noise([case("drift", rounds=[0.010, 0.030, 0.011])])


def test_a_saved_change_is_said_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path))
    lines = []
    first = Accuracy(step_time_ratio=(0.8, 1.3), memory_ratio=(0.98, 1.0), source="a")
    cal.save_checked("cpu", first, [case()], progress=lines.append)
    second = Accuracy(step_time_ratio=(0.9, 1.2), memory_ratio=(0.98, 1.0), source="b")
    cal.save_checked("cpu", second, [case()], progress=lines.append)
    assert lines[0].startswith("cpu profile: new bands: step time x0.80-1.30, memory x0.98-1.00")
    assert lines[1].startswith("cpu profile: bands changed: step time x0.80-1.30 -> x0.90-1.20 (")
    assert "memory" not in lines[1].split("(")[0]  # only what moved
    assert all("\n" not in line for line in lines)
    assert describe_change(second, second) == "bands unchanged"
