"""Hostile input to every calculation command, in-process (typer's CliRunner on
``tui.cli.build``): zero, negatives, NaN, infinities, 2^63, sizes past every bound, words,
tiny positives, over every numeric option and ``--set`` field; and output paths that are an
existing folder, an existing file, an unwritable folder, or have spaces and non-ASCII.

Each case ends one of three ways (README, "Exit codes"): 0 with only finite numbers in its
``--json``, 1 ("no answer") with an ``llmplan: no answer:`` line, or 2 with exactly one
stderr line ``llmplan: error: ...``; never a traceback, and nothing left behind in the
output folder but the files a successful plan writes. The runtime commands (launch,
generate, calibrate, validate, export, tokenizer) are left to their own tests.
"""

import json
import math
import os
import tempfile
import time
from pathlib import Path

import pytest
import typer.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tui.cli import build

HOSTILE = ["0", "-1", "-8", "nan", "inf", "-inf", "-15e12", "1e30", "1e400", str(2**63),
           str(2**64), "1099511627776", "abc", "", "0.5", "1e-300", "5e-324", "1", "2", "4"]
"""Values tried for every numeric option: most are refused, the last few are valid."""

PLAN = ["plan", "tiny", "--hardware", "cpu", "--gpus", "2", "--seq", "64", "--json"]
COMMANDS = {
    # command line (always --json) -> the numeric options tried on it
    "params": (["params", "tiny", "--method", "lora", "--json"],
               ["--lora-rank", "--lora-alpha", "--lora-dropout", "--set V=", "--set h=",
                "--set L=", "--set f=", "--set a="]),
    "flops": (["flops", "tiny", "--hardware", "cpu", "--tokens", "1e9", "--gpus", "2", "--json"],
              ["--seq", "--tokens", "--gpus", "--mfu", "--set V="]),
    "memory": (["memory", "tiny", "--seq", "64", "--json"],
               ["--seq", "--mbs", "--gbs", "--zero", "--dp", "--tp", "--pp", "--vpp", "--cp",
                "--ep", "--lora-rank"]),
    "memory-ppo": (["memory", "tiny", "--seq", "64", "--method", "ppo", "--dp", "4", "--json"],
                   ["--prompt-tokens", "--response-tokens", "--rollout", "--actor-gpus",
                    "--critic-gpus"]),
    "kv": (["kv", "tiny", "--hardware", "cpu", "--json"], ["--seq", "--batch", "--tp", "--set g="]),
    "chinchilla-compute": (["chinchilla", "--json"], ["--compute"]),
    "chinchilla-params": (["chinchilla", "--params", "1e9", "--json"], ["--params", "--tokens"]),
    "chinchilla-cluster": (["chinchilla", "--gpus", "8", "--hardware", "h100-sxm", "--days", "7",
                            "--json"], ["--gpus", "--days", "--mfu"]),
    "explain": (["explain", "decode_roofline_s", "tiny", "--seq", "64", "--json"],
                ["--seq", "--batch", "--compute", "--weight-bits"]),
    "plan": (PLAN + ["--gbs", "4"],
             ["--gpus", "--nodes", "--gbs", "--seq", "--max-vpp", "--tokens", "--top", "--tp",
              "--pp", "--dp", "--vpp", "--zero", "--mbs", "--cp"]),
    "plan-tokens": (PLAN, ["--gbs-tokens"]),
    "plan-no-answer": (PLAN + ["--gbs", "4", "--pp", "2", "--vpp", "64"],  # exit 1 unless changed
                       ["--gpus", "--top", "--mbs", "--tokens"]),
    "serve-plan-no-answer": (["serve-plan", "tiny", "--hardware", "cpu", "--gpus", "2",
                              "--tpot-ms", "0.001", "--json"], ["--gpus", "--top", "--rate"]),
    "serve-plan": (["serve-plan", "tiny", "--hardware", "cpu", "--gpus", "2", "--json"],
                   ["--gpus", "--prompt-tokens", "--output-tokens", "--ttft-ms", "--tpot-ms",
                    "--rate", "--concurrency", "--price", "--top", "--weight-bits"]),
}
APPS: dict = {}
RUNNER = CliRunner()
CLICK: dict = {}
GET_COMMAND = typer.testing._get_command


def cached_command(app):
    """Typer's CliRunner turns the app into a Click command on every call (most of an
    in-process call's time): once per app here."""
    if id(app) not in CLICK:
        CLICK[id(app)] = GET_COMMAND(app)
    return CLICK[id(app)]
TRIED = {"cases": 0, "by_exit": {0: 0, 1: 0, 2: 0}}


def invoke(args: list[str]):
    name = args[0]
    app = APPS.get(name) or APPS.setdefault(name, build([name]))
    return RUNNER.invoke(app, args)


def no_nonfinite(constant: str):
    raise AssertionError(f"non-finite number {constant} in --json output")


