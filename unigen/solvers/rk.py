r"""Explicit Runge-Kutta methods on the probability-flow ODE, in a chosen clock.

``clock="t"`` integrates  dz/dt = alpha' x0_hat + sigma' eps_hat  (the "velocity") in the
process's own time. ``clock="sigma"`` integrates EDM's form  dy/ds = eps_hat  in VE
variables y = z/alpha, s = sigma/alpha (Karras et al. 2022, eq. 4 with s(t) = t): there
Euler is exactly DDIM and Heun is EDM's deterministic sampler, on any process.

Each method is a Butcher tableau (data: nodes c, matrix a, weights b) plus its order; the
step is written once, as the tableau's recursion over stages

    y_k = y + h sum_j a_kj f_j,      y' = y + h sum_j b_j f_j,      f_j = f(y_j, tau + c_j h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import ProgramSolver
from .program import Q, Stage, Step, Z

__all__ = ["Euler", "Heun", "Midpoint", "RK4", "ButcherTableau", "RungeKutta"]

CLOCKS = ("t", "sigma")


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit tableau: nodes c, strictly lower-triangular a (row k has k entries), weights b."""

    c: tuple
    a: tuple
    b: tuple

    def __init__(self, c, a, b):
        if not (len(c) == len(a) == len(b)):
            raise ValueError("c, a and b must have one entry per stage")
        if any(len(row) != k for k, row in enumerate(a)):
            raise ValueError("an explicit tableau's row k of a has k entries (a is strictly lower triangular)")
        object.__setattr__(self, "c", tuple(float(v) for v in c))
        object.__setattr__(self, "a", tuple(tuple(float(v) for v in row) for row in a))
        object.__setattr__(self, "b", tuple(float(v) for v in b))

    @property
    def stages(self) -> int:
        return len(self.c)


class RungeKutta(ProgramSolver, register=False):
    """An explicit Runge-Kutta method given by ``tableau`` and its ``order``; subclass and set
    both (``class Ralston(RungeKutta): order = 2; tableau = ButcherTableau(...)``) to add one."""

    tableau: ButcherTableau

    def __init__(self, clock: str = "t"):
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; valid clocks are {', '.join(CLOCKS)}")
        self.clock = clock

    @classmethod
    def variants(cls):
        return [cls(), cls(clock="sigma")]

    def label(self):
        return type(self).__name__ + ("(sigma)" if self.clock == "sigma" else "")

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return self.tableau.stages

    @property
    def requires(self):  # type: ignore[override]
        return frozenset({"ode"} if self.clock == "t" else {"x0_eps"})

    def check_grid(self, grid):
        if self.clock == "sigma" and grid.alpha[0] == 0.0:
            raise ValueError(
                f"clock='sigma' needs alpha > 0 at the start (sigma/alpha is infinite at t={grid.times[0]:g}); "
                "pass a smaller t_start or use clock='t'"
            )

    def prepare(self, grid):
        """The clock values tau at the grid points and the nodes of every off-grid stage."""
        tab = self.tableau
        if self.clock == "t":
            tau = grid.times
        else:
            tau = [s / a if a > 0 else math.inf for a, s in zip(grid.alpha, grid.sigma)]
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        # every off-grid stage node of the run, evaluated in one vectorised pass
        inner = [(i, k, tau[i] + c * (tau[i + 1] - tau[i])) for i in range(last) for k, c in enumerate(tab.c) if c != 0.0]
        if self.clock == "t":
            nodes = grid.nodes_at([v for _, _, v in inner])
        else:  # a VE level s is the time of log-SNR -2 log s (s = 0: clean data)
            nodes = grid.node_at_log_snr([-2.0 * math.log(v) if v > 0 else math.inf for _, _, v in inner])
        return tau, dict(zip(((i, k) for i, k, _ in inner), nodes))

    def step_program(self, grid, i, pre):
        tau, stage_nodes = pre
        tab, h = self.tableau, tau[i + 1] - tau[i]
        nodes = [stage_nodes[(i, k)] if c != 0.0 else grid.node(i) for k, c in enumerate(tab.c)]
        if self.clock == "t":  # y = z, f = dz/dt
            scale = [1.0] * tab.stages
            f = [Q(k, "velocity") for k in range(tab.stages)]
            s_next = 1.0
        else:  # y = z / alpha, f = dy/ds = eps_hat; the model sees z_k = alpha_k y_k
            scale = [node.alpha for node in nodes]
            f = [Q(k, "eps") for k in range(tab.stages)]
            s_next = grid.alpha[i + 1]
        y = Z / scale[0]
        stages = []
        for k in range(tab.stages):
            if tab.c[k] == 0.0 and not any(tab.a[k]):  # the state itself (exactly, not alpha * z / alpha)
                stages.append(Stage(nodes[k], Z))
                continue
            y_k = y + h * _dot(tab.a[k], f)
            stages.append(Stage(nodes[k], scale[k] * y_k))
        return Step(tuple(stages), s_next * (y + h * _dot(tab.b, f)))


def _dot(weights, f):
    out = 0.0 * Z
    for w, fj in zip(weights, f):
        out = out + w * fj
    return out


class Euler(RungeKutta):
    """Forward Euler (order 1, 1 call/step). In the sigma clock this is DDIM."""

    order = 1
    tableau = ButcherTableau([0.0], [[]], [1.0])


class Heun(RungeKutta):
    """Heun's method / explicit trapezoid (order 2, 2 calls/step; EDM's Algorithm 1 without churn).

    A final step onto zero noise is a single Euler step (EDM skips the correction at
    sigma = 0), so a grid ending at sigma = 0 costs 2N - 1 calls, otherwise 2N.
    """

    order = 2
    tableau = ButcherTableau([0.0, 1.0], [[], [1.0]], [0.5, 0.5])


class Midpoint(RungeKutta):
    """Explicit midpoint rule (order 2, 2 calls/step)."""

    order = 2
    tableau = ButcherTableau([0.0, 0.5], [[], [0.5]], [0.0, 1.0])

    @classmethod
    def variants(cls):
        return [cls()]


class RK4(RungeKutta):
    """Classical fourth-order Runge-Kutta (order 4, 4 calls/step)."""

    order = 4
    tableau = ButcherTableau(
        [0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]
    )
