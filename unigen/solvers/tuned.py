r"""A multistep exponential integrator whose times and per-step coefficients can be tuned.

The family (data prediction m = x0_hat, lambda = log(alpha/sigma), h_i = lambda_{i+1} - lambda_i):

    z_{i+1} = (sigma_{i+1}/sigma_i) z_i + alpha_{i+1} sum_j [w_ij + G_0(h_i) c_ij] m_{i-j},

the exact solution of the probability-flow ODE in its variation-of-constants form
z_t = (sigma_t/sigma_s) z_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) d lambda
(Lu et al. 2022b) with x0 replaced by the polynomial through the last k evaluations.

* The **Adams weights** w_ij are the unique solution of the k exponential order conditions

      sum_j w_ij u_j^q = G_q(h_i),   q < k,   u_j = (lambda_{i-j} - lambda_i)/h_i,
      G_q(h) = h int_0^1 e^{-h(1-u)} u^q du,

  i.e. the integral of the Lagrange polynomial through (u_j, m_{i-j}). With k = 1 this is
  DDIM / DPM-Solver++(1); with k = 2 and 3 it is DPM-Solver++(2M, "taylor") and the
  corrected DPM-Solver++(3M) (the tests check both against the psi-function formulas).
* The **corrections** c_ij are free numbers with sum_j c_ij = 0 over the evaluations a step
  reads (the zeroth order condition). Any bounded c keeps the method consistent, so it
  converges as the steps shrink; this is the freedom that tuning (``unigen.tuning``) uses, in
  the spirit of S4S (Frankel et al. 2025) and PAS (Wang et al. 2024), which learn a solver's
  coefficients on a few teacher trajectories. With corrections c ~ h^(k-1) the c-terms are
  O(h^(k+1)) per step and the order stays k: a tuned solver run on a refined grid (n = m N
  steps for a solver tuned at N) scales its corrections by (N/n)^(p-1), p its convergence
  order, so it converges at that order as n grows.
* The optional **corrector** (UniPC's, Zhao et al. 2023, with exact weights) corrects each
  state with the evaluation made there before stepping on; it costs no call and raises the
  order to k + 1 (:func:`weight_table`).

A zero-SNR start (lambda = -inf, flow matching at t = 1) never enters the polynomial: the
step out of it is first order (its weight is alpha_{i+1}, DDIM), as in every multistep
solver here; a step onto sigma = 0 lands on x0_hat.

``TunedSolver()`` is the untuned family (Adams weights, no corrections) on any grid. A tuned
one carries its grid (``times``): ``ug.sample(model, tuned)`` runs on it (its
``own_schedule`` is ``"tuned"``), ``steps=m*N`` refines it, ``save``/``load`` store it, and
:func:`register_tuned` makes it a solver name.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .base import NAMED, REGISTRY, ProgramSolver, check_lower_order_final, multistep_order
from .program import H, Q, Stage, Step, Z

__all__ = ["TunedSolver", "exponential_moments", "weight_table", "step_plan", "register_tuned"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
_GL_U = torch.tensor((_GL_X + 1.0) / 2.0, dtype=torch.float64)  # Gauss-Legendre on [0, 1]
_GL_WU = torch.tensor(_GL_W / 2.0, dtype=torch.float64)
_GL_MAX_H = 4.0  # below: quadrature (exact to float64 for h <= 4); above: the stable recursion

_FORMAT = "unigen.TunedSolver/1"


def exponential_moments(h: Tensor, count: int) -> Tensor:
    r"""G_q(h) = h int_0^1 e^{-h(1-u)} u^q du for q < ``count``, along a new last axis.

    G_0 = 1 - e^{-h}; G_q = 1 - q G_{q-1} / h (integration by parts; stable for h > q) above
    h = 4, 24-point Gauss-Legendre below (exact to rounding there). h = inf gives 1 for every q
    (all the weight at u = 1). Differentiable in h.
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    small = h <= _GL_MAX_H
    u, wu = _GL_U.to(h.device), _GL_WU.to(h.device)
    hs = torch.where(small, h, torch.zeros_like(h)).unsqueeze(-1)
    kernel = torch.exp(-hs * (1.0 - u)) * wu * hs
    quad = [(kernel * u ** q).sum(-1) for q in range(count)]
    hl = torch.where(small, torch.full_like(h, 2 * _GL_MAX_H), h)
    rec = [-torch.expm1(-hl)]
    for q in range(1, count):
        rec.append(1.0 - q * rec[-1] / hl)
    return torch.stack([torch.where(small, a, b) for a, b in zip(quad, rec)], -1)


