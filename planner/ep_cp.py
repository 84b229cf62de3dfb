"""Expert and context parallelism: what each divides and what each adds, per rank.

Context parallelism (cp) cuts every sequence into 2 x cp chunks and gives rank r chunks r and
2cp - 1 - r (causal load balancing: Llama 3, arXiv 2407.21783 §3.3.2), so each rank runs
``s/cp`` tokens of every sequence through every layer. Every per-token tensor is the local
chunk's; attention needs every earlier key, so K and V blocks pass around the cp ring (Ring
Attention, Liu et al. 2023, arXiv 2310.01889): ``cp - 1`` steps per layer, each sending one
block of ``b (s/cp) g_r d`` keys and as many values to the next rank, overlapped with the
attention of the block in hand. Backward passes the blocks again with their gradients (two
blocks' worth more per step; Transformer Engine's and torch's ring backward).

Expert parallelism (ep, carved from dp as in Megatron-Core) gives each of ep ranks E/ep
routed experts of every MoE layer. A rank's tokens go to the ranks holding their k experts
by an all-to-all (GShard, Lepikhin et al. 2020 §2.3) and come back by a second one; backward
runs both again. Each all-to-all moves ``k b (s/cp) h`` activations per rank, ``(ep-1)/ep``
of them off the rank when routing is balanced (dropless, no capacity factor: on average
every rank receives as many tokens as it sends, so its experts' activations are those of k
experts over its own tokens, as without ep).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from planner.activations import ActivationTerms, kv_heads_per_rank
from planner.config import ModelConfig
from planner.step_time import all_to_all_s

if TYPE_CHECKING:
    from planner.setup import Parallel, TrainSetup
    from planner.states import States


def context_terms(terms: ActivationTerms, cfg: ModelConfig, *, local_seq: int, micro_batch: int,
                  act_bytes: int, tp: int, cp: int, runtime: bool) -> ActivationTerms:
    """One layer's saved tensors under context parallelism, from ``terms`` computed for the
    local ``s/cp`` tokens: eager attention's s² tensors become ``(s/cp) x s`` (the local
    queries against every key). llmplan's runtime (``runtime.context_parallel``) recomputes
    each ring step's scores in backward, as flash attention does, and keeps every K/V block
    it received (``2 (cp-1) b (s/cp) g_r d`` elements) and, per step, the block's output and
    the merged output in fp32 with their log-sum-exps (``cp x b (s/cp) a_r (2 x 4 d + 12)``
    bytes)."""
    if cp == 1:
        return terms
    B, sl, b, d = act_bytes, local_seq, micro_batch, cfg.head_dim
    a_r, g_r = cfg.num_heads // tp, kv_heads_per_rank(cfg, tp)
    sharded = terms.sharded
    if runtime:
        sharded += B * 2 * (cp - 1) * b * sl * g_r * d + cp * b * sl * a_r * (2 * 4 * d + 12)
    return replace(terms, quadratic=terms.quadratic * cp, sharded=sharded)


def kv_block_bytes(cfg: ModelConfig, *, local_seq: int, micro_batch: int, act_bytes: int,
                   tp: int) -> int:
    """One ring step's K and V blocks on one rank: ``2 b (s/cp) g_r d B``."""
    return 2 * micro_batch * local_seq * kv_heads_per_rank(cfg, tp) * cfg.head_dim * act_bytes


def ring_buffer_bytes(cfg: ModelConfig, *, local_seq: int, micro_batch: int, act_bytes: int,
                      tp: int, cp: int) -> int:
    """The blocks in flight while a layer's ring runs: the one sent and the one received."""
    if cp == 1:
        return 0
    return 2 * kv_block_bytes(cfg, local_seq=local_seq, micro_batch=micro_batch,
                              act_bytes=act_bytes, tp=tp)


def dispatch_bytes(cfg: ModelConfig, *, local_seq: int, micro_batch: int, act_bytes: int) -> int:
    """One all-to-all's activations on one rank: k copies of each local token, ``k b (s/cp) h B``."""
    return cfg.experts_per_token * micro_batch * local_seq * cfg.hidden_size * act_bytes


def all_to_all_buffer_bytes(cfg: ModelConfig, *, local_seq: int, micro_batch: int,
                            act_bytes: int, ep: int) -> int:
    """The all-to-all's send and receive buffers alive while a MoE layer dispatches."""
    if ep == 1:
        return 0
    return 2 * dispatch_bytes(cfg, local_seq=local_seq, micro_batch=micro_batch,
                              act_bytes=act_bytes)


