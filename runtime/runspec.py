"""Launch resolution: what a user asked for (a plan file, or a MODEL and flags) -> the run's
plan on disk and its torchrun command. The CLI, the TUI and calibration all call
:func:`resolve` (training, or an inference plan) and :func:`resolve_generation`; nothing
starts a process here, and every option is checked before anything does: a refused
request is one ``ConfigError`` naming the numbers, and nothing is written.

Standard library only (torch is imported only to look for CUDA when ``device`` is "auto").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from planner import layout
from planner.config import ConfigError, ModelConfig
from planner.finetune import Adapters
from planner.setup import Parallel, TrainSetup
from planner.planfile import plan_dict, plan_objects, read_plan, write_plan
from presets import default_hardware, load_model, parse_overrides
from runtime import inputs
from runtime.launch import LaunchSpec, torchrun_command
from runtime.launch_checks import (GENERATION_DTYPES, check_generation, check_host_memory,
                                   check_resume, check_train_options, cuda_ranks, device_of,
                                   finite, fp8_device, positive_int)



@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """``llmplan launch``: a plan file or a MODEL; ``None`` means the plan's value (or the
    default for a MODEL)."""

    target: str
    device: str = "auto"
    tp: int | None = None
    pp: int | None = None
    vpp: int | None = None
    dp: int | None = None
    zero: int | None = None
    sp: bool | None = None
    cp: int | None = None
    """Context parallel: each sequence split over cp ranks (ring attention)."""
    ep: int | None = None
    """Expert parallel: each MoE layer's experts split over ep of the dp ranks."""
    schedule: str | None = None
    recompute: str | None = None
    optimizer: str | None = None
    mbs: int | None = None
    gbs: int | None = None
    seq: int | None = None
    dtype: str | None = None
    pp_rounds: int = 1
    steps: int = 20
    lr: float = 3e-4
    seed: int = 0
    data: str = ""
    ckpt_dir: str = ""
    ckpt_every: int = 0
    resume: bool = False
    save_hf: str = ""
    sft: bool = False
    eval_data: str = ""
    eval_every: int = 0
    run_dir: str = ""
    nnodes: int = 1
    rdzv_endpoint: str = ""
    sets: tuple[str, ...] = ()
    method: str | None = None
    """full, lora, qlora or dpo (``adapters``: the policy's); None: the plan's (a MODEL: full)."""
    dpo_beta: float = 0.1
    adapters: Adapters | None = None
    init_adapter: str = ""
    save_adapter: str = ""
    merge: str = ""


@dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """``llmplan generate``: a MODEL or a checkpoint folder, and the sampling options."""

    target: str
    prompts: tuple[str, ...] = ("Hello",)
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch: int = 0
    tp: int = 1
    device: str = "auto"
    dtype: str = "auto"
    """fp32, bf16, or auto: a Hugging Face folder's stored dtype, else fp32."""
    eos: int = -1
    chat: bool = False
    weight_bits: int = 16
    """16 (the model's dtype) or 8: int8 weight-only linears (torchao), bf16 elsewhere."""
    run_dir: str = ""
    sets: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Resolved:
    """A run ready to start: its plan (written at ``spec.plan_path``) and how to start it."""

    spec: LaunchSpec
    plan: dict[str, Any]
    mode: str = "train"                      # or "inference"
    overrides: tuple[str, ...] = ()
    """Said to the user before the run starts: what a flag changed in a plan, and a resume
    from an older step than ``latest`` (a ``warning: ...`` line)."""
    cfg: ModelConfig | None = None
    setup: TrainSetup | None = None
    par: Parallel | None = None

    @property
    def command(self) -> list[str]:
        return torchrun_command(self.spec)

    @property
    def hardware(self) -> str:
        return self.plan.get("cluster", {}).get("hardware", "")

    def summary(self) -> dict[str, Any]:
        """What ``--dry-run --json`` prints."""
        out: dict[str, Any] = {"command": self.command, "plan": str(self.spec.plan_path),
                               "world": self.spec.nproc_per_node * self.spec.nnodes,
                               "device": self.spec.device}
        for key in ("layout", "setup", "cluster"):
            if key in self.plan:
                out[key] = self.plan[key]
        return out




def objective(req: TrainRequest) -> str:
    from planner.finetune import objective_for

    return objective_for(req.method or "full")


