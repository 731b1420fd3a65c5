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

import torch

from .._utils import check_choice
from ..parametrization import apply_lin, lin_coefs
from .base import Solver, cached_plan

__all__ = ["DDIM", "DDPM"]


def _steps(grid) -> int:
    """Steps that need a plan: a final step onto zero noise is ``Solver.final_step``'s."""
    return grid.n - 1 if grid.ends_at_zero else grid.n


def _posterior(grid, i):
    """alpha_{t|s}, sigma_{t|s}^2 for t = t_i, s = t_{i+1}."""
    a_t, s_t, a_s, s_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    a_ts = a_t / a_s
    return a_ts, max(s_t * s_t - a_ts * a_ts * s_s * s_s, 0.0)


class DDIM(Solver):
    """Denoising diffusion implicit model step; ``eta`` interpolates ODE (0) and ancestral (1)."""

    order = 1
    requires = frozenset({"x0_eps"})

    def __init__(self, eta: float = 0.0):
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0 or math.isinf(eta):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def init(self, dyn, z, grid):
        return self._plan(dyn, grid)

    @cached_plan
    def _plan(self, dyn, grid):
        """Each step folded into z_s = cz z + co out (+ c xi), with 0-dim tensor coefficients."""
        pairs, noise_std = [], []
        for i in range(_steps(grid)):
            a_ts, var_ts = _posterior(grid, i)
            s_t, s_s = grid.sigma[i], grid.sigma[i + 1]
            c2 = self.eta**2 * var_ts * s_s * s_s / (s_t * s_t)
            c2 = min(c2, s_s * s_s)  # eta > 1: clip as k-diffusion does (sigma_up <= sigma_next)
            pairs.append(lin_coefs(grid.coefs(i), dyn.model.parametrization, grid.alpha[i + 1], math.sqrt(s_s * s_s - c2)))
            noise_std.append(math.sqrt(c2))
        return list(zip(grid.lins(pairs), noise_std, grid.tensors(noise_std)))

    def step(self, dyn, z, i, grid, coefs, noise):
        k, c, c_t = coefs[i]
        z = apply_lin(k, z, dyn.raw(z, grid.t[i], grid.coefs(i)))
        if c > 0.0:
            z = torch.addcmul(z, c_t, noise(z))
        return z, coefs


class DDPM(Solver):
    """Ancestral sampling from p(z_s | z_t) = q(z_s | z_t, x0_hat) (Ho et al. 2020, eq. 11)."""

    order = 1
    stochastic = True
    requires = frozenset({"x0_eps"})

    def __init__(self, variance: str = "small"):
        check_choice("variance", variance, ("small", "large"))  # beta-tilde or beta
        self.variance = variance

    def init(self, dyn, z, grid):
        return self._plan(dyn, grid)

    @cached_plan
    def _plan(self, dyn, grid):
        """Each step folded into z_s = cz z + co out + std xi (posterior mean in terms of (z, out))."""
        pairs, stds = [], []
        for i in range(_steps(grid)):
            a_ts, var_ts = _posterior(grid, i)
            s_t2, s_s2 = grid.sigma[i] ** 2, grid.sigma[i + 1] ** 2
            var = var_ts * s_s2 / s_t2 if self.variance == "small" else var_ts
            x_z, x_o = lin_coefs(grid.coefs(i), dyn.model.parametrization, grid.alpha[i + 1] * var_ts / s_t2, 0.0)
            pairs.append((a_ts * s_s2 / s_t2 + x_z, x_o))
            stds.append(math.sqrt(var))
        return list(zip(grid.lins(pairs), grid.tensors(stds)))

    def step(self, dyn, z, i, grid, coefs, noise):
        k, std = coefs[i]
        z = apply_lin(k, z, dyn.raw(z, grid.t[i], grid.coefs(i)))
        return torch.addcmul(z, std, noise(z)), coefs
