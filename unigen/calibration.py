r"""Step grids optimised for a small number of model calls, on a calibration batch.

For a model, a deterministic solver and a step count N, choose the interior times of the
grid that minimise the solver's mean squared global error against an accurate solve of the
same probability-flow ODE from the same starting noise:

    min_{t_0 > t_1 > ... > t_N}  E_z || Phi_solver(z; t_0..t_N) - Phi_ODE(z; t_0 -> t_N) ||^2,

with t_0 and t_N fixed (the sampling range). This is the global-error view of step-schedule
optimisation ("Align Your Steps", Sabour, Fidler & Kreis 2024, minimise a bound on the
sampler's error over the schedule; Watson et al. 2021 learn the grid of a fixed sampler
from its output); here the target is the ODE's own endpoint, so the optimised grid is tuned
to one solver and one model, the way a user benchmarks NFE against quality.

The grid is parametrised by N logits: positions s_i = cumsum(softmax(theta))_i in [0, 1]
along a dense copy of the process's default schedule (uniform log-SNR for diffusion,
uniform t for flow matching), so theta = 0 *is* the default grid and every theta gives a
strictly decreasing grid inside the range. The objective (log mean squared error) is
minimised by Nelder-Mead (adaptive coefficients, Gao & Han 2012) with restarts; it needs no
gradients through the sampler, so any registered deterministic solver can be tuned.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from .model import Model
from .reference import ode_endpoint
from .sample import sample
from .schedules import Schedule, check_grid, default_schedule, make_grid, register_schedule
from .solvers import get_solver

__all__ = ["CalibrationResult", "nelder_mead", "optimize_schedule", "optimized_grid", "Optimized", "grid_positions",
           "along_grid", "calibration_noise"]

_DENSE = 4096  # about this many intervals in the dense default grid the positions s are read along
_CALIBRATION_SEED = 20240601  # the calibration batch of schedule="optimized" (disjoint from user seeds)


class CalibrationResult:
    """An optimised grid with its calibration record.

    Attributes:
        grid: the optimised times (float64, strictly decreasing, endpoints fixed).
        default_grid: the process's default grid with the same number of steps.
        rmse: calibration-batch endpoint RMSE of the optimised grid.
        default_rmse: the same for the default grid (what the optimisation started from).
        evaluations: objective evaluations used (each one sampling run of the calibration batch).
    """

    def __init__(self, grid, default_grid, rmse, default_rmse, evaluations):
        self.grid, self.default_grid = grid, default_grid
        self.rmse, self.default_rmse, self.evaluations = rmse, default_rmse, evaluations

    def __repr__(self) -> str:
        return (f"CalibrationResult(steps={self.grid.numel() - 1}, rmse={self.rmse:.4g}, "
                f"default_rmse={self.default_rmse:.4g}, evaluations={self.evaluations})")


def nelder_mead(f: Callable[[list], float], x0: list, step: float = 0.5, max_evals: int = 1000,
                restarts: int = 2, tol: float = 1e-7) -> tuple[list, float, int]:
    """Minimise ``f`` over R^n from ``x0`` by Nelder-Mead with restarts.

    Adaptive coefficients for dimension n (Gao & Han 2012): reflection 1, expansion 1 + 2/n,
    contraction 0.75 - 1/(2n), shrink 1 - 1/n. A run stops when the simplex's value spread
    falls below ``tol`` or the evaluation budget is spent; each restart builds a fresh simplex
    of the same size around the best point so far. Returns (x_best, f_best, evaluations).
    """
    n = len(x0)
    if n == 0:
        return list(x0), f(list(x0)), 1
    a, b, c, d = 1.0, 1.0 + 2.0 / n, 0.75 - 0.5 / n, 1.0 - 1.0 / n
    evals = 0

    def F(x):
        nonlocal evals
        evals += 1
        v = f(x)
        return v if math.isfinite(v) else math.inf

    best_x, best_f = list(x0), F(list(x0))
    per_run = max(max_evals // (restarts + 1), 2 * n + 2)
    for _ in range(restarts + 1):
        simplex = [list(best_x)] + [[best_x[j] + (step if j == i else 0.0) for j in range(n)] for i in range(n)]
        values = [best_f] + [F(p) for p in simplex[1:]]
        start = evals
        while evals - start < per_run and evals < max_evals:
            order = sorted(range(n + 1), key=values.__getitem__)
            simplex, values = [simplex[i] for i in order], [values[i] for i in order]
            if values[-1] - values[0] < tol:
                break
            centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
            worst = simplex[-1]

            def move(k, centroid=centroid, worst=worst):  # centroid + k (worst - centroid)
                return [cj + k * (wj - cj) for cj, wj in zip(centroid, worst)]

            xr = move(-a)
            fr = F(xr)
            if fr < values[0]:
                xe = move(-a * b)
                fe = F(xe)
                simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
            elif fr < values[-2]:
                simplex[-1], values[-1] = xr, fr
            else:
                xc = move(-a * c) if fr < values[-1] else move(c)
                fc = F(xc)
                if fc < min(fr, values[-1]):
                    simplex[-1], values[-1] = xc, fc
                else:  # shrink towards the best vertex
                    for i in range(1, n + 1):
                        simplex[i] = [simplex[0][j] + d * (simplex[i][j] - simplex[0][j]) for j in range(n)]
                        values[i] = F(simplex[i])
        i = min(range(n + 1), key=values.__getitem__)
        if values[i] < best_f:
            best_x, best_f = list(simplex[i]), values[i]
        if evals >= max_evals:
            break
    return best_x, best_f, evals


def grid_positions(theta: Tensor) -> Tensor:
    """s_0 = 0 < s_1 < ... < s_N = 1 from N logits (a cumulative softmax)."""
    w = torch.softmax(theta, 0)
    return torch.cat([w.new_zeros(1), torch.cumsum(w, 0)]).clamp(max=1.0)


def along_grid(dense: Tensor, s: Tensor) -> Tensor:
    """Linear interpolation of the dense grid (a function of u in [0, 1]) at positions s."""
    u = s * (dense.numel() - 1)
    i = u.floor().long().clamp(max=dense.numel() - 2)
    w = u - i
    return dense[i] * (1 - w) + dense[i + 1] * w


def calibration_noise(process, t_start: float, noise: Tensor | None, n: int, event_shape, generator, dtype) -> Tensor:
    """The calibration batch: ``noise`` as given (checked), or ``n`` draws of shape
    ``(n, *event_shape)`` from ``generator`` (a fixed seed if None, disjoint from user seeds)
    scaled to sigma(t_start), in ``dtype``."""
    if noise is None:
        if event_shape is None:
            raise ValueError("pass noise= (the calibration batch) or event_shape=")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (calibration draws) must be a positive integer, got {n!r}")
        gen = generator if generator is not None else torch.Generator().manual_seed(_CALIBRATION_SEED)
        sig = float(process.sigma(torch.tensor([t_start], dtype=torch.float64)))
        noise = (torch.randn((n, *event_shape), generator=gen, dtype=torch.float64) * sig).to(dtype)
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise TypeError("noise must be a floating tensor (the calibration batch)")
    return noise


def optimize_schedule(
    model: Model,
    solver,
    steps: int,
    *,
    noise: Tensor | None = None,
    n: int = 1024,
    event_shape: tuple | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    base: str | None = None,
    max_evals: int | None = None,
    reference_tol: float = 1e-9,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> CalibrationResult:
    """Optimise the N-step grid of a deterministic ``solver`` for ``model`` (see module docs).

    Args:
        model: the model to be sampled (its process gives the range and the default grid).
        solver: a deterministic Solver instance, class or registered name.
        steps: N, the number of solver steps (N + 1 grid points).
        noise: the calibration batch z ~ p_{t_start}; use noise disjoint from any batch you
            evaluate on; its dtype is what the model is fed (float64 where the model allows:
            the objective compares against a tight reference). Default: ``n`` draws of shape
            ``(n, *event_shape)`` and ``dtype`` from ``generator`` (seeded if None), scaled to
            sigma(t_start).
        t_start, t_end: the sampling range (default: ``model.default_range()``).
        base: the schedule the positions are read along and the starting point
            (default: the process's default schedule).
        max_evals: objective evaluations (sampling runs of the calibration batch); default
            75 per step (Nelder-Mead needs more in more dimensions), at least 300.
        reference_tol: rtol = atol of the dopri5 solve that gives the target endpoints.
    """
    solver = get_solver(solver)
    if solver.stochastic:
        raise ValueError(f"optimize_schedule tunes deterministic solvers; {type(solver).__name__} is stochastic")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    process = model.process
    lo_default, hi_default = model.default_range()
    t0 = float(lo_default if t_start is None else t_start)
    t1 = float(hi_default if t_end is None else t_end)
    model.check_times(torch.tensor([t0, t1], dtype=torch.float64), "t_start/t_end", landing=True)
    base = base or default_schedule(process, t0)
    max_evals = max(300, 75 * steps) if max_evals is None else int(max_evals)
    per = -(-_DENSE // steps)  # dense intervals per default step: theta = 0 lands on dense points
    dense = make_grid(process, base, per * steps, t_start=t0, t_end=t1)
    z = calibration_noise(process, t0, noise, n, event_shape, generator, dtype)
    target, _ = ode_endpoint(model, z, t0, t1, tol=reference_tol)

    def grid_of(theta: Tensor) -> Tensor:
        ts = along_grid(dense, grid_positions(theta))
        ts[0], ts[-1] = t0, t1
        return ts

    def mse(ts: Tensor) -> float:
        if not bool((ts[1:] < ts[:-1]).all()):  # positions collapsed below float resolution
            return math.inf
        try:
            x, _ = sample(model, solver, schedule=ts, noise=z)
        except (ValueError, RuntimeError):  # e.g. a noise-form solver dividing by alpha = 0
            return math.inf
        return float(((x.to(torch.float64) - target.to(torch.float64)) ** 2).mean())

    def objective(theta: list) -> float:
        err = mse(grid_of(torch.tensor(theta, dtype=torch.float64)))
        return math.log(err) if err > 0 else -math.inf

    theta0 = [0.0] * steps
    default_grid = grid_of(torch.tensor(theta0, dtype=torch.float64))
    best, best_f, evals = nelder_mead(objective, theta0, max_evals=max_evals)
    if best_f == math.inf:
        raise ValueError(f"{type(solver).__name__} fails on every grid tried over this range")
    grid = check_grid(grid_of(torch.tensor(best, dtype=torch.float64)), process)
    return CalibrationResult(grid, default_grid, math.sqrt(mse(grid)), math.sqrt(mse(default_grid)), evals)


# schedule="optimized" in ug.sample: one optimisation per (model, solver, steps, range, event
# shape), remembered for the model's lifetime.
_OPTIMIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def optimized_grid(model: Model, solver, steps: int | None, event_shape: tuple, t_start=None, t_end=None,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """The grid ``ug.sample(..., schedule="optimized")`` uses: :func:`optimize_schedule` with its
    defaults (a fixed-seed calibration batch of 1024 draws, 75 evaluations per step), cached per
    model, solver configuration, steps, range and event shape.

    The first call costs about ``max_evals`` sampling runs of the calibration batch (seconds
    for small models); for a large network call :func:`optimize_schedule` yourself with a
    smaller batch and pass its ``grid`` as the schedule.
    """
    if steps is None:
        raise ValueError('schedule="optimized" needs steps=')
    solver = get_solver(solver)
    config = solver.cache_key()
    if config is None:  # no value to key the memo by: optimise afresh
        return optimize_schedule(model, solver, steps, event_shape=tuple(event_shape), t_start=t_start, t_end=t_end,
                                 dtype=dtype).grid
    key = (config, int(steps), t_start, t_end, tuple(event_shape), dtype)
    memo = _OPTIMIZED.setdefault(model, {})
    if key not in memo:
        memo[key] = optimize_schedule(model, solver, steps, event_shape=tuple(event_shape),
                                      t_start=t_start, t_end=t_end, dtype=dtype).grid
    return memo[key]


class Optimized(Schedule):
    """``schedule="optimized"``: the grid of :func:`optimized_grid` for the model and solver
    being sampled (computed once per model, solver configuration, steps, range and event
    shape, then cached)."""

    name = "optimized"
    needs_model = True

    def times(self, process, steps, t_start=None, t_end=None, *, model=None, solver=None, event_shape=(),
              dtype=torch.float64, **context):
        if model is None or solver is None:
            raise ValueError('schedule="optimized" depends on the model and solver: use ug.sample(..., schedule="optimized")')
        return optimized_grid(model, solver, steps, event_shape, t_start, t_end, dtype)


register_schedule(Optimized())