# ---- training -----------------------------------------------------------------------------
def _pick(flag: Any, default: Any) -> Any:
    return default if flag is None else flag


def _overrides(base_setup: TrainSetup, base_par: Parallel, setup: TrainSetup,
               par: Parallel) -> tuple[str, ...]:
    """Each plan field a flag changed (allowed, and said: never silently)."""
    said = []
    for before, after in ((base_par, par), (base_setup, setup)):
        for f in fields(before):
            old, new = getattr(before, f.name), getattr(after, f.name)
            if old != new:
                said.append(f"overriding the plan's {f.name}({old}) with {new}")
    return tuple(said)


def _run_folder(run_dir: str, fallback: str, prefix: str) -> Path:
    folder = Path(run_dir or fallback or tempfile.mkdtemp(prefix=prefix))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{folder}: cannot create the run folder ({err.strerror})") from None
    return folder


def _plan_beside(req: TrainRequest) -> str:
    """The checkpoint folder, where the run's plan goes when no ``--run-dir`` is given, unless
    it already holds another run's checkpoint that this run does not resume: then the plan
    goes to a folder of its own, and the checkpoint folder's ``run.toml`` is replaced only
    when this run saves its first step (a start that fails leaves it intact)."""
    if not req.ckpt_dir or req.resume:
        return req.ckpt_dir
    root = Path(req.ckpt_dir)
    taken = (root / "run.toml").exists() or (root / "latest").exists()
    return "" if taken else req.ckpt_dir


