"""The model screen on the layer-variant families: it shows their parameters, KV cache or
recurrent state, and the reason their training memory is refused, without crashing; the
variant fields' rows appear only for the models that use them."""

import pytest

from presets import load_model
from planner.params import count_params

SIZE = (100, 30)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path / "config"))


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "gemma-2-9b", "deepseek-v3", "mamba-2.8b",
                                  "mamba2-2.7b", "jamba-v0.1", "rwkv-4-3b"])
async def test_model_screen_shows_a_layer_variant_model(name):
    from tui.app import PlanApp

    app = PlanApp(save_settings=False, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not app.query_one("#row-mixer").display  # llama-3-8b: no variant rows
        app.spec = load_model(name)
        await pilot.pause()
        cfg = app.spec
        assert f"{count_params(cfg).total:,}" in str(app.query_one("#params-headline").render())
        kv = str(app.query_one("#kv").render())
        memory = str(app.query_one("#memory").render())
        if cfg.mixer != "attention":
            assert "MiB per sequence, whatever its length" in kv
            assert app.query_one("#row-ssm_state_size").display or cfg.mixer == "rwkv"
        if cfg.mixer != "attention" or cfg.attention == "mla":
            assert "is not modelled" in memory
        assert app.query_one("#row-mixer").display == (cfg.mixer != "attention")
