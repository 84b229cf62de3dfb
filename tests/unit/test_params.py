"""Parameter counts that do not need the oracle: published totals and the breakdown's algebra."""

import pytest

from planner.params import count_params
from presets import load_model, preset_files


@pytest.mark.parametrize("name", list(preset_files("models")))
def test_breakdown_sums_to_total(name):
    counts = count_params(load_model(name))
    assert sum(counts.breakdown.values()) == counts.total
    assert 0 < counts.active <= counts.total
    assert 0 < counts.non_embedding < counts.total


@pytest.mark.parametrize(
    ("name", "published", "rel"),
    [
        # Hoffmann et al. 2022, Table 4 / Rae et al. 2021, Table 1 / Chowdhery et al. 2022, Table 1:
        # checked to 1%; Transformer-XL relative positions are what close the Gopher/Chinchilla gap.
        ("chinchilla-70b", 70e9, 0.01),
        ("gopher-280b", 280e9, 0.01),
        ("palm-540b", 540.35e9, 0.001),
        ("gpt3-175b", 175e9, 0.01),
    ],
)
def test_published_sizes_of_models_transformers_cannot_build(name, published, rel):
    assert count_params(load_model(name)).total == pytest.approx(published, rel=rel)


def test_mixtral_active_params_match_the_paper():
    # Jiang et al. 2024 (arXiv 2401.04088) §2: 47B total, 13B active per token.
    counts = count_params(load_model("mixtral-8x7b"))
    assert counts.total == 46_702_792_704
    assert counts.active == pytest.approx(12.9e9, rel=0.01)


def test_tied_embedding_has_no_lm_head():
    tied = count_params(load_model("llama-3-8b", {"tie_embeddings": "true"}))
    untied = count_params(load_model("llama-3-8b"))
    assert tied.lm_head == 0
    assert untied.total - tied.total == 128256 * 4096