def check(args: list[str], result) -> int:
    """The three endings, and never a traceback."""
    where = " ".join(args)
    code = result.exit_code
    assert code in (0, 1, 2), (where, code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (where, repr(result.exception))
    assert "Traceback" not in result.output and "Traceback" not in result.stderr, where
    lines = result.stderr.strip().splitlines()
    if code == 0:
        data = json.loads(result.stdout, parse_constant=no_nonfinite)
        numbers = []

        def walk(x):
            if isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
            elif isinstance(x, float):
                numbers.append(x)
        walk(data)
        assert all(math.isfinite(x) for x in numbers), where
        assert all(line.startswith("llmplan: ") for line in lines), (where, lines)
    elif code == 1:
        assert any(line.startswith("llmplan: no answer: ") for line in lines), (where, lines)
    else:
        assert len(lines) == 1 and lines[0].startswith("llmplan: error: "), (where, lines)
        assert len(lines[0]) < 400, where
    TRIED["cases"] += 1
    TRIED["by_exit"][code] += 1
    return code


@st.composite
def hostile_case(draw):
    base, opts = COMMANDS[draw(st.sampled_from(sorted(COMMANDS)))]
    args = list(base)
    for _ in range(draw(st.integers(1, 2))):
        opt, value = draw(st.sampled_from(opts)), draw(st.sampled_from(HOSTILE))
        args += ["--set", opt.split()[1] + value] if opt.startswith("--set ") else [opt, value]
    return args


def unwritable() -> str:
    """A path no one may create: under /sys as root (where permissions do not stop root)."""
    return "/sys/llmplan-test/x" if os.geteuid() == 0 else "/proc/llmplan-test/x"


@st.composite
def output_case(draw):
    kind = draw(st.sampled_from(["existing folder", "existing file", "unwritable", "spaces",
                                 "non-ascii", "new nested"]))
    export = draw(st.sampled_from([None, "megatron", "torchtitan", "accelerate"]))
    nodes = draw(st.sampled_from(["1", "2"]))  # two nodes: a Slurm script beside the plan
    return kind, export, nodes


def run_output_case(kind: str, export: str | None, nodes: str) -> None:
    with tempfile.TemporaryDirectory(prefix="llmplan-hostile-") as root:
        folder = Path(root)
        (folder / "existing folder").mkdir()
        (folder / "existing file.toml").write_text("keep me\n")
        out = {"existing folder": str(folder / "existing folder"),
               "existing file": str(folder / "existing file.toml"),
               "unwritable": unwritable(),
               "spaces": str(folder / "my plans" / "a plan.toml"),
               "non-ascii": str(folder / "plän ñ" / "计划.toml"),
               "new nested": str(folder / "a" / "b" / "c")}[kind]
        if export and kind in ("spaces", "non-ascii"):
            out = str(Path(out).parent)
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        args = ["plan", "tiny", "--hardware", "cpu", "--gpus", "2", "--nodes", nodes, "--gbs", "4",
                "--seq", "64", "--tp", "1", "--json", "--out", out,
                *(["--export", export] if export else [])]
        result = invoke(args)
        code = check(args, result)
        after = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        assert not [p for p in after if p.name.startswith(".") or p.suffix == ".tmp"], after
        if code != 0:
            assert after == before, (args, after)  # a refused output changes nothing
            return
        assert (folder / "existing file.toml").read_text() == "keep me\n" or \
            kind == "existing file" and not export
        written = json.loads(result.stdout)["written"]
        assert written and all(Path(w).is_file() for w in written), written
        new = {folder / p for p in after} - {folder / p for p in before}
        assert {p for p in new if p.is_file()} <= {Path(w) for w in written}, (new, written)
        if kind == "existing folder" and not export:
            raise AssertionError("--out EXISTING_FOLDER without --export must be refused")


def test_hostile_numbers_and_paths_end_in_one_of_three_ways(record_property, monkeypatch):
    monkeypatch.setattr(typer.testing, "_get_command", cached_command)
    start, cpu = time.monotonic(), time.process_time()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_case())
    def numbers(args):
        check(args, invoke(args))

    @settings(max_examples=24, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(output_case())
    def paths(case):
        run_output_case(*case)

    numbers()
    paths()
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    record_property("hostile_cli_cases", TRIED["cases"])
    print(f"hostile CLI cases tried: {TRIED['cases']} (exit 0: {TRIED['by_exit'][0]}, "
          f"1: {TRIED['by_exit'][1]}, 2: {TRIED['by_exit'][2]}) in {elapsed:.1f} s "
          f"({cpu:.1f} s of CPU)")
    assert TRIED["cases"] >= 200
    assert all(TRIED["by_exit"].values())  # each ending was reached
    # CPU time, not wall time: on a shared host other processes' load is not this test's
    assert cpu < 10, f"{cpu:.1f} s of CPU ({elapsed:.1f} s wall)"


def test_decode_flops_sum_is_the_loop_in_closed_form():
    """PPO's generation FLOPs summed a million decode steps one by one (46 s for
    ``--response-tokens 1048576``); the closed form equals the loop, windows and MLA too."""
    from planner.flops import decode_flops_per_token, decode_flops_sum
    from presets import load_model

    for name in ("tiny", "gemma-2-9b", "mistral-7b", "deepseek-v2-lite", "jamba-v0.1"):
        cfg = load_model(name)
        windows = [cfg.sliding_window - 1] if cfg.sliding_window else []
        for context, tokens in [(0, 1), (5, 300), (100, 5000), *[(w - 7, 20) for w in windows],
                                *[(w - 1, 3) for w in windows], *[(w, 3) for w in windows]]:
            loop = sum(decode_flops_per_token(cfg, context + t) for t in range(tokens))
            assert decode_flops_sum(cfg, context, tokens) == \
                pytest.approx(loop, rel=1e-12), (name, context, tokens)
    assert decode_flops_sum(load_model("tiny"), 10, 0) == 0.0
    start = time.monotonic()
    invoke(["memory", "tiny", "--method", "ppo", "--dp", "4", "--response-tokens", "1048576",
            "--rollout", "1048576", "--json"])
    assert time.monotonic() - start < 2
