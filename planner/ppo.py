"""RLHF with PPO (Ouyang et al. 2022, arXiv 2203.02155 §3.5; the four-model layout of
DeepSpeed-Chat and OpenRLHF): per-GPU memory of each phase and FLOPs per step, the four
models co-located on the same GPUs over one dp x ZeRO layout.

Models: the actor (the policy: trained fully, or its adapters), the critic (the policy's
architecture with its LM head replaced by a value head h -> 1, trained fully), the frozen
reference (a copy of the policy; with adapters, the base with its adapters off, so nothing
more) and the frozen reward model (the critic's architecture), both in the compute dtype,
sharded over dp under ZeRO-3 like the trained ones.

Co-located, each phase of a step holds every model's resident states (weights, optimizer
states; nothing is offloaded between phases); split into groups (``--actor-gpus`` ...), each
group holds its own model only, the actor's group generating and training it:

* generation: the actor decodes ``response`` tokens after ``prompt`` for ``rollout``
  sequences per GPU: its KV cache for ``prompt + response`` tokens each (16-bit);
* actor training: the actor's own step timeline (``planner.memory``) over ``prompt +
  response`` tokens;
* critic training: the critic's gradients and the saved activations of the same layers (its
  per-token output is a scalar, so the actor's logits tail is left out).

FLOPs per step: the rollout (prefill of the prompt and every decoded token at its context),
the forward of reference, reward and critic over the rollout, and the actor's and critic's
training (3 x forward each).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.config import ConfigError, ModelConfig
from planner.setup import Parallel, TrainSetup


@dataclass(frozen=True, kw_only=True, slots=True)
class PPOShape:
    prompt_tokens: int
    response_tokens: int
    rollout: int
    """Sequences generated per GPU per step (the training micro-batch is the setup's)."""

    def __post_init__(self) -> None:
        for label, value in (("--prompt-tokens", self.prompt_tokens),
                             ("--response-tokens", self.response_tokens),
                             ("--rollout", self.rollout)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label}({value}) must be a positive integer")

    @property
    def seq_len(self) -> int:
        return self.prompt_tokens + self.response_tokens


def critic_params(cfg: ModelConfig) -> int:
    """The policy's parameters with the LM head (V x h, unless tied to the embedding)
    replaced by a value head of h weights."""
    from planner.params import count_params

    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size
    return count_params(cfg).total - head + cfg.hidden_size


@dataclass(frozen=True, kw_only=True, slots=True)
class PPOReport:
    phases_bytes: dict[str, int]
    parts_bytes: dict[str, int]
    flops_per_step: dict[str, float]

    @property
    def peak_bytes(self) -> int:
        return max(self.phases_bytes.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases_bytes, key=self.phases_bytes.get)

    def to_dict(self) -> dict[str, object]:
        return {"phases_bytes": dict(self.phases_bytes), "parts_bytes": dict(self.parts_bytes),
                "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase,
                "flops_per_step": dict(self.flops_per_step),
                "total_flops_per_step": sum(self.flops_per_step.values())}


@dataclass(frozen=True, kw_only=True, slots=True)
class PPOGroups:
    """GPUs of each model when they are split into groups (OpenRLHF's placement), each
    group its own data-parallel set under the layout's ZeRO stage."""

    actor: int
    critic: int
    reference: int
    reward: int

    def __post_init__(self) -> None:
        for label, value in self.sizes().items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{label}-gpus({value}) must be a positive integer")

    def sizes(self) -> dict[str, int]:
        return {"actor": self.actor, "critic": self.critic, "reference": self.reference,
                "reward": self.reward}

    @property
    def total(self) -> int:
        return sum(self.sizes().values())


def ppo_report(cfg: ModelConfig, setup: TrainSetup, par: Parallel, shape: PPOShape,
               groups: PPOGroups | None = None) -> PPOReport:
    """Per-GPU bytes of each phase and FLOPs per step (module docstring) for ``cfg`` as
    actor, critic, reference and reward: co-located over layout ``par`` (dp x ZeRO), or on
    their own ``groups`` of GPUs (which together are the layout's dp); ``rollout`` is the
    sequences each GPU generating them holds."""
    from planner import layout
    from planner.flops import FlopConventions, decode_flops_sum, flops_report, \
        prefill_flops

    train = replace(setup, seq_len=shape.seq_len)
    layout.check(cfg, train, par, runtime="any")
    if groups is not None and groups.total != par.dp:
        sizes = " + ".join(f"{k}({v})" for k, v in groups.sizes().items())
        raise ConfigError(f"{sizes} = {groups.total} GPUs, not dp({par.dp})")
    if groups is None:
        t = _terms(cfg, train, par.dp, par.zero, shape, par.schedule)
        others = t["critic_resident"] + t["reference"] + t["reward"]
        parts = {k: t[k] for k in PARTS}
        phases = {"generation": t["actor_resident"] + others + t["kv_cache"],
                  "actor_training": t["actor_peak"] + others,
                  "critic_training": t["actor_resident"] + others + t["critic_gradients"]
                  + t["critic_activations"]}
        generating = par.dp
    else:
        per = {name: _terms(cfg, train, n, par.zero if n > 1 else 0, shape, par.schedule)
               for name, n in groups.sizes().items()}
        a, c = per["actor"], per["critic"]
        parts = {"actor_states": a["actor_states"], "critic_states": c["critic_states"],
                 "reference_weights": per["reference"]["reference"],
                 "reward_weights": per["reward"]["reward"], "kv_cache": a["kv_cache"],
                 "actor_activations": a["actor_activations"],
                 "critic_activations": c["critic_activations"]}
        phases = {"generation": a["actor_resident"] + a["kv_cache"],
                  "actor_training": a["actor_peak"],
                  "critic_training": c["critic_resident"] + c["critic_gradients"]
                  + c["critic_activations"],
                  "reference_forward": per["reference"]["reference"],
                  "reward_forward": per["reward"]["reward"]}
        generating = groups.actor
    conv = FlopConventions(causal=True)
    rep = flops_report(cfg, shape.seq_len, conv, recompute=train.recompute,
                       adapters=setup.adapters)
    fwd = rep.forward.total
    critic_fwd = fwd - rep.forward.lm_head + 2 * cfg.hidden_size
    sequences = shape.rollout * generating
    tokens = sequences * shape.seq_len
    generation = sequences * (prefill_flops(cfg, shape.prompt_tokens)
                              + decode_flops_sum(cfg, shape.prompt_tokens,
                                                 shape.response_tokens - 1))
    flops = {"generation": float(generation),
             "reference_forward": float(fwd * tokens),
             "reward_forward": float(critic_fwd * tokens),
             "critic_forward": float(critic_fwd * tokens),
             "actor_training": float(rep.train_flops_per_token * tokens),
             "critic_training": float(3 * critic_fwd * tokens)}
    return PPOReport(phases_bytes=phases, parts_bytes=parts, flops_per_step=flops)


PARTS = ("actor_states", "critic_states", "reference_weights", "reward_weights", "kv_cache",
         "actor_activations", "critic_activations")


def _terms(cfg: ModelConfig, train: TrainSetup, dp: int, zero: int, shape: PPOShape,
           schedule: str) -> dict[str, int]:
    """Each model's bytes on one GPU of a dp group of ``dp`` under ZeRO ``zero``."""
    from planner.activations import ceil_div
    from planner.kv import kv_bytes_per_token
    from planner.memory import Estimator
    from planner.params import count_params
    from planner.states import model_state_bytes

    est = Estimator(cfg, train)
    kw = dict(tp=1, pp=1, vpp=1, dp=dp, zero=zero, sp=False, recompute=train.recompute,
              mbs=train.micro_batch, m=train.grad_accum, schedule=schedule, stage=0)
    actor, step = est.stage_memory(**kw), est.step_bytes(**kw)
    c = est.compute_w_bytes
    shard = dp if zero >= 3 else 1
    critic_n = critic_params(cfg)
    cw, cg, co = model_state_bytes(critic_n, recipe=train.recipe, optimizer=train.optimizer,
                                   zero=zero, dp=dp)
    resident = actor.weights_bytes + actor.frozen_base_bytes + actor.optimizer_bytes
    reference = 0 if train.adapters is not None else c * ceil_div(count_params(cfg).total, shard)
    return {"actor_resident": resident, "actor_peak": actor.total_bytes,
            "actor_states": resident + actor.gradients_bytes,
            "critic_resident": cw + co, "critic_gradients": cg, "critic_states": cw + cg + co,
            "reference": reference, "reference_weights": reference,
            "reward": c * ceil_div(critic_n, shard), "reward_weights": c * ceil_div(critic_n, shard),
            "kv_cache": shape.rollout * shape.seq_len * kv_bytes_per_token(cfg, "bf16"),
            "actor_activations": actor.activations_bytes,
            "critic_activations": actor.activations_bytes - step.tail}
