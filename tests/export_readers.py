"""Exported files read back in each framework's own terms (shared by the unit and oracle
tests): Megatron-LM's option table as a strict argparse parser and torchtitan's job-config
keys, both from fixtures generated from their source by bench/export_fixtures.py."""

import argparse
import json
import shlex

from helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "exports"
MEGATRON = json.loads((FIXTURES / "megatron_options.json").read_text())
TORCHTITAN = json.loads((FIXTURES / "torchtitan_job_config.json").read_text())


def megatron_parser() -> argparse.ArgumentParser:
    """Megatron-LM's option table as a strict parser (unknown flags and values outside
    ``choices`` are errors)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for opt, spec in MEGATRON["options"].items():
        kwargs = {"dest": opt}
        if spec["nargs"] == 0:
            kwargs["action"] = "store_true"
        else:
            kwargs["nargs"] = None if spec["nargs"] == 1 else spec["nargs"]
            if spec["choices"]:
                kwargs["choices"] = [str(c) for c in spec["choices"]]
        parser.add_argument(opt, **kwargs)
    return parser


def megatron_read(text: str) -> dict:
    body = text.split("MEGATRON_ARGS=(\n", 1)[1].split("\n)\n", 1)[0]
    return vars(megatron_parser().parse_args(shlex.split(body)))


def megatron_layout(args: dict) -> dict:
    """The layout Megatron-LM runs for these arguments, in llmplan's terms."""
    tp, pp = int(args["--tensor-model-parallel-size"]), int(args["--pipeline-model-parallel-size"])
    strategy = args["--data-parallel-sharding-strategy"] if args["--use-megatron-fsdp"] else None
    zero = {"optim_grads": 2, "optim_grads_params": 3}.get(strategy, 1 if args["--use-distributed-optimizer"] else 0)
    return {"tp": tp, "pp": pp, "vpp": int(args["--num-virtual-stages-per-pipeline-rank"] or 1),
            "sp": args["--sequence-parallel"], "zero": zero,
            "recompute": args["--recompute-granularity"] or "none",
            "mbs": int(args["--micro-batch-size"]), "gbs": int(args["--global-batch-size"])}


def torchtitan_layout(data: dict) -> dict:
    p, t = data["parallelism"], data["training"]
    shard, replicate = p["data_parallel_shard_degree"], p["data_parallel_replicate_degree"]
    zero = {"always": 3, "never": 2}[p["fsdp_reshard_after_forward"]] if shard > 1 else 0
    per_stage = p.get("pipeline_parallel_layers_per_stage")
    mbs = p.get("pipeline_parallel_microbatch_size", t["local_batch_size"])
    return {"tp": p["tensor_parallel_degree"], "pp": p["pipeline_parallel_degree"],
            "dp": shard * replicate, "zero": zero, "mbs": mbs, "gbs": t["global_batch_size"],
            "recompute": data["activation_checkpoint"]["mode"], "per_stage": per_stage}
