"""Plan files: a runnable run specification (TOML) and, for several nodes, a Slurm script.

A plan holds everything ``llmplan launch plan.toml`` needs, unchanged: the full model
(every ModelConfig field, so the run does not depend on presets), the training setup, the
layout, the cluster, and the planner's prediction (memory per stage, step time, throughput)
that the run's ``done`` event is compared with. Read and written through
``planner.tomlio``, the one TOML reader and writer.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from planner import layout
from planner.config import ConfigError, ModelConfig
from planner.setup import Parallel, TrainSetup
from planner.tomlio import read_toml, write_toml

if TYPE_CHECKING:  # pragma: no cover
    from planner.search import Candidate, SearchResult

PLAN_VERSION = 1
PLAN_TABLES = ("model", "setup", "layout")


def plan_dict(*, cfg: ModelConfig, setup: TrainSetup, par: Parallel, hardware: str,
              gpus: int, gpus_per_node: int, prediction: Mapping[str, Any],
              kind: str = "train") -> dict[str, Any]:
    return {
        "version": PLAN_VERSION,
        "kind": kind,
        "model": cfg.to_dict(),
        "setup": setup_dict(setup),
        "layout": {f.name: getattr(par, f.name) for f in fields(par)},
        "cluster": {"hardware": hardware, "gpus": gpus, "gpus_per_node": gpus_per_node,
                    "nodes": max(1, gpus // gpus_per_node)},
        "prediction": dict(prediction),
    }


def setup_dict(setup: TrainSetup) -> dict[str, Any]:
    """A setup as a plan's [setup] table: its fields, the adapters (when there are any) as
    their own sub-table."""
    out: dict[str, Any] = {f.name: getattr(setup, f.name) for f in fields(setup)
                           if f.name != "adapters"}
    if setup.adapters is not None:
        out["adapters"] = {f.name: (list(v) if isinstance(v, tuple) else v)
                           for f in fields(setup.adapters)
                           for v in [getattr(setup.adapters, f.name)]}
    return out


def candidate_plan(cfg: ModelConfig, result: "SearchResult", cand: "Candidate") -> dict[str, Any]:
    """The plan file of one ranked layout (CLI ``plan --out`` and the TUI's save write this):
    the search's setup with the candidate's micro-batch, accumulation and recompute, its
    layout, the searched cluster, and the prediction it was ranked by."""
    from planner.memory import memory_report

    setup, par = candidate_layout(result, cand)
    summary = {k: v for k, v in cand.to_dict(result.world).items() if k != "step"}
    prediction = {**summary, **cand.step.to_dict(),
                  "stages": memory_report(cfg, setup, par).to_dict()["stages"]}
    cluster = result.cluster
    return plan_dict(cfg=cfg, setup=setup, par=par, hardware=cluster.hardware.name,
                     gpus=cluster.gpus, gpus_per_node=cluster.gpus_per_node, prediction=prediction)


def candidate_layout(result: "SearchResult", cand: "Candidate") -> tuple[TrainSetup, Parallel]:
    """The setup (the search's, with the candidate's micro-batch, accumulation and recompute)
    and the layout of one ranked candidate."""
    setup = replace(result.setup, micro_batch=cand.mbs, grad_accum=cand.grad_accum,
                    recompute=cand.recompute)
    par = Parallel(tp=cand.tp, pp=cand.pp, vpp=cand.vpp, dp=cand.dp, zero=cand.zero, sp=cand.sp,
                   cp=cand.cp, ep=cand.ep, schedule=cand.schedule)
    return setup, par


def write_plan(path: Path, plan: Mapping[str, Any]) -> list[Path]:
    """Write the plan (and a Slurm script beside it for more than one node); return paths."""
    written = [write_toml(path, plan)]
    if plan.get("cluster", {}).get("nodes", 1) > 1:
        script = Path(path).with_suffix(".slurm")
        script.write_text(slurm_script(plan, Path(path).name))
        written.append(script)
    return written


def read_plan(path: Path, required: tuple[str, ...] = PLAN_TABLES) -> dict[str, Any]:
    """A plan file's tables, with one-line errors for an unreadable or malformed file and for
    a missing ``required`` table (``()`` reads any TOML: a model file, an inference plan)."""
    data = read_toml(Path(path))
    for key in required:
        if not isinstance(data.get(key), (dict, list)):
            raise ConfigError(f"{path}: not a plan file (missing [{key}])")
    return data


def plan_objects(data: Mapping[str, Any], where: str = "plan") -> tuple[ModelConfig, TrainSetup, Parallel]:
    """The typed model, setup and layout of a plan (validated, errors name the numbers). A
    [layout] table's fields are ``Parallel``'s; one written before context and expert
    parallelism has no ``cp`` / ``ep``, which default to 1."""
    cfg = ModelConfig.from_dict(data["model"], where=f"{where} [model]")
    table = dict(data["setup"])
    if isinstance(table.get("adapters"), dict):
        from planner.finetune import Adapters

        table["adapters"] = _typed(Adapters, table["adapters"], f"{where} [setup.adapters]")
    setup = _typed(TrainSetup, table, f"{where} [setup]")
    par = _typed(Parallel, data["layout"], f"{where} [layout]")
    layout.check(cfg, setup, par, runtime="any")
    return cfg, setup, par


def _typed(cls: type, table: Mapping[str, Any], where: str):
    """``cls(**table)`` with each value checked against the field's type first, so a wrong
    type is one line naming the field rather than a failure deep inside a formula."""
    from planner.config import check_type, dataclass_types

    known = dataclass_types(cls)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {k: check_type(k, v, known[k], where=where) for k, v in table.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


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
