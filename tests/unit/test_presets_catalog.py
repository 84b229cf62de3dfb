"""The preset catalogue: the models and accelerators users run, checked against published
figures; accelerator aliases; `llmplan presets show` and `presets new`.

Exact parameter counts against ``transformers`` on each preset's config are the oracle's job
(tests/oracle/test_params_oracle.py builds every preset; test_new_families.py the Qwen3,
Gemma 3 and DeepSeek ones with their active counts); here the totals are compared with what
the model authors published."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT
from planner.params import count_params
from presets import (HARDWARE_ALIASES, PresetError, canonical_hardware, load_cost_model,
                     load_hardware, load_model, preset_files, preset_fit, profile_path)

NEW_MODELS = ["llama-3.3-70b", "mixtral-8x22b", "deepseek-r1", "qwen3-0.6b", "qwen3-1.7b",
              "qwen3-4b", "qwen3-14b", "qwen3-32b", "qwen3-235b-a22b", "gemma-3-12b",
              "gemma-3-27b"]
NEW_HARDWARE = ["h800", "h20", "mi325x"]


# ---- published totals ----------------------------------------------------------------------
# Qwen3 model cards (huggingface.co/Qwen/<model>, "Number of Parameters (Non-Embedding)") and
# the Qwen3 Technical Report (arXiv 2505.09388), Tables 1-2.
QWEN3 = {"qwen3-0.6b": (0.6e9, 0.44e9), "qwen3-1.7b": (1.7e9, 1.4e9),
         "qwen3-4b": (4.0e9, 3.6e9), "qwen3-14b": (14.8e9, 13.2e9),
         "qwen3-32b": (32.8e9, 31.2e9), "qwen3-235b-a22b": (235e9, 234e9)}


@pytest.mark.parametrize("name", sorted(QWEN3))
def test_qwen3_totals_and_non_embedding_as_published(name):
    total, non_embedding = QWEN3[name]
    counts = count_params(load_model(name))
    # published to two or three significant figures: within half a unit of the last digit
    assert counts.total == pytest.approx(total, abs=0.05e9 if total < 10e9 else 0.5e9)
    assert counts.non_embedding == pytest.approx(non_embedding,
                                                 abs=0.005e9 if non_embedding < 1e9 else 0.05e9
                                                 if non_embedding < 10e9 else 0.5e9)


def test_moe_totals_and_active_as_published():
    # Qwen3-235B-A22B: 235B total, 22B activated (arXiv 2505.09388, Table 2)
    qwen = count_params(load_model("qwen3-235b-a22b"))
    assert qwen.total == pytest.approx(235e9, abs=0.5e9)
    assert qwen.active == pytest.approx(22e9, abs=0.5e9)
    # Mixtral 8x22B: 141B total, 39B active (Mistral AI announcement, 2024-04-17)
    mixtral = count_params(load_model("mixtral-8x22b"))
    assert mixtral.total == pytest.approx(141e9, abs=0.5e9)
    assert mixtral.active == pytest.approx(39e9, abs=0.5e9)
    # DeepSeek-R1 is DeepSeek-V3's architecture (arXiv 2501.12948 §2): 671B total, 37B active
    r1, v3 = count_params(load_model("deepseek-r1")), count_params(load_model("deepseek-v3"))
    assert (r1.total, r1.active) == (v3.total, v3.active)
    assert r1.total == pytest.approx(671e9, abs=0.5e9)
    assert r1.active == pytest.approx(37e9, rel=0.02)


def test_llama_3_3_70b_is_the_llama_3_1_70b_architecture():
    a, b = load_model("llama-3.3-70b"), load_model("llama-3.1-70b")
    assert a.replace(name=b.name, source=b.source) == b
    assert count_params(a).total == pytest.approx(70.6e9, abs=0.05e9)  # the model card's 70.6B


@pytest.mark.parametrize(("name", "non_embedding", "embedding"), [
    ("gemma-3-4b", 3_209e6, 675e6), ("gemma-3-12b", 10_759e6, 1_012e6),
    ("gemma-3-27b", 25_600e6, 1_416e6)])
def test_gemma_3_as_published(name, non_embedding, embedding):
    # Gemma Team 2025 (arXiv 2503.19786), Table 1 (language model; the vision encoder apart)
    counts = count_params(load_model(name))
    assert counts.non_embedding == pytest.approx(non_embedding, abs=0.5e6)
    # the table's embedding column is ~0.5% above V*h (262,208 x hidden): not exact
    assert counts.breakdown["embedding"] == pytest.approx(embedding, rel=0.01)


def test_every_new_model_cites_its_hugging_face_config():
    for name in NEW_MODELS:
        source = load_model(name).source
        assert source.startswith("https://huggingface.co/") and "/config.json" in source, name


# ---- hardware ------------------------------------------------------------------------------
def test_new_accelerators_are_dense_and_sourced():
    h100, h800 = load_hardware("h100-sxm"), load_hardware("h800")
    for field in ("peak_tflops_bf16", "peak_tflops_fp8", "peak_tflops_fp32", "memory_gib",
                  "hbm_bandwidth_gbps"):
        assert getattr(h800, field) == getattr(h100, field), field
    assert h800.intra_node_bandwidth_gbps == 200.0  # NVLink 400 GB/s bidirectional
    assert h800.chip == "h100"
    h20 = load_hardware("h20")
    assert (h20.peak_tflops_bf16, h20.hbm_bandwidth_gbps) == (148.0, 4000.0)
    assert h20.memory_bytes == pytest.approx(97_871 * 2**20, rel=1e-5)
    mi325x, mi300x = load_hardware("mi325x"), load_hardware("mi300x")
    assert mi325x.peak_tflops_bf16 == mi300x.peak_tflops_bf16
    assert (mi325x.hbm_bandwidth_gbps, mi325x.chip) == (6000.0, "mi300x")
    for name in NEW_HARDWARE + ["b200", "gb200", "l40s", "mi300x"]:
        hw = load_hardware(name)
        # dense peaks: fp8 twice bf16 on every tensor-core part listed here (not 4x: sparsity)
        assert hw.peak_tflops_fp8 == pytest.approx(2 * hw.peak_tflops_bf16, rel=0.02), name
        assert "datasheet" in hw.source, name


def test_a_chip_without_a_fit_says_it_uses_the_defaults(tmp_path, monkeypatch):
    from planner.cost import CostModel

    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path))  # no calibration profiles

    for name in ["h20", "mi325x", "b200", "gb200", "l40s", "mi300x"]:
        assert "cost_model" not in preset_fit(name), name
        assert "uncalibrated defaults" in load_hardware(name).source, name
        assert load_cost_model(name) == CostModel().replace(eager=True)
    # the H800 is an H100: the constants fitted to published H100 runs, as for the H200
    assert preset_fit("h800") == preset_fit("h100-sxm")


def test_aliases_resolve_to_presets_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path / "cfg"))
    files = preset_files("hardware")
    assert all(target in files and alias not in files for alias, target in HARDWARE_ALIASES.items())
    assert load_hardware("h100").name == "h100-sxm" and load_hardware("H100").name == "h100-sxm"
    assert load_hardware("a100").name == "a100-80gb"
    assert load_cost_model("h100") == load_cost_model("h100-sxm")
    assert profile_path("h100") == profile_path("h100-sxm")
    with pytest.raises(PresetError, match="unknown hardware preset 'h1000'"):
        load_hardware("h1000")
    # a user preset of an alias's name is that preset, not the alias
    user = tmp_path / "cfg" / "presets" / "hardware"
    user.mkdir(parents=True)
    (user / "h100.toml").write_text(files["h100-pcie"].read_text().replace(
        'name = "h100-pcie"', 'name = "h100"'))
    assert canonical_hardware("h100") == "h100" and load_hardware("h100").peak_tflops_bf16 == 756.0


# ---- presets show / new --------------------------------------------------------------------
def llmplan(tmp_path, *args):
    env = {"LLMPLAN_CONFIG_DIR": str(tmp_path / "cfg"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_presets_lists_the_new_presets_and_aliases(tmp_path):
    proc = llmplan(tmp_path, "presets", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(NEW_MODELS) <= {r["name"] for r in data["models"]}
    assert set(NEW_HARDWARE) <= {r["name"] for r in data["hardware"]}
    assert data["hardware_aliases"]["h100"] == "h100-sxm"
    rows = {r["name"]: r for r in data["models"]}
    assert rows["qwen3-235b-a22b"]["params"] == count_params(load_model("qwen3-235b-a22b")).total
    human = llmplan(tmp_path, "presets", "--kind", "hardware")
    assert human.returncode == 0 and "Hardware aliases" in human.stdout and "h800" in human.stdout


def test_presets_show_prints_the_file_and_where_it_is(tmp_path):
    proc = llmplan(tmp_path, "presets", "show", "qwen3-235b-a22b")
    assert proc.returncode == 0, proc.stderr
    path = preset_files("models")["qwen3-235b-a22b"]
    assert proc.stdout.endswith(path.read_text())
    assert str(path) in proc.stdout.splitlines()[0] and "huggingface.co" in proc.stdout
    data = json.loads(llmplan(tmp_path, "presets", "show", "h100", "--json").stdout)
    assert (data["name"], data["kind"], data["alias"], data["user"]) == \
        ("h100-sxm", "hardware", "h100", False)
    assert data["toml"] == preset_files("hardware")["h100-sxm"].read_text()
    assert data["source"] == load_hardware("h100-sxm").source


def test_presets_new_writes_a_user_copy_and_never_overwrites(tmp_path, monkeypatch):
    proc = llmplan(tmp_path, "presets", "new", "--from", "qwen3-32b", "--name", "my-qwen", "--json")
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "cfg" / "presets" / "models" / "my-qwen.toml"
    assert json.loads(proc.stdout) == {"name": "my-qwen", "kind": "model", "from": "qwen3-32b",
                                       "path": str(dest), "overrides_builtin": False}
    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path / "cfg"))
    copy, orig = load_model("my-qwen"), load_model("qwen3-32b")
    assert copy.name == "my-qwen" and copy.replace(name=orig.name) == orig
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left
    before = dest.read_text()
    again = llmplan(tmp_path, "presets", "new", "--from", "llama-3-8b", "--name", "my-qwen")
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert again.stderr.startswith("llmplan: error: user preset ") and "exists" in again.stderr
    assert dest.read_text() == before
    # hardware by alias, default name: the copy overrides the built-in, fitted tables kept
    hw = llmplan(tmp_path, "presets", "new", "--from", "h100")
    assert hw.returncode == 0, hw.stderr
    assert "overrides the built-in h100-sxm" in hw.stdout
    from presets import BUILTIN_DIR

    assert preset_files("hardware")["h100-sxm"].parent == tmp_path / "cfg" / "presets" / "hardware"
    assert load_hardware("h100") == load_hardware(str(BUILTIN_DIR / "hardware" / "h100-sxm.toml"))
    assert "cost_model" in preset_fit("h100")


@pytest.mark.parametrize(("args", "needle"), [
    (["presets", "show", "nope"], "unknown preset 'nope'"),
    (["presets", "show", "h100", "--kind", "model"], "unknown model preset 'h100'"),
    (["presets", "show"], "presets show takes one preset name"),
    (["presets", "frob"], "presets 'frob'"),
    (["presets", "new", "--from", "nope"], "unknown preset 'nope'"),
    (["presets", "new"], "presets new takes --from NAME"),
    (["presets", "new", "--from", "gpt2", "--name", "../evil"], "--name '../evil'"),
    (["presets", "new", "--from", "gpt2", "--name", "x.toml"], "--name 'x.toml'"),
    (["presets", "--name", "x"], "go with `show` or `new`"),
])
def test_presets_subcommand_errors_are_one_line(tmp_path, args, needle):
    proc = llmplan(tmp_path, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("llmplan: error: ") and proc.stderr.count("\n") == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cfg" / "presets").exists()


def test_readme_counts_the_built_in_presets():
    from presets import BUILTIN_DIR

    models = len(list((BUILTIN_DIR / "models").glob("*.toml")))
    hardware = len(list((BUILTIN_DIR / "hardware").glob("*.toml")))
    assert f"# {models} models, {hardware} accelerators" in (ROOT / "README.md").read_text()
