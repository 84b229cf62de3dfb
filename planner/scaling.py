"""Compute-optimal budgets: Chinchilla fits, the 20 tokens/param rule, Kaplan for comparison.

The default fit is ``epoch``: Besiroglu, Erdil, Barnett and You 2024, "Chinchilla Scaling: A
replication attempt" (arXiv 2404.10102), Table 1, who refit Hoffmann et al.'s Approach 3 to
the data they reconstructed from its plots, and get E 1.8172, A 482.01, B 2085.43, alpha 0.3478,
beta 0.3658, so a = beta/(alpha+beta) = 0.513: about 20 tokens per parameter near Chinchilla's
scale (72 B parameters on 1.33 T tokens at Chinchilla's 5.76e23 FLOPs; Chinchilla itself is
70 B on 1.4 T, Hoffmann et al. Table 1 / §4.1), agreeing with Hoffmann et al.'s Approaches 1
and 2, and a loss model, so the loss at an over-trained (N, D) is priced too.

Hoffmann et al. 2022 (arXiv 2203.15556), Approach 3 (§3.3, eq. 2):
    L(N, D) = E + A / N^alpha + B / D^beta,   C = 6 N D.
Minimising L under the constraint (derived once with sympy, see ``planner.explain`` and
tests/unit/test_scaling.py) gives
    N*(C) = G (C/6)^a,  D*(C) = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta);  E does not move the optimum.
Fits:
``epoch``      the replication above (the default).
``approach1``  Hoffmann et al. Approach 1 (§3.1, training curves' envelope): Table 2 gives
               a = 0.50 (0.488-0.502), b = 0.50; Table 3 lists its N*, C and D* for 400 M to
               10 T parameters. ``N*(C) = k C^a`` with k = 0.09916, a = 0.4981, the
               least-squares line (log N on log C) through Table 3's nine rows, reproduces
               every row's N* within 0.3 % and D* within 0.7 %, but the 67 B row's (N* +1.2 %;
               its 1.5 T tokens disagree with its own 5.76e23 FLOPs by 5 %): 20-22 tokens
               per parameter from 400 M to 10 T. No loss model (loss is None).
``hoffmann``   Approach 3 as published (§3.3, the body's rounding: E 1.69, A 406.4, B 410.7,
               alpha 0.34, beta 0.28): a = 0.45, ~100 tokens/param at 1e24 FLOPs and 32 B at
               Chinchilla's own budget: the bias Besiroglu et al. (abstract) trace to that
               rounding and to an optimiser stopped before convergence.
``tokens20``   D = 20 N, so N = sqrt(C/120); no loss model.
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


@dataclass(frozen=True, kw_only=True, slots=True)
class PowerFit:
    """A fit of the optimum alone, N*(C) = k C^a (D* = C / (6 N*)), without a loss model
    (Hoffmann et al. Approach 1)."""

    name: str
    k: float
    a: float
    source: str

    def optimal_params(self, compute_flops: float) -> float:
        return self.k * compute_flops**self.a

    def compute_for_params(self, params: float) -> float:
        """The budget at which ``params`` is compute-optimal: invert N = k C^a."""
        return (params / self.k) ** (1 / self.a)


FITS = {
    "hoffmann": LossFit(name="hoffmann", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                        source="Hoffmann et al. 2022 (arXiv 2203.15556) §3.3 (Approach 3)"),
    "epoch": LossFit(name="epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                     source="Besiroglu et al. 2024 (arXiv 2404.10102), Table 1"),
}
POWER_FITS = {
    "approach1": PowerFit(name="approach1", k=0.09916, a=0.4981,
                          source="Hoffmann et al. 2022 (arXiv 2203.15556) §3.1 (Approach 1), "
                                 "Table 3 (least-squares line through its rows)"),
}
FIT_NAMES = ("epoch", "approach1", "hoffmann", "tokens20")
DEFAULT_FIT = "epoch"
COMPARED_FITS = ("epoch", "approach1", "hoffmann")
"""The fits shown side by side (``chinchilla``'s ``fits``)."""
FIT_LABELS = {"epoch": "Besiroglu et al. 2024 (Approach 3 refit)",
              "approach1": "Hoffmann et al. 2022 Approach 1 (Table 3)",
              "hoffmann": "Hoffmann et al. 2022 Approach 3 (as published)",
              "tokens20": "20 tokens per parameter"}
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


def _fit(name: str) -> LossFit | PowerFit | None:
    if name not in FIT_NAMES:
        raise ConfigError(f"fit({name!r}) is not one of {', '.join(FIT_NAMES)}")
    return FITS.get(name) or POWER_FITS.get(name)


def optimal_for_compute(compute_flops: float, fit: str = DEFAULT_FIT) -> Budget:
    """Compute-optimal (N, D) for a budget of ``compute_flops`` (C = 6ND)."""
    if not (compute_flops > 0 and math.isfinite(compute_flops)):
        raise ConfigError(f"compute({compute_flops}) must be positive and finite")
    law = _fit(fit)
    if law is None:
        params = math.sqrt(compute_flops / (6 * TOKENS_PER_PARAM))
        return Budget(fit=fit, params=params, tokens=TOKENS_PER_PARAM * params,
                      compute_flops=compute_flops, loss=None)
    params = law.optimal_params(compute_flops)
    tokens = compute_flops / (6 * params)
    return Budget(fit=fit, params=params, tokens=tokens, compute_flops=compute_flops,
                  loss=law.loss(params, tokens) if isinstance(law, LossFit) else None)


def optimal_for_params(params: float, fit: str = DEFAULT_FIT) -> Budget:
    """Compute-optimal tokens D*(N) for a model of ``params`` parameters (and the budget
    6 N D*(N) at which it is compute-optimal)."""
    if not (params > 0 and math.isfinite(params)):
        raise ConfigError(f"params({params}) must be positive and finite")
    law = _fit(fit)
    if law is None:
        tokens = TOKENS_PER_PARAM * params
        return Budget(fit=fit, params=params, tokens=tokens, compute_flops=6 * params * tokens,
                      loss=None)
    compute = law.compute_for_params(params)
    tokens = compute / (6 * params)  # N itself, not N*(C(N)) back through the power law
    return Budget(fit=fit, params=params, tokens=tokens, compute_flops=compute,
                  loss=law.loss(params, tokens) if isinstance(law, LossFit) else None)


def compute_for_cluster(*, gpus: int, peak_flops: float, days: float, mfu: float) -> float:
    """C = GPUs x dense peak x seconds x MFU."""
    if gpus < 1 or not days > 0 or not 0 < mfu <= 1:
        raise ConfigError(f"gpus({gpus}), days({days}) and mfu({mfu}) must be positive, mfu <= 1")
    return gpus * peak_flops * days * 86400 * mfu


@dataclass(frozen=True, kw_only=True, slots=True)
class Overtraining:
    """A planned (N, D) against the fit: ``ratio`` = D / D*(N), the planned tokens over the
    compute-optimal tokens for a model of this size (Llama-3-8B on 15 T tokens: ~90x), and
    the compute-optimal split of the same compute 6 N D (``optimal``: N*, D* at equal compute;
    ``ratio_at_equal_compute`` = D / D*(6ND)). ``loss`` and ``loss_cost`` (L(N, D) - L(N*, D*)
    at equal compute, nats/token) need a loss fit: None for approach1 and tokens20."""

    params: float
    tokens: float
    compute_flops: float
    optimal_for_size: Budget
    optimal: Budget
    ratio: float
    ratio_at_equal_compute: float
    tokens_per_param: float
    loss: float | None
    loss_cost: float | None

    def to_dict(self) -> dict[str, object]:
        return {"params": self.params, "tokens": self.tokens, "compute_flops": self.compute_flops,
                "optimal_tokens": self.optimal_for_size.tokens, "ratio": self.ratio,
                "ratio_at_equal_compute": self.ratio_at_equal_compute,
                "tokens_per_param": self.tokens_per_param, "loss": self.loss,
                "loss_cost": self.loss_cost, "optimal_for_size": self.optimal_for_size.to_dict(),
                "optimal": self.optimal.to_dict()}


def overtraining(params: float, tokens: float, fit: str = DEFAULT_FIT) -> Overtraining:
    """How far a planned (N, D) is from compute-optimal, e.g. Llama-3-8B on 15T tokens."""
    if not (tokens > 0 and math.isfinite(tokens)):
        raise ConfigError(f"tokens({tokens}) must be positive and finite")
    for_size = optimal_for_params(params, fit)
    compute = 6 * params * tokens
    best = optimal_for_compute(compute, fit)
    law = FITS.get(fit)
    loss = law.loss(params, tokens) if law is not None else None
    return Overtraining(params=params, tokens=tokens, compute_flops=compute,
                        optimal_for_size=for_size, optimal=best,
                        ratio=tokens / for_size.tokens, ratio_at_equal_compute=tokens / best.tokens,
                        tokens_per_param=tokens / params, loss=loss,
                        loss_cost=None if loss is None else loss - (best.loss or 0.0))


def kaplan_optimal_params(compute_flops: float) -> float:
    """Kaplan et al. 2020 eq. 6.1: N_opt = 1.3e9 * (C_min / PF-day)^0.73 (non-embedding)."""
    return 1.3e9 * (compute_flops / PF_DAY_FLOPS) ** 0.73
