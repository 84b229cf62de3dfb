"""What the plan screen writes for its highlighted layout: the plan file, or another
framework's config (``planner.exports``). Each returns the notification's title and text;
errors are the caller's to show."""

from __future__ import annotations

from pathlib import Path


def save_plan(spec, result, cand, path: Path) -> tuple[str, str]:
    from planner.planfile import candidate_plan, write_plan

    script = path.with_suffix(".slurm")
    stale = script.is_file()
    written = write_plan(path, candidate_plan(spec, result, cand))
    message = "wrote " + ", ".join(str(p) for p in written)
    if stale and not script.exists():
        message += f"; removed {script}, written for an earlier multi-node plan"
    return "plan saved", message


def export_plan(spec, result, cand, folder: Path, *, framework: str) -> tuple[str, str]:
    """The layout in ``framework``'s own file; one it cannot express is refused with the
    reason (a ConfigError, nothing written). The header's command pins the whole layout."""
    from planner import exports

    c = cand
    command = (f"llmplan plan {spec.name} --hardware {result.cluster.hardware.name} "
               f"--gpus {result.world} --gbs {c.mbs * c.grad_accum * c.dp} "
               f"--seq {result.setup.seq_len} --tp {c.tp} --cp {c.cp} --pp {c.pp} --vpp {c.vpp} "
               f"--dp {c.dp} --ep {c.ep} --zero {c.zero} --{'sp' if c.sp else 'no-sp'} "
               f"--recompute {c.recompute} --mbs {c.mbs} --export {framework}")
    path = exports.export(framework, exports.job_of(spec, result, c, command=command), folder)
    return f"{framework} config", f"wrote {path}"
