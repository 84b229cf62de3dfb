"""Plan files: a runnable run specification (TOML) and, for several nodes, a Slurm script.

A plan holds everything ``llmplan launch plan.toml`` needs, unchanged: the full model
(every ModelConfig field, so the run does not depend on presets), the training setup, the
layout, the cluster, and the planner's prediction (memory per stage, step time, throughput)
that the run's ``done`` event is compared with. Written with a small TOML emitter (the
standard library reads TOML but does not write it); read back with ``tomllib``.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from planner import layout
from planner.config import ConfigError, ModelConfig, Parallel, TrainSetup

PLAN_VERSION = 1


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else '"nan"'
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(data: Mapping[str, Any]) -> str:
    """TOML for a two-level mapping: scalars, tables, and arrays of tables."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or
               (isinstance(v, list) and not (v and isinstance(v[0], dict)))}
    for key, value in scalars.items():
        lines.append(f"{key} = {_value(value)}")
    for key, value in data.items():
        if key in scalars:
            continue
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                if isinstance(v, list) and v and isinstance(v[0], dict):
                    for item in v:
                        lines.append(f"\n[[{key}.{k}]]")
                        lines.extend(f"{ik} = {_value(iv)}" for ik, iv in item.items())
                else:
                    lines.append(f"{k} = {_value(v)}")
        else:
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines.extend(f"{ik} = {_value(iv)}" for ik, iv in item.items())
    return "\n".join(lines) + "\n"


def plan_dict(*, cfg: ModelConfig, setup: TrainSetup, par: Parallel, hardware: str,
              gpus: int, gpus_per_node: int, prediction: Mapping[str, Any],
              kind: str = "train") -> dict[str, Any]:
    return {
        "version": PLAN_VERSION,
        "kind": kind,
        "model": cfg.to_dict(),
        "setup": {f.name: getattr(setup, f.name) for f in fields(setup)},
        "layout": {f.name: getattr(par, f.name) for f in fields(par)},
        "cluster": {"hardware": hardware, "gpus": gpus, "gpus_per_node": gpus_per_node,
                    "nodes": max(1, gpus // gpus_per_node)},
        "prediction": dict(prediction),
    }


def write_plan(path: Path, plan: Mapping[str, Any]) -> list[Path]:
    """Write the plan (and a Slurm script beside it for more than one node); return paths."""
    path.write_text(dumps(plan))
    written = [path]
    if plan["cluster"]["nodes"] > 1:
        script = path.with_suffix(".slurm")
        script.write_text(slurm_script(plan, path.name))
        written.append(script)
    return written


def read_plan(path: Path, required: tuple[str, ...] = ("model", "setup", "layout")) -> dict[str, Any]:
    """A plan file's tables, with one-line errors for an unreadable or malformed file and for
    a missing ``required`` table (``()`` reads any TOML: a model file, an inference plan)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: malformed TOML ({err})") from None
    for key in required:
        if key not in data:
            raise ConfigError(f"{path}: not a plan file (missing [{key}])")
    return data


def plan_objects(data: Mapping[str, Any], where: str = "plan") -> tuple[ModelConfig, TrainSetup, Parallel]:
    """The typed model, setup and layout of a plan (validated, errors name the numbers)."""
    cfg = ModelConfig.from_dict(data["model"], where=f"{where} [model]")
    try:
        setup = TrainSetup(**data["setup"])
        par = Parallel(**data["layout"])
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    layout.check(cfg, setup, par, runtime="any")
    return cfg, setup, par


def slurm_script(plan: Mapping[str, Any], plan_name: str) -> str:
    """An sbatch script: one torchrun per node with c10d rendezvous on the first node."""
    cluster = plan["cluster"]
    nodes, per_node = cluster["nodes"], cluster["gpus_per_node"]
    name = plan["model"].get("name", "llmplan")
    return f"""#!/bin/bash
# Generated by llmplan for {name}: {cluster['gpus']} x {cluster['hardware']} on {nodes} nodes.
#SBATCH --job-name=llmplan-{name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={per_node}
#SBATCH --exclusive
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=1
srun torchrun \\
  --nnodes={nodes} --nproc-per-node={per_node} \\
  --rdzv-backend=c10d --rdzv-endpoint="$head_node:29500" --rdzv-id="$SLURM_JOB_ID" \\
  -m runtime.train --plan {plan_name}
"""
