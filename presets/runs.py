"""Published measured runs as data: ``presets/runs/*.toml`` (the fit set) and
``presets/runs/held_out/*.toml`` (checked, never fitted), each naming its source.

A run file has ``source``, ``hardware`` (a preset), ``gpus`` and ``notes``; ``[model]``
(a ``preset = ...`` or every ModelConfig field); ``[job]`` (seq_len, global_batch, dtype,
attention); ``[layout]`` (what the source states: tp, pp, vpp, dp, zero, sp, recompute,
mbs); ``[framework]`` (tp_comm_overlap; eager: element-wise ops unfused); ``[measured]`` (one of step_time_s,
tokens_per_s_per_gpu, tflops_per_gpu with its flops_formula).
"""

from __future__ import annotations

from pathlib import Path

from planner.config import ConfigError, ModelConfig
from planner.published import PublishedRun
from presets import BUILTIN_DIR, PresetError, _read_toml, load_hardware, load_model

RUNS_DIR = BUILTIN_DIR / "runs"


def load_run(path: Path, *, held_out: bool = False) -> PublishedRun:
    data = _read_toml(path)
    where = str(path)
    try:
        table = dict(data["model"])
        cfg = (load_model(table["preset"]) if "preset" in table
               else ModelConfig.from_dict(table, where=f"{where} [model]"))
        job, measured = data["job"], data["measured"]
        return PublishedRun(
            name=path.stem, source=data["source"], hardware=load_hardware(data["hardware"]),
            gpus=int(data["gpus"]), cfg=cfg, seq_len=int(job["seq_len"]),
            global_batch=int(job["global_batch"]), dtype=job.get("dtype", "bf16"),
            attention=job.get("attention", "flash"), layout=dict(data.get("layout", {})),
            tp_comm_overlap=data.get("framework", {}).get("tp_comm_overlap"),
            eager=bool(data.get("framework", {}).get("eager", False)),
            tflops_per_gpu=float(measured.get("tflops_per_gpu", 0.0)),
            flops_formula=measured.get("flops_formula", ""),
            tokens_per_s_per_gpu=float(measured.get("tokens_per_s_per_gpu", 0.0)),
            step_time_s=float(measured.get("step_time_s", 0.0)),
            notes=data.get("notes", ""), held_out=held_out)
    except KeyError as err:
        raise PresetError(f"{where}: missing {err}") from None
    except ConfigError as err:
        raise PresetError(f"{where}: {err}") from None


def load_runs(*, held_out: bool = False) -> list[PublishedRun]:
    """Every published run of the fit set (``held_out``: of the held-out set), by name."""
    folder = RUNS_DIR / "held_out" if held_out else RUNS_DIR
    return [load_run(p, held_out=held_out) for p in sorted(folder.glob("*.toml"))]
