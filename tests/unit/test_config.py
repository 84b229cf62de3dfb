"""Validation names the offending numbers; --set parses by field type."""

import pytest

from planner.config import ConfigError, ModelConfig
from presets import PresetError, load_hardware, load_model

BASE = dict(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=128)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_kv_heads": 3}, "kv heads(3) does not divide query heads(4)"),
        ({"num_heads": 5}, "query heads(5) does not divide hidden(64)"),
        ({"hidden_size": -64, "head_dim": 16}, "hidden(-64) must be a positive integer"),
        ({"num_layers": 0}, "layers(0) must be a positive integer"),
        ({"mlp": "tanh"}, "mlp('tanh') is not one of"),
        ({"num_experts": 4, "experts_per_token": 5}, "experts per token(5) must be between 1 and experts(4)"),
        ({"experts_per_token": 2}, "need experts > 0"),
        ({"position": "learned", "rope_scaling": "yarn"}, "needs position 'rope'"),
    ],
)
def test_invalid_configs_name_the_numbers(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{**BASE, **changes})


def test_defaults_are_derived():
    cfg = ModelConfig(**BASE)
    assert (cfg.num_kv_heads, cfg.head_dim) == (4, 16)
    assert ModelConfig(**BASE, num_experts=2, experts_per_token=1).moe_ffn_hidden_size == 128


def test_overrides_parse_by_type_and_accept_vocabulary_aliases():
    cfg = load_model("llama-2-7b", {"g": "8", "tie_embeddings": "yes", "rope_theta": "5e5"})
    assert cfg.num_kv_heads == 8 and cfg.tie_embeddings and cfg.rope_theta == 5e5
    with pytest.raises(ConfigError, match="expected int"):
        load_model("llama-2-7b", {"L": "many"})
    with pytest.raises(ConfigError, match="unknown field"):
        load_model("llama-2-7b", {"layers": "3"})


def test_unknown_preset_suggests_close_names():
    with pytest.raises(PresetError, match="did you mean llama-2-7b"):
        load_model("llama-2-7")


def test_toml_model_file_and_user_presets(tmp_path, monkeypatch):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nvocab_size = 100\nhidden_size = 64\nnum_layers = 2\n"
                    "num_heads = 4\nffn_hidden_size = 128\n")
    assert load_model(str(path)).name == "mine"
    user = tmp_path / "cfg" / "presets" / "models"
    user.mkdir(parents=True)
    (user / "my-net.toml").write_text(path.read_text())
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path / "cfg"))
    assert load_model("my-net").hidden_size == 64


def test_hardware_presets_are_dense_and_sourced():
    from presets import preset_files
    names = set(preset_files("hardware"))
    assert {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "gb200",
            "l40s", "rtx-4090", "mi250x", "mi300x", "cpu"} <= names
    for name in names:
        hw = load_hardware(name)
        assert hw.source and hw.peak_tflops_bf16 > 0
    # Dense, not the 2:4-sparsity headline figure (NVIDIA/Megatron-LM#1565).
    assert load_hardware("h100-sxm").peak_flops("bf16") == pytest.approx(989.4e12)


def test_model_presets_cover_the_required_set():
    from presets import preset_files
    names = set(preset_files("models"))
    required = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-175b", "llama-7b",
                "llama-2-7b", "llama-3-8b", "llama-3-70b", "llama-3.1-405b", "llama-3.2-1b",
                "mistral-7b", "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b",
                "falcon-7b", "falcon-40b", "gemma-2b", "gemma-7b", "opt-1.3b", "bloom-560m",
                "chinchilla-70b", "gopher-280b", "palm-540b", "tiny"}
    assert required <= names
    for name in names:
        assert load_model(name).source, name


def test_an_edited_model_file_is_read_again(tmp_path):
    """load_model caches files by version: a TOML edited while the TUI runs is not stale."""
    import os

    from presets import load_model
    from planner.tomlio import write_toml

    path = tmp_path / "mine.toml"
    table = load_model("tiny").to_dict()
    write_toml(path, table)
    assert load_model(str(path)).num_layers == 4
    write_toml(path, {**table, "num_layers": 8})
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later edit
    assert load_model(str(path)).num_layers == 8
