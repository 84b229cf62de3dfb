"""Corrupted configs (a wrong type, an empty string, NaN, a nested object where a number
belongs) are one-line errors naming the field, from every loader: model TOML, Hugging Face
config.json, hardware TOML and plan files. Nothing ends in a traceback."""

import json
import math
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT
from planner.config import LlmplanError, ModelConfig
from planner.planfile import plan_dict, plan_objects
from planner.tomlio import dumps
from presets import load_hardware, load_model, preset_files
from presets.hf import from_hf_config

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures" / "hf").glob("*.json"))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORRUPT = st.one_of(
    st.just(""), st.just(float("nan")), st.just(float("inf")), st.just(-1), st.just(0),
    st.just(True), st.just(None), st.just([1, 2]), st.just({"value": 4096}),
    st.just("4096"), st.just("not a number"), st.just(1e308), st.just(2**70),
    st.text(max_size=8), st.floats(allow_nan=True), st.integers(-10, 10))


def fails_cleanly(call, field: str) -> None:
    """``call`` either succeeds or raises LlmplanError: one line, naming the field or what
    its value breaks."""
    try:
        call()
    except LlmplanError as err:
        text = str(err)
        assert "\n" not in text, text
        assert text.strip(), field


@SETTINGS
@given(path=st.sampled_from(FIXTURES), data=st.data())
def test_config_json_with_a_corrupted_field(path, data):
    config = json.loads(path.read_text())
    field = data.draw(st.sampled_from(sorted(config)), label="field")
    config[field] = data.draw(CORRUPT, label="value")
    fails_cleanly(lambda: from_hf_config(config, where=str(path)), field)


@SETTINGS
@given(name=st.sampled_from(["tiny", "llama-3-8b", "mixtral-8x7b", "gpt2", "falcon-40b"]),
       data=st.data())
def test_model_toml_with_a_corrupted_field(name, data, tmp_path_factory):
    table = load_model(name).to_dict()
    field = data.draw(st.sampled_from(sorted(table)), label="field")
    table[field] = data.draw(CORRUPT, label="value")
    fails_cleanly(lambda: ModelConfig.from_dict({k: v for k, v in table.items() if v is not None},
                                                where="model.toml"), field)


@SETTINGS
@given(data=st.data())
def test_plan_file_with_a_corrupted_field(data):
    from planner.setup import Parallel, TrainSetup

    plan = plan_dict(cfg=load_model("tiny"), setup=TrainSetup(seq_len=64), par=Parallel(dp=2),
                     hardware="cpu", gpus=2, gpus_per_node=2, prediction={})
    table = data.draw(st.sampled_from(["setup", "layout", "model"]), label="table")
    field = data.draw(st.sampled_from(sorted(plan[table])), label="field")
    plan[table][field] = data.draw(CORRUPT, label="value")
    if plan[table][field] is None:
        del plan[table][field]
    fails_cleanly(lambda: plan_objects(plan), field)


@SETTINGS
@given(data=st.data())
def test_hardware_toml_with_a_corrupted_field(data, tmp_path_factory):
    from planner.hardware import Hardware
    from planner.tomlio import read_toml

    table = read_toml(preset_files("hardware")["h100-sxm"])
    field = data.draw(st.sampled_from(sorted(table)), label="field")
    table[field] = data.draw(CORRUPT, label="value")
    fails_cleanly(lambda: Hardware.from_dict({k: v for k, v in table.items() if v is not None}), field)


def test_the_cli_exits_2_with_one_line_for_corrupted_files(tmp_path):
    llama = json.loads((FIXTURES[0].parent / "llama-3.1-8b.json").read_text())
    cases = {
        "nested.json": {**llama, "hidden_size": {"value": 4096}},
        "nan.json": {**llama, "rms_norm_eps": "nan"},
        "empty.toml": None,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            table = {**load_model("tiny").to_dict(), "mlp": "", "norm_eps": math.nan}
            path.write_text(dumps(table))
        else:
            path.write_text(json.dumps(content))
        proc = subprocess.run([sys.executable, "-m", "tui.cli", "params", str(path)], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert load_hardware("cpu").kind == "cpu"
