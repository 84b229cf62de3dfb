"""Exports to other trainers, checked against each framework's own option names (fixtures
generated from its source at a pinned commit by bench/export_fixtures.py): every layout a
framework can express is written in names it parses, back to the same layout; every layout
it cannot is refused with the reason."""

import itertools
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from planner import exports
from planner.config import ConfigError
from planner.cost import cluster_of
from planner.exports.job import Job
from planner.search import SearchSpace, search
from planner.setup import Parallel, TrainSetup
from presets import load_hardware, load_model

from export_readers import TORCHTITAN, megatron_layout, megatron_read, torchtitan_layout


def job(model="llama-3-8b", *, tp=1, pp=1, vpp=1, dp=8, zero=0, sp=False, recompute="none",
        mbs=1, m=8, dtype="bf16", gpus_per_node=8) -> Job:
    setup = TrainSetup(seq_len=4096, micro_batch=mbs, grad_accum=m, recompute=recompute,
                       dtype=dtype)
    return Job(cfg=load_model(model), setup=setup,
               par=Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=sp),
               hardware="h100-sxm", gpus=tp * pp * dp, gpus_per_node=gpus_per_node,
               step_time_s=1.5, memory_per_gpu_bytes=60 * 2**30, command="llmplan plan llama-3-8b")


LAYOUTS = [dict(tp=tp, pp=pp, vpp=vpp, dp=dp, zero=zero, sp=tp > 1, recompute=rc)
           for (tp, pp, vpp, dp), zero, rc in itertools.product(
               [(1, 1, 1, 8), (2, 1, 1, 4), (2, 2, 1, 2), (1, 4, 2, 2), (8, 1, 1, 1)],
               [0, 1, 2, 3], ["none", "selective", "full"]) if not (zero and dp == 1)]


@pytest.mark.parametrize("name", list(exports.FRAMEWORKS))
def test_every_layout_is_written_or_refused_with_a_reason(name):
    module = exports.framework(name)
    written = 0
    for spec in LAYOUTS:
        j = job(**spec)
        found = module.problems(j)
        if found:
            with pytest.raises(ConfigError, match=f"--export {name}: "):
                exports.export(name, j, Path("/nonexistent"))
            continue
        text = module.render(j)
        assert text.startswith("#") or text.startswith('{\n  "//"'), text[:80]
        assert "predicted: step 1.500 s, 60.0 GiB per GPU" in text
        written += 1
    assert written > 0
    assert written < len(LAYOUTS)  # Megatron too: not ZeRO-2/3 (Megatron-FSDP) with pp > 1


def test_megatron_arguments_are_its_own_and_read_back_to_the_layout():
    for spec in LAYOUTS:
        j = job(**spec)
        if exports.megatron.problems(j):
            continue
        got = megatron_layout(megatron_read(exports.megatron.render(j)))
        assert got == {"tp": j.par.tp, "pp": j.par.pp, "vpp": j.par.vpp, "sp": j.par.sp,
                       "zero": j.par.zero, "recompute": j.setup.recompute,
                       "mbs": j.setup.micro_batch, "gbs": j.global_batch}, spec


@pytest.mark.parametrize("model", ["mixtral-8x7b", "qwen2.5-7b", "gpt2", "llama-3.2-1b"])
def test_megatron_model_flags_parse_for_other_families(model):
    args = megatron_read(exports.megatron.render(job(model, dp=8)))
    cfg = load_model(model)
    assert int(args["--num-layers"]) == cfg.num_layers
    assert int(args["--ffn-hidden-size"]) == cfg.ffn_hidden_size
    assert args["--untie-embeddings-and-output-weights"] == (not cfg.tie_embeddings)
    assert args["--num-experts"] == (str(cfg.num_experts) if cfg.is_moe else None)


def assert_torchtitan_keys(data: dict, prefix: str = "") -> None:
    """Every key of the file is a field of its table in torchtitan's JobConfig (nested
    tables, ``[quantize.linear.float8]``, by their dotted names), every value one it allows."""
    sections = TORCHTITAN["sections"]
    for section, table in data.items():
        name = f"{prefix}{section}"
        for key, value in table.items():
            known = sections[name][key]
            if isinstance(value, dict):
                assert f"{name}.{key}" in sections, (name, key)
                assert_torchtitan_keys({key: value}, f"{name}.")
                continue
            assert known["choices"] is None or value in known["choices"], (name, key, value)


def test_torchtitan_keys_are_its_own_and_read_back_to_the_layout():
    for spec in LAYOUTS:
        j = job(**spec)
        if exports.torchtitan.problems(j):
            continue
        data = tomllib.loads(exports.torchtitan.render(j))
        assert_torchtitan_keys(data)
        got = torchtitan_layout(data)
        assert got["tp"] == j.par.tp and got["pp"] == j.par.pp and got["dp"] == j.par.dp
        assert got["zero"] == j.par.zero and got["recompute"] == j.setup.recompute
        assert got["mbs"] == j.setup.micro_batch and got["gbs"] == j.global_batch
        if j.par.pp > 1:
            assert got["per_stage"] * j.par.pp * j.par.vpp == j.cfg.num_layers


