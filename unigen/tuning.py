r"""Few-step sampling tuned in seconds: grids by dynamic programming, solvers by gradients.

Three calibrations of an N-step sampler for one model, each against the accurate solve of the
same probability-flow ODE from a calibration batch of noise (the *teacher*,
:func:`unigen.reference.ode_endpoint`):

* :func:`gits_grid` (Chen et al. 2024, "GITS"): the teacher's trajectory at M + 1 dense times;
  the cost of one first-order (DDIM) jump from dense time a to b is the RMSE between the jump
  from the teacher's state at a and the teacher's state at b; dynamic programming picks the N
  jumps from the first to the last dense time whose summed cost is least.
* :func:`ld3_grid` (Tong et al. 2024, "LD3", with L2 instead of LPIPS): the grid that
  minimises the endpoint MSE of a fixed solver, by backpropagation through the sampler.
* :func:`tune_solver`: the grid *and* the per-step coefficients of a
  :class:`~unigen.solvers.tuned.TunedSolver` (a multistep exponential integrator whose
  corrections keep its consistency, so it still converges as the steps shrink), in the spirit
  of S4S (Frankel et al. 2025) and PAS (Wang et al. 2024); started from the GITS grid (or,
  with ``init="auto"``, from whichever of it and the default grid the untuned solver does
  better on).

The grid is parametrised as in :mod:`unigen.calibration` (N logits, positions along a dense copy
of the process's default schedule), so every candidate is strictly decreasing with fixed ends.
Gradients come from autograd through a float64 run of the sampler (:func:`run_tuned`, the same
update as the solver's program), times included: the network is differentiated with respect
to its time input. The objective is the log endpoint MSE, minimised by L-BFGS with a strong
Wolfe line search. A quarter of the calibration batch is held back: the returned iterate is
the one with the least held-back error among those whose fitted error is at most the
starting point's (the start itself qualifies), which guards against over-fitting where the
batch is small for the dimension.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .calibration import along_grid, calibration_noise, grid_positions
from .model import Model
from .parametrization import Prediction
from .reference import ode_endpoint, ode_trajectory
from .sample import check_model_kwargs
from .schedules import Schedule, check_grid, default_schedule, make_grid, register_schedule
from .solvers import Grid
from .solvers.tuned import TunedSolver, step_plan, weight_table

__all__ = ["TuneResult", "teacher_trajectory", "gits_grid", "ld3_grid", "tune_solver", "run_tuned", "least_cost_path",
           "Tuned", "LOSSES"]

_DENSE = 128  # dense times of the teacher trajectory (the DP's candidates)
_FINE = 32  # positions are read along a grid _FINE times denser still (linear interpolation)


@dataclass
class TuneResult:
    """A calibration's outcome.

    Attributes:
        grid: the times (float64, strictly decreasing, ends fixed).
        solver: the tuned solver (:func:`tune_solver`), or the solver the grid was fitted for.
        rmse: endpoint RMSE on the calibration batch (fit and held-back parts together).
        start_rmse: the same at the starting point.
        seconds: wall time, teacher solve included.
        iterations: L-BFGS function evaluations (0 for the DP).
        history: (fitted RMSE, held-back RMSE) after each optimiser round.
    """

    grid: Tensor
    solver: object
    rmse: float
    start_rmse: float
    seconds: float
    iterations: int = 0
    history: list = field(default_factory=list)

    def __repr__(self):
        return (f"TuneResult(steps={self.grid.numel() - 1}, rmse={self.rmse:.4g}, start_rmse={self.start_rmse:.4g}, "
                f"seconds={self.seconds:.3g})")


class _Setting:
    """What the three calibrations share: range, dense grid, calibration batch, teacher."""

    def __init__(self, model, steps, noise, n, event_shape, t_start, t_end, generator, dtype, tol, model_kwargs=None):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.model, self.steps, self.process = model, steps, model.process
        lo, hi = model.default_range()
        self.t0 = float(lo if t_start is None else t_start)
        self.t1 = float(hi if t_end is None else t_end)
        if not self.t0 > self.t1:
            raise ValueError(f"t_start must exceed t_end (noise -> data), got {self.t0} and {self.t1}")
        model.check_times(torch.tensor([self.t0, self.t1], dtype=torch.float64), "t_start/t_end", landing=True)
        # the calibration runs in float64 whatever the noise's dtype (a Model casts for its network)
        self.z = calibration_noise(self.process, self.t0, noise, n, event_shape, generator, dtype).to(torch.float64)
        if self.z.shape[0] < 4:
            raise ValueError(f"the calibration batch needs at least 4 draws (a quarter is held back), got {self.z.shape[0]}")
        self.kwargs = check_model_kwargs(model_kwargs)
        self.tol = tol
        base = default_schedule(self.process, self.t0)
        self.fine = make_grid(self.process, base, _DENSE * _FINE, t_start=self.t0, t_end=self.t1)
        self.dense = self.fine[::_FINE].clone()
        self.ends_at_zero = float(self.process.sigma(torch.tensor(self.t1, dtype=torch.float64))) == 0.0
        self.endpoint = None

    def target(self) -> Tensor:
        if self.endpoint is None:
            self.endpoint, _ = ode_endpoint(self.model, self.z, self.t0, self.t1, tol=self.tol, model_kwargs=self.kwargs)
        return self.endpoint

    def grid_of(self, theta: Tensor) -> Tensor:
        """Times from logits (differentiable in the interior, ends fixed)."""
        ts = along_grid(self.fine, grid_positions(theta))
        ends = torch.tensor([self.t0, self.t1], dtype=ts.dtype)
        return torch.cat([ends[:1], ts[1:-1], ends[1:]])

    def theta_of(self, grid: Tensor) -> Tensor:
        """Logits whose grid is ``grid`` (its times located on the fine grid by interpolation)."""
        fine = self.fine
        pos = []
        for t in grid.tolist():
            j = int(torch.searchsorted(-fine, torch.tensor(-t, dtype=fine.dtype)).clamp(1, fine.numel() - 1))
            w = (fine[j - 1] - t) / (fine[j - 1] - fine[j])
            pos.append((j - 1 + float(w)) / (fine.numel() - 1))
        pos[0], pos[-1] = 0.0, 1.0
        gaps = torch.tensor(pos, dtype=torch.float64).diff().clamp(min=1e-12)
        return gaps.log()


def teacher_trajectory(model: Model, z: Tensor, times: Tensor, tol: float = 1e-9, model_kwargs: dict | None = None) -> Tensor:
    """The probability-flow ODE solved from ``z`` at ``times[0]`` through every later time
    (:func:`unigen.reference.ode_trajectory`: one dopri5 solve, rtol = atol = ``tol``, landing on
    the last time and interpolating the others): shape ``(len(times), *z.shape)``."""
    return ode_trajectory(model, z, times, tol, interpolate=True, model_kwargs=model_kwargs)[0]


def gits_grid(model: Model, steps: int, *, noise: Tensor | None = None, n: int = 1024, event_shape=None,
              t_start=None, t_end=None, generator=None, dtype=torch.float64, reference_tol: float = 1e-9,
              trajectory: Tensor | None = None, model_kwargs: dict | None = None) -> TuneResult:
    r"""The N-step grid of least summed one-jump error along the teacher trajectory (GITS).

    cost[a, b] = RMSE(DDIM jump from the teacher state at dense time a to b, teacher state at b);
    the grid minimises sum cost over N jumps from dense time 0 to M (dynamic programming,
    O(N M^2)). ``trajectory`` (the teacher at the dense times) may be passed to share one solve.
    ``rmse`` is the summed cost (the DP's objective), not an endpoint error.
    """
    t_begin = time.perf_counter()
    s = _Setting(model, steps, noise, n, event_shape, t_start, t_end, generator, dtype, reference_tol, model_kwargs)
    if steps > _DENSE:
        raise ValueError(f"gits_grid picks at most {_DENSE} steps from its dense grid, got {steps}")
    traj = trajectory if trajectory is not None else teacher_trajectory(model, s.z, s.dense, reference_tol, s.kwargs)
    cost = _jump_costs(model, s.dense, traj, s.kwargs)
    grid, total, uniform_total = _dp(cost, s.dense, steps)
    return TuneResult(grid, "DDIM", total, uniform_total, time.perf_counter() - t_begin)


def _jump_costs(model: Model, dense: Tensor, traj: Tensor, model_kwargs: dict | None = None) -> Tensor:
    """cost[a, b] (a < b) of one DDIM jump between dense times (inf elsewhere)."""
    process = model.process
    m = dense.numel()
    alpha, sigma = process.alpha(dense), process.sigma(dense)
    cost = torch.full((m, m), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for a in range(m - 1):
            pred = Prediction(model.raw(traj[a], dense[a], None, model_kwargs), traj[a], dense[a], process,
                              model.parametrization)
            x0, eps = pred.x0, pred.eps
            jumps = alpha[a + 1:].reshape(-1, *[1] * x0.ndim) * x0 + sigma[a + 1:].reshape(-1, *[1] * x0.ndim) * eps
            err = (jumps - traj[a + 1:]).flatten(1).pow(2).mean(1).sqrt()
            cost[a, a + 1:] = err.to(torch.float64)
    return cost


def least_cost_path(cost: Tensor, steps: int) -> tuple[list, float]:
    """The ``steps`` jumps 0 = a_0 < a_1 < ... < a_steps = M - 1 of least summed cost[a_k, a_{k+1}]
    (dynamic programming, O(steps M^2)): (the indices, the total)."""
    m = cost.shape[0]
    if cost.ndim != 2 or cost.shape[1] != m:
        raise ValueError(f"cost must be a square matrix, got shape {tuple(cost.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= m - 1:
        raise ValueError(f"steps must be an integer in 1..{m - 1} (the dense points less one), got {steps!r}")
    best = torch.full((steps + 1, m), math.inf, dtype=torch.float64)
    arg = torch.zeros((steps + 1, m), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        best[k], arg[k] = (best[k - 1].unsqueeze(1) + cost.to(torch.float64)).min(0)  # over the jump's start
    path = [m - 1]
    for k in range(steps, 0, -1):
        path.append(int(arg[k, path[-1]]))
    return path[::-1], float(best[steps, m - 1])


def _dp(cost: Tensor, dense: Tensor, steps: int):
    """The GITS grid, its summed cost, and the summed cost of the uniform-index grid."""
    path, total = least_cost_path(cost, steps)
    idx = torch.linspace(0, cost.shape[0] - 1, steps + 1).round().long()
    uniform = float(sum(cost[int(a), int(b)] for a, b in zip(idx[:-1], idx[1:])))
    return dense[torch.tensor(path)].clone(), total, uniform


def run_tuned(model: Model, z: Tensor, ts: Tensor, order: int = 3, corrections: Tensor | None = None,
              lower_order_final: bool = True, corrector: bool = False, model_kwargs: dict | None = None,
              plan: tuple | None = None) -> Tensor:
    r"""A :class:`~unigen.solvers.tuned.TunedSolver` run from ``z`` over the times ``ts`` (its
    tuned step count: correction row i belongs to step i), differentiable with respect to the
    times, the corrections (N x L) and the model.

    The same update as the solver's program (``ug.sample``) from the same weight table, written
    with tensors: the schedule values come from the process at the (possibly grad-carrying)
    times and the network is called at them. ``plan`` (the run's :func:`step_plan`) may be passed when
    many runs share one (it depends only on the step count and which ends have an infinite
    log-SNR, not on the interior times).
    """
    process = model.process
    n = ts.numel() - 1
    if plan is None:
        plan = _run_plan(process, ts, order, corrections, lower_order_final, corrector)
    counts = plan[1]
    depth = max(counts)
    alpha, sigma = process.alpha(ts), process.sigma(ts)
    positive = (alpha > 0) & (sigma > 0)
    lam = torch.where(positive, torch.log(torch.where(positive, alpha / sigma, torch.ones_like(alpha))),
                      torch.where(alpha > 0, torch.full_like(alpha, math.inf), torch.full_like(alpha, -math.inf)))
    table = weight_table(lam, alpha, sigma, plan, corrections)
    ratio = sigma[1:] / torch.where(sigma[:-1] > 0, sigma[:-1], torch.ones_like(sigma[:-1]))
    past = []
    for i in range(n):
        pred = Prediction(model.raw(z, ts[i], None, model_kwargs), z, ts[i], process, model.parametrization)
        m = pred.x0
        past = [m, *past][:depth]
        if counts[i] == 0:
            if math.isinf(float(lam[i + 1].detach())):
                return m  # the landing step onto sigma = 0
            z = alpha[i + 1] * m + sigma[i + 1] * pred.eps  # out of zero SNR: DDIM
            continue
        z = ratio[i] * z + sum(table[i, j] * past[j] for j in range(counts[i]))
    return z


def _run_plan(process, ts: Tensor, order: int, corrections: Tensor | None, lower_order_final, corrector: bool) -> tuple:
    """``step_plan`` of a run of :func:`run_tuned` over the times ``ts``."""
    history = order if corrections is None else max(order, corrections.shape[1])
    return step_plan(Grid(process, ts.detach(), torch.float64, "cpu"), order, history, lower_order_final, corrector)


def _split(z: Tensor, target: Tensor, kwargs: dict | None):
    """(fit, held-back) parts of the batch, each (z, target, kwargs): every fourth draw is held
    back; a conditioning tensor with one row per draw is split with the draws."""
    keep = torch.ones(z.shape[0], dtype=torch.bool)
    keep[3::4] = False

    def part(mask):
        kw = None if kwargs is None else {
            k: (v[mask.to(v.device)] if isinstance(v, Tensor) and v.ndim and v.shape[0] == z.shape[0] else v)
            for k, v in kwargs.items()}
        return z[mask], target[mask], kw

    return part(keep), part(~keep)


LOSSES = ("l2", "mse")
_REJECTED = 1e3  # the log-loss value of a trial point the sampler cannot take (e^1000: never accepted)


def _fit(s: _Setting, order: int, corrector: bool, theta0: Tensor, corr0: Tensor | None, max_iter: int, rounds: int,
         losses: tuple):
    """L-BFGS on (theta[, corrections]) of each objective of ``losses`` in turn ("l2": the log
    mean per-draw distance to the teacher, robust to the few draws near a boundary between
    modes that dominate a mean square in high dimension; "mse": the log mean squared error),
    ``rounds`` rounds of ``max_iter`` evaluations each. Returns the iterate with the least
    held-back MSE among those whose fitted MSE is at most the start's (the start qualifies)."""
    for name in losses:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; valid names are {', '.join(LOSSES)}")
    target = s.target()
    (zf, yf, kf), (zv, yv, kv) = _split(s.z, target, s.kwargs)
    theta = theta0.clone().requires_grad_(True)
    params = [theta]
    corr = None
    if corr0 is not None:
        corr = corr0.clone().requires_grad_(True)
        params.append(corr)

    # the plan depends on the step count and the ends' log-SNRs only: one for every candidate grid
    plan = _run_plan(s.process, s.grid_of(theta0), order, corr0, True, corrector)

    def per_draw(z, y, kw, th, c):  # squared error per draw, averaged over its elements
        x = run_tuned(s.model, z, s.grid_of(th), order, c, corrector=corrector, model_kwargs=kw, plan=plan)
        return (x.to(torch.float64) - y.to(torch.float64)).pow(2).flatten(1).mean(1)

    def evaluate(th, c):
        with torch.no_grad():
            return float(per_draw(zf, yf, kf, th, c).mean()), float(per_draw(zv, yv, kv, th, c).mean())

    calls = 0
    start = evaluate(theta, corr)
    best = (start[1], theta.detach().clone(), None if corr is None else corr.detach().clone())
    history = [start]
    for name in losses:
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure(name=name, opt=opt):
            nonlocal calls
            calls += 1
            opt.zero_grad()
            # a trial point the sampler cannot take (a collapsed grid, overflow) gets a value far
            # above any reached, finite so that the line search's interpolation stays finite
            rejected = torch.tensor(_REJECTED, dtype=torch.float64)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                return rejected
            try:
                err = per_draw(zf, yf, kf, theta, corr)
            except (ValueError, RuntimeError, IndexError, FloatingPointError):
                return rejected
            loss = torch.log(err.mean() if name == "mse" else err.sqrt().mean())
            if not torch.isfinite(loss):
                return rejected
            loss.backward()
            return loss

        for _ in range(rounds):
            before = [p.detach().clone() for p in params]
            try:
                opt.step(closure)
                fit, val = evaluate(theta, corr)
            except (ValueError, RuntimeError, IndexError, FloatingPointError):  # e.g. a grid the model cannot take
                with torch.no_grad():
                    for p, b in zip(params, before):
                        p.copy_(b)
                break
            history.append((fit, val))
            if not (math.isfinite(fit) and math.isfinite(val)):
                with torch.no_grad():
                    for p, b in zip(params, before):
                        p.copy_(b)
                break
            if fit <= start[0] and val < best[0]:
                best = (val, theta.detach().clone(), None if corr is None else corr.detach().clone())
            if all(torch.equal(p.detach(), b) for p, b in zip(params, before)):
                break
    n_fit, n_val = zf.shape[0], zv.shape[0]
    start_total = (start[0] * n_fit + start[1] * n_val) / (n_fit + n_val)
    fit_best, val_best = evaluate(best[1], best[2])
    total = (fit_best * n_fit + val_best * n_val) / (n_fit + n_val)
    return best[1], best[2], math.sqrt(total), math.sqrt(start_total), calls, [tuple(map(math.sqrt, h)) for h in history]


def ld3_grid(model: Model, steps: int, *, order: int = 3, corrector: bool = False, noise: Tensor | None = None,
             n: int = 1024, event_shape=None, t_start=None, t_end=None, generator=None, dtype=torch.float64,
             reference_tol: float = 1e-9, init: Tensor | str = "default", losses=("mse",), max_iter: int = 15,
             rounds: int = 3, model_kwargs: dict | None = None) -> TuneResult:
    r"""The grid of a fixed solver learned by backpropagation through the sampler against the
    teacher endpoint: LD3's recipe (Tong et al. 2024) with an L2 loss in place of LPIPS.

    The solver is the untuned ``TunedSolver(order, corrector=corrector)``: DPM-Solver++(kM)
    ("taylor" form), or with ``corrector`` a UniPC-style predictor-corrector. ``init``:
    "default" (the process's default grid, as LD3), "gits" or a tensor of times; ``losses``:
    the objectives fitted in turn ("mse" and/or "l2", see :func:`tune_solver`). Sample with
    ``ug.sample(model, result.solver, schedule=result.grid)``."""
    t_begin = time.perf_counter()
    TunedSolver(order, corrector=corrector)  # refuses a bad order before any work
    s = _Setting(model, steps, noise, n, event_shape, t_start, t_end, generator, dtype, reference_tol, model_kwargs)
    theta0 = _initial_theta(s, init, reference_tol, order, corrector)
    theta, _, rmse, start, calls, hist = _fit(s, order, corrector, theta0, None, max_iter, rounds, tuple(losses))
    grid = check_grid(s.grid_of(theta).detach(), s.process)
    solver = TunedSolver(order, grid, corrector=corrector, info={"rmse": rmse, "start_rmse": start, "fit": "ld3"})
    return TuneResult(grid, solver, rmse, start, time.perf_counter() - t_begin, calls, hist)


def tune_solver(model: Model, steps: int, *, order: int = 3, corrector: bool = True, history: int | None = None,
                noise: Tensor | None = None, n: int = 1024, event_shape=None, t_start=None, t_end=None, generator=None,
                dtype=torch.float64, reference_tol: float = 1e-9, init: Tensor | str = "gits",
                coefficients: bool = True, losses=("l2", "mse"), max_iter: int = 15, rounds: int = 3,
                model_kwargs: dict | None = None) -> TuneResult:
    r"""A :class:`~unigen.solvers.tuned.TunedSolver` for ``model`` at ``steps`` steps: its grid and
    (with ``coefficients``) its per-step corrections, fitted by L-BFGS through the sampler
    against the teacher endpoint (module docstring), from the GITS grid (``init="gits"``), the
    default grid ("default"), the better of the two for the untuned solver ("auto") or given
    times.

    Args:
        order: the Adams predictor's order k (3: DPM-Solver++(3M)'s polynomial).
        corrector: correct each state with the next evaluation (UniPC's corrector, exact
            weights; no extra call; the order becomes k + 1).
        history: L, the most recent evaluations each step's corrections combine (default:
            ``order``; the corrector's reach is added where longer).
        noise / n / event_shape / generator / dtype: the calibration batch (as
            :func:`unigen.optimize_schedule`; 1024 draws by default, float64); every fourth
            draw is held back to choose the iterate returned.
        reference_tol: rtol = atol of the teacher (dopri5).
        losses: the objectives fitted in turn: "l2" (log mean distance per draw: robust to the
            rare draws near a boundary between modes, which dominate a mean square in high
            dimension) then "mse" (log mean squared error: the reported metric).
        max_iter, rounds: L-BFGS evaluations per round and rounds per objective (the
            held-back error is checked after each round).
        model_kwargs: conditioning for every network call (class labels, embeddings); a
            tensor with one row per calibration draw is split with the draws.

    Returns a :class:`TuneResult` whose ``solver`` samples on its own grid by default:
    ``ug.sample(model, result.solver, noise=z)``; ``result.solver.save(path)`` stores it.
    """
    t_begin = time.perf_counter()
    TunedSolver(order, corrector=corrector)  # refuses a bad order before any work
    s = _Setting(model, steps, noise, n, event_shape, t_start, t_end, generator, dtype, reference_tol, model_kwargs)
    history = order if history is None else history
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 6:
        raise ValueError(f"history must be an integer in 1..6, got {history!r}")
    theta0 = _initial_theta(s, init, reference_tol, order, corrector)
    corr0 = torch.zeros(steps, history, dtype=torch.float64) if coefficients else None
    theta, corr, rmse, start, calls, hist = _fit(s, order, corrector, theta0, corr0, max_iter, rounds, tuple(losses))
    grid = check_grid(s.grid_of(theta).detach(), s.process)
    info = {"rmse": rmse, "start_rmse": start, "calibration_draws": int(s.z.shape[0]),
            "init": init if isinstance(init, str) else "times", "seconds": time.perf_counter() - t_begin}
    solver = TunedSolver(order, grid, None if corr is None else corr, corrector=corrector, info=info)
    return TuneResult(grid, solver, rmse, start, time.perf_counter() - t_begin, calls, hist)


INITS = ("auto", "gits", "default")


def _initial_theta(s: _Setting, init, tol, order: int, corrector: bool) -> Tensor:
    """Logits of the starting grid: the default grid, the GITS grid, given times, or ("auto")
    whichever of the first two has the smaller endpoint error of the untuned solver on the
    fitted part of the batch (the DP's first-order jump cost can favour grids that a
    high-order solver handles worse than the default one)."""
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)} or a tensor of times, got {init!r}")
        default = torch.zeros(s.steps, dtype=torch.float64)
        if init == "default":
            return default
        traj = teacher_trajectory(s.model, s.z, s.dense, tol, s.kwargs)
        s.endpoint = traj[-1]
        cost = _jump_costs(s.model, s.dense, traj, s.kwargs)
        gits = s.theta_of(_dp(cost, s.dense, s.steps)[0])
        if init == "gits":
            return gits
        (zf, yf, kf), _ = _split(s.z, s.endpoint, s.kwargs)

        def error(theta):
            with torch.no_grad():
                try:
                    x = run_tuned(s.model, zf, s.grid_of(theta), order, None, corrector=corrector, model_kwargs=kf)
                except (ValueError, RuntimeError, FloatingPointError):
                    return math.inf
                return float((x.to(torch.float64) - yf.to(torch.float64)).pow(2).mean())

        return min((gits, default), key=error)
    grid = torch.as_tensor(init, dtype=torch.float64)
    if grid.numel() != s.steps + 1:
        raise ValueError(f"init times must hold steps + 1 = {s.steps + 1} values, got {grid.numel()}")
    if abs(float(grid[0]) - s.t0) > 1e-12 or abs(float(grid[-1]) - s.t1) > 1e-12:
        raise ValueError(f"init times must run from t_start={s.t0} to t_end={s.t1}, got {grid[0]:.6g} .. {grid[-1]:.6g}")
    return s.theta_of(check_grid(grid, s.process))


class Tuned(Schedule):
    """``schedule="tuned"``: the grid a :class:`~unigen.solvers.tuned.TunedSolver` was tuned on
    (``steps`` = its step count, or a multiple of it to refine the grid). The default schedule
    of a tuned solver."""

    name = "tuned"
    needs_model = True

    def times(self, process, steps, t_start=None, t_end=None, *, solver=None, **context):
        if not isinstance(solver, TunedSolver) or solver.times is None:
            raise ValueError('schedule="tuned" is the grid of a tuned TunedSolver (unigen.tuning.tune_solver); '
                             f"got solver {solver!r}")
        grid = solver.grid_times(steps)
        for given, have, what in ((t_start, grid[0], "t_start"), (t_end, grid[-1], "t_end")):
            if given is not None and abs(float(given) - float(have)) > 1e-12:
                raise ValueError(f"this solver was tuned from {float(grid[0]):g} to {float(grid[-1]):g}; "
                                 f"{what}={given} asks for another range (tune it for that range)")
        return grid


register_schedule(Tuned())
