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
from .base import ProgramSolver, check_lower_order_final, multistep_order
from .program import H, Q, Stage, Step, Z

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


class DEIS(ProgramSolver):
    """Diffusion exponential integrator sampler, log-rho Adams-Bashforth form, order 1-3."""

    requires = frozenset({"x0_eps"})

    def __init__(self, order: int = 2, lower_order_final: bool = True):
        check_choice("order", order, (1, 2, 3))
        self.order = order
        self.lower_order_final = check_lower_order_final(lower_order_final)

    @classmethod
    def variants(cls):
        return [cls(k) for k in (1, 2, 3)]

    def label(self):
        return f"DEIS({self.order})"

    def step_program(self, grid, i, pre):
        """y_t = y_s + sum_j c_j eps_j with y = z/alpha, i.e. z_t = (alpha_t/alpha_s) z_s + alpha_t sum_j c_j eps_j."""
        eps = [Q(0, "eps"), H(0), H(1)]
        here = Stage(grid.node(i), Z)
        if grid.alpha[i] == 0.0:
            # out of pure noise (rho = inf): one DDIM step in data form; that node never enters a polynomial
            return Step((here,), grid.alpha[i + 1] * Q(0, "x0") + grid.sigma[i + 1] * Q(0, "eps"), store=(eps[0],))
        logrho = [-v for v in grid.lam_dpm]
        k = multistep_order(grid, i, self.order, self.lower_order_final)
        if k == 1 or math.isinf(logrho[i + 1]):
            c = [math.exp(logrho[i + 1]) - math.exp(logrho[i])]
        else:
            c = _lagrange_weights([logrho[i - m] for m in range(k)], logrho[i], logrho[i + 1])
        a_t = grid.alpha[i + 1]
        update = (a_t / grid.alpha[i]) * Z
        for cj, e in zip(c, eps):
            update = update + a_t * cj * e
        return Step((here,), update, store=(eps[0],))
