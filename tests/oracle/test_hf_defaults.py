"""A config.json that `transformers` accepts is accepted: the fields it leaves out take the
family's transformers defaults, and the parameter count still equals the real model's."""

import json
from pathlib import Path

import pytest

from hf_oracle import hf_param_count
from planner.params import count_params
from presets.hf import FAMILIES, from_hf_config
from presets.hf_defaults import DEFAULTS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
SKIP = {"transformers_version", "architectures", "model_type", "torch_dtype", "dtype"}


def transformers_defaults(model_type: str) -> dict:
    """Every field the config class fills in when given nothing (rope_theta from its
    rope_parameters, as transformers 5 keeps it)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type).to_dict()
    cfg.update((cfg.get("rope_parameters") or {}))
    return cfg


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_defaults_table_is_what_transformers_fills_in(model_type):
    theirs = transformers_defaults(model_type)
    for key, value in DEFAULTS[model_type].items():
        assert key in theirs, key
        assert theirs[key] == value, (key, theirs[key], value)


def stripped(data: dict, *, all_defaults: bool) -> dict:
    """The fixture without the fields transformers defaults: those whose value equals the
    default (``all_defaults`` False), or every one of them (True: the class's own model). A
    field the class leaves ``None`` is unset, not defaulted (DeepSeek-V2's
    ``num_experts_per_tok``: a model that cannot route), and stays."""
    theirs = transformers_defaults(data["model_type"])
    return {k: v for k, v in data.items()
            if k in SKIP or k not in theirs or (theirs[k] is None and v is not None)
            or (not all_defaults and theirs[k] != v)}


@pytest.mark.parametrize("all_defaults", [False, True], ids=["equal-to-default", "every-default"])
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_a_config_without_its_defaulted_fields_counts_exactly(path, all_defaults, tmp_path):
    data = json.loads(path.read_text())
    small = stripped(data, all_defaults=all_defaults)
    if all_defaults:
        assert len(small) < len(data)  # something was removed
    cfg = from_hf_config(small, where=str(path))
    assert count_params(cfg).total == hf_param_count(small)
