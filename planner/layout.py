"""The layout contract: which (model, setup, layout) combinations are valid, and which of the
valid ones llmplan's own runtime runs. This is the only place those rules live: the layout
search counts its rejections by the keys below, and ``memory``, ``plan``, ``launch``, the TUI
and the runtime all ask it (in the spirit of torchtitan's ``ParallelDims``).

A rule never rewrites what the user asked for; it reports a :class:`Problem` naming the
numbers. A problem is either universal (no framework can run the layout: tp does not divide
the heads) or ``runtime_only`` (Megatron-LM or DeepSpeed run it, llmplan's runtime does not,
e.g. a vocabulary that tp does not divide, which Megatron pads). ``plan`` ranks only layouts
llmplan runs unless ``--runtime any`` asks for the others too, marked with their reason.

Rules are grouped by the loop level of the search that applies them (model, tp, pp, sp, zero,
batch), so the search rejects whole subtrees at once while ``problems`` lists all of them for
one layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig

from planner.setup import Parallel, TrainSetup

RUNTIMES = ("llmplan", "any")
RUNTIME_POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none")
"""Position schemes llmplan's runtime implements (T5-style relative buckets are not)."""

RUNTIME_OPTIMIZERS = ("adamw", "adafactor", "sgd_momentum")
"""Optimizers llmplan's runtime trains with (``torch.optim``)."""

KEYS = (
    "layers_not_modelled", "runtime_position", "runtime_layers", "runtime_fp8", "runtime_optimizer", "runtime_adapters", "runtime_objective",
    "adapter_layout",
    "tp_crosses_node", "tp_divisibility", "runtime_tp_vocab", "fp8_dims", "cp_seq",
    "vpp_without_pp", "pp_layers", "schedule",
    "sp_without_tp", "sp_seq", "ep_divisibility", "zero_without_dp", "runtime_sharded_adafactor",
    "batch_divisibility", "interleaved_microbatches", "runtime_pp_microbatches",
    "out_of_memory",
)
"""Every rejection reason, in the order the search applies them (its counts use these keys)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    key: str
    message: str
    runtime_only: bool = False
    """True: another framework (Megatron-LM, DeepSpeed) runs this layout; llmplan's does not."""
    detail: str = ""
    """The rule alone, without the runtime it is said of (exports name their framework)."""

    def applies(self, runtime: str) -> bool:
        """Whether this problem refuses the layout for ``runtime`` ("llmplan" or "any")."""
        return runtime == "llmplan" or not self.runtime_only


def _runtime(key: str, message: str) -> Problem:
    return Problem(key=key, message=f"{message} (llmplan's runtime; --runtime any plans it for "
                                    "other frameworks)", runtime_only=True, detail=message)


def model_problems(cfg: ModelConfig) -> list[Problem]:
    """What no layout can be planned for (training memory of MLA and recurrent layers is not
    modelled: their parameters, FLOPs and caches are), and what no layout of llmplan's
    runtime can run for this model (layer kinds its ``runtime.model.Decoder`` does not
    build)."""
    out = []
    unmodelled = (["mla"] if cfg.attention == "mla" else []) + (
        [cfg.mixer] if cfg.mixer != "attention" else [])
    if unmodelled:
        out.append(Problem(key="layers_not_modelled",
                           message=f"training memory of {' and '.join(unmodelled)} layers is not "
                                   "modelled (params, flops and kv are)"))
    if cfg.position not in RUNTIME_POSITIONS:
        out.append(_runtime("runtime_position", f"position({cfg.position!r}) is not implemented; "
                            f"supported: {', '.join(RUNTIME_POSITIONS)}"))
    missing = [name for on, name in (
        (cfg.attention == "mla", "MLA attention"),
        (cfg.mixer != "attention", f"{cfg.mixer} layers"),
        (cfg.mlp == "rwkv", "RWKV channel mix"),
        (cfg.qk_norm, "q/k norms"),
        (cfg.sandwich_norms, "sandwich norms"),
        (cfg.attention_scale_dim not in (0, cfg.head_dim),
         f"attention scale 1/sqrt({cfg.attention_scale_dim})"),
        (bool(cfg.attn_logit_softcap or cfg.final_logit_softcap), "logit soft-capping"),
        (bool(cfg.sliding_window_pattern), "alternating local/global attention"),
        (cfg.moe_layer_period != 1 or bool(cfg.mlp_only_layers), "an MoE layer pattern"),
        (cfg.count_mtp_layers, "MTP modules")) if on]
    if missing:
        out.append(_runtime("runtime_layers", "the decoder does not build "
                            f"{', '.join(missing)}"))
    return out


