"""Nothing is lost: every output path is checked before a process starts, a failed start
changes nothing on disk, a damaged checkpoint is found before the ranks start (resume from the
newest intact step, or exit 2 naming the file), a failed export keeps the trained model, and a
signal stops every rank and says so."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, launch, launch_refused

from runtime.launch import _alive, descendants

TINY = ("tiny", "--seq", "32", "--gbs", "4", "--mbs", "1", "--dtype", "fp32")
UNWRITABLE = "/sys/llmplan-test"  # even root cannot create anything under /sys


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real dp2 checkpoint (steps 2 and 4) written with --run-dir apart from --ckpt-dir."""
    root = tmp_path_factory.mktemp("saved")
    events, _ = launch(*TINY, "--dp", "2", "--zero", "3", "--steps", "4", "--ckpt-every", "2",
                       "--ckpt-dir", str(root / "ckpt"), "--run-dir", str(root / "run"))
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4]
    return root / "ckpt"


@pytest.fixture
def ckpt(saved, tmp_path):
    """A copy of the saved checkpoint to damage."""
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    return copy


def resolve_resume(ckpt: Path, run_dir: Path):
    """What `launch tiny --resume` decides before any process starts (runspec.resolve)."""
    from runtime.runspec import TrainRequest, resolve

    return resolve(TrainRequest(target="tiny", device="cpu", dp=2, zero=3, seq=32, gbs=4, mbs=1,
                                dtype="fp32", steps=6, ckpt_dir=str(ckpt), resume=True,
                                run_dir=str(run_dir)))


