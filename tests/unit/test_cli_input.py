"""The CLI's input rules, case by case (in-process): numbers are checked where they are
parsed (``tui.options``: one rule per kind of option, errors naming the option and the
value), exit codes say answer (0) / no answer (1) / bad input (2), output paths are checked
before anything is computed, and Click's own errors are one line too."""

import json
import os

import pytest

from helpers import cli as run
from helpers import cli_error as error_line


@pytest.mark.parametrize(("args", "message"), [
    (["flops", "llama-3-8b", "--seq", "-5"], "--seq(-5) must be a positive integer"),
    (["flops", "llama-3-8b", "--seq", "0"], "--seq(0) must be a positive integer"),
    (["flops", "llama-3-8b", "--tokens", "nan"], "--tokens(nan) must be a finite number"),
    (["flops", "llama-3-8b", "--tokens", "inf"], "--tokens(inf) must be a finite number"),
    (["flops", "llama-3-8b", "--tokens", "-15e12"], "--tokens(-15000000000000) must be"),
    (["flops", "llama-3-8b", "--tokens", "1e12", "--hardware", "h100-sxm", "--gpus", "-8"],
     "--gpus(-8) must be a positive integer"),
    (["flops", "llama-3-8b", "--tokens", "1e12", "--hardware", "h100-sxm", "--gpus", "0"],
     "--gpus(0) must be a positive integer"),
    (["flops", "llama-3-8b", "--tokens", "1e12", "--gpus", "8"],
     "--gpus(8) and --hardware(-) give the time to train: give both, with --tokens"),
    (["explain", "decode_roofline_s", "llama-3-8b", "--batch", "0"],
     "--batch(0) must be a positive integer"),
    (["plan", "llama-3-8b", "--gbs-tokens", "-4194304"], "--gbs-tokens(-4194304) must be"),
    (["plan", "llama-3-8b", "--gbs", "512", "--top", "0"], "--top(0) must be a positive integer"),
    (["plan", "llama-3-8b", "--gbs", "512", "--top", "-3"], "--top(-3) must be a positive"),
    (["plan", "llama-3-8b", "--gbs", "512", "--max-vpp", "0"], "--max-vpp(0) must be a positive"),
    (["plan", "llama-3-8b", "--gbs", "512", "--tokens", "-1e12"], "--tokens(-1000000000000)"),
    (["plan", "llama-3-8b", "--gbs", "1000000000000000"],
     "--gbs(1000000000000000) must be an integer from 0 to 1,073,741,824"),
    # 1e15 is read as a number (tui.options.Size: suffixes and exponents), then bounded
    (["plan", "llama-3-8b", "--gbs", "1e15"],
     "--gbs(1000000000000000) must be an integer from 0 to 1,073,741,824"),
    (["plan", "llama-3-8b", "--gpus", "1099511627776", "--gbs", "1099511627776"],
     "--gpus(1099511627776) must be a positive integer (at most 1,048,576)"),
    (["params", "llama-3-8b", "--set", "V=1e29"], "--set vocab_size=1e29: expected int"),
    (["params", "llama-3-8b", "--set", f"V={10**29}"], f"vocab({10**29}) is larger than any"),
    (["chinchilla", "--compute", "inf"], "--compute(inf) must be a finite number"),
    (["chinchilla", "--params", "1e30"], "--params(1e+30) must be a finite number"),
    (["kv", "llama-3-8b", "--seq", "1e21"], "--seq(1000000000000000000000) must be a positive"),
    (["kv", "llama-3-8b", "--seq", str(2**63)], f"--seq({2**63}) must be a positive integer"),
    (["serve-plan", "llama-3-8b", "--tpot-ms", "nan"], "--tpot-ms(nan) must be 0 (none) or"),
    # item 4: the option the user typed, not a derived quantity
    (["memory", "llama-3-8b", "--mbs", "0"], "--mbs(0) must be a positive integer"),
    (["chinchilla", "--compute", "0"], "--compute(0) must be a finite number from 1000000"),
    (["chinchilla"], "give exactly one of --compute, --params/--model, or --gpus --hardware "
                     "--days (none given)"),
    (["flops", "llama-3-8b", "--seq", "abc"], "--seq(abc) is not a number"),
    (["flops", "llama-3-8b", "--bogus"], "flops: No such option: --bogus"),
    (["flops"], "flops: Missing argument 'model'."),
])
def test_bad_numbers_are_one_line_naming_the_option_and_value(args, message):
    assert message in error_line(*args)