def resolve(req: TrainRequest, *, progress: Callable[[int, int], None] | None = None) -> Resolved:
    """A training request (or an inference plan file) -> the run, its plan written; a
    ``--data`` set is tokenised here, once (``progress(bytes done, bytes in all)``)."""
    check_train_options(req)
    target = Path(req.target)
    toml = read_plan(target, required=()) if req.target.endswith(".toml") and target.exists() else {}
    if toml.get("kind") == "inference":
        return _inference_plan(target, toml, req.device)
    from_plan = "layout" in toml
    weights = ""
    if from_plan:
        base = read_plan(target)
        cfg, base_setup, base_par = plan_objects(base, where=req.target)
        if req.sets:
            cfg = cfg.with_overrides(parse_overrides(list(req.sets)))
        hardware = base.get("cluster", {}).get("hardware", "")
    else:
        base = {}
        cfg = load_model(req.target, parse_overrides(list(req.sets)))
        weights = inputs.hf_weights(req.target, cfg)
        # a Hugging Face folder's weights keep their dtype unless --dtype says otherwise
        base_setup = TrainSetup(seq_len=min(256, cfg.max_context),
                                dtype=inputs.folder_dtype(req.target) or "fp32", recipe="runtime",
                                adapters=req.adapters, objective=objective(req))
        base_par, hardware = Parallel(), ""
    asked = {"tp": req.tp, "pp": req.pp, "vpp": req.vpp, "dp": req.dp, "zero": req.zero,
             "sp": req.sp, "cp": req.cp, "ep": req.ep}
    # a plan's schedule stays unless the virtual stages change; otherwise vpp's default
    schedule = _pick(req.schedule, base_par.schedule if from_plan and req.vpp is None else "")
    par = Parallel(**{k: _pick(v, getattr(base_par, k)) for k, v in asked.items()},
                   schedule=schedule)
    micro = _pick(req.mbs, base_setup.micro_batch)
    if req.gbs is not None:
        global_batch = req.gbs
    elif from_plan:  # the plan's batch, whatever else a flag changed
        global_batch = base_setup.micro_batch * base_setup.grad_accum * base_par.dp
    else:  # the smallest batch every schedule runs: pp micro-batches per flush, each round
        global_batch = micro * par.dp * (par.pp * req.pp_rounds if par.pp > 1 else 1)
    setup = replace(base_setup, seq_len=_pick(req.seq, base_setup.seq_len), micro_batch=micro,
                    grad_accum=layout.micro_batches(global_batch=global_batch, dp=par.dp,
                                                    mbs=micro),
                    dtype=_pick(req.dtype, base_setup.dtype),
                    optimizer=_pick(req.optimizer, base_setup.optimizer),
                    recompute=_pick(req.recompute, base_setup.recompute),
                    adapters=base_setup.adapters if req.method is None else req.adapters,
                    objective=base_setup.objective if req.method is None else objective(req))
    if setup.objective == "dpo" and not req.data:
        raise ConfigError("--method dpo needs --data: a JSONL file of prompt, chosen and "
                          "rejected")
    if setup.objective == "dpo" and req.eval_data:
        raise ConfigError("--eval-data is a held-out language-model loss; DPO reports its "
                          "reward margin and ranking every step")
    adapter_flags = [f for f, v in (("--init-adapter", req.init_adapter),
                                    ("--save-adapter", req.save_adapter), ("--merge", req.merge))
                     if v]
    if setup.adapters is None and adapter_flags:
        raise ConfigError(f"{', '.join(adapter_flags)} need(s) adapters: --method lora or qlora (or "
                          "--policy lora with dpo); this run trains every parameter")
    said = _overrides(base_setup, base_par, setup, par) if from_plan else ()
    if setup.seq_len > cfg.max_context:
        raise ConfigError(f"seq({setup.seq_len}) exceeds the model's max context({cfg.max_context})")
    layout.check(cfg, setup, par, runtime="llmplan", rounds=req.pp_rounds)
    if par.ep > 1 and req.save_hf:
        raise ConfigError(f"--save-hf with ep({par.ep}) is not written: each rank holds "
                          f"{cfg.num_experts // par.ep} of the {cfg.num_experts} experts and the "
                          "folder has one writer per stage; save a --ckpt-dir checkpoint")
    if par.world % req.nnodes:
        raise ConfigError(f"world({par.world}) is not divisible by nnodes({req.nnodes})")
    per_node = par.world // req.nnodes
    device = device_of(req.device)
    if setup.dtype == "fp8":
        fp8_device(device)
    if device == "cuda":
        cuda_ranks(per_node)
    else:
        check_host_memory(cfg, setup, par)
    resumed = check_resume(req.ckpt_dir, cfg) if req.resume else None
    if resumed is not None and resumed.warning:
        said = (*said, f"warning: {resumed.warning}")
    hardware = hardware or default_hardware(device)
    plan = plan_dict(cfg=cfg, setup=setup, par=par, hardware=hardware, gpus=par.world,
                     gpus_per_node=per_node, prediction=base.get("prediction", {}))
    for key in ("gpus", "gpus_per_node", "nodes"):  # what the plan was made for, reported
        if key in base.get("cluster", {}):
            plan["cluster"][f"planned_{key}"] = base["cluster"][key]
    plan["run"] = {"steps": req.steps, "lr": req.lr, "seed": req.seed,
                   "data": inputs.prepared(req.data, req, cfg, weights, progress,
                                           seq=setup.seq_len,
                                           pairs=setup.objective == "dpo"),
                   "dpo_beta": req.dpo_beta,
                   "data_source": req.data, "sft": req.sft,
                   # held-out data must fill one global batch
                   "eval_data": inputs.prepared(req.eval_data, req, cfg, weights, progress,
                                                seq=setup.seq_len, least=global_batch,
                                                flag="--eval-data"),
                   "eval_every": req.eval_every,
                   "ckpt_dir": req.ckpt_dir, "ckpt_every": req.ckpt_every,
                   "resume": req.resume,
                   "resume_step": resumed.step if resumed is not None else -1,
                   "device": device, "pp_rounds": req.pp_rounds,
                   "weights": weights, "save_hf": inputs.exportable(req.save_hf, cfg),
                   "tokenizer": inputs.tokenizer_folder(req.target, weights),
                   "init_adapter": req.init_adapter, "save_adapter": req.save_adapter,
                   "merge": inputs.exportable(req.merge, cfg)}
    folder = _run_folder(req.run_dir, _plan_beside(req), "llmplan-run-")
    plan_path = folder / "run.toml"
    # each node's agent runs the same file; the Slurm script is the planner's, not the run's
    write_plan(plan_path, {**plan, "cluster": {**plan["cluster"], "nodes": 1}})
    plan["cluster"]["nodes"] = req.nnodes
    spec = LaunchSpec(plan_path=plan_path, nproc_per_node=per_node, device=device,
                      nnodes=req.nnodes, rdzv_endpoint=req.rdzv_endpoint)
    return Resolved(spec=spec, plan=plan, overrides=said, cfg=cfg, setup=setup, par=par)