# ---- 1. calibrate validates before it writes ---------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "auto"])
def test_a_refused_calibrate_keeps_the_measured_runs(tmp_path, device):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    runs = profiles / "h100-sxm.runs.json"
    runs.write_text('[{"name": "measured-before"}]\n')
    proc = cli("calibrate", "--device", device, env={"LLMPLAN_CONFIG_DIR": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--device '{device}'" in proc.stderr
    assert runs.read_text() == '[{"name": "measured-before"}]\n'
    assert sorted(p.name for p in profiles.iterdir()) == ["h100-sxm.runs.json"]


def test_calibrate_checks_where_it_writes_before_measuring(monkeypatch):
    from planner.config import ConfigError
    from runtime import calibration as cal

    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", f"{UNWRITABLE}/config")
    monkeypatch.setattr(cal, "measure", lambda *a, **k: pytest.fail("measured before checking"))
    with pytest.raises(ConfigError, match="calibration profile .*cannot write"):
        cal.calibrate(device="cpu", hardware="cpu", rounds=1, budget_s=1)


def test_calibrate_with_no_runnable_case_is_refused_before_it_runs(monkeypatch, tmp_path):
    from planner.config import ConfigError
    from runtime import calibration as cal

    monkeypatch.setenv("LLMPLAN_CONFIG_DIR", str(tmp_path))
    monkeypatch.setattr(cal, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(cal, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(ConfigError, match="0 sweep and 0 held-out case"):
        cal.calibrate(device="cuda", hardware="h100-sxm", rounds=1, budget_s=1)
    assert not (tmp_path / "profiles").exists()


# ---- 2 and 5. a resume of another model changes nothing; a checkpoint describes itself ------
@pytest.mark.slow
@pytest.mark.parametrize(("model", "described", "field"), [
    (("tiny-gpt2",), True, "mlp(swiglu vs gelu)"),
    (("tiny", "--set", "h=128"), True, "hidden_size(64 vs 128)"),
    (("tiny", "--set", "h=128"), False, "layers.0.attention.wq.weight([64, 64] vs [64, 128])"),
], ids=["tiny-gpt2", "h128", "h128-no-run-toml"])
def test_resuming_another_model_is_refused_and_changes_nothing(ckpt, model, described, field):
    """By the checkpoint's run.toml, or (a folder written before it had one) its tensors."""
    if not described:
        (ckpt / "run.toml").unlink()
    before = snapshot(ckpt)
    line = launch_refused(*model, "--ckpt-dir", str(ckpt), "--resume", "--steps", "6")
    held = "tiny" if described else "another model"
    assert line.startswith(f"llmplan: error: --resume: {ckpt} holds a checkpoint of {held}, not")
    assert field in line
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_a_new_run_never_saves_over_another_runs_checkpoint(ckpt):
    """Without --resume, a folder holding steps is refused: its saves would replace them."""
    before = snapshot(ckpt)
    line = launch_refused("tiny", "--ckpt-dir", str(ckpt), "--steps", "6")
    assert line == (f"llmplan: error: --ckpt-dir {ckpt} holds another run's checkpoint "
                    "(steps up to 4): pass --resume to continue it, or give an empty folder\n")
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_a_checkpoint_folder_apart_from_the_run_folder_describes_itself(saved, tmp_path):
    assert (saved / "run.toml").exists()
    proc = cli("export", str(saved), str(tmp_path / "hf"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["step"] == 4 and (tmp_path / "hf" / "config.json").exists()


# ---- 4. a damaged checkpoint is found before any rank starts ------------------------------
def _tmp_being_written(ckpt: Path) -> None:  # killed while step-6.tmp is written
    shutil.copytree(ckpt / "step-4", ckpt / "step-6.tmp")
    (ckpt / "step-6.tmp" / ".metadata").unlink()
    shard = ckpt / "step-6.tmp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])


def _tmp_complete(ckpt: Path) -> None:  # killed after the tmp folder is complete, before rename
    shutil.copytree(ckpt / "step-4", ckpt / "step-6.tmp")


def _renamed(ckpt: Path) -> None:  # killed after the rename, before `latest` names it
    shutil.copytree(ckpt / "step-4", ckpt / "step-6")


def _truncated(ckpt: Path) -> None:
    shard = ckpt / "step-4" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _deleted(ckpt: Path) -> None:
    (ckpt / "step-4" / "__0_0.distcp").unlink()


def _garbled_metadata(ckpt: Path) -> None:
    (ckpt / "step-4" / ".metadata").write_bytes(b"\x80\x04garbage" * 10)


def _latest_missing_step(ckpt: Path) -> None:
    (ckpt / "latest").write_text("9\n")


def _latest_garbled(ckpt: Path) -> None:
    (ckpt / "latest").write_text("not a step\n")


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "step", "named"), [
    (_tmp_being_written, 4, "step-6.tmp (an interrupted save)"),
    (_tmp_complete, 4, "step-6.tmp (an interrupted save)"),
    (_renamed, 4, "step-6 (saved, but latest names step 4: not committed)"),
    (_truncated, 2, "step-4/__1_0.distcp is truncated"),
    (_deleted, 2, "step-4/__0_0.distcp is missing"),
    (_garbled_metadata, 2, "step-4/.metadata cannot be read"),
    (_latest_missing_step, 4, "latest names step 9 but"),
    (_latest_garbled, 4, "latest does not name a step"),
], ids=["tmp-being-written", "tmp-complete", "renamed-not-latest", "truncated-shard",
        "deleted-shard", "garbled-metadata", "latest-names-missing-step", "latest-garbled"])
def test_resume_picks_the_newest_intact_step_and_says_why(ckpt, tmp_path, damage, step, named):
    damage(ckpt)
    before = snapshot(ckpt)
    resolved = resolve_resume(ckpt, tmp_path / "run")
    assert resolved.plan["run"]["resume_step"] == step
    warnings = [w for w in resolved.overrides if w.startswith("warning:")]
    assert len(warnings) == 1 and named in warnings[0], resolved.overrides
    assert warnings[0].endswith(f"resuming from step {step}")
    assert snapshot(ckpt) == before  # the check reads; nothing is repaired or removed


@pytest.mark.slow
def test_an_intact_checkpoint_resumes_without_a_warning(ckpt, tmp_path):
    resolved = resolve_resume(ckpt, tmp_path / "run")
    assert resolved.plan["run"]["resume_step"] == 4 and not resolved.overrides


@pytest.mark.slow
def test_no_intact_step_exits_2_naming_the_file_before_any_rank(ckpt):
    _truncated(ckpt)
    (ckpt / "step-2" / ".metadata").unlink()
    before = snapshot(ckpt)
    line = launch_refused(*TINY, "--dp", "2", "--zero", "3", "--steps", "6",
                          "--ckpt-dir", str(ckpt), "--resume")
    assert f"{ckpt}/step-4/__1_0.distcp is truncated" in line
    assert f"{ckpt}/step-2/.metadata is missing" in line
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_a_damaged_latest_resumes_from_the_older_step_in_a_real_run(ckpt):
    _deleted(ckpt)
    events, proc = launch(*TINY, "--dp", "2", "--zero", "3", "--steps", "5",
                          "--ckpt-dir", str(ckpt), "--resume")
    start = next(e for e in events if e["event"] == "start")
    assert start["start_step"] == 2
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4, 5]
    warned = [line for line in proc.stderr.splitlines() if "warning: --resume" in line]
    assert len(warned) == 1 and "step-4/__0_0.distcp is missing" in warned[0]
    assert (ckpt / "latest").read_text().strip() == "5"


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher and every process below it at once (a power cut, an OOM kill)."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    return pids


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_sigkill_during_a_real_save_resumes_from_the_last_committed_step(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "tui.cli", "launch", *TINY, "--dp", "2", "--steps", "6",
           "--ckpt-every", "2", "--ckpt-dir", str(ckpt), "--device", "cpu", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                            "LLMPLAN_SAVE_PAUSE": "written:4:60"})
    try:
        _wait_for(ckpt / "step-4.tmp" / ".metadata", proc)  # every rank's shards are in
    finally:
        pids = _kill_tree(proc)
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]
    assert (ckpt / "latest").read_text().strip() == "2" and not (ckpt / "step-4").exists()
    resolved = resolve_resume(ckpt, tmp_path / "run")
    assert resolved.plan["run"]["resume_step"] == 2
    assert any("step-4.tmp (an interrupted save)" in w for w in resolved.overrides)


# ---- 3. every output path before a process starts; a failed export keeps the model --------
@pytest.mark.parametrize("flags", [
    ("--save-hf", "/sys/llmplan-out"),
    ("--ckpt-dir", f"{UNWRITABLE}/ckpt", "--run-dir", "RUN"),
    ("--run-dir", f"{UNWRITABLE}/run"),
    ("--method", "lora", "--save-adapter", f"{UNWRITABLE}/adapter"),
], ids=["save-hf", "ckpt-dir-apart", "run-dir", "save-adapter"])
def test_an_unwritable_output_is_refused_before_any_process_starts(tmp_path, flags):
    flags = tuple(str(tmp_path / "run") if f == "RUN" else f for f in flags)
    bad = next(i for i, f in enumerate(flags) if f.startswith("/sys"))
    line = launch_refused(*TINY, "--steps", "2", *flags)
    assert line.startswith(f"llmplan: error: {flags[bad - 1]} {flags[bad]}") and "cannot" in line
    assert not (tmp_path / "run").exists()  # nothing written either


@pytest.mark.slow
def test_a_failed_export_keeps_the_final_checkpoint_and_names_the_export_command(tmp_path):
    out_parent, run_dir = tmp_path / "out", tmp_path / "run"
    out_parent.mkdir()
    cmd = [sys.executable, "-m", "tui.cli", "launch", *TINY, "--steps", "30",
           "--save-hf", str(out_parent / "hf"), "--run-dir", str(run_dir), "--device", "cpu",
           "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if '"event": "step"' in line:  # checked at launch; now the folder goes away
            out_parent.rmdir()
            out_parent.write_text("not a folder any more")
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert '"event": "error"' in stdout
    hint = [line for line in stderr.splitlines() if "llmplan export" in line]
    assert len(hint) == 1 and f"llmplan export {run_dir} {out_parent / 'hf'}" in hint[0], stderr
    assert (run_dir / "latest").read_text().strip() == "30"
    out_parent.unlink()
    out_parent.mkdir()
    export = cli("export", str(run_dir), str(out_parent / "hf"), "--json")
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads(export.stdout)["step"] == 30


# ---- 6. a signal stops every rank and says so --------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                         (signal.SIGHUP, 129)])
def test_a_signal_stops_every_rank_with_a_cancelled_event(sig, code):
    cmd = [sys.executable, "-m", "tui.cli", "launch", *TINY, "--dp", "2", "--steps", "100000",
           "--device", "cpu", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks: list[int] = []
    for line in proc.stdout:
        if '"event": "step"' in line:
            ranks = descendants(proc.pid)
            proc.send_signal(sig)
            break
    rest, stderr = proc.communicate(timeout=30)
    assert len(ranks) >= 3  # torchrun and its two ranks
    ended = [json.loads(line) for line in rest.splitlines() if line.startswith("{")][-1]
    assert ended["event"] == "cancelled" and ended["signal"] == sig.name, (rest, stderr)
    assert ended["exit_code"] == code and proc.returncode == code
    time.sleep(3)
    assert not [pid for pid in ranks if _alive(pid)]


# ---- 7. checks that used to fail only after the ranks started ------------------------------
def test_a_bad_stop_token_in_an_inference_plan_is_refused_before_any_process(tmp_path):
    from planner.tomlio import write_toml
    from presets import load_model

    plan = tmp_path / "generate.toml"
    write_toml(plan, {"version": 1, "kind": "inference", "model": load_model("tiny").to_dict(),
                      "cluster": {"hardware": "cpu", "gpus": 1},
                      "generate": {"prompts": ["Hello"], "max_new_tokens": 4, "device": "cpu",
                                   "eos_token": 999}})
    line = launch_refused(str(plan))
    assert "--eos(999)" in line and "vocab(256)" in line


@pytest.mark.parametrize("eos", ["999", "-5"])
def test_generate_refuses_a_stop_token_outside_the_vocabulary(eos):
    proc = cli("generate", "tiny", "--device", "cpu", "--eos", eos, "--max-new-tokens", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--eos({eos})" in proc.stderr and not proc.stdout