def setup_problems(setup: TrainSetup, cfg: ModelConfig) -> list[Problem]:
    """What llmplan's runtime cannot train with, whatever the layout: 8-bit Adam needs
    bitsandbytes' CUDA kernels, which this runtime does not depend on."""
    out = []
    if setup.dtype == "fp8" and setup.fp8_scaling != "tensor":
        out.append(_runtime("runtime_fp8", f"fp8 scaling({setup.fp8_scaling}) is not run: "
                            "torchao float8 trains with tensor-wise scales"))
    if setup.dtype == "fp8" and setup.adapters is not None:
        out.append(_runtime("runtime_fp8", "fp8 adapters are not trained: LoRA and QLoRA run "
                            "over a 16-bit or 4-bit base"))
    if setup.optimizer not in RUNTIME_OPTIMIZERS:
        out.append(_runtime("runtime_optimizer", f"optimizer({setup.optimizer}) is not run; "
                            f"supported: {', '.join(RUNTIME_OPTIMIZERS)}"))
    out.extend(runtime_adapter_problems(cfg, setup))
    return out


RUNTIME_FUSED_TARGETS = {"gpt2": ("c_attn", "c_proj", "c_fc"), "gpt_neox": ("query_key_value",),
                         "bloom": ("query_key_value",), "falcon": ("query_key_value",)}
"""LoRA targets whose checkpoint tensor the runtime splits (fused q/k/v) or transposes
(GPT-2's Conv1D): peft adapts the fused tensor as one, the runtime's separate projections
cannot carry that adapter."""


NF4_WHOLE_BLOCKS = 64 * 256
"""torchao's NF4 tensor double-quantises whole groups of 256 block-64 scales: each 4-bit
weight must hold a multiple of 16,384 values."""


def runtime_adapter_problems(cfg: ModelConfig, setup: TrainSetup) -> list[Problem]:
    """What llmplan's runtime trains of adapters: LoRA over a 16-bit (or fp32) base, or over
    torchao's NF4 base (QLoRA, double-quantised, whole scale groups), on projections its
    checkpoint holds one to one."""
    a = setup.adapters
    if a is None:
        return []
    from planner.lora import default_targets, linear_modules

    if a.base_bits == 8:
        return [_runtime("runtime_adapters", "an 8-bit frozen base is not trained (16-bit "
                                             "LoRA and 4-bit QLoRA are)")]
    if a.base_bits == 4 and not a.double_quant:
        return [_runtime("runtime_adapters", "torchao's NF4 base always quantises its "
                                             "constants: add --double-quant")]
    if a.base_bits == 4:
        for m in linear_modules(cfg):
            n = m.in_features * m.out_features
            if m.part != "head" and n % NF4_WHOLE_BLOCKS:
                return [_runtime("runtime_adapters",
                                 f"{m.name} ({m.out_features} x {m.in_features} = {n:,} weights) "
                                 f"is not a multiple of {NF4_WHOLE_BLOCKS:,}, the NF4 base's "
                                 "scale group")]

    fused = [t for t in a.targets or default_targets(cfg)
             if t in RUNTIME_FUSED_TARGETS.get(cfg.family, ())]
    if fused:
        return [_runtime("runtime_adapters", f"LoRA on {cfg.family}'s {', '.join(fused)} is not "
                                             "trained (its checkpoint fuses or transposes them)")]
    return []


def base_bits(setup: TrainSetup) -> int:
    return 16 if setup.adapters is None else setup.adapters.base_bits