def test_torchtitan_flavor_names_match_its_shapes_and_others_get_model_args():
    assert exports.torchtitan.flavor(job("llama-3-8b")) == "8B"
    assert exports.torchtitan.flavor(job("llama-3.1-405b")) == "405B"
    text = exports.torchtitan.render(job("llama-2-7b"))
    assert 'flavor = "llama-2-7b"' in text and "multiple_of=11008" in text
    # torchtitan's rule: multiple_of * ceil(multiplier * int(8 h / 3) / multiple_of)
    h, f = 4096, 11008
    assert int(2 * 4 * h / 3) <= f  # no multiplier needed for this shape


@pytest.mark.parametrize(("name", "spec", "needle"), [
    ("accelerate", dict(tp=1, pp=2, dp=4), "pp(2) > 1: accelerate has no pipeline parallelism"),
    ("accelerate", dict(dp=8, zero=1), "zero(1): accelerate's FSDP shards gradients"),
    ("torchtitan", dict(tp=2, dp=4, sp=False), "tp(2) without sp"),
    ("torchtitan", dict(dp=8, zero=1), "zero(1): torchtitan's FSDP2"),
    ("deepspeed", dict(pp=2, dp=4), "pp(2) > 1: DeepSpeed's pipeline degree is set in code"),
    ("deepspeed", dict(dp=8, recompute="selective"), "recompute(selective)"),
])
def test_refusals_name_the_reason(name, spec, needle):
    assert any(needle in p for p in exports.framework(name).problems(job(**spec)))


def test_fp8_is_written_in_each_frameworks_terms_or_refused():
    """fp8 as each framework spells it, never dropped to bf16: torchao's Float8Linear through
    accelerate and torchtitan (head left in bf16), Transformer Engine's recipes in Megatron
    (DeepSeek-V3's 128-blocks as its blockwise recipe); DeepSpeed's config has none."""
    tensor = job(dp=8, zero=2, dtype="fp8")
    block = replace(tensor, setup=replace(tensor.setup, fp8_scaling="block"))
    acc = exports.accelerate.settings(tensor)
    assert acc["mixed_precision"] == "fp8" and acc["fp8_config"]["backend"] == "AO"
    titan = tomllib.loads(exports.torchtitan.render(tensor))
    assert_torchtitan_keys(titan)
    assert titan["model"]["converters"] == ["quantize.linear.float8"]
    assert titan["quantize"]["linear"]["float8"] == {"recipe_name": "tensorwise",
                                                     "filter_fqns": ["output"]}
    for j, fmt, recipe in ((tensor, "hybrid", "tensorwise"), (block, "e4m3", "blockwise")):
        args = megatron_read(exports.megatron.render(j))  # Megatron's own choices, strictly
        assert (args["--bf16"], args["--fp8-format"], args["--fp8-recipe"]) == (True, fmt, recipe)
    assert any("dtype(fp8)" in p for p in exports.deepspeed.problems(tensor))
    for name in ("accelerate", "torchtitan"):
        assert any("fp8 scaling(block)" in p for p in exports.framework(name).problems(block))
        assert not exports.framework(name).problems(tensor), name


def test_unknown_framework_is_one_line():
    with pytest.raises(ConfigError, match=r"export\('slurm'\) is not one of accelerate, torchtitan"):
        exports.framework("slurm")


def test_ranking_keeps_only_layouts_the_framework_runs():
    cfg = load_model("tiny")
    cluster = cluster_of(load_hardware("h100-sxm"), gpus=8)
    result = search(cfg, cluster, TrainSetup(seq_len=256), global_batch=32, runtime="any")
    for name in exports.FRAMEWORKS:
        kept, refused = exports.expressible(name, cfg, result)
        assert len(kept) + sum(refused.values()) == len(result.candidates)
        assert kept == [c for c in result.candidates if c in kept]  # order kept
        assert all(not exports.framework(name).problems(exports.job_of(cfg, result, c, command=""))
                   for c in kept[:20])
    kept, _ = exports.expressible("accelerate", cfg, result)
    assert kept and all(c.pp == 1 for c in kept)


def test_pinned_dimensions_restrict_the_search():
    cfg = load_model("tiny")
    cluster = cluster_of(load_hardware("h100-sxm"), gpus=8)
    space = replace(SearchSpace(), tps=(2,), pps=(2,), dps=(2,), vpps=(1,), zeros=(1,),
                    sps=(True,), recomputes=("selective",), micro_batches=(2,))
    result = search(cfg, cluster, TrainSetup(seq_len=256), global_batch=32, space=space)
    assert result.evaluated == 1 and len(result.candidates) == 1
    c = result.candidates[0]
    assert (c.tp, c.pp, c.vpp, c.dp, c.zero, c.sp, c.recompute, c.mbs, c.grad_accum) == \
        (2, 2, 1, 2, 1, True, "selective", 2, 8)
    with pytest.raises(ConfigError, match=r"tp\(3\) does not divide gpus\(8\)"):
        search(cfg, cluster, TrainSetup(seq_len=256), global_batch=32,
               space=replace(SearchSpace(), tps=(3,)))
    with pytest.raises(ConfigError, match=r"tp\(2\) x pp\(2\) x dp\(4\) = 16 is not the cluster's 8 GPUs"):
        search(cfg, cluster, TrainSetup(seq_len=256), global_batch=32,
               space=replace(SearchSpace(), tps=(2,), pps=(2,), dps=(4,)))
