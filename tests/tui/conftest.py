import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every TUI test gets an empty config folder (settings and user presets)."""
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path / "config"))