def method_layout_problems(setup: TrainSetup, tp: int, pp: int, cp: int = 1,
                           ep: int = 1) -> list[Problem]:
    """Adapter fine-tuning is planned over dp x ZeRO (FSDP over the frozen base, as
    QLoRA + FSDP runs it): how adapters split over tensor, context, pipeline or expert
    ranks is not modelled, so such layouts are refused rather than estimated wrong;
    llmplan's runtime trains DPO over dp x ZeRO too."""
    a = setup.adapters
    wide = {k: v for k, v in (("tp", tp), ("cp", cp), ("pp", pp), ("ep", ep)) if v > 1}
    sizes = " and ".join(f"{k}({v})" for k, v in wide.items())
    if a is not None and wide:
        return [Problem(key="adapter_layout",
                        message=f"--method {a.method} is planned over dp x ZeRO: {sizes} "
                                f"must be 1")]
    if setup.objective == "dpo" and wide:
        return [_runtime("runtime_objective", f"DPO is trained over dp x ZeRO: {sizes} "
                                              "must be 1")]
    return []


def tp_problems(cfg: ModelConfig, tp: int) -> list[Problem]:
    """Tensor parallelism splits query heads, the FFN (and each expert's) and, in llmplan's
    runtime, the vocabulary and the kv heads. With tp > kv heads each kv head is replicated
    over tp/g ranks (Megatron-LM; llmplan's runtime too, ``runtime.tensor_parallel``)."""
    out = []
    g = cfg.num_kv_heads
    if cfg.num_heads % tp:
        out.append(Problem(key="tp_divisibility",
                           message=f"tp({tp}) does not divide query heads({cfg.num_heads})"))
    elif g % tp and tp % g:
        out.append(Problem(key="tp_divisibility",
                           message=f"tp({tp}) and kv heads({g}) must divide one another "
                                   "(kv heads are replicated when tp > kv heads)"))
    if cfg.ffn_hidden_size % tp:
        out.append(Problem(key="tp_divisibility",
                           message=f"tp({tp}) does not divide ffn hidden({cfg.ffn_hidden_size})"))
    if cfg.is_moe and cfg.moe_ffn_hidden_size % tp:
        out.append(Problem(key="tp_divisibility",
                           message=f"tp({tp}) does not divide moe ffn hidden({cfg.moe_ffn_hidden_size})"))
    if tp > 1 and cfg.vocab_size % tp:
        out.append(_runtime("runtime_tp_vocab", f"tp({tp}) does not divide vocab({cfg.vocab_size}): "
                            "the embedding and LM head are split evenly, not padded"))
    return out


