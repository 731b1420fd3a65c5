r"""Explicit Runge-Kutta methods on the probability-flow ODE, in a chosen clock.

``clock="t"`` integrates  dz/dt = alpha' x0_hat + sigma' eps_hat  in the process's own time.
``clock="sigma"`` integrates EDM's form  dy/ds = eps_hat  in VE variables y = z/alpha,
s = sigma/alpha (Karras et al. 2022, eq. 4 with s(t) = t): there Euler is exactly DDIM and
Heun is EDM's deterministic sampler, on any process.

Each method is a Butcher tableau (data) plus its order; the step is written once.
"""

from __future__ import annotations

import math

import torch

from .base import Solver

__all__ = ["Euler", "Heun", "Midpoint", "RK4", "ButcherTableau"]

CLOCKS = ("t", "sigma")


class ButcherTableau:
    """Explicit tableau: nodes c, lower-triangular a, weights b."""

    def __init__(self, c, a, b):
        if not (len(c) == len(a) == len(b)):
            raise ValueError("c, a and b must have one entry per stage")
        self.c, self.a, self.b = list(c), [list(r) for r in a], list(b)
        self.stages = len(c)


class _RungeKutta(Solver, register=False):
    tableau: ButcherTableau

    def __init__(self, clock: str = "t"):
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; valid clocks are {', '.join(CLOCKS)}")
        self.clock = clock

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return self.tableau.stages

    @property
    def requires(self):  # type: ignore[override]
        return frozenset({"ode"} if self.clock == "t" else {"x0_eps"})

    def init(self, dyn, z, grid):
        """Stage times (tensors), state scales and the clock's step sizes, once per run."""
        p, tab = grid.process, self.tableau
        if self.clock == "t":
            tau = grid.times
        else:
            if grid.alpha[0] == 0.0:
                raise ValueError(
                    f"clock='sigma' needs alpha > 0 at the start (sigma/alpha is infinite at t={grid.times[0]:g}); "
                    "pass a smaller t_start or use clock='t'"
                )
            tau = [s / a if a > 0 else math.inf for a, s in zip(grid.alpha, grid.sigma)]
        # all off-grid stage times of the run, evaluated in one vectorised pass
        inner = [(i, k, tau[i] + c * (tau[i + 1] - tau[i])) for i in range(grid.n) for k, c in enumerate(tab.c) if c != 0.0]
        vals = [v for _, _, v in inner]
        if self.clock == "sigma":
            lam = [-2.0 * math.log(v) if v > 0 else math.inf for v in vals]  # sigma/alpha = 0: clean data
            vals = p.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)) if lam else []
        off = dict(zip(((i, k) for i, k, _ in inner), grid.fixed(vals)))
        stages = []
        for i in range(grid.n):
            coefs = [off[(i, k)] if c != 0.0 else grid.coefs(i) for k, c in enumerate(tab.c)]
            stages.append((tau[i + 1] - tau[i], coefs, [c.alpha for c in coefs]))
        return stages

    def _f(self, dyn, z, coefs):
        pred = dyn.predict(z, coefs.t, coefs)
        return pred.velocity if self.clock == "t" else pred.eps

    def step(self, dyn, z, i, grid, stages, noise):
        h, ts_k, scale_k = stages[i]
        tab = self.tableau
        sigma_clock = self.clock == "sigma"
        y = z / grid.alpha[i] if sigma_clock else z
        ks = []
        for k in range(tab.stages):
            yk = y
            for a, kj in zip(tab.a[k], ks):
                if a != 0.0:
                    yk = yk + (h * a) * kj
            ks.append(self._f(dyn, yk * scale_k[k] if sigma_clock else yk, ts_k[k]))
        for b, kk in zip(tab.b, ks):
            if b != 0.0:
                y = y + (h * b) * kk
        return (y * grid.alpha[i + 1] if sigma_clock else y), stages


class Euler(_RungeKutta):
    """Forward Euler (order 1, 1 call/step). In the sigma clock this is DDIM."""

    order = 1
    tableau = ButcherTableau([0.0], [[]], [1.0])


class Heun(_RungeKutta):
    """Heun's method / explicit trapezoid (order 2, 2 calls/step; EDM's Algorithm 1 without churn).

    A final step onto zero noise is a single Euler step (EDM skips the correction at
    sigma = 0), so a grid ending at sigma = 0 costs 2N - 1 calls, otherwise 2N.
    """

    order = 2
    tableau = ButcherTableau([0.0, 1.0], [[], [1.0]], [0.5, 0.5])


class Midpoint(_RungeKutta):
    """Explicit midpoint rule (order 2, 2 calls/step)."""

    order = 2
    tableau = ButcherTableau([0.0, 0.5], [[], [0.5]], [0.0, 1.0])


class RK4(_RungeKutta):
    """Classical fourth-order Runge-Kutta (order 4, 4 calls/step)."""

    order = 4
    tableau = ButcherTableau(
        [0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]
    )
