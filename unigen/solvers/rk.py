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

from ..parametrization import lin_coefs
from .base import Solver, affine, cached_plan

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
        return self._plan(dyn, grid)

    @cached_plan
    def _plan(self, dyn, grid):
        """Stage coefficients and the folded linear maps of every step."""
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
        n_plan = grid.n - 1 if grid.ends_at_zero else grid.n  # the step onto sigma = 0 is final_step's
        inner = [(i, k, tau[i] + c * (tau[i + 1] - tau[i])) for i in range(n_plan) for k, c in enumerate(tab.c) if c != 0.0]
        vals = [v for _, _, v in inner]
        if self.clock == "sigma":
            lam = [-2.0 * math.log(v) if v > 0 else math.inf for v in vals]  # sigma/alpha = 0: clean data
            vals = p.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)) if lam else []
        off = dict(zip(((i, k) for i, k, _ in inner), grid.fixed(vals)))
        param = dyn.model.parametrization
        plans, floats = [], []
        for i in range(n_plan):
            coefs = [off[(i, k)] if c != 0.0 else grid.coefs(i) for k, c in enumerate(tab.c)]
            stages, final = self._fold(tau[i + 1] - tau[i], coefs, grid.alpha[i + 1] if self.clock == "sigma" else 1.0, param)
            plans.append((coefs, stages, final))
            floats += [v for a, bs in stages + [final] for v in [a] + [w for _, w in bs]]
        # every coefficient of the run becomes a 0-dim tensor in one pass
        it = iter(grid.tensors(floats))
        tensor_plans = []
        for times, stages, final in plans:
            conv = lambda st: (next(it), [(l, next(it)) for l, _ in st[1]])  # noqa: E731
            tensor_plans.append((times, [conv(st) for st in stages], conv(final)))
        return tensor_plans

    def _fold(self, h, coefs, s_next, param):
        """The step as linear maps of (z, model outputs): stage k gets z_k = A_k z + sum_l B_kl o_l.

        In the clock variable y (y = z/s with s = alpha in the sigma clock, 1 in t) the
        derivative is f_j = p_j y_j + q_j o_j (velocity or eps in terms of the raw output), so
        the tableau's recursion y_k = y + h sum_j a_kj f_j stays linear in (y, o_1..o_k).
        """
        tab = self.tableau
        scale = [c.alpha if self.clock == "sigma" else 1.0 for c in coefs]
        pq = []
        for c, sc in zip(coefs, scale):
            if self.clock == "t":
                pq.append(lin_coefs(c, param, c.d_alpha, c.d_sigma))
            else:
                cz, co = lin_coefs(c, param, 0.0, 1.0)
                pq.append((cz * sc, co))
        A, B = [], []  # y_k = A[k] y + sum_l B[k][l] o_l
        def combine(weights):
            a = 1.0 + h * sum(w * pq[j][0] * A[j] for j, w in enumerate(weights))
            b = [h * sum(w * (pq[j][0] * B[j][l] + (pq[j][1] if j == l else 0.0)) for j, w in enumerate(weights)) for l in range(len(weights))]
            return a, b
        stages = []
        for k in range(tab.stages):
            a, b = combine(tab.a[k])
            A.append(a)
            B.append(b + [0.0] * (tab.stages - len(b)))
            stages.append((scale[k] * a / scale[0], [(l, scale[k] * w) for l, w in enumerate(b) if w != 0.0]))
        a, b = combine(tab.b)
        final = (s_next * a / scale[0], [(l, s_next * w) for l, w in enumerate(b) if w != 0.0])
        return stages, final

    def step(self, dyn, z, i, grid, plans, noise):
        times, stages, (a, terms) = plans[i]
        outs = []
        for c_k, (a_k, terms_k) in zip(times, stages):
            z_k = z if not terms_k else affine(z, a_k, [(w, outs[l]) for l, w in terms_k])
            outs.append(dyn.raw(z_k, c_k.t, c_k))
        return affine(z, a, [(w, outs[l]) for l, w in terms]), plans


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