def _interpolation_weights(u: Tensor, k: Tensor, h: Tensor) -> Tensor:
    """Row i: the Adams weights w_ij with sum_{j<k_i} w_ij u_ij^q = G_q(h_i), q < k_i (u_i0 = 0 the
    current point, u_ij < 0 earlier ones, in units of h_i; entries j >= k_i are 0, a row with
    k_i = 0 is all zero). Times alpha_{i+1}, they integrate the polynomial through the points
    exactly (module docstring)."""
    n, width = u.shape
    j = torch.arange(width).unsqueeze(0)
    q = torch.arange(width).reshape(1, width, 1)
    live = j < k.unsqueeze(1)
    u = torch.where(live, u, torch.zeros_like(u))
    in_system = (q < k.reshape(n, 1, 1)) & live.unsqueeze(1)  # [n, q, j]
    vander = torch.where(in_system, u.unsqueeze(1) ** q, (q == j.unsqueeze(1)).to(u.dtype))
    g = exponential_moments(h, width)
    return torch.linalg.solve(vander, torch.where(live, g, torch.zeros_like(g)))


def weight_table(lam: Tensor, alpha: Tensor, sigma: Tensor, plan: tuple, corrections: Tensor | None = None) -> Tensor:
    r"""Every step's weights at once: row i holds the coefficients of the evaluations
    m_i, m_{i-1}, ... in z_{i+1} = (sigma_{i+1}/sigma_i) z_i + sum_j W_ij m_{i-j} (zeros beyond
    the step's count; all zeros for a step out of zero SNR or onto sigma = 0).

    ``lam``, ``alpha``, ``sigma``: DPM-Solver's lambda = log(alpha/sigma), alpha and sigma at the
    n + 1 times; ``plan``: (orders, counts, corrected) from :func:`step_plan`. The predictor is
    alpha_{i+1} w_i (Adams weights over ``orders[i]`` points). At a ``corrected`` step the state
    z_i it starts from is first corrected with the new evaluation (UniPC's corrector, Zhao et
    al. 2023, with exact weights): z_i <- z_i + alpha_i (w^AM_i - shift(w_{i-1})) . m, where w^AM
    integrates the polynomial through m_i and the previous step's points over [lambda_{i-1},
    lambda_i]; as it reuses m_i (evaluated before the correction) it costs no call, and it is
    folded into row i. ``corrections`` (n x L or None) add G_0(h_i) alpha_{i+1} (c_ij - mean_j c_ij)
    over the step's count. Differentiable in every tensor input.
    """
    orders, counts, corrected = plan
    n = len(orders)
    width = max([1, *counts])
    finite = torch.isfinite(lam)
    lam_s = torch.where(finite, lam, torch.zeros_like(lam))
    used = torch.tensor([c > 0 for c in counts])
    h = lam_s[1:] - lam_s[:-1]
    h = torch.where(used & finite[1:] & finite[:-1], h, torch.ones_like(h))
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    back = lam_s[(i - j).clamp(min=0)]  # lambda_{i-j}
    k = torch.tensor(orders)
    w = alpha[1:].unsqueeze(1) * _interpolation_weights((back - lam_s[:-1].unsqueeze(1)) / h.unsqueeze(1), k, h)
    table = w
    if any(corrected):
        fix = torch.tensor([c == ADAMS_MOULTON for c in corrected])
        prev = torch.cat([k[:1], k[:-1]])
        h_prev = torch.cat([h[:1], h[:-1]])
        lam_prev = torch.cat([lam_s[:1], lam_s[:-2]])
        am = _interpolation_weights((back - lam_prev.unsqueeze(1)) / h_prev.unsqueeze(1),
                                    torch.where(fix, prev + 1, torch.zeros_like(prev)), h_prev)
        shifted = torch.nn.functional.pad(torch.cat([w[:1], w[:-1]]), (1, 0))[:, :width]
        ratio = sigma[1:] / torch.where(sigma[:-1] > 0, sigma[:-1], torch.ones_like(sigma[:-1]))
        delta = alpha[:-1].unsqueeze(1) * am - shifted
        # out of zero SNR the previous step was DDIM, z_i = (sigma_i/sigma_0) z_0 + alpha_i m_0; over
        # [-inf, lambda_i] the integral is int x0 d(alpha/sigma) from 0, and the trapezoid rule in
        # alpha/sigma gives alpha_i (m_0 + m_i)/2: the correction alpha_i (m_i - m_0)/2
        trap = torch.tensor([c == TRAPEZOID for c in corrected])
        half = torch.zeros(n, width, dtype=w.dtype)
        if width > 1:
            half[:, 0], half[:, 1] = 0.5, -0.5
        delta = torch.where(trap.unsqueeze(1), alpha[:-1].unsqueeze(1) * half, delta)
        table = table + torch.where((fix | trap).unsqueeze(1), ratio.unsqueeze(1) * delta, torch.zeros_like(delta))
    if corrections is not None:
        cnt = torch.tensor(counts).unsqueeze(1)
        c = torch.nn.functional.pad(corrections.to(w.dtype), (0, max(0, width - corrections.shape[1])))[:, :width]
        mask = (j < cnt).to(w.dtype)
        mean = (c * mask).sum(1, keepdim=True) / cnt.clamp(min=1)
        g0 = exponential_moments(h, 1)
        table = table + alpha[1:].unsqueeze(1) * g0 * (c - mean) * mask
    return table * used.unsqueeze(1).to(table.dtype)


