"""Serving plans: the tensor-parallel size, replica count, weight and KV precision and batch
that meet a latency target on a set of GPUs, ranked by throughput.

For one replica of ``t`` GPUs serving ``b`` sequences of ``P`` prompt and ``O`` output tokens:

* Weights per GPU at ``w`` bits: linear weights at w bits with their quantisation constants
  (int8: a float32 scale and an int8 zero point per output row, torchao 0.18's
  ``Int8WeightOnlyConfig``; int4: a bf16 scale and zero per 128 inputs, its int4 weight-only
  layout), every other parameter (embeddings, tied heads, norms, biases) in bf16; split over t like the 16-bit weights (``planner.memory``).
* KV cache per GPU: ``kv_bytes_per_token x min(P + O, window) x b`` (``planner.kv``; each
  layer's own window, MLA's latent, recurrent layers' fixed state per sequence);
  ``max_concurrency`` is how many sequences fit beside the weights.
* Prefill (TTFT) is compute bound: ``prefill_flops(P) / t`` at the shape-dependent matmul
  efficiency of the cost model, or the weights' read time if longer, plus two all-reduces
  of ``P x h`` activations per layer over the t GPUs (Megatron-style TP).
* Decode (TPOT) is bound by memory: each step reads the weights once and the batch's cache
  at its mean context ``P + O/2``: ``bytes / HBM bandwidth`` is the roofline
  (``tpot_roofline_s``), divided by the achieved fraction of HBM bandwidth, or the step's
  FLOPs at the matmul efficiency of a ``b``-token GEMM if that is longer; plus two
  all-reduces of ``b x h`` per layer (latency bound).
* Continuous batching, steady state: a replica keeps b sequences decoding and prefills each
  newcomer between decode steps, so per b requests it spends ``O`` decode steps and ``b``
  prefills; a user sees ``tpot = decode step + b x prefill / O`` and
  ``ttft = prefill + one decode step`` (it waits for the step in flight). Throughput is
  ``b O / (O step + b prefill)`` tokens/s per replica.

A rate target (requests/s) is met when the replicas' request rate covers it; a concurrency
target sets b = ceil(C / replicas). Cost per million output tokens follows from an hourly
price per GPU when one is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig
from planner.cost import CostModel, allreduce_s, attention_efficiency, linear_efficiency
from planner.hardware import Hardware

WEIGHT_BITS = (16, 8, 4)
KV_DTYPES = ("bf16", "fp8", "int8")
INT4_GROUP = 128


def quantised_weight_bytes(cfg: ModelConfig, weight_bits: int) -> int:
    """All weights at ``weight_bits`` (the linears; everything else bf16), whole model."""
    from planner.lora import held_bytes, linear_modules
    from planner.params import count_params

    if weight_bits not in (*WEIGHT_BITS, 32):
        raise ConfigError(f"--weight-bits({weight_bits}) is not one of 16, 8, 4")
    if weight_bits in (16, 32):
        return weight_bits // 8 * count_params(cfg).total
    linears = [m for m in linear_modules(cfg) if not (m.part == "head" and cfg.tie_embeddings)]

    def weight_bytes(m) -> int:
        codes = m.in_features * m.out_features * weight_bits // 8
        if weight_bits == 8:  # a float32 scale and an int8 zero point per row (torchao Int8Tensor)
            return codes + 5 * m.out_features
        return codes + 4 * math.ceil(m.in_features / INT4_GROUP) * m.out_features

    _, qbytes, kept = held_bytes(cfg, linears, weight_bytes)
    return qbytes + 2 * kept


def weight_bytes_per_gpu(cfg: ModelConfig, *, weight_bits: int, tp: int) -> int:
    from planner.kv import weight_bytes_per_rank
    from planner.params import count_params

    per_rank_16 = weight_bytes_per_rank(cfg, weight_bits=16, tp=tp)
    if weight_bits in (16, 32):
        return per_rank_16 * weight_bits // 16
    share = per_rank_16 / (2 * count_params(cfg).total)  # the rank's fraction of the weights
    return math.ceil(quantised_weight_bytes(cfg, weight_bits) * share)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeJob:
    prompt_tokens: int
    output_tokens: int
    ttft_s: float = 0.0           # target (0: none)
    tpot_s: float = 0.0           # target (0: none)
    rate_qps: float = 0.0         # requests/s the GPUs must sustain (0: none)
    concurrency: int = 0          # sequences in flight (0: as many as fit)
    price_per_gpu_hour: float = 0.0

    def __post_init__(self) -> None:
        for label, value in (("prompt-tokens", self.prompt_tokens), ("output-tokens", self.output_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")
        for label, value in (("ttft", self.ttft_s), ("tpot", self.tpot_s), ("rate", self.rate_qps),
                             ("concurrency", self.concurrency), ("price", self.price_per_gpu_hour)):
            if isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{label}({value}) must be a non-negative finite number")
        if self.rate_qps and self.concurrency:
            raise ConfigError("give one of --rate or --concurrency, not both")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeCandidate:
    tp: int
    replicas: int
    weight_bits: int
    kv_dtype: str
    batch: int
    weights_bytes_per_gpu: int
    kv_bytes_per_gpu: int
    max_concurrency: int
    prefill_s: float
    decode_step_s: float
    tpot_roofline_s: float
    ttft_s: float
    tpot_s: float
    tokens_per_s: float           # output tokens/s, all replicas
    requests_per_s: float
    gpus: int
    cost_per_million_tokens: float | None
    misses: tuple[str, ...] = ()

    @property
    def meets(self) -> bool:
        return not self.misses

    def to_dict(self) -> dict[str, object]:
        return {"tp": self.tp, "replicas": self.replicas, "weight_bits": self.weight_bits,
                "kv_dtype": self.kv_dtype, "batch": self.batch,
                "weights_bytes_per_gpu": self.weights_bytes_per_gpu,
                "kv_bytes_per_gpu": self.kv_bytes_per_gpu, "max_concurrency": self.max_concurrency,
                "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "prefill_s": self.prefill_s,
                "decode_step_s": self.decode_step_s, "tpot_roofline_s": self.tpot_roofline_s,
                "tokens_per_s": self.tokens_per_s,
                "tokens_per_s_per_gpu": self.tokens_per_s / self.gpus,
                "requests_per_s": self.requests_per_s,
                "requests_per_s_per_gpu": self.requests_per_s / self.gpus,
                "cost_per_million_tokens": self.cost_per_million_tokens,
                "meets_targets": self.meets, "misses": list(self.misses)}


class ServeEstimator:
    """Prefill and decode times of one model on one accelerator (one replica of t GPUs);
    ``llmplan generate`` reports them next to what it measures."""

    def __init__(self, cfg: ModelConfig, hardware: Hardware, model: CostModel = CostModel(),
                 *, dtype: str = "bf16") -> None:
        self.cfg, self.hw, self.model = cfg, hardware, model
        self.peak = hardware.peak_flops(dtype)
        self.activation_bytes = 4 if dtype == "fp32" else 2
        self.hbm = hardware.hbm_bandwidth_gbps * 1e9
        self.link = (hardware.intra_node_bandwidth_gbps * 1e9 * model.link_efficiency,
                     hardware.intra_node_latency_us * 1e-6 * model.latency_scale)

    def matmul_efficiency(self, tokens: int, tp: int) -> float:
        return linear_efficiency(self.cfg, self.model, tokens, tp)

    def tp_s(self, tokens: int, tp: int) -> float:
        """Two all-reduces of ``tokens x h`` activations (bf16, or fp32 for an fp32 run) per
        layer, each also paying the fixed cost of a collective call."""
        if tp == 1:
            return 0.0
        bw, lat = self.link
        calls = 2 * self.cfg.num_layers
        return calls * (allreduce_s(tokens * self.cfg.hidden_size * self.activation_bytes, tp, bw, lat)
                        + self.model.collective_call_s)

    def weight_passes(self, rows: int) -> int:
        """How many times a GEMM of ``rows`` rows reads its weight matrix: once on a GPU
        (and for a blocked GEMM); ``ceil(rows / gemv_rows)`` under a CPU BLAS's small-row
        kernel, which streams the weights once per group of ``gemv_rows`` rows held in
        registers (``runtime.gemm_probe`` measures both constants)."""
        per_pass, limit = self.model.gemv_rows, self.model.gemv_rows_limit
        if not per_pass or rows >= limit:
            return 1
        return -(-rows // per_pass)

    def overhead_s(self) -> float:
        """Framework time of one forward (op dispatch per layer): what dominates a small
        model on a CPU host, calibrated by ``validate --serving``."""
        return self.cfg.num_layers * self.model.infer_layer_overhead_s

    def prefill_s(self, prompt: int, *, tp: int, weights_bytes: int, batch: int = 1) -> float:
        """``batch`` prompts of ``prompt`` tokens prefilled together: the linears at the shape
        rule's efficiency for all their tokens, the attention core at its own (as training's
        cost model splits them)."""
        from planner.flops import FlopConventions, forward_flops_per_token

        tokens = prompt * batch
        fwd = forward_flops_per_token(self.cfg, prompt, FlopConventions(causal=True))
        linears = (fwd.total - fwd.attention_core) / self.matmul_efficiency(tokens, tp)
        core = fwd.attention_core / attention_efficiency(self.cfg, self.model, prompt)
        compute = (linears + core) * tokens / tp / self.peak
        read = weights_bytes * self.weight_passes(tokens) / (self.hbm * self.model.hbm_efficiency)
        return max(compute, read) + self.tp_s(tokens, tp) + self.overhead_s()

    def decode_roofline_s(self, *, weights_bytes: int, kv_bytes: int) -> float:
        """Bytes one decode step moves over the HBM bandwidth: the bandwidth roofline."""
        return (weights_bytes + kv_bytes) / self.hbm

    def decode_step_s(self, batch: int, context: int, *, tp: int, weights_bytes: int,
                      kv_bytes: int) -> float:
        """One decode step of ``batch`` sequences at ``context`` tokens: the bytes it moves
        (the weights, as many times as :meth:`weight_passes` says, and the batch's cache)
        over the achieved bandwidth, or its FLOPs at the shape rule's efficiency when those
        take longer (a roofline), plus TP all-reduces and per-layer framework time."""
        from planner.flops import decode_flops_per_token

        memory = self.decode_roofline_s(weights_bytes=weights_bytes * self.weight_passes(batch),
                                        kv_bytes=kv_bytes) / self.model.hbm_efficiency
        compute = decode_flops_per_token(self.cfg, context) * batch / tp / (
            self.peak * self.matmul_efficiency(batch, tp))
        return max(memory, compute) + self.tp_s(batch, tp) + self.overhead_s()


def batches(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, and ``limit`` itself."""
    out, b = [], 1
    while b < limit:
        out.append(b)
        b *= 2
    return out + [limit] if limit >= 1 else []


@dataclass(frozen=True, kw_only=True)
class ServeResult:
    candidates: list[ServeCandidate]  # meeting the targets, best first
    closest: ServeCandidate | None    # when none meets them: the nearest miss
    evaluated: int
    refused: dict[str, str]           # tp -> why no candidate exists for it


def serve_plan(cfg: ModelConfig, hardware: Hardware, *, gpus: int, job: ServeJob,
               weight_bits: tuple[int, ...] = WEIGHT_BITS, kv_dtypes: tuple[str, ...] = ("bf16",),
               model: CostModel = CostModel(), usable_bytes: int | None = None) -> ServeResult:
    """Every TP x replica split of ``gpus``, weight and KV precision and batch, ranked by
    output tokens/s among those meeting ``job``'s targets."""
    from planner import layout
    from planner.kv import kv_bytes_per_sequence

    from planner.setup import MAX_RANKS

    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_RANKS:
        raise ConfigError(f"gpus({gpus}) must be a positive integer (at most {MAX_RANKS:,})")
    for bits in weight_bits:
        if bits not in WEIGHT_BITS:
            raise ConfigError(f"--weight-bits({bits}) is not one of 16, 8, 4")
    for kv in kv_dtypes:
        if kv not in KV_DTYPES:
            raise ConfigError(f"--kv-dtype({kv!r}) is not one of {', '.join(KV_DTYPES)}")
    est = ServeEstimator(cfg, hardware, model)
    usable = usable_bytes if usable_bytes is not None else int(
        hardware.memory_bytes * (1 - model.reserve_fraction) - model.reserve_gib * 2**30)
    P, O = job.prompt_tokens, job.output_tokens
    seq = P + O
    mean_context = P + O // 2
    found: list[ServeCandidate] = []
    refused: dict[str, str] = {}
    evaluated = 0
    for tp in [t for t in range(1, min(gpus, hardware.gpus_per_node) + 1) if gpus % t == 0]:
        problems = [p for p in layout.tp_problems(cfg, tp) if not p.runtime_only]
        if problems:
            refused[str(tp)] = problems[0].message
            continue
        replicas = gpus // tp
        for bits in weight_bits:
            w = weight_bytes_per_gpu(cfg, weight_bits=bits, tp=tp)
            for kv_dtype in kv_dtypes:
                per_seq = kv_bytes_per_sequence(cfg, seq, kv_dtype, tp)
                fit = max((usable - w) // per_seq, 0)
                if fit < 1:
                    refused.setdefault(str(tp), f"weights {w / 2**30:.1f} GiB/GPU at {bits} bits "
                                                f"leave no room for one sequence's cache")
                    continue
                wanted = [-(-job.concurrency // replicas)] if job.concurrency else batches(fit)
                for b in wanted:
                    evaluated += 1
                    kv_step = kv_bytes_per_sequence(cfg, mean_context, kv_dtype, tp) * b
                    prefill = est.prefill_s(P, tp=tp, weights_bytes=w)
                    step = est.decode_step_s(b, mean_context, tp=tp, weights_bytes=w, kv_bytes=kv_step)
                    cycle = O * step + b * prefill
                    tps = replicas * b * O / cycle
                    rps = replicas * b / cycle
                    ttft, tpot = prefill + step, cycle / O
                    misses = []
                    if b > fit:
                        misses.append(f"batch {b} needs {b} caches, {fit} fit")
                    if job.ttft_s and ttft > job.ttft_s:
                        misses.append(f"ttft {ttft * 1e3:,.0f} ms > {job.ttft_s * 1e3:,.0f} ms")
                    if job.tpot_s and tpot > job.tpot_s:
                        misses.append(f"tpot {tpot * 1e3:,.1f} ms > {job.tpot_s * 1e3:,.1f} ms")
                    if job.rate_qps and rps < job.rate_qps:
                        misses.append(f"{rps:,.2f} requests/s < {job.rate_qps:,.2f}")
                    cost = (job.price_per_gpu_hour * gpus / 3600 / tps * 1e6
                            if job.price_per_gpu_hour else None)
                    found.append(ServeCandidate(
                        tp=tp, replicas=replicas, weight_bits=bits, kv_dtype=kv_dtype, batch=b,
                        weights_bytes_per_gpu=w, kv_bytes_per_gpu=per_seq * b,
                        max_concurrency=fit * replicas,
                        prefill_s=prefill, decode_step_s=step,
                        tpot_roofline_s=est.decode_roofline_s(weights_bytes=w, kv_bytes=kv_step),
                        ttft_s=ttft, tpot_s=tpot, tokens_per_s=tps, requests_per_s=rps,
                        gpus=gpus, cost_per_million_tokens=cost, misses=tuple(misses)))
    meeting = sorted((c for c in found if c.meets), key=lambda c: -c.tokens_per_s)
    closest = None
    if not meeting and found:
        closest = min(found, key=lambda c: (len(c.misses), _shortfall(c, job)))
    return ServeResult(candidates=meeting, closest=closest, evaluated=evaluated, refused=refused)


def _shortfall(c: ServeCandidate, job: ServeJob) -> float:
    """How far a candidate is from the targets: the largest ratio of achieved to target."""
    ratios = [1.0]
    if job.ttft_s:
        ratios.append(c.ttft_s / job.ttft_s)
    if job.tpot_s:
        ratios.append(c.tpot_s / job.tpot_s)
    if job.rate_qps:
        ratios.append(job.rate_qps / max(c.requests_per_s, 1e-30))
    return max(ratios)