def moe_all_to_alls(recompute: str) -> int:
    """All-to-alls per MoE layer per micro-batch: dispatch and combine forward, their
    gradients backward, and the forward's two again when full recompute re-runs the layer."""
    return 6 if recompute == "full" else 4


def ring_passes(recompute: str) -> int:
    """K/V block volumes per ring step: one forward, two backward (the blocks and their
    gradients), one more forward under full recompute."""
    return 4 if recompute == "full" else 3


def ring_time_s(*, cfg: ModelConfig, local_seq: int, micro_batch: int, act_bytes: int,
                recompute: str, call_s: float, tp: int, cp: int, layers: int,
                link: tuple[float, float], attention_s: float) -> tuple[float, float]:
    """(total, exposed) seconds of one micro-batch's K/V ring on a stage of ``layers``
    layers: ``ring_passes x (cp - 1)`` point-to-point steps per layer, one K/V block each
    over ``link`` (bytes/s, latency s), hidden behind the attention core's compute
    (``attention_s``, the micro-batch's) where that is longer; each send's call is not."""
    if cp == 1:
        return 0.0, 0.0
    bw, lat = link
    block = kv_block_bytes(cfg, local_seq=local_seq, micro_batch=micro_batch,
                           act_bytes=act_bytes, tp=tp)
    steps = layers * ring_passes(recompute) * (cp - 1)
    calls = steps * call_s
    total = steps * (lat + block / bw) + calls
    return total, max(0.0, total - calls - attention_s) + calls


def all_to_all_time_s(*, cfg: ModelConfig, local_seq: int, micro_batch: int, act_bytes: int,
                      recompute: str, call_s: float, ep: int, moe_layers: int,
                      link: tuple[float, float]) -> float:
    """Seconds of one micro-batch's all-to-alls on a stage with ``moe_layers`` MoE layers:
    ``moe_all_to_alls`` exchanges of :func:`dispatch_bytes` over ep ranks each, on the
    critical path (a token's experts wait for it)."""
    if ep == 1:
        return 0.0
    bw, lat = link
    nbytes = dispatch_bytes(cfg, local_seq=local_seq, micro_batch=micro_batch,
                            act_bytes=act_bytes)
    return moe_layers * moe_all_to_alls(recompute) * (all_to_all_s(nbytes, ep, bw, lat) + call_s)


def split_states(cfg: ModelConfig, setup: "TrainSetup", par: "Parallel", stage: int, *,
                 runtime: bool, params: int, experts: int, compute_bytes: int) -> "States":
    """A stage rank's model states as two pools, each sharded by ZeRO over the ranks holding
    it alike: the dense weights over dp x cp (``par.shard_ranks``), the ``experts`` routed
    expert parameters among ``params`` over dp x cp / ep (``par.expert_shard_ranks``); the
    runtime's recipe tensor by tensor, the frameworks' as flat buffers (``planner.states``).
    Adapters are planned without cp and ep (``planner.layout``)."""
    from planner import tensors as T
    from planner.states import States, model_state_bytes, runtime_states

    zero = par.zero
    if runtime:
        every = T.stage_tensors(cfg, par, stage, runtime=True)
        routed = T.stage_expert_tensors(cfg, par, stage)
        pools = [runtime_states(every - routed, optimizer=setup.optimizer, zero=zero,
                                dp=par.shard_ranks),
                 runtime_states(routed, optimizer=setup.optimizer, zero=zero,
                                dp=par.expert_shard_ranks)]
        w = sum(p.weights for p in pools)
        return States(params=params, weights=w, gradients=sum(p.gradients for p in pools),
                      optimizer=sum(p.optimizer for p in pools),
                      optimizer_temp=sum(p.optimizer_temp for p in pools),
                      frozen=w if setup.reference_copy else 0)
    factored = [0, 0]
    if setup.optimizer == "adafactor":
        every, routed = T.stage_tensors(cfg, par, stage), T.stage_expert_tensors(cfg, par, stage)
        factored = [sum(n * T.adafactor_elements(shape) for shape, n in pool.items())
                    for pool in (every - routed, routed)]
    pools = [(params - experts, par.shard_ranks, factored[0]),
             (experts, par.expert_shard_ranks, factored[1])]
    w, g, o = (sum(parts) for parts in zip(*(
        model_state_bytes(n, recipe=setup.recipe, optimizer=setup.optimizer, zero=zero,
                          dp=ranks, adafactor_elements=f) for n, ranks, f in pools)))
    reference = 0
    if setup.reference_copy:  # DPO's frozen reference, held as the policy's weights
        held = sum(-(-n // ranks) for n, ranks, _ in pools) if zero >= 3 else params
        reference = compute_bytes * held
    return States(params=params, weights=w, gradients=g, optimizer=o, frozen=reference)