ADAMS_MOULTON, TRAPEZOID = 1, 2  # step_plan's kinds of corrected step (0: none)


def step_plan(grid, order: int, history: int, lower_order_final, corrector: bool) -> tuple[list, list, list]:
    """(orders, counts, corrected) per step of ``grid``: the Adams predictor's points
    (``multistep_order``, the one warm-up policy, over finite log-SNRs), the evaluations the
    step's row combines (the last ``history``, a zero-SNR one included; more where the
    corrector reaches further), and how the step corrects its starting state
    (:func:`weight_table`; 0: not at all). A step out of zero SNR or onto sigma = 0 has order
    and count 0."""
    lam = grid.lam_dpm
    orders, counts, corrected = [], [], []
    for i in range(grid.n):
        if math.isinf(lam[i]) or math.isinf(lam[i + 1]):
            orders.append(0)
            counts.append(0)
            corrected.append(0)
            continue
        finite = sum(1 for j in range(min(history, i + 1)) if math.isfinite(lam[i - j]))
        orders.append(min(finite, multistep_order(grid, i, order, lower_order_final)))
        kind = 0
        if corrector and i >= 1:
            kind = ADAMS_MOULTON if orders[i - 1] > 0 else (TRAPEZOID if math.isinf(lam[i - 1]) else 0)
        corrected.append(kind)
        reach = {0: 0, ADAMS_MOULTON: orders[i - 1] + 1 if i else 0, TRAPEZOID: 2}[kind]
        counts.append(max(min(history, i + 1), reach))
    return orders, counts, corrected


