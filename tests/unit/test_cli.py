"""The CLI as a script sees it: JSON keys, exit code 2 with one line, import hygiene."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT


def llmplan(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_params_json_keys():
    data = json.loads(llmplan("params", "llama-2-7b", "--json").stdout)
    assert data["total"] == 6_738_415_616
    assert isinstance(data["active"], int) and isinstance(data["non_embedding"], int)
    assert sum(data["breakdown"].values()) == data["total"]


def test_set_overrides_from_the_command_line():
    data = json.loads(llmplan("params", "llama-2-7b", "--set", "L=16", "--json").stdout)
    assert data["total"] < 6_738_415_616 / 1.8


def test_presets_json():
    data = json.loads(llmplan("presets", "--json").stdout)
    assert len(data["models"]) >= 25 and len(data["hardware"]) >= 12


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["params", "llama-2-7b", "--set", "g=5"], "kv heads(5) does not divide query heads(32)"),
        (["params", "llama-2-7b", "--set", "h=-4096"], "hidden(-4096)"),
        (["params", "no-such-model"], "unknown model preset 'no-such-model'"),
        (["params", "BAD_TOML"], "malformed TOML"),
        (["params", "BAD_JSON"], "malformed JSON"),
        (["params", "UNKNOWN_ARCH"], "unknown architecture model_type='falcon_mamba'"),
        (["params", "NULL_FIELD"], "intermediate_size(None) must be an integer"),
        (["presets", "--kind", "gpu"], "use model or hardware"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    files = {
        "BAD_TOML": ("bad.toml", "[model\nvocab_size = 1"),
        "BAD_JSON": ("config.json", '{"model_type": "llama",'),
        "UNKNOWN_ARCH": ("config.json", '{"model_type": "falcon_mamba"}'),
        # a missing field takes transformers' default (tests/oracle/test_hf_defaults.py);
        # a null one where no default is computed is an error naming it
        "NULL_FIELD": ("config.json", '{"model_type": "llama", "vocab_size": 10, '
                       '"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, '
                       '"intermediate_size": null}'),
    }
    resolved = []
    for arg in args:
        if arg in files:
            name, text = files[arg]
            path = tmp_path / name
            path.write_text(text)
            arg = str(path)
        resolved.append(arg)
    proc = llmplan(*resolved, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_arguments_without_a_terminal_prints_the_default_report():
    out = llmplan().stdout
    assert "8,030,261,248" in out


HEAVY = ("torch", "textual", "sympy")


@pytest.mark.parametrize(
    "code",
    [
        "import planner.config, planner.params, presets, presets.hf",
        "import sys; sys.argv = ['llmplan', 'params', 'llama-2-7b', '--json']\n"
        "from tui.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    ],
    ids=["planner", "params-json"],
)
def test_no_heavy_imports(code):
    probe = code + "\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_flops_json_keys():
    data = json.loads(llmplan("flops", "llama-3-8b", "--seq", "8192", "--tokens", "15e12",
                              "--json").stdout)
    assert set(data["conventions"]) == {"six_n", "palm", "exact"}
    assert data["train_flops_per_token"] == data["conventions"]["exact"]
    assert data["total_train_flops"] == pytest.approx(data["train_flops_per_token"] * 15e12)
    nc = json.loads(llmplan("flops", "llama-3-8b", "--seq", "8192", "--no-causal", "--json").stdout)
    assert nc["forward_flops_per_token"] > data["forward_flops_per_token"]


def test_memory_json_keys():
    data = json.loads(llmplan("memory", "llama-3-70b", "--seq", "4096", "--tp", "8", "--pp", "4",
                              "--dp", "2", "--zero", "1", "--gbs", "16", "--sp", "--json").stdout)
    keys = {"weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "total_bytes"}
    assert keys <= set(data["per_gpu"])
    assert all(isinstance(data["per_gpu"][k], int) for k in keys)
    assert len(data["stages"]) == 4
    assert data["per_gpu"]["total_bytes"] == max(s["total_bytes"] for s in data["stages"])


def test_kv_json_keys():
    data = json.loads(llmplan("kv", "llama-3-8b", "--seq", "8192", "--batch", "2", "--json").stdout)
    assert data["bytes_per_token"] == 131072 and data["total_bytes"] == 2 * 2**30


@pytest.mark.parametrize("args", [["--compute", "5.76e23"], ["--params", "70e9"],
                                  ["--gpus", "64", "--hardware", "h100-sxm", "--days", "7"],
                                  ["--compute", "1e22", "--fit", "tokens20"]])
def test_chinchilla_json_keys(args):
    data = json.loads(llmplan("chinchilla", *args, "--json").stdout)
    assert {"params", "tokens", "compute_flops", "loss", "fit"} <= set(data)
    assert (data["loss"] is None) == ("tokens20" in args)


def test_explain_prints_formula_and_agreement():
    out = llmplan("explain", "kv_bytes_per_token", "llama-2-7b").stdout
    assert "524,288" in out and "agrees" in out


def test_bad_layout_exits_2():
    proc = llmplan("memory", "llama-3-8b", "--tp", "3", check=False)
    assert proc.returncode == 2 and "tp(3) does not divide query heads(32)" in proc.stderr


def test_plan_json_and_plan_file(tmp_path):
    out = tmp_path / "plan.toml"
    data = json.loads(llmplan("plan", "llama-3-70b", "--hardware", "h100-sxm", "--gpus", "64",
                              "--gbs-tokens", "4194304", "--seq", "8192", "--top", "3",
                              "--out", str(out), "--json").stdout)
    keys = {"tp", "pp", "vpp", "dp", "zero", "sp", "recompute", "mbs", "grad_accum",
            "memory_per_gpu_bytes", "step_time_s", "tokens_per_s", "mfu"}
    assert len(data["candidates"]) == 3 and keys <= set(data["candidates"][0])
    tps = [c["tokens_per_s"] for c in data["candidates"]]
    assert tps == sorted(tps, reverse=True)
    assert data["rejected"]["out_of_memory"] > 0
    # The plan file round-trips into the same typed model, setup and layout.
    from planner.planfile import plan_objects, read_plan
    cfg, setup, par = plan_objects(read_plan(out))
    best = data["candidates"][0]
    assert (par.tp, par.pp, par.dp, par.zero, setup.micro_batch) == (
        best["tp"], best["pp"], best["dp"], best["zero"], best["mbs"])
    assert cfg.num_layers == 80
    slurm = (tmp_path / "plan.slurm").read_text()
    assert "--nnodes=8" in slurm and "--rdzv-backend=c10d" in slurm


def test_plan_with_no_feasible_layout_is_no_answer_not_bad_input():
    proc = llmplan("plan", "llama-3.1-405b", "--gpus", "8", "--gbs", "64", "--seq", "8192",
                   "--json", check=False)
    assert proc.returncode == 1  # exit codes: 0 answer, 1 no answer, 2 bad input
    data = json.loads(proc.stdout)
    assert data["candidates"] == [] and data["closest"] and data["suggestions"]
    assert data["no_answer"].startswith("no layout fits: ")
    assert proc.stderr.strip().splitlines() == [f"llmplan: no answer: {data['no_answer']}"]


def test_plan_returns_a_pinned_layout_with_its_breakdown():
    args = ["plan", "llama-3-70b", "--hardware", "h100-sxm", "--gpus", "1024", "--gbs", "1024",
            "--seq", "4096", "--tp", "8", "--pp", "8", "--dp", "16", "--mbs", "1",
            "--recompute", "selective", "--sp", "--json"]
    data = json.loads(llmplan(*args).stdout)
    for c in data["candidates"]:
        assert (c["tp"], c["pp"], c["dp"], c["mbs"], c["recompute"], c["sp"]) == \
            (8, 8, 16, 1, "selective", True)
    best = data["candidates"][0]
    assert best["fits"] and best["overshoot_bytes"] == 0
    for key in ("step_time_s", "tokens_per_s", "mfu", "hfu", "memory_per_gpu_bytes"):
        assert best[key] > 0
    b = best["breakdown"]
    assert set(b["compute"]) == {"matmul_s", "attention_s", "elementwise_s", "overhead_s", "total_s"}
    assert set(b["communication"]) == {"tp", "dp", "pp", "cp", "ep"}
    assert b["total_s"] == best["step_time_s"]
    assert data["nearest_published"] and all(r["source"] for r in data["nearest_published"])


def test_a_pinned_layout_that_does_not_fit_comes_back_with_its_overshoot():
    proc = llmplan("plan", "llama-3.1-405b", "--hardware", "h100-sxm", "--gpus", "64",
                   "--gbs", "64", "--seq", "8192", "--tp", "8", "--pp", "1", "--dp",
                   "8", "--zero", "0", "--vpp", "1", "--no-sp", "--recompute", "none",
                   "--mbs", "1", "--json", check=False)
    assert proc.returncode == 1  # it does not fit: no answer, though the layout comes back
    data = json.loads(proc.stdout)
    assert data["evaluated"] == 1 and len(data["candidates"]) == 1
    c = data["candidates"][0]
    assert (c["tp"], c["pp"], c["dp"], c["zero"]) == (8, 1, 8, 0)
    assert c["fits"] is False
    assert c["overshoot_bytes"] == c["memory_per_gpu_bytes"] - data["usable_bytes_per_gpu"] > 0
