"""A config.json that `transformers` refuses is refused by llmplan too, and one it accepts is
accepted: each case builds the same fields through transformers' own config class (the
oracle; its ``validate_architecture`` / ``validate_layer_type`` run at construction) and
through ``presets.hf.from_hf_config``."""

import warnings

import pytest

from planner.config import ConfigError
from presets.hf import from_hf_config

WIDE = dict(hidden_size=4096, num_attention_heads=30, num_key_value_heads=30)
CASES = [
    # hidden_size % heads != 0: refused by these classes with or without head_dim
    ("llama", WIDE),
    ("llama", dict(WIDE, head_dim=128)),
    ("gpt_neox", dict(hidden_size=4096, num_attention_heads=30)),
    ("gemma2", WIDE),
    ("gemma3_text", dict(WIDE, head_dim=128)),
    ("deepseek_v2", dict(WIDE, num_experts_per_tok=2)),
    # ... and accepted by these (head_dim = hidden // heads, o_proj maps back to hidden)
    ("mistral", WIDE),
    ("qwen2", WIDE),
    ("mixtral", WIDE),
    ("gemma", dict(WIDE, head_dim=128)),
    # one layer_types entry per layer, every family
    ("llama", dict(num_hidden_layers=4, layer_types=["full_attention"] * 3)),
    ("qwen2", dict(num_hidden_layers=4, layer_types=["full_attention"] * 5)),
    ("qwen2", dict(num_hidden_layers=4, layer_types=["full_attention"] * 4)),
    # Jamba's own validator
    ("jamba", dict(attn_layer_offset=8, attn_layer_period=8)),
]


def transformers_verdict(family: str, fields: dict) -> tuple[bool, dict]:
    """(accepted, the config.json transformers would write for the valid base + fields)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    data = {**cls().to_dict(), **fields, "model_type": family}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cls(**fields)
        except Exception:  # noqa: BLE001 (the class raises its own validation error types)
            return False, data
    return True, data


@pytest.mark.parametrize(("family", "fields"), CASES,
                         ids=[f"{f}-{'-'.join(sorted(k))}" for f, k in CASES])
def test_llmplan_refuses_what_transformers_refuses(family, fields):
    accepted, data = transformers_verdict(family, fields)
    if "head_dim" not in fields:
        data.pop("head_dim", None)  # the class's derived value: the file leaves it out
    if accepted:
        cfg = from_hf_config(data, where="config.json")
        assert cfg.hidden_size == fields.get("hidden_size", cfg.hidden_size)
    else:
        with pytest.raises(ConfigError, match=r"^config.json: "):
            from_hf_config(data, where="config.json")


def test_the_refusal_names_the_numbers():
    _, data = transformers_verdict("llama", WIDE)
    data.pop("head_dim", None)
    with pytest.raises(ConfigError) as err:
        from_hf_config(data, where="x/config.json")
    assert str(err.value) == ("x/config.json: hidden_size(4096) is not a multiple of "
                              "num_attention_heads(30): transformers' LlamaConfig refuses it")