class TunedSolver(ProgramSolver):
    r"""The multistep exponential integrator of the module docstring; tuned by
    :func:`unigen.tuning.tune_solver`.

    Args:
        order: k, the polynomial degree + 1 of the Adams part (1-4).
        times: the grid it was tuned on (N + 1 times, noise to data), or None (any grid).
        corrections: an N x L table of corrections c_ij (row i: step i's, for the current and
            the L - 1 previous evaluations), or None (the plain Adams method). Each row is
            used with its mean removed (sum_j c_ij = 0).
        lower_order_final: the Adams part's order on the last steps of short runs, as in
            DPM-Solver (``unigen.solvers.multistep_order``, the one warm-up policy).
        info: a dict of plain values describing where it came from (model, calibration).
    """

    prediction = "data"
    requires = frozenset({"x0_eps"})

    def __init__(self, order: int = 3, times=None, corrections=None, lower_order_final: bool = True,
                 corrector: bool = False, info: dict | None = None):
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
            raise ValueError(f"order must be an integer in 1..4, got {order!r}")
        self.predictor_order = order
        self.lower_order_final = check_lower_order_final(lower_order_final)
        self.corrector = bool(corrector)
        self.order = order + self.corrector  # the convergence order (the corrector adds one)
        self.times = None if times is None else _checked_times(times)
        if corrections is not None:
            if self.times is None:
                raise ValueError("corrections belong to a tuned grid: pass times= as well")
            rows = torch.as_tensor(corrections, dtype=torch.float64).detach().cpu()
            n = len(self.times) - 1
            if rows.ndim != 2 or rows.shape[0] != n or rows.shape[1] < 1:
                raise ValueError(f"corrections must be a table of {n} rows (one per step of the tuned grid) and at "
                                 f"least one column, got shape {tuple(rows.shape)}")
            if not bool(torch.isfinite(rows).all()):
                raise ValueError("corrections must be finite")
            corrections = tuple(tuple(r) for r in rows.tolist())
        self.corrections = corrections
        self.info = dict(info or {})

    @property
    def steps(self) -> int | None:
        """N, the step count it was tuned at (None for the untuned family)."""
        return None if self.times is None else len(self.times) - 1

    @property
    def own_schedule(self):
        """The schedule ``ug.sample`` uses when none is given: its tuned grid."""
        return None if self.times is None else "tuned"

    def label(self):
        kind = "untuned" if self.times is None else f"tuned at {self.steps} steps"
        return f"TunedSolver({self.predictor_order}{', corrector' if self.corrector else ''}, {kind})"

    def cache_key(self):
        return (type(self), self.predictor_order, self.times, self.corrections, self.lower_order_final, self.corrector)

    def __repr__(self):
        return self.label()

    # -- the grid ---------------------------------------------------------------------
    def grid_times(self, steps: int | None = None) -> Tensor:
        """The tuned grid (``steps`` None or N), or it refined to ``steps`` steps: the times at
        u = i/steps of the piecewise-linear curve through (j/N, t_j) (for steps = m N, each tuned
        interval cut into m equal parts)."""
        if self.times is None:
            raise ValueError("this TunedSolver has no tuned grid (times=None): pass a schedule")
        knots = torch.tensor(self.times, dtype=torch.float64)
        n = self.steps
        if steps is None or steps == n:
            return knots
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < n:
            raise ValueError(f"steps must be an integer >= {n} (the tuned count; more refines the grid), got {steps!r}")
        u = torch.arange(steps + 1, dtype=torch.float64) * (n / steps)
        j = u.floor().long().clamp(max=n - 1)
        w = u - j
        out = knots[j] * (1 - w) + knots[j + 1] * w
        out[0], out[-1] = knots[0], knots[-1]
        return out

    def _correction_row(self, i: int, n: int):
        """Step i of n: the correction row of the tuned step it falls in, scaled by
        (N/n)^(p-1) when the grid is a refinement, p the convergence order (module docstring)."""
        if self.corrections is None:
            return None
        big_n = self.steps
        j = min(int((i + 0.5) * big_n / n), big_n - 1)
        scale = 1.0 if n == big_n else (big_n / n) ** (self.order - 1)
        return torch.tensor(self.corrections[j], dtype=torch.float64) * scale

    @property
    def history(self) -> int:
        """Evaluations a step's corrections combine: the predictor's order, or the corrections'
        width if larger."""
        return max(self.predictor_order, len(self.corrections[0]) if self.corrections else 1)

    # -- the program ------------------------------------------------------------------
    def expected_nfe(self, n_steps, ends_at_zero):
        return n_steps  # one call per step, the landing step included

    def check_grid(self, grid):
        if self.corrections is None:
            return
        if grid.n < self.steps:
            raise ValueError(f"this solver was tuned at {self.steps} steps; it runs at that count or more "
                             f"(its grid refined), not {grid.n}")
        mine = self.grid_times(grid.n)
        if not torch.allclose(torch.tensor(grid.times, dtype=torch.float64), mine, rtol=0.0, atol=1e-12):
            raise ValueError(
                f"this tuned solver's coefficients belong to its own grid ({self.steps} steps from {self.times[0]:g} to "
                f"{self.times[-1]:g}, or that grid refined); run it with schedule='tuned' (the default in ug.sample) "
                "or use TunedSolver(order) on other grids")

    def prepare(self, grid):
        """The weight table of every step (:func:`weight_table`), computed once per grid."""
        plan = step_plan(grid, self.predictor_order, self.history, self.lower_order_final, self.corrector)
        rows = None
        if self.corrections is not None:
            rows = torch.stack([self._correction_row(i, grid.n) for i in range(grid.n)])
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return weight_table(f64(grid.lam_dpm), f64(grid.alpha), f64(grid.sigma), plan, rows).tolist()

    def step_program(self, grid, i, pre):
        here = Stage(grid.node(i), Z)
        m0 = Q(0, "x0")
        if math.isinf(grid.lam_dpm[i]):  # out of zero SNR: DDIM, the polynomial's only finite limit
            return Step((here,), grid.alpha[i + 1] * m0 + grid.sigma[i + 1] * Q(0, "eps"), store=(m0,))
        weights = pre[i]
        update = (grid.sigma[i + 1] / grid.sigma[i]) * Z + weights[0] * m0
        for j, w in enumerate(weights[1:]):
            if w != 0.0:
                update = update + w * H(j)
        return Step((here,), update, store=(m0,))

    # -- storage ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that defines this solver, as plain values (what :meth:`save` writes)."""
        return {"format": _FORMAT, "order": self.predictor_order, "times": list(self.times) if self.times else None,
                "corrections": [list(r) for r in self.corrections] if self.corrections else None,
                "lower_order_final": self.lower_order_final, "corrector": self.corrector, "info": self.info}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TunedSolver":
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"not a saved TunedSolver (expected format {_FORMAT!r})")
        return cls(state["order"], state["times"], state["corrections"], state.get("lower_order_final", True),
                   state.get("corrector", False), state.get("info"))

    def save(self, path) -> None:
        """Write this solver to ``path`` (torch.save of :meth:`state_dict`; plain values only)."""
        torch.save(self.state_dict(), os.fspath(path))

    @classmethod
    def load(cls, path) -> "TunedSolver":
        """A solver written by :meth:`save` (loaded with ``weights_only=True``)."""
        return cls.from_state_dict(torch.load(os.fspath(path), weights_only=True))

    @classmethod
    def variants(cls):
        return [cls(1), cls(2), cls(3), cls(2, corrector=True), cls(3, corrector=True)]


def _checked_times(times) -> tuple:
    ts = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    if ts.numel() < 2:
        raise ValueError(f"times must hold at least two times (one step), got {ts.numel()}")
    if not bool(torch.isfinite(ts).all()) or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"times must be finite and strictly decreasing (noise to data), got {ts.tolist()}")
    return tuple(ts.tolist())


def register_tuned(name: str, solver: TunedSolver, replace: bool = False) -> TunedSolver:
    """Make ``solver`` (a tuned instance) available by ``name`` wherever a solver name is
    accepted (``ug.sample(model, name)``, ``get_solver``). Names of solver classes are taken;
    a name already given to a tuned solver is rebound only with ``replace=True``."""
    if not isinstance(solver, TunedSolver):
        raise TypeError(f"register a TunedSolver instance, got {type(solver).__name__}")
    if not isinstance(name, str) or not name or name in REGISTRY:
        raise ValueError(f"a tuned solver needs a new name (not a solver class), got {name!r}")
    if name in NAMED and not replace:
        raise ValueError(f"the name {name!r} is taken by another tuned solver; pass replace=True to rebind it")
    NAMED[name] = solver
    return solver
