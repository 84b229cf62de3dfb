"""Step-time model for a 3D-parallel layout: compute, bubble, exposed communication.

For one optimizer step with m micro-batches of b sequences per data-parallel rank:

    t_mb    = matmul time + elementwise time + TP communication   (one micro-batch, slowest stage)
    compute = m * t_mb
    bubble  = (p - 1) / v * t_mb            (1F1B / interleaved; Narayanan et al. 2021 §2.2)
    step    = compute + bubble + PP p2p + exposed DP/ZeRO communication + optimizer update

* Matmuls: HFU FLOPs of the slowest stage (its layers plus the LM head on the last stage)
  divided by t, at ``peak x efficiency(g)``, where g is the geometric mean of the per-rank GEMM
  dimensions (tokens, h, ffn/t) and ``efficiency(g) = e_max * g / (g + g_half)``: small GEMMs
  run far below peak (as the "maximum achievable matmul FLOPS" measured per GPU, Bekman's ML Engineering,
  compute/accelerator/benchmarks).
* The attention core (scores and weighted values) runs as batched GEMMs of (s x d) by
  (d x s): the same shape rule on g = (s d s)^(1/3), under its own ceiling
  (``attention_efficiency``; flash kernels and the softmax between reach less of peak).
* Elementwise work (norms, activations, softmax, dropout, residuals) is memory bound:
  ``traffic_factor x`` the layer's activation bytes moved at HBM bandwidth; fused kernels
  (Megatron, Transformer Engine, torch.compile) move fewer bytes than eager PyTorch's one
  kernel per op (``eager``: ``eager_elementwise_traffic``). llmplan's runtime in fp8 adds
  torchao's eager casts (``planner.fp8.runtime_cast_elements`` x ``EAGER_CAST_BYTES``).
* TP (Megatron): 2 all-reduces per layer forward, 2 backward, 2 more under full recompute, of
  ``s*b*h`` activations (SP replaces each by a reduce-scatter + all-gather of equal volume),
  plus the vocab-parallel embedding and cross-entropy.
* Every collective call also pays ``collective_call_s`` on the issuing rank, not overlapped
  (launch, DTensor redistribution, FSDP hooks; :func:`dp_calls` counts data parallelism's):
  negligible on accelerators with large messages, the dominant cost of a small model over
  gloo, and the reason SP's two calls cost more than one all-reduce there.
* DP: ZeRO 0-2 move ``2 (dp-1)/dp x gradient bytes`` once per step (all-reduce, or
  reduce-scatter + parameter all-gather), overlapped with the last micro-batch's backward;
  ZeRO-3 all-gathers parameters in every micro-batch's forward and backward and
  reduce-scatters once, overlapped with all compute (prefetch). Gradients travel in the
  recipe's gradient dtype (bf16 for ``mixed``, fp32 for the others), gathered weights in the
  compute dtype; llmplan's own ZeRO-1 all-reduces and then all-gathers the updated slices.
* PP: each of the ``m*v + p - 1`` pipeline ticks sends activations forward and gradients back,
  ``s*b*h/t`` bytes each (Megatron's scatter-gather, Narayanan et al. 2021 §4.1), as one
  batched exchange (one latency) on the critical path.
* Collectives follow the alpha-beta ring model: ``2(n-1) alpha + 2(n-1)/n x bytes / bw``
  for an all-reduce; the link is intra-node while the group fits in a node (ranks are laid
  out tp innermost, then dp, then pp), else the per-GPU inter-node bandwidth.
* CP (``planner.ep_cp``): each rank computes ``s/cp`` tokens of every sequence; each layer's
  ring passes ``cp - 1`` K/V blocks forward and again, with their gradients, backward
  (``ep_cp.ring_passes``), between ranks tp apart, hidden behind the attention core's
  compute where it is longer. ZeRO and data-parallel reductions span dp x cp ranks.
* EP (``planner.ep_cp``): four all-to-alls per MoE layer per micro-batch (six under full
  recompute) of ``k b (s/cp) h`` activations over ep ranks ``tp cp`` apart, on the critical
  path; expert gradients reduce over the dp x cp / ep ranks holding the same experts.
* The optimizer update is memory bound: it reads and writes its states once.
* Framework time: ``layer_overhead_s`` per layer per micro-batch (op dispatch, Python) and
  ``step_overhead_s`` per step. Tensor-parallel ranks dispatch their ops through DTensor
  (sharding propagation, redistribution): ``tp_layer_overhead_s`` more per layer, and
  ``sp_layer_overhead_s`` more again when SP shards the norms and residual stream too. FSDP
  (ZeRO >= 2 in llmplan's runtime) adds ``fsdp_step_overhead_s`` per step (its hooks'
  per-step set-up and the optimizer over sharded DTensor parameters). These dominate small
  models and CPU hosts, and vanish against large GEMMs.
* A CPU host with fewer cores than ranks time-shares them: the whole step stretches by
  ``ranks / host_cores``.

Every constant sits in :class:`CostModel` so ``llmplan calibrate`` can fit it to a machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ConfigError, ModelConfig

from planner.hardware import Hardware

from planner.setup import MAX_RANKS, Parallel, TrainSetup
from planner.flops import FlopConventions, flops_report
from planner.activations import layer_activation_bytes, layer_activation_terms
from planner.memory import Estimator
from planner import ep_cp, fp8
from planner.step_time import StepTime, allgather_s, allreduce_s
from planner.states import RECIPE_BYTES


@dataclass(frozen=True, kw_only=True, slots=True)
class CostModel:
    """Calibratable constants of the step-time and fit model (defaults are uncalibrated)."""

    matmul_efficiency: float = 0.75    # achievable fraction of dense peak for large GEMMs
    matmul_half_dim: float = 256.0     # geometric-mean GEMM dimension at half that efficiency
    attention_efficiency: float = 0.0  # ceiling for the attention core's batched GEMMs (0: matmul's)
    elementwise_traffic: float = 4.0   # x activation bytes moved per layer (fwd + bwd)
    eager_elementwise_traffic: float = 0.0  # the same for unfused (eager PyTorch) kernels (0: as fused)
    eager: bool = False                # element-wise ops run as separate eager kernels
    hbm_efficiency: float = 0.8        # achieved fraction of HBM bandwidth
    link_efficiency: float = 0.8       # achieved fraction of link bandwidth (NCCL bus bw)
    overlap_dp: bool = True            # DP/ZeRO traffic hides behind backward compute
    overlap_tp: bool = False           # TP collectives are on the critical path
    reserve_gib: float = 1.0           # CUDA context + framework, per GPU
    reserve_fraction: float = 0.05     # allocator fragmentation
    layer_overhead_s: float = 0.0      # per layer per micro-batch: op launches, framework code
    step_overhead_s: float = 0.0       # per optimizer step: data, bookkeeping, logging
    tp_layer_overhead_s: float = 0.0   # + per layer per micro-batch under TP (DTensor dispatch)
    sp_layer_overhead_s: float = 0.0   # + per layer per micro-batch under SP (sharded norms)
    fsdp_step_overhead_s: float = 0.0  # + per step under FSDP (hooks, DTensor optimizer)
    collective_call_s: float = 0.0     # fixed cost of each collective call on the issuing rank
    infer_layer_overhead_s: float = 0.0  # per layer per forward of generation (op dispatch)
    gemv_rows: int = 0                 # CPU BLAS: a few-row GEMM streams its weights once per this many rows (0: once)
    gemv_rows_limit: int = 0           # CPU BLAS: from this many rows a blocked GEMM reads them once
    host_cores: int = 0                # CPU hosts: ranks beyond this many cores time-share
    latency_scale: float = 1.0         # x the preset's per-step collective latencies

    def replace(self, **changes) -> "CostModel":
        import dataclasses
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True, slots=True)
class Cluster:
    """N accelerators of one preset; 0 means "take it from the hardware preset"."""

    hardware: Hardware
    gpus: int
    gpus_per_node: int = 0
    intra_node_bandwidth_gbps: float = 0.0
    inter_node_bandwidth_gbps: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 1:
            raise ConfigError(f"gpus({self.gpus}) must be a positive integer")
        if self.gpus > MAX_RANKS:
            raise ConfigError(f"gpus({self.gpus}) must be at most {MAX_RANKS:,}")
        for name, default in (("gpus_per_node", self.hardware.gpus_per_node),
                              ("intra_node_bandwidth_gbps", self.hardware.intra_node_bandwidth_gbps),
                              ("inter_node_bandwidth_gbps", self.hardware.inter_node_bandwidth_gbps)):
            if not getattr(self, name):
                object.__setattr__(self, name, default)
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ConfigError(f"gpus({self.gpus}) is not a whole number of nodes of "
                              f"{self.gpus_per_node}")

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)

    def usable_bytes(self, model: CostModel) -> int:
        return int(self.hardware.memory_bytes * (1 - model.reserve_fraction)
                   - model.reserve_gib * 2**30)


def cluster_of(hardware: Hardware, *, gpus: int, nodes: int = 0) -> Cluster:
    """The cluster of ``gpus`` accelerators on ``nodes`` nodes; ``nodes`` 0 takes the preset's
    GPUs per node (the one rule the CLI's ``plan`` and the TUI's plan screen share)."""
    if not isinstance(nodes, int) or nodes < 0:
        raise ConfigError(f"nodes({nodes}) must be a non-negative integer (0: from the preset)")
    if nodes and gpus % nodes:
        raise ConfigError(f"gpus({gpus}) is not divisible by nodes({nodes})")
    return Cluster(hardware=hardware, gpus=gpus, gpus_per_node=gpus // nodes if nodes else 0)


def gemm_efficiency(ceiling: float, half_dim: float, *dims: int) -> float:
    """The fraction of dense peak a GEMM of these dimensions reaches: ``ceiling x g / (g +
    half_dim)`` with g their geometric mean (small GEMMs fall far below peak; the ceiling is
    the chip's maximum achievable matmul FLOP/s over its peak where measured)."""
    g = 1.0
    for d in dims:
        g *= max(d, 1)
    g **= 1 / len(dims)
    return ceiling * g / (g + half_dim)


def linear_efficiency(cfg: ModelConfig, model: "CostModel", tokens: int, tp: int) -> float:
    """A layer's linears over ``tokens`` tokens on one of tp ranks: (tokens, h, f / tp)."""
    ffn = (cfg.moe_ffn_hidden_size if cfg.is_moe else cfg.ffn_hidden_size) // tp
    return gemm_efficiency(model.matmul_efficiency, model.matmul_half_dim, tokens,
                           cfg.hidden_size, ffn)


def attention_efficiency(cfg: ModelConfig, model: "CostModel", seq_len: int,
                         key_len: int = 0) -> float:
    """The attention core's efficiency: per head, the scores and the weighted values are GEMMs
    of (s x d) by (d x s) and (s x s) by (s x d), so the same shape rule applies to g = (s d
    s)^(1/3) (sequence length and head dim), under its own ceiling (flash kernels and softmax
    reach less of peak than large linears; the matmul ceiling when unset)."""
    ceiling = model.attention_efficiency or model.matmul_efficiency
    return gemm_efficiency(ceiling, model.matmul_half_dim, seq_len, cfg.head_dim,
                           key_len or seq_len)


DP_BUCKET_BYTES = 25 * 2**20  # replicated DP reduces gradients in buckets (DDP's default)


def dp_calls(zero: int, m: int, layers: int, grad_bytes: float) -> int:
    """Collective calls of data parallelism in one step on one rank.

    ZeRO-0/1 all-reduce the gradients once, in ``DP_BUCKET_BYTES`` buckets. FSDP (ZeRO-2/3)
    wraps each layer, plus the root module holding embedding and head, as a unit that
    all-gathers its parameters before every micro-batch's forward and reduce-scatters its
    gradients after every micro-batch's backward; ZeRO-3 frees them after forward, so it
    gathers a second time for backward (PyTorch FSDP2, as llmplan's runtime runs it)."""
    if zero >= 2:
        return m * (layers + 1) * (3 if zero >= 3 else 2)
    return max(1, -(-int(grad_bytes) // DP_BUCKET_BYTES))


class CostEstimator:
    """Step time of one model and setup on one cluster, fast across layouts (cached terms)."""

    def __init__(self, cfg: ModelConfig, setup: TrainSetup, cluster: Cluster,
                 model: CostModel = CostModel(), *, memory: Estimator | None = None) -> None:
        self.cfg, self.setup, self.cluster, self.model = cfg, setup, cluster, model
        self.memory = memory or Estimator(cfg, setup)
        hw = cluster.hardware
        self.peak = hw.peak_flops(setup.dtype)
        # fp8 runs the layers' linears at the fp8 peak, the attention core and the LM head
        # in bf16 (``planner.fp8``); MFU is reported against both peaks
        self.bf16_peak = hw.peak_flops("bf16") if setup.dtype == "fp8" else self.peak
        self.hbm = hw.hbm_bandwidth_gbps * 1e9 * model.hbm_efficiency
        self.intra = (cluster.intra_node_bandwidth_gbps * 1e9 * model.link_efficiency,
                      hw.intra_node_latency_us * 1e-6 * model.latency_scale)
        self.inter = (cluster.inter_node_bandwidth_gbps * 1e9 * model.link_efficiency,
                      hw.inter_node_latency_us * 1e-6 * model.latency_scale)
        conv = FlopConventions(causal=True)
        self.flops = {r: flops_report(cfg, setup.seq_len, conv, recompute=r,
                                      adapters=setup.adapters, objective=setup.objective)
                      for r in ("none", "selective", "full")}
        fwd = self.flops["none"].forward
        self.head_train_per_token = self.flops["none"].head_train_flops_per_token
        self.attention_fwd_per_token = fwd.attention_core
        self._elementwise: dict[tuple[int, bool, int], float] = {}

    def with_model(self, model: CostModel) -> "CostEstimator":
        """This estimator with other constants, keeping everything that does not depend on
        them (FLOP counts, memory terms): what a fit evaluates thousands of times."""
        import copy

        other = copy.copy(self)
        other.model = model
        hw, cluster = self.cluster.hardware, self.cluster
        other.hbm = hw.hbm_bandwidth_gbps * 1e9 * model.hbm_efficiency
        other.intra = (cluster.intra_node_bandwidth_gbps * 1e9 * model.link_efficiency,
                       hw.intra_node_latency_us * 1e-6 * model.latency_scale)
        other.inter = (cluster.inter_node_bandwidth_gbps * 1e9 * model.link_efficiency,
                       hw.inter_node_latency_us * 1e-6 * model.latency_scale)
        if (model.elementwise_traffic, model.eager_elementwise_traffic, model.eager) != (
                self.model.elementwise_traffic, self.model.eager_elementwise_traffic, self.model.eager):
            other._elementwise = {}
        return other

    def layout_step_time(self, par: Parallel) -> StepTime:
        """The step time of ``par`` with this setup's micro-batch, accumulation and recompute
        (the layout contract is the caller's: ``planner.layout``)."""
        s = self.setup
        params, experts = self.stage_params(tp=par.tp, pp=par.pp, vpp=par.vpp, ep=par.ep)
        return self.step_time(tp=par.tp, pp=par.pp, vpp=par.vpp, dp=par.dp, zero=par.zero,
                              sp=par.sp, recompute=s.recompute, mbs=s.micro_batch, m=s.grad_accum,
                              params_per_rank=params, cp=par.cp, ep=par.ep,
                              expert_params_per_rank=experts)

    def stage_params(self, *, tp: int, pp: int, vpp: int, ep: int = 1) -> tuple[int, int]:
        """(parameters, of them routed experts) of the most loaded stage's rank."""
        params = self.memory.stage_params(tp, pp, vpp, ep)
        stage = params.index(max(params))
        experts = self.memory.expert_params(tp, pp, vpp, ep, stage) if ep > 1 else 0
        return params[stage], experts

    def model_flops_per_token(self) -> float:
        return self.flops["none"].train_flops_per_token

    def efficiency(self, tokens: int, tp: int) -> float:
        return linear_efficiency(self.cfg, self.model, tokens, tp)

    def attention_efficiency(self, cp: int = 1) -> float:
        """Per ring step a rank's s/cp queries meet a block of s/cp keys."""
        local = self.setup.seq_len // cp
        return attention_efficiency(self.cfg, self.model, local, local)

    def link(self, group_span: int) -> tuple[float, float]:
        """(bytes/s, latency s) for a group whose ranks span ``group_span`` consecutive ranks."""
        return self.intra if group_span <= self.cluster.gpus_per_node else self.inter

    def elementwise_bytes_per_layer(self, tp: int, sp: bool, cp: int = 1) -> float:
        key = (tp, sp, cp)
        hit = self._elementwise.get(key)
        if hit is None:
            terms = layer_activation_terms(self.cfg, self.memory.local_unit(cp), tp,
                                           moe=self.cfg.is_moe)
            m = self.model
            traffic = (m.eager_elementwise_traffic or m.elementwise_traffic) if m.eager else m.elementwise_traffic
            hit = traffic * layer_activation_bytes(terms, tp=tp, sp=sp, recompute="none")
            self._elementwise[key] = hit
        return hit

    def step_time(self, *, tp: int, pp: int, vpp: int, dp: int, zero: int, sp: bool,
                  recompute: str, mbs: int, m: int, params_per_rank: int, cp: int = 1,
                  ep: int = 1, expert_params_per_rank: int = 0) -> StepTime:
        """One step of this layout (module docstring). ``params_per_rank`` of the most
        loaded stage, ``expert_params_per_rank`` of them the routed experts (with ep > 1)."""
        cfg, setup, model = self.cfg, self.setup, self.model
        s = setup.seq_len // cp  # a context-parallel rank's tokens of each sequence
        mbs *= setup.sequences_per_example  # a DPO example: chosen and rejected
        tokens_mb = s * mbs
        # what the step trains, reduces and updates: every parameter, or the adapters over
        # a frozen base (gathered as held under ZeRO-3)
        adapters = self.memory.adapters
        trained = params_per_rank if adapters is None else adapters.trainable
        rep = self.flops[recompute]
        layers_hfu = rep.hardware_flops_per_token - self.head_train_per_token
        # the attention core: 3 passes (forward, input and weight-side gradients of the two
        # batched GEMMs), a 4th when recompute redoes it (full and selective both do)
        attn_hfu = (4 if recompute != "none" else 3) * self.attention_fwd_per_token
        efficiency = self.efficiency(tokens_mb, tp)
        matmul_s = ((layers_hfu - attn_hfu) / pp * tokens_mb / tp / (self.peak * efficiency)
                    + self.head_train_per_token * tokens_mb / tp / (self.bf16_peak * efficiency))
        attention_s = attn_hfu / pp * tokens_mb / tp / (self.bf16_peak
                                                        * self.attention_efficiency(cp))
        layers = cfg.num_layers // pp
        passes = 1.5 if recompute == "full" else 1.0  # elementwise work redone by recompute
        memory_s = layers * passes * self.elementwise_bytes_per_layer(tp, sp, cp) * mbs / self.hbm
        if adapters is not None:  # a quantised base is dequantised in every pass
            memory_s += adapters.dequantise_traffic_bytes / self.hbm
        if setup.dtype == "fp8" and self.memory.runtime:  # torchao's casts, kernel by kernel
            memory_s += layers * fp8.EAGER_CAST_BYTES * fp8.runtime_cast_elements(
                cfg, tp, moe=cfg.is_moe, ep=ep, tokens=tokens_mb, recompute=recompute) / self.hbm
        # framework time per layer, and DTensor's dispatch on top of it under TP
        per_layer_s = model.layer_overhead_s
        if tp > 1:
            per_layer_s += model.tp_layer_overhead_s + (model.sp_layer_overhead_s if sp else 0.0)
        overhead_s = layers * passes * per_layer_s
        elementwise_s = memory_s + overhead_s
        gemm_s = matmul_s + attention_s

        tp_s = 0.0
        if tp > 1:
            bw, lat = self.link(tp)
            act_bytes = tokens_mb * cfg.hidden_size * setup.activation_bytes
            all_reduces = 6 if recompute == "full" else 4
            per_layer = all_reduces * allreduce_s(act_bytes, tp, bw, lat)
            # SP splits each all-reduce into a reduce-scatter and an all-gather: two calls
            per_layer += all_reduces * (2 if sp else 1) * model.collective_call_s
            # vocab-parallel cross-entropy (max, sum of exponentials, target logit) and the
            # head's input gradient on the last stage, the embedding's output on the first
            vocab_calls = 4 + (1 if pp == 1 else 0)
            tp_s = layers * per_layer + vocab_calls * model.collective_call_s
        tp_raw = tp_s
        if model.overlap_tp:
            tp_s = max(0.0, tp_s - gemm_s / 3)
        local = dict(cfg=cfg, local_seq=s, micro_batch=mbs, act_bytes=setup.activation_bytes,
                     recompute=recompute, call_s=model.collective_call_s)
        cp_raw, cp_s = ep_cp.ring_time_s(**local, tp=tp, cp=cp, layers=layers,
                                         link=self.link(tp * cp), attention_s=attention_s)
        ep_s = ep_cp.all_to_all_time_s(**local, ep=ep, moe_layers=-(-cfg.num_moe_layers // pp),
                                       link=self.link(tp * cp * ep))
        t_mb = gemm_s + elementwise_s + tp_s + cp_s + ep_s
        compute = m * (gemm_s + elementwise_s)
        tp_total = m * tp_s
        bubble = (pp - 1) / vpp * t_mb

        pp_s = 0.0
        if pp > 1:
            bw, lat = self.link(tp * cp * dp * 2)  # neighbouring stages: tp*cp*dp ranks apart
            p2p_bytes = tokens_mb * cfg.hidden_size * setup.activation_bytes / tp
            # per tick: activations forward and gradients back, one call each
            pp_s = (m * vpp + pp - 1) * (lat + 2 * p2p_bytes / bw + 2 * model.collective_call_s)

        dp_s = dp_raw = 0.0
        replicas = dp * cp  # ranks holding the same dense weights
        # (parameters, ranks holding them alike): one pool, or dense and routed experts
        pools = [(trained, replicas)] if ep == 1 else [
            (trained - expert_params_per_rank, replicas), (expert_params_per_rank, replicas // ep)]
        if replicas > 1:
            bw, lat = self.link(tp * replicas)
            grad_bytes = trained * RECIPE_BYTES[setup.recipe][1]
            for n_params, n in pools:
                # gradients travel in the recipe's gradient dtype, gathered weights in the
                # compute dtype
                pool_grads = n_params * RECIPE_BYTES[setup.recipe][1]
                weight_bytes = n_params * self.memory.compute_w_bytes if adapters is None \
                    else adapters.base_bytes + trained * self.memory.compute_w_bytes
                if zero >= 3:
                    dp_s += 2 * m * allgather_s(weight_bytes, n, bw, lat) \
                        + allgather_s(pool_grads, n, bw, lat)
                else:
                    dp_s += allreduce_s(pool_grads, n, bw, lat)
                    if zero == 1 and setup.recipe == "runtime":
                        # llmplan's ZeRO-1 all-reduces the gradients, then all-gathers the
                        # updated fp32 slices (runtime.zero1): 1.5x a reduce-scatter + gather
                        dp_s += allgather_s(n_params * RECIPE_BYTES["runtime"][0], n, bw, lat)
            if zero >= 3:
                hidden = compute if model.overlap_dp else 0.0
            else:
                hidden = (2 / 3) * (gemm_s + elementwise_s) if model.overlap_dp else 0.0
            calls = len(pools) * dp_calls(zero, m, layers, grad_bytes)
            dp_raw = dp_s + calls * model.collective_call_s
            dp_s = max(0.0, dp_s - hidden) + calls * model.collective_call_s

        # AdamW-style update: read + write master, states and weights, read grads, once.
        opt_params = sum(-(-n_params // n) for n_params, n in pools) if zero >= 1 else trained
        fsdp = replicas > 1 and zero >= 2
        other_s = model.step_overhead_s + (model.fsdp_step_overhead_s if fsdp else 0.0)
        optimizer_s = 2 * 16 * opt_params / self.hbm + other_s
        # ranks on one CPU host beyond its cores time-share them: every part of the step
        # stretches (accelerators run one rank each: host terms never apply to them)
        cpu = self.cluster.hardware.kind == "cpu"
        share = max(1.0, self.cluster.gpus / model.host_cores) if cpu and model.host_cores else 1.0
        return StepTime(compute_s=share * compute, bubble_s=share * bubble,
                        tp_comm_s=share * tp_total, dp_comm_s=share * dp_s,
                        pp_comm_s=share * pp_s, optimizer_s=share * optimizer_s,
                        cp_comm_s=share * m * cp_s, ep_comm_s=share * m * ep_s,
                        cp_comm_total_s=share * m * cp_raw, ep_comm_total_s=share * m * ep_s,
                        matmul_s=share * m * matmul_s, attention_s=share * m * attention_s,
                        elementwise_s=share * m * memory_s, overhead_s=share * m * overhead_s,
                        tp_comm_total_s=share * m * tp_raw, dp_comm_total_s=share * dp_raw,
                        pp_comm_total_s=share * pp_s, other_s=share * other_s)
