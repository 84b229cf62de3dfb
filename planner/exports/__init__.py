"""Plans out to other trainers: the file each framework reads, for one planned job.

One module per framework, each in its own names (``accelerate``, ``torchtitan``,
``deepspeed``, ``megatron``), each with ``problems(job)`` (why the framework cannot express
this layout: empty when it can), ``render(job)`` (the file's text, starting with a comment
that names the model, hardware, predicted step time and memory, and the llmplan command)
and ``FILENAME``. ``plan --export X`` ranks only layouts X can run (``expressible``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

from planner.config import ConfigError
from planner.exports import accelerate, deepspeed, megatron, torchtitan
from planner.exports.job import Job

if TYPE_CHECKING:  # pragma: no cover
    from planner.search import Candidate, SearchResult

FRAMEWORKS: dict[str, ModuleType] = {m.NAME: m for m in (accelerate, torchtitan, deepspeed, megatron)}


def framework(name: str) -> ModuleType:
    if name not in FRAMEWORKS:
        raise ConfigError(f"export({name!r}) is not one of {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[name]


def job_of(cfg, result: "SearchResult", cand: "Candidate", *, command: str) -> Job:
    """The job of one ranked layout (the search's setup and cluster, the candidate's layout
    and prediction)."""
    from planner.planfile import candidate_layout

    setup, par = candidate_layout(result, cand)
    cluster = result.cluster
    return Job(cfg=cfg, setup=setup, par=par, hardware=cluster.hardware.name, gpus=cluster.gpus,
               gpus_per_node=cluster.gpus_per_node, step_time_s=cand.step_time_s,
               memory_per_gpu_bytes=cand.memory_per_gpu_bytes, command=command)


def expressible(name: str, cfg, result: "SearchResult", *, command: str = "llmplan plan"
                ) -> tuple[list["Candidate"], Counter[str]]:
    """The result's candidates that framework ``name`` can run, best first, and how many
    were refused for each first reason."""
    module = framework(name)
    kept: list["Candidate"] = []
    refused: Counter[str] = Counter()
    for cand in result.candidates:
        found = module.problems(job_of(cfg, result, cand, command=command))
        if found:
            refused[found[0]] += 1
        else:
            kept.append(cand)
    return kept, refused


def export(name: str, job: Job, out_dir: Path) -> Path:
    """Write framework ``name``'s file for ``job`` into ``out_dir``; a ConfigError naming the
    reason when the framework cannot express the layout."""
    module = framework(name)
    found = module.problems(job)
    if found:
        raise ConfigError(f"--export {name}: {found[0]}")
    from planner.outputs import write_text

    return write_text(Path(out_dir) / module.FILENAME, module.render(job), f"--export {name} file")


def settings(name: str, job: Job) -> Mapping[str, Any] | list[str]:
    """What the framework is given, as data (``--json`` shows it)."""
    return framework(name).settings(job)
