"""Exact parameter counts against the real Hugging Face models (zero tolerance)."""

import json
from pathlib import Path

import pytest

from hf_oracle import HF_FAMILIES, hf_param_count, to_hf_config
from planner.params import count_params
from presets import load_model, preset_files

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
BUILDABLE = [n for n in preset_files("models") if load_model(n).family in HF_FAMILIES]


def test_most_presets_are_checked_by_the_oracle():
    assert len(BUILDABLE) >= 30


@pytest.mark.parametrize("name", BUILDABLE)
def test_preset_total_equals_hf_model(name):
    cfg = load_model(name)
    assert count_params(cfg).total == hf_param_count(to_hf_config(cfg))


@pytest.mark.parametrize("name", ["mixtral-8x7b", "mixtral-8x22b", "tiny-moe"])
def test_moe_active_equals_hf_model_with_k_experts(name):
    cfg = load_model(name)
    hf = to_hf_config(cfg)
    k = cfg.experts_per_token
    # A token uses k experts but the whole router (it scores all E experts): the HF model
    # rebuilt with k experts has a router of h*k, so add back the h*(E-k) router columns.
    router_rest = cfg.hidden_size * (cfg.num_experts - k) * cfg.num_layers
    assert count_params(cfg).active == hf_param_count(hf, active_experts=k) + router_rest
    for experts in (1, 3, cfg.num_experts):  # the total tracks the expert count exactly
        ours = count_params(cfg.replace(num_experts=experts,
                                        experts_per_token=min(2, experts))).total
        assert ours == hf_param_count(hf, active_experts=experts)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_hand_written_config_json_equals_hf_model(path):
    data = json.loads(path.read_text())
    cfg = load_model(str(path))
    assert count_params(cfg).total == hf_param_count(data)


def test_every_supported_family_has_a_fixture():
    families = {json.loads(p.read_text())["model_type"] for p in FIXTURES.glob("*.json")}
    from presets.hf import FAMILIES
    assert families == set(FAMILIES)
