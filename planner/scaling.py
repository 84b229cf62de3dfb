"""Compute-optimal budgets: Chinchilla fits, the 20 tokens/param rule, Kaplan for comparison.

Hoffmann et al. 2022 (arXiv 2203.15556), Approach 3 (§3.3, eq. 2):
    L(N, D) = E + A / N^alpha + B / D^beta,   C = 6 N D.
Minimising L under the constraint (derived once with sympy, see ``planner.explain`` and
tests/unit/test_scaling.py) gives
    N*(C) = G (C/6)^a,  D*(C) = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta);  E does not move the optimum.
Fits: ``hoffmann`` (published rounding: E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28),
``epoch`` (Besiroglu et al. 2024, arXiv 2404.10102, Table 1: E 1.8172, A 482.01, B 2085.43,
alpha 0.3478, beta 0.3658), ``tokens20`` (D = 20 N, so N = sqrt(C/120); no loss model).
Kaplan et al. 2020 (arXiv 2001.08361, eq. 6.1 / Figure 14) scale N faster:
N = 1.3e9 (C / PF-day)^0.73, non-embedding parameters, a different learning-rate schedule
(the reason Chinchilla's answer differs, Hoffmann et al. §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.config import ConfigError

PF_DAY_FLOPS = 1e15 * 86400


@dataclass(frozen=True, kw_only=True, slots=True)
class LossFit:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        """L(N, D) = E + A/N^alpha + B/D^beta (nats per token)."""
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    def optimal_params(self, compute_flops: float) -> float:
        return self.G * (compute_flops / 6) ** self.a

    def compute_for_params(self, params: float) -> float:
        """The budget at which ``params`` is compute-optimal: invert N = G (C/6)^a."""
        return 6 * (params / self.G) ** (1 / self.a)


FITS = {
    "hoffmann": LossFit(name="hoffmann", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                        source="Hoffmann et al. 2022 (arXiv 2203.15556) §3.3 (Approach 3)"),
    "epoch": LossFit(name="epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                     source="Besiroglu et al. 2024 (arXiv 2404.10102), Table 1"),
}
FIT_NAMES = ("hoffmann", "epoch", "tokens20")
TOKENS_PER_PARAM = 20


@dataclass(frozen=True, kw_only=True, slots=True)
class Budget:
    fit: str
    params: float
    tokens: float
    compute_flops: float
    loss: float | None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def to_dict(self) -> dict[str, object]:
        return {"fit": self.fit, "params": self.params, "tokens": self.tokens,
                "compute_flops": self.compute_flops, "loss": self.loss,
                "tokens_per_param": self.tokens_per_param}


def _fit(name: str) -> LossFit | None:
    if name not in FIT_NAMES:
        raise ConfigError(f"fit({name!r}) is not one of {', '.join(FIT_NAMES)}")
    return FITS.get(name)


def optimal_for_compute(compute_flops: float, fit: str = "hoffmann") -> Budget:
    """Compute-optimal (N, D) for a budget of ``compute_flops`` (C = 6ND)."""
    if not compute_flops > 0:
        raise ConfigError(f"compute({compute_flops}) must be positive")
    law = _fit(fit)
    if law is None:
        params = math.sqrt(compute_flops / (6 * TOKENS_PER_PARAM))
        return Budget(fit=fit, params=params, tokens=TOKENS_PER_PARAM * params,
                      compute_flops=compute_flops, loss=None)
    params = law.optimal_params(compute_flops)
    tokens = compute_flops / (6 * params)
    return Budget(fit=fit, params=params, tokens=tokens, compute_flops=compute_flops,
                  loss=law.loss(params, tokens))


def optimal_for_params(params: float, fit: str = "hoffmann") -> Budget:
    """Compute-optimal tokens for a model of ``params`` parameters."""
    if not params > 0:
        raise ConfigError(f"params({params}) must be positive")
    law = _fit(fit)
    if law is None:
        tokens = TOKENS_PER_PARAM * params
        return Budget(fit=fit, params=params, tokens=tokens, compute_flops=6 * params * tokens,
                      loss=None)
    return optimal_for_compute(law.compute_for_params(params), fit)


def compute_for_cluster(*, gpus: int, peak_flops: float, days: float, mfu: float) -> float:
    """C = GPUs x dense peak x seconds x MFU."""
    if gpus < 1 or not days > 0 or not 0 < mfu <= 1:
        raise ConfigError(f"gpus({gpus}), days({days}) and mfu({mfu}) must be positive, mfu <= 1")
    return gpus * peak_flops * days * 86400 * mfu


@dataclass(frozen=True, kw_only=True, slots=True)
class Overtraining:
    """A chosen (N, D) against the compute-optimal split of the same compute."""

    params: float
    tokens: float
    compute_flops: float
    optimal: Budget
    ratio: float             # D / D*(C): > 1 means trained past compute-optimal for its budget
    tokens_per_param: float
    loss: float
    loss_cost: float         # L(N, D) - L(N*, D*) at equal compute (nats/token)

    def to_dict(self) -> dict[str, object]:
        return {"params": self.params, "tokens": self.tokens, "compute_flops": self.compute_flops,
                "ratio": self.ratio, "tokens_per_param": self.tokens_per_param,
                "loss": self.loss, "loss_cost": self.loss_cost, "optimal": self.optimal.to_dict()}


def overtraining(params: float, tokens: float, fit: str = "hoffmann") -> Overtraining:
    """How far (N, D) is from compute-optimal, e.g. Llama-3-8B on 15T tokens."""
    law = FITS.get(fit)
    if law is None:
        raise ConfigError(f"over-training needs a loss fit (hoffmann or epoch), not {fit!r}")
    compute = 6 * params * tokens
    best = optimal_for_compute(compute, fit)
    loss = law.loss(params, tokens)
    return Overtraining(params=params, tokens=tokens, compute_flops=compute, optimal=best,
                        ratio=tokens / best.tokens, tokens_per_param=tokens / params,
                        loss=loss, loss_cost=loss - (best.loss or 0.0))


def kaplan_optimal_params(compute_flops: float) -> float:
    """Kaplan et al. 2020 eq. 6.1: N_opt = 1.3e9 * (C_min / PF-day)^0.73 (non-embedding)."""
    return 1.3e9 * (compute_flops / PF_DAY_FLOPS) ** 0.73
