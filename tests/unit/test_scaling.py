"""Chinchilla closed forms against numeric minimisation and the sympy derivation."""

import math

import pytest

from planner.scaling import (FITS, compute_for_cluster, optimal_for_compute,
                             optimal_for_params, overtraining)


@pytest.mark.parametrize("fit", ["hoffmann", "epoch"])
@pytest.mark.parametrize("compute", [1e20, 5.76e23, 3.8e25])
def test_closed_form_equals_numeric_minimisation(fit, compute):
    from scipy.optimize import minimize_scalar

    law = FITS[fit]
    # Minimise L(N, C/(6N)) over log N numerically.
    res = minimize_scalar(lambda x: law.loss(math.exp(x), compute / (6 * math.exp(x))),
                          bounds=(math.log(1e6), math.log(1e15)), method="bounded",
                          options={"xatol": 1e-10})
    best = optimal_for_compute(compute, fit)
    assert best.params == pytest.approx(math.exp(res.x), rel=1e-4)
    assert best.tokens * best.params * 6 == pytest.approx(compute)


def test_closed_form_equals_sympy_derivation():
    from planner.explain import derive_chinchilla_optimum
    expr, (C, E, A, B, alpha, beta) = derive_chinchilla_optimum()
    for fit in ("hoffmann", "epoch"):
        law = FITS[fit]
        value = float(expr.subs({C: 1e24, E: law.E, A: law.A, B: law.B,
                                 alpha: law.alpha, beta: law.beta}))
        assert optimal_for_compute(1e24, fit).params == pytest.approx(value, rel=1e-12)


def test_tokens20_rule():
    b = optimal_for_compute(6 * 20 * 70e9 * 70e9, "tokens20")
    assert b.params == pytest.approx(70e9) and b.tokens == pytest.approx(1.4e12) and b.loss is None
    assert optimal_for_params(70e9, "tokens20").tokens == pytest.approx(1.4e12)


def test_epoch_fit_reproduces_chinchilla_at_its_own_budget():
    # Besiroglu et al. 2024: their re-fit is consistent with Chinchilla 70B on 1.4T tokens
    # at C = 5.76e23 (Hoffmann et al. Table 3 / §4.1), unlike the published rounding.
    b = optimal_for_compute(5.76e23, "epoch")
    assert 50e9 < b.params < 90e9
    assert 15 < b.tokens_per_param < 30


def test_params_round_trip_and_overtraining():
    for fit in ("hoffmann", "epoch"):
        assert optimal_for_params(8e9, fit).params == pytest.approx(8e9)
    # Llama-3-8B on 15T tokens (Llama 3 paper §1): far past compute-optimal.
    over = overtraining(8.03e9, 15e12, "hoffmann")
    assert over.ratio > 1 and over.loss_cost > 0
    assert over.tokens_per_param == pytest.approx(15e12 / 8.03e9)


def test_llama3_405b_compute_is_3_8e25():
    # Llama 3 paper (arXiv 2407.21783) §3.2.1: 3.8e25 FLOPs for 405B on 15.6T tokens.
    from planner.params import count_params
    from presets import load_model
    n = count_params(load_model("llama-3.1-405b")).total
    assert 6 * n * 15.6e12 == pytest.approx(3.8e25, rel=0.01)


def test_cluster_budget():
    c = compute_for_cluster(gpus=1000, peak_flops=1e15, days=1, mfu=0.5)
    assert c == 1000 * 1e15 * 86400 * 0.5