def fp8_problems(cfg: ModelConfig, setup: TrainSetup, tp: int) -> list[Problem]:
    """fp8 GEMMs (``torch._scaled_mm``, cuBLASLt's fp8 kernels under Transformer Engine too)
    need both dimensions of each weight on a TP rank to be multiples of 16: the hidden size,
    the query and kv widths and the (expert) FFN width, each over tp. llmplan's runtime runs
    the K/V projections that tp > kv heads replicates as row slices in bf16, so it refuses
    that split."""
    from planner.fp8 import GEMM_ALIGN

    if setup.dtype != "fp8":
        return []
    dims = {"hidden": cfg.hidden_size, "query width / tp": cfg.q_width // tp,
            "ffn hidden / tp": cfg.ffn_hidden_size // tp}
    if cfg.num_kv_heads >= tp:
        dims["kv width / tp"] = cfg.kv_width // tp
    if cfg.is_moe:
        dims["moe ffn hidden / tp"] = cfg.moe_ffn_hidden_size // tp
    out = [Problem(key="fp8_dims", message=f"fp8 GEMMs need multiples of {GEMM_ALIGN}: {name}"
                                           f"({value}) is not")
           for name, value in dims.items() if value % GEMM_ALIGN]
    if tp > cfg.num_kv_heads:
        out.append(_runtime("runtime_fp8", f"fp8 with tp({tp}) > kv heads({cfg.num_kv_heads}) "
                            "is not run: the replicated K/V projections' row slices are bf16"))
    return out


def pp_problems(cfg: ModelConfig, pp: int, vpp: int) -> list[Problem]:
    """Pipeline stages hold equal numbers of layers (vpp chunks per rank, looped placement)."""
    if vpp > 1 and pp == 1:
        return [Problem(key="vpp_without_pp", message=f"vpp({vpp}) needs pp > 1")]
    if cfg.num_layers % (pp * vpp):
        return [Problem(key="pp_layers", message=f"pp({pp}) x vpp({vpp}) = {pp * vpp} does not "
                                                 f"divide layers({cfg.num_layers})")]
    return []


def schedule_problems(pp: int, vpp: int, schedule: str) -> list[Problem]:
    """Only the interleaved schedule runs virtual stages; it needs them."""
    if vpp > 1 and schedule != "interleaved":
        return [Problem(key="schedule", message=f"schedule({schedule}) has no virtual stages: "
                                                f"vpp({vpp}) needs the interleaved schedule")]
    if schedule == "interleaved" and vpp == 1:
        return [Problem(key="schedule", message="schedule(interleaved) needs vpp > 1")]
    return []


def sp_problems(tp: int, sp: bool, seq_len: int) -> list[Problem]:
    """Sequence parallelism (Korthikanti et al. 2022) splits the sequence over the tp group."""
    if sp and tp == 1:
        return [Problem(key="sp_without_tp", message="sequence parallel needs tp > 1")]
    if sp and seq_len % tp:
        return [Problem(key="sp_seq", message=f"tp({tp}) does not divide seq({seq_len}) under "
                                              "sequence parallel")]
    return []


def cp_problems(cp: int, seq_len: int) -> list[Problem]:
    """Context parallelism with causal load balancing (Llama 3, arXiv 2407.21783 §3.3.2;
    torchtitan) cuts each sequence into 2 x cp chunks and gives rank r chunks r and
    2cp - 1 - r, so every rank holds an equal share of the causal mask's work."""
    if cp > 1 and seq_len % (2 * cp):
        return [Problem(key="cp_seq", message=f"2 x cp({cp}) = {2 * cp} does not divide "
                                              f"seq({seq_len}): causal load balancing cuts "
                                              "each sequence into 2 x cp chunks")]
    return []


def ep_problems(cfg: ModelConfig, ep: int, dp: int) -> list[Problem]:
    """Expert parallelism is carved from data parallelism (Megatron-Core): ep divides dp and
    the experts of every MoE layer."""
    if ep == 1:
        return []
    if not cfg.is_moe:
        return [Problem(key="ep_divisibility",
                        message=f"ep({ep}) needs a mixture-of-experts model ({cfg.name} has "
                                "no experts)")]
    out = []
    if dp % ep:
        out.append(Problem(key="ep_divisibility",
                           message=f"ep({ep}) does not divide dp({dp}): expert parallelism is "
                                   "carved from data parallelism"))
    if cfg.num_experts % ep:
        out.append(Problem(key="ep_divisibility",
                           message=f"ep({ep}) does not divide experts({cfg.num_experts})"))
    return out


def zero_problems(dp: int, zero: int, optimizer: str = "adamw", tp: int = 1,
                  base_bits: int = 16) -> list[Problem]:
    """ZeRO shards over the data-parallel group; with dp = 1 there is nothing to shard.
    Adafactor's row and column moments need whole local matrices: llmplan's ZeRO-1 steps flat
    1/dp slices, and ``torch.optim.Adafactor`` does not run on the DTensor shards of FSDP
    (ZeRO-2/3) or tensor parallelism, so Adafactor runs with tp 1 and ZeRO 0 there."""
    if zero and dp == 1:
        return [Problem(key="zero_without_dp", message=f"zero({zero}) needs dp > 1")]
    if base_bits == 4 and zero >= 2 and dp > 1:
        return [_runtime("runtime_adapters", f"QLoRA's NF4 base with zero({zero}) (FSDP) is not "
                                             "trained: use zero 0 or 1")]
    if optimizer == "adafactor" and (zero or tp > 1):
        return [_runtime("runtime_sharded_adafactor",
                         f"adafactor with zero({zero}) and tp({tp}) is not run: it needs whole "
                         "matrices (zero 0, tp 1)")]
    return []


def batch_problems(*, pp: int, vpp: int, schedule: str, global_batch: int, dp: int, mbs: int,
                   rounds: int = 1) -> list[Problem]:
    """The global batch splits into dp x mbs x m; a pipeline flush runs m / rounds of them.
    Interleaving needs whole rounds of pp micro-batches (Megatron-LM); torch's 1F1B needs at
    least pp micro-batches per schedule call (``Schedule1F1B`` raises otherwise)."""
    if global_batch % (dp * mbs):
        return [Problem(key="batch_divisibility",
                        message=f"gbs({global_batch}) is not a multiple of mbs({mbs}) x dp({dp}) "
                                f"= {dp * mbs}")]
    m = global_batch // (dp * mbs)
    if pp > 1 and m % rounds:
        return [Problem(key="batch_divisibility", message=f"micro-batches({m}) do not split into "
                                                          f"pp_rounds({rounds})")]
    per_call = m // rounds if pp > 1 else m
    if vpp > 1 and per_call % pp:
        return [Problem(key="interleaved_microbatches",
                        message=f"interleaved schedule needs micro-batches({per_call}) to be a "
                                f"multiple of pp({pp})")]
    if pp > 1 and schedule == "1f1b" and per_call < pp:
        return [_runtime("runtime_pp_microbatches",
                         f"1f1b needs micro-batches({per_call}) >= pp({pp}) per flush")]
    return []


def micro_batches(*, global_batch: int, dp: int, mbs: int) -> int:
    """m, the micro-batches per step of each data-parallel rank; a ConfigError naming the
    numbers when the global batch does not split (no setup can be built from it)."""
    for label, value in (("gbs", global_batch), ("dp", dp), ("mbs", mbs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{label}({value}) must be a positive integer")
    found = batch_problems(pp=1, vpp=1, schedule="1f1b", global_batch=global_batch, dp=dp,
                           mbs=mbs)
    if found:
        raise ConfigError(found[0].message)
    return global_batch // (dp * mbs)


def problems(cfg: ModelConfig, setup: TrainSetup, par: Parallel, *,
             rounds: int = 1) -> list[Problem]:
    """Every problem of one layout, universal and runtime-only."""
    gbs = setup.micro_batch * setup.grad_accum * par.dp
    return [*model_problems(cfg), *setup_problems(setup, cfg),
            *method_layout_problems(setup, par.tp, par.pp, par.cp, par.ep),
            *tp_problems(cfg, par.tp), *fp8_problems(cfg, setup, par.tp),
            *pp_problems(cfg, par.pp, par.vpp),
            *schedule_problems(par.pp, par.vpp, par.schedule),
            *cp_problems(par.cp, setup.seq_len),
            *sp_problems(par.tp, par.sp, setup.seq_len // par.cp),
            *ep_problems(cfg, par.ep, par.dp),
            *zero_problems(par.shard_ranks, par.zero, setup.optimizer, par.tp, base_bits(setup)),
            *batch_problems(pp=par.pp, vpp=par.vpp, schedule=par.schedule, global_batch=gbs,
                            dp=par.dp, mbs=setup.micro_batch, rounds=rounds)]


def refusals(found: list[Problem], runtime: str) -> list[Problem]:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime({runtime!r}) is not one of {', '.join(RUNTIMES)}")
    return [p for p in found if p.applies(runtime)]


def check(cfg: ModelConfig, setup: TrainSetup, par: Parallel, *, runtime: str = "llmplan",
          rounds: int = 1) -> None:
    """Raise one ConfigError listing every problem that refuses this layout for ``runtime``."""
    refused = refusals(problems(cfg, setup, par, rounds=rounds), runtime)
    if refused:
        raise ConfigError("; ".join(p.message for p in refused))