def _inference_plan(path: Path, plan: dict[str, Any], device: str) -> Resolved:
    """An inference plan file (``llmplan generate --run-dir`` writes one), run on its tp
    processes."""
    cfg = ModelConfig.from_dict(plan.get("model", {}), where=f"{path} [model]")
    options = plan.get("generate", {})
    tp = plan.get("cluster", {}).get("gpus", 1)
    positive_int(f"{path}: [cluster] gpus", tp)
    device = device_of(options.get("device", "cpu") if device == "auto" else device)
    check_generation(cfg, tp=tp, prompts=list(options.get("prompts", ["Hello"])),
                     max_new=options.get("max_new_tokens", 32))
    inputs.check_eos(options.get("eos_token", -1), cfg)  # the plan's stop token, as --eos
    if device == "cuda":
        cuda_ranks(tp)
    spec = LaunchSpec(plan_path=path, nproc_per_node=tp, device=device, module="runtime.generate")
    return Resolved(spec=spec, plan=plan, mode="inference", cfg=cfg)


# ---- generation ---------------------------------------------------------------------------


def resolve_generation(req: GenerateRequest) -> Resolved:
    """A generation request -> the inference plan written and the run to start."""
    positive_int("--tp", req.tp)
    positive_int("--batch", req.batch, minimum=0)
    positive_int("--top-k", req.top_k, minimum=0)
    positive_int("--seed", req.seed, minimum=0)
    finite("--temperature", req.temperature, low_open=False)
    finite("--top-p", req.top_p, high=1.0)
    if req.dtype not in (*GENERATION_DTYPES, "auto"):
        raise ConfigError(f"--dtype {req.dtype!r}: use {', '.join(GENERATION_DTYPES)} or auto")
    folder = Path(req.target)
    checkpoint = weights = tokenizer_dir = ""
    if (folder / "config.json").exists():  # a Hugging Face model folder
        cfg = load_model(req.target, parse_overrides(list(req.sets)))
        weights = inputs.hf_weights(req.target, cfg)
        tokenizer_dir = str(folder.resolve())
    elif folder.is_dir():  # a training checkpoint, with the tokenizer its run used
        cfg, checkpoint, tokenizer_dir = inputs.checkpoint_folder(req.target, req.tp)
    else:
        cfg = load_model(req.target, parse_overrides(list(req.sets)))
    inputs.check_eos(req.eos, cfg)
    texts = list(req.prompts) or ["Hello"]
    if req.batch:
        texts = [texts[i % len(texts)] for i in range(req.batch)]
    from runtime.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, model_vocab=cfg.vocab_size)
    check_generation(cfg, tp=req.tp, prompts=texts, max_new=req.max_new_tokens,
                     tokenizer=tokenizer, chat=req.chat)
    device = device_of(req.device)
    if device == "cuda":
        cuda_ranks(req.tp)
    dtype = (inputs.folder_dtype(req.target) or "fp32") if req.dtype == "auto" else req.dtype
    if req.weight_bits not in (16, 8):
        raise ConfigError(f"--weight-bits({req.weight_bits}) is not one of 16, 8 for generate "
                          "(int4 weight-only needs CUDA kernels)")
    if req.weight_bits == 8 and cfg.is_moe:
        raise ConfigError("--weight-bits 8 covers dense models (experts are not nn.Linear modules)")
    if req.weight_bits == 8 and (req.tp > 1 or dtype != "bf16"):
        raise ConfigError(f"--weight-bits 8 runs with tp 1 and --dtype bf16 (got tp({req.tp}), "
                          f"dtype({dtype})): torchao's int8 weights are whole tensors beside bf16 ones")
    plan = {"version": 1, "kind": "inference", "model": cfg.to_dict(),
            "cluster": {"hardware": default_hardware(device), "gpus": req.tp},
            "generate": {"prompts": texts, "max_new_tokens": req.max_new_tokens,
                         "temperature": req.temperature, "top_k": req.top_k,
                         "top_p": req.top_p, "seed": req.seed, "device": device,
                         "dtype": dtype, "weight_bits": req.weight_bits,
                         "checkpoint": checkpoint, "eos_token": req.eos,
                         "weights": weights, "tokenizer": tokenizer_dir, "chat": req.chat}}
    path = _run_folder(req.run_dir, "", "llmplan-gen-") / "generate.toml"
    write_plan(path, plan)
    spec = LaunchSpec(plan_path=path, nproc_per_node=req.tp, device=device,
                      module="runtime.generate")
    return Resolved(spec=spec, plan=plan, mode="inference", cfg=cfg)

