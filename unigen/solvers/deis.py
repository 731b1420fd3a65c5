r"""DEIS (Zhang & Chen 2023), the log-rho multistep variant.

In VE variables y = z/alpha and rho = sigma/alpha = e^{-lambda} the PF-ODE is dy/drho = eps_hat
(exact, no linear part). DEIS fits the Lagrange polynomial P of eps_hat in l = log rho through
the last k evaluated points and integrates it exactly:

    y_t = y_s + sum_j c_j eps_j,    c_j = int_{rho_s}^{rho_t} L_j(log rho) d rho = int L_j(l) e^l dl

The weights are integrals of a polynomial times e^l and are computed once per run by
32-point Gauss-Legendre quadrature (exact to float64 rounding for these smooth integrands).
Order 1 is DDIM. A grid that starts at alpha = 0 (pure noise, as flow matching's does) takes
its first step as DDIM in data form. Orders 2-3 run at reduced order during warm-up, and for fewer than 15
steps on the last steps (as DPM-Solver does). Integrating the Lagrange interpolant exactly
is the same as the Taylor form of the noise-prediction exponential integrator with
divided differences, so DEIS-k equals ``DPMSolver(k, solver_type="taylor")`` (k = 2, 3) up to
rounding: an identity between two independent derivations, tested to 1e-10.
"""

from __future__ import annotations

import math

import numpy as np

from .._utils import check_choice
from .base import Solver, affine, cached_plan

__all__ = ["DEIS"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)


def _lagrange_weights(nodes: list[float], l_s: float, l_t: float) -> list[float]:
    """c_j = int_{l_s}^{l_t} L_j(l) e^l dl for the Lagrange basis on ``nodes``."""
    half, mid = 0.5 * (l_t - l_s), 0.5 * (l_t + l_s)
    ls = mid + half * _NODES
    w = half * _WEIGHTS * np.exp(ls)
    out = []
    for j, lj in enumerate(nodes):
        basis = np.ones_like(ls)
        for m, lm in enumerate(nodes):
            if m != j:
                basis *= (ls - lm) / (lj - lm)
        out.append(float((w * basis).sum()))
    return out


class DEIS(Solver):
    """Diffusion exponential integrator sampler, log-rho Adams-Bashforth form, order 1-3."""

    requires = frozenset({"x0_eps"})

    def __init__(self, order: int = 2, lower_order_final: bool = True):
        check_choice("order", order, (1, 2, 3))
        self.order = order
        self.lower_order_final = bool(lower_order_final)

    def init(self, dyn, z, grid):
        return {"plans": self._plan(dyn, grid), "hist": [], "from_noise": grid.alpha[0] == 0.0}

    @cached_plan
    def _plan(self, dyn, grid):
        # A grid starting at alpha = 0 (rho = inf) starts with one DDIM step in data form,
        # z_1 = alpha_1 x0_hat + sigma_1 eps_hat; that infinite node never enters a polynomial.
        from_noise = grid.alpha[0] == 0.0
        logrho = [-v for v in grid.lam_dpm]
        plans = [[grid.alpha[1], grid.sigma[1]]] if from_noise else []
        for i in range(1 if from_noise else 0, grid.n):
            k = min(self.order, i if from_noise else i + 1)
            if self.lower_order_final and grid.n < 15:
                k = min(k, grid.n - i)
            nodes = [logrho[i - m] for m in range(k)]
            if k == 1 or math.isinf(logrho[i + 1]):
                c = [math.exp(logrho[i + 1]) - math.exp(logrho[i])]
            else:
                c = _lagrange_weights(nodes, logrho[i], logrho[i + 1])
            # z_t = alpha_t (z_s/alpha_s + sum_j c_j eps_j), as weights on z and the stored eps
            plans.append([grid.alpha[i + 1] / grid.alpha[i]] + [grid.alpha[i + 1] * cj for cj in c])
        it = iter(grid.tensors([v for p in plans for v in p]))
        return [[next(it) for _ in p] for p in plans]

    def step(self, dyn, z, i, grid, state, noise):
        a, *ws = state["plans"][i]
        hist = state["hist"]
        if i == 0 and state["from_noise"]:
            pred = dyn.predict(z, grid.t[0], grid.coefs(0))
            hist.append(pred.eps)
            return affine(pred.x0, a, [(ws[0], pred.eps)]), state
        hist.append(dyn.predict(z, grid.t[i], grid.coefs(i)).eps)
        del hist[:-3]
        return affine(z, a, [(w, hist[-1 - j]) for j, w in enumerate(ws)]), state
