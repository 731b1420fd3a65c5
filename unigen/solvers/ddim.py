r"""DDIM (Song et al. 2021a) and DDPM ancestral sampling (Ho et al. 2020) on any process.

Both are steps of the posterior  q(z_s | z_t, x = x0_hat),  s < t, written for a general
Gaussian path (docs/theory.md, section 6, stochastic DDIM and DDPM) with alpha_{t|s} = alpha_t/alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:

    DDIM(eta):  z_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi,
                c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2
    DDPM:       z_s = (alpha_{t|s} sigma_s^2/sigma_t^2) z_t + (alpha_s sigma_{t|s}^2/sigma_t^2) x0_hat + std xi,
                std^2 = sigma_{t|s}^2 sigma_s^2/sigma_t^2 ("small", beta-tilde) or sigma_{t|s}^2 ("large", beta)

DDIM(eta=0) is the first-order exponential integrator (= DPM-Solver-1 = Euler in the
sigma clock); it sees the schedule only through log-SNR at the grid points, so it is
invariant to rescaling (alpha, sigma) -> c (alpha, sigma) and to time reparametrization.
DDPM with "small" variance equals DDIM(eta=1) step for step.
"""

from __future__ import annotations

import math

from .._utils import check_choice
from .base import ProgramSolver
from .program import XI, Q, Stage, Step, Z

__all__ = ["DDIM", "DDPM"]


def _posterior(grid, i):
    """alpha_{t|s}, sigma_{t|s}^2 for t = t_i, s = t_{i+1}."""
    a_t, s_t, a_s, s_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    a_ts = a_t / a_s
    return a_ts, max(s_t * s_t - a_ts * a_ts * s_s * s_s, 0.0)


class DDIM(ProgramSolver):
    """Denoising diffusion implicit model step; ``eta`` interpolates ODE (0) and ancestral (1)."""

    order = 1
    requires = frozenset({"x0_eps"})

    def __init__(self, eta: float = 0.0):
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0 or math.isinf(eta):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    @classmethod
    def variants(cls):
        return [cls(), cls(eta=1.0)]

    def step_program(self, grid, i, pre):
        _, var_ts = _posterior(grid, i)
        s_t, a_s, s_s = grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        c2 = self.eta**2 * var_ts * s_s * s_s / (s_t * s_t)
        c2 = min(c2, s_s * s_s)  # eta > 1: clip as k-diffusion does (sigma_up <= sigma_next)
        x0, eps = Q(0, "x0"), Q(0, "eps")
        update = a_s * x0 + math.sqrt(s_s * s_s - c2) * eps + math.sqrt(c2) * XI(0)
        return Step((Stage(grid.node(i), Z),), update)


class DDPM(ProgramSolver):
    """Ancestral sampling from p(z_s | z_t) = q(z_s | z_t, x0_hat) (Ho et al. 2020, eq. 11)."""

    order = 1
    stochastic = True
    requires = frozenset({"x0_eps"})

    def __init__(self, variance: str = "small"):
        check_choice("variance", variance, ("small", "large"))  # beta-tilde or beta
        self.variance = variance

    def step_program(self, grid, i, pre):
        a_ts, var_ts = _posterior(grid, i)
        s_t2, s_s2 = grid.sigma[i] ** 2, grid.sigma[i + 1] ** 2
        var = var_ts * s_s2 / s_t2 if self.variance == "small" else var_ts
        mean = (a_ts * s_s2 / s_t2) * Z + (grid.alpha[i + 1] * var_ts / s_t2) * Q(0, "x0")
        return Step((Stage(grid.node(i), Z),), mean + math.sqrt(var) * XI(0))