def test_a_search_too_large_is_refused_at_once_not_run_for_minutes():
    message = error_line("plan", "mixtral-8x7b", "--gpus", "1048576", "--gbs", "1073741824")
    assert message.startswith("the search has 4,080,384 layouts of 1,048,576 GPUs, more than "
                              "4,000,000: pin a dimension")


@pytest.mark.parametrize("args", [
    ["plan", "llama-3-8b", "--gbs", "64", "--seq", "16384"],
    ["flops", "llama-3-8b", "--seq", "16384"],
    ["memory", "llama-3-8b", "--seq", "16384"],
    ["kv", "llama-3-8b", "--seq", "16384"],
])
def test_a_sequence_past_the_context_is_computed_with_one_warning_line(args):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "llmplan: warning: seq(16,384) extrapolates past llama-3-8b's "
        "max_position_embeddings(8,192)"]
    json.loads(result.stdout)


def test_no_layout_is_exit_1_and_says_which_rules_rejected_what():
    result = run("plan", "llama-3-70b", "--method", "qlora", "--tp", "8", "--gbs", "512")
    assert result.exit_code == 1
    line = next(x for x in result.stdout.replace("\n", " ").split("  ")
                if "no layout passes the rules" in x)
    assert "no layout passes the rules: of 384 layouts, runtime_adapters rejected 384" in line
    assert "add --double-quant" in result.stdout


def test_no_fitting_layout_and_no_serving_split_are_exit_1():
    oom = run("plan", "llama-3.1-405b", "--gpus", "8", "--gbs", "64", "--json")
    assert oom.exit_code == 1 and json.loads(oom.stdout)["no_answer"].startswith("no layout fits")
    assert oom.stderr.startswith("llmplan: no answer: no layout fits: ")
    serve = run("serve-plan", "llama-3.1-405b", "--gpus", "1", "--json")
    assert serve.exit_code == 1 and serve.stdout == ""
    assert serve.stderr.startswith("llmplan: no answer: no TP size of 1 GPUs holds llama-3.1-405b")
    slow = run("serve-plan", "llama-3-70b", "--gpus", "8", "--tpot-ms", "2", "--json")
    assert slow.exit_code == 1 and json.loads(slow.stdout)["candidates"] == []


def unwritable() -> str:
    return "/sys/llmplan-test/x" if os.geteuid() == 0 else "/proc/llmplan-test/x"


@pytest.mark.parametrize(("out", "export", "needle"), [
    ("FOLDER", None, "--out {} is a folder: give a file name"),
    ("FILE", "megatron", "--out folder {} is a file, not a folder"),
    ("UNWRITABLE", None, "--out {}: cannot write in"),
    ("UNWRITABLE", "megatron", "--out folder {}: cannot write in"),
])
def test_output_paths_are_checked_before_the_search(tmp_path, monkeypatch, out, export, needle):
    import planner.search

    def no_search(*_a, **_k):
        raise AssertionError("searched before checking --out")

    monkeypatch.setattr(planner.search, "search", no_search)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep\n")
    path = {"FOLDER": str(tmp_path / "folder"), "FILE": str(tmp_path / "file"),
            "UNWRITABLE": unwritable()}[out]
    message = error_line("plan", "llama-3-70b", "--gpus", "64", "--gbs", "512", "--out", path,
                         *(["--export", export] if export else []))
    assert needle.format(path) in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]  # nothing stray
    assert (tmp_path / "file").read_text() == "keep\n"


def test_export_into_a_new_folder_writes_both_files_atomically(tmp_path):
    out = tmp_path / "new folder" / "ñ"
    result = run("plan", "llama-3-70b", "--gpus", "64", "--gbs", "512", "--export", "megatron",
                 "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["megatron_args.sh", "plan.slurm", "plan.toml"]
