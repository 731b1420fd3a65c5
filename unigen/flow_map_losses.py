r"""Training objectives of two-time models (:class:`~unigen.flow_map.FlowMap`): consistency models,
MeanFlow, flow-map self-distillation, shortcut models and teacher regression, on any process.

Conventions (as in the rest of unigen and docs/theory.md, section 13): time runs from data
(t small) to noise (t large), z_t = alpha_t x + sigma_t eps, and a flow map X_{t->s} maps a start
time t to a target time s <= t. The conditional velocity of the path is
d z_t / dt = alpha'_t x + sigma'_t eps, and the PF-ODE velocity v(z, t) is its conditional mean.
Papers that run time the other way (t = 0 noise, t = 1 data: shortcut models, the
self-distillation paper's interpolant) are converted in each docstring.

Every objective is a function ``loss(flow_map, x, *, generator=None, teacher=None, target=None,
step=0, steps=1, **options) -> scalar tensor``:

* ``flow_map``: the :class:`FlowMap` being trained (gradients flow through it);
* ``x``: a data batch [B, *event];
* ``teacher``: a one-time :class:`~unigen.model.Model` of the same process (distillation), where
  the objective uses one;
* ``target``: the flow map whose stop-gradient value forms the target (an EMA copy of
  ``flow_map``), where the objective has a target network; default ``flow_map`` itself under
  ``torch.no_grad`` (the stop-gradient target of iCT);
* ``step``, ``steps``: the training step and the run length (curricula).

``FLOW_MAP_OBJECTIVES`` maps the names to :class:`FlowMapObjective` records (the function, whether
it needs / may take a teacher, the parametrizations it supports, its default target EMA);
:func:`get_objective` looks one up with a clear error.

**Times.** Objectives that draw continuous times draw them in the *flow-matching-equivalent*
time u (the flow-matching time of equal log-SNR, :func:`unigen.process.time_change`) and map
back, so that "uniform" means uniform in t for flow matching and the same SNR law on every other
process. Start times t lie in [t_lo, t_start] (t_lo the first training time of
:func:`unigen.time_samplers.default_t_range`, t_start the start of sampling), target times s in
[t_end, t] (t_end the end of sampling, :meth:`FlowMap.default_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ._utils import expand_like
from .flow_map import FlowMap, integrated
from .model import Model
from .noise import randn
from .parametrization import PathCoefficients, undetermined_reason
from .process import FlowMatching, time_change
from .schedules import default_schedule, make_grid
from .solvers.adaptive import LANDING_TIME
from .time_samplers import default_t_range

__all__ = [
    "FlowMapObjective",
    "FLOW_MAP_OBJECTIVES",
    "get_objective",
    "consistency_distillation_loss",
    "consistency_training_loss",
    "ict_discretisation_steps",
    "continuous_consistency_loss",
    "meanflow_loss",
    "lagrangian_loss",
    "eulerian_loss",
    "progressive_loss",
    "shortcut_loss",
    "flow_map_matching_loss",
    "diagonal_loss",
    "pseudo_huber",
    "teacher_solve",
    "karras_times",
    "TrainingTimes",
]

_FM = FlowMatching()


# ---------------------------------------------------------------------------------------
# shared pieces: times, noise, distances, velocities
# ---------------------------------------------------------------------------------------
class TrainingTimes:
    """The training times of a flow map and the change to the flow-matching-equivalent time u.

    ``t_start, t_end = flow_map.default_range()`` (sampling goes t_start -> t_end), ``t_lo``
    the first training time of the process (start times stay in [t_lo, t_start]); ``u_*`` the
    same times as flow-matching times of equal log-SNR."""

    def __init__(self, flow_map: FlowMap, dtype: torch.dtype, device=None):
        self.process = flow_map.process
        self.t_start, self.t_end = (float(v) for v in flow_map.default_range())
        self.t_lo = min(max(default_t_range(self.process)[0], self.t_end), self.t_start)
        self.dtype, self.device = dtype, device
        self._grids: dict = {}
        self.u_start, self.u_end, self.u_lo = (float(self.to_u(torch.tensor(v, dtype=torch.float64))) for v in
                                               (self.t_start, self.t_end, self.t_lo))

    def to_u(self, t: Tensor) -> Tensor:
        return t if isinstance(self.process, FlowMatching) else time_change(self.process, _FM, t)[0]

    def from_u(self, u: Tensor) -> Tensor:
        """Process times of flow-matching-equivalent times u, clamped to [t_end, t_start]."""
        t = u if isinstance(self.process, FlowMatching) else time_change(_FM, self.process, u)[0]
        return t.clamp(self.t_end, self.t_start)

    def uniform_u(self, n: int, generator, lo: float | None = None) -> Tensor:
        lo = self.u_end if lo is None else lo
        return lo + (self.u_start - lo) * torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)

    def pair(self, n: int, generator, diagonal_fraction: float = 0.0, grid_fraction: float = 0.0,
             grid_steps: tuple = (1, 2, 4, 8)) -> tuple[Tensor, Tensor]:
        """(t, s), s <= t: t uniform in u over [u_lo, u_start], s uniform in u over [u_end, u(t)];
        a fraction ``diagonal_fraction`` of the pairs has s = t, and a fraction ``grid_fraction``
        is a step (t_i, t_{i+1}) of the sampling grids (the process's default schedule over
        :meth:`FlowMap.default_range`) of ``grid_steps`` steps: the jumps a few-step sampler
        asks for, which continuous draws reach with probability zero at the start t = t_start."""
        u_t = self.uniform_u(n, generator, self.u_lo)
        u_s = self.u_end + (u_t - self.u_end) * torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)
        if diagonal_fraction > 0:
            eq = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device) < diagonal_fraction
            u_s = torch.where(eq, u_t, u_s)
        t = self.from_u(u_t)
        t, s = t, torch.minimum(self.from_u(u_s), t)
        if grid_fraction > 0:
            steps = self.grid_steps(grid_steps)
            pick = torch.randint(0, steps.shape[0], (n,), generator=generator, device=generator.device if generator is not None else None)
            on_grid = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device) < grid_fraction
            g = steps[pick.cpu()].to(dtype=self.dtype, device=self.device)
            t, s = torch.where(on_grid, g[:, 0], t), torch.where(on_grid, g[:, 1], s)
        return t, s

    def grid_steps(self, counts: tuple) -> Tensor:
        """Every step (t_i, t_{i+1}) of the default sampling grids of ``counts`` steps: [M, 2], float64."""
        key = tuple(counts)
        if key not in self._grids:
            sched = default_schedule(self.process, self.t_start)
            rows = []
            for k in counts:
                ts = make_grid(self.process, sched, int(k), self.t_start, self.t_end)
                rows.append(torch.stack([ts[:-1], ts[1:]], 1))
            self._grids[key] = torch.cat(rows).to(torch.float64)
        return self._grids[key]


def _noise(x: Tensor, generator) -> Tensor:
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _noised(process, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    return expand_like(process.alpha(t), x) * x + expand_like(process.sigma(t), x) * eps


def _conditional_velocity(process, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """d z_t / dt = alpha'_t x + sigma'_t eps."""
    return expand_like(process.d_alpha(t), x) * x + expand_like(process.d_sigma(t), x) * eps


def _sq(a: Tensor) -> Tensor:
    """Per-sample mean over the event dims of a^2: [B]."""
    return (a * a).reshape(a.shape[0], -1).mean(1)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    r"""Per-sample pseudo-Huber distance sqrt(||a - b||^2 + c^2) - c (iCT, Song & Dhariwal 2023),
    default c = 0.00054 sqrt(d) with d the event size (their value for 32x32x3 data, scaled)."""
    d = a[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else float(c)
    diff = (a - b).reshape(a.shape[0], -1)
    return torch.sqrt((diff * diff).sum(1) + c * c) - c


def _distance(a: Tensor, b: Tensor, kind: str, huber_c: float | None = None) -> Tensor:
    if kind == "l2":
        return _sq(a - b)
    if kind == "pseudo_huber":
        return pseudo_huber(a, b, huber_c)
    raise ValueError(f"unknown distance {kind!r}; valid values are l2, pseudo_huber")


def _check_teacher(teacher, flow_map: FlowMap, name: str, required: bool) -> Model | None:
    if teacher is None:
        if required:
            raise ValueError(f"the {name} objective needs a teacher (a unigen Model of the PF-ODE to distil)")
        return None
    if not isinstance(teacher, Model):
        raise TypeError(f"teacher must be a unigen Model, got {type(teacher).__name__}")
    if teacher.process is not flow_map.process and _key(teacher.process) != _key(flow_map.process):
        teacher = teacher.to(flow_map.process)
    lo, hi = teacher.t_range
    start, end = flow_map.default_range()
    slack = 1e-6 * max(1.0, abs(start))
    if start > hi + slack or end < lo - slack:
        raise ValueError(f"the teacher is defined on t in [{lo:.6g}, {hi:.6g}] but the {name} objective trains the flow map "
                         f"on [{end:.6g}, {start:.6g}]; give the flow map t_range inside the teacher's")
    return teacher


def _at_end(flow_map: FlowMap, t: Tensor, z: Tensor, f: Tensor) -> Tensor:
    """The consistency target f(z, t) with the boundary condition f(z, t_end) = z imposed where
    t = t_end (exactly, whatever the network returns there)."""
    end = expand_like(t <= flow_map.default_range()[1], z)
    return torch.where(end, z, f)


def _require_parametrization(flow_map: FlowMap, name: str) -> None:
    """Refuse a map whose parametrization the objective ``name`` cannot train (a loss called
    directly, without :func:`fit_flow_map`'s check)."""
    allowed = FLOW_MAP_OBJECTIVES[name].parametrizations
    if flow_map.parametrization not in allowed:
        raise ValueError(f"the {name} objective trains {', '.join(allowed)} flow maps only, got {flow_map.parametrization!r}")


def _check_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
    return float(v)


def _check_positive(name: str, v, zero_ok: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if zero_ok else v > 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} number, got {v!r}")
    return float(v)


def _key(process):
    return process.value_key() if hasattr(process, "value_key") else id(process)


def _velocity(flow_map: FlowMap, teacher: Model | None, z: Tensor, t: Tensor) -> Tensor:
    """The PF-ODE velocity at (z, t), no gradient: the teacher's, else the flow map's own tangent
    (self-distillation)."""
    with torch.no_grad():
        model = teacher if teacher is not None else flow_map.tangent()
        return model.predict(z, t).velocity


def _jvp(fn: Callable, primals: tuple, tangents: tuple) -> tuple[Tensor, Tensor]:
    return torch.func.jvp(fn, primals, tangents)


def _target_map(flow_map: FlowMap, target: FlowMap | None) -> FlowMap:
    return flow_map if target is None else target


# ---------------------------------------------------------------------------------------
# the diagonal (flow-matching) term: teaches the tangent d/ds X_{t->s} at s = t
# ---------------------------------------------------------------------------------------
def diagonal_loss(flow_map: FlowMap, x: Tensor, eps: Tensor, t: Tensor, teacher: Model | None = None) -> Tensor:
    r"""The flow-matching term of the two-time objectives: the tangent model
    (:meth:`FlowMap.tangent`, in its own parametrization P: velocity for ``average_velocity``
    and endpoint-type maps, x0 for ``x0``) regressed on P's conditional target a_P x + b_P eps
    at z_t (for velocity, alpha' x + sigma' eps: flow matching), or on the teacher's P
    prediction. Per-sample mean squared error [B]."""
    tangent = flow_map.tangent()
    z = _noised(flow_map.process, x, eps, t)
    out = tangent.raw(z, t)
    name = tangent.parametrization
    if teacher is not None:
        with torch.no_grad():
            tgt = teacher.predict(z, t).as_(name)
    else:
        a, b = PathCoefficients(flow_map.process, t, z).ab(name)
        tgt = a * x + b * eps
    return _sq(out - tgt)


# ---------------------------------------------------------------------------------------
# consistency models: discrete (CD, iCT) and continuous (sCM)
# ---------------------------------------------------------------------------------------
def karras_times(flow_map: FlowMap, n: int, rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 dtype=torch.float64, device=None, include_start: bool = False, include_end: bool = False) -> Tensor:
    r"""The consistency-model discretisation, ascending: n times with VE levels (sigma/alpha)
    sigma_i = (a + (i - 1)/(n - 1) (b - a))^rho, a = sigma_lo^{1/rho}, b = sigma_hi^{1/rho}
    (Karras et al. 2022; Song et al. 2023), mapped to ``flow_map``'s process at equal log-SNR.
    sigma_lo = max(sigma_min, VE level at the end of sampling), sigma_hi = min(sigma_max, VE level
    at its start) (a process whose start has alpha = 0, as flow matching, is cut at sigma_max).
    ``include_start`` appends the start of sampling where the levels were cut below it (n + 1
    times), so that a map trained on the grid is never asked to jump from outside it (flow
    matching's t = 1, VP's t = 1 at level 157)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"the discretisation needs n >= 2 times, got {n!r}")
    proc = flow_map.process
    t_start, t_end = flow_map.default_range()

    def level(t):
        t = torch.tensor(float(t), dtype=torch.float64)
        a, s = proc.alpha(t), proc.sigma(t)
        return float(s / a) if float(a) > 0 else math.inf

    lo, hi = max(sigma_min, level(t_end)), min(sigma_max, level(t_start))
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    sig = (lo ** (1 / rho) + i * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    t = proc.t_from_log_snr(-2.0 * torch.log(sig)).clamp(min(t_end, t_start), max(t_end, t_start))
    if include_start and hi < level(t_start) and float(t[-1]) < t_start:
        t = torch.cat([t, torch.tensor([float(t_start)], dtype=torch.float64)])
    if include_end and float(t[0]) > t_end + 1e-9 * max(1.0, abs(t_end)):
        t = torch.cat([torch.tensor([float(t_end)], dtype=torch.float64), t])
    return t.to(dtype=dtype, device=device)


def _ve_level(process, t: Tensor) -> Tensor:
    return process.sigma(t) / process.alpha(t)


def teacher_step(teacher: Model, z: Tensor, t: Tensor, s: Tensor, solver: str = "heun") -> Tensor:
    """One teacher ODE step z_t -> z_s (per-sample t, s), no gradient: ``"ddim"`` (the exact
    step for a constant x0 prediction), ``"heun"`` (Heun in the process time with the PF-ODE
    velocity, EDM's second-order step; onto sigma = 0 it lands on x0_hat) or ``"exact"`` (:func:`unigen.flow_map.integrated`)."""
    with torch.no_grad():
        if solver == "exact":
            return integrated(teacher).jump(z, t, s)
        if solver == "ddim":
            x0 = teacher.predict(z, t).x0
            p = teacher.process
            a = expand_like(p.sigma(s) / p.sigma(t), z)
            return a * z + (expand_like(p.alpha(s), z) - a * expand_like(p.alpha(t), z)) * x0
        if solver == "heun":
            h = expand_like(s - t, z)
            pred = teacher.predict(z, t)
            v1 = pred.velocity
            v2 = teacher.predict(z + h * v1, s).velocity
            heun = z + 0.5 * h * (v1 + v2)
            # onto zero noise the step lands on x0_hat (EDM skips Heun's correction there; the
            # velocity at sigma = 0 is 0/0 for an x0 or denoiser output)
            return torch.where(expand_like(teacher.process.sigma(s) == 0, z), pred.x0, heun)
    raise ValueError(f"unknown teacher solver {solver!r}; valid values are ddim, heun, exact")


def consistency_distillation_loss(flow_map: FlowMap, x: Tensor, *, teacher: Model, generator=None,
                                  target: FlowMap | None = None, n_steps: int = 18, solver: str = "heun",
                                  rho: float = 7.0, distance: str = "l2", huber_c: float | None = None,
                                  step: int = 0, steps: int = 1) -> Tensor:
    r"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency models", Alg. 2).

    With the discretisation t_1 < ... < t_N (:func:`karras_times`, ``n_steps`` = N, plus the start
    of sampling where the levels stop below it), n uniform in {1, ..., N-1} and z = alpha_{t_{n+1}} x + sigma_{t_{n+1}} eps,

        L = E d( f_theta(z, t_{n+1}),  sg f_target(z_hat, t_n) ),  z_hat = Phi_teacher(z; t_{n+1} -> t_n)

    with f(z, t) = X_{t->t_end}(z) (:meth:`FlowMap.consistency`), Phi one teacher step
    (:func:`teacher_step`: Heun as in the paper, DDIM, or exact), f_target the EMA copy
    ``target`` (the paper's mu = 0.95: ``fit_flow_map(..., target_ema=0.95)``) or, by default,
    the plain stop-gradient of the online weights (iCT's finding, and on a 2-D Gaussian 300-step
    run one-step error 0.44 against 1.96 with mu = 0.95), d the squared L2 (``distance="l2"``, mean over dims) or pseudo-Huber.
    The grid starts at t_end, where f(z, t_end) = z anchors the consistency function; that
    needs a map with X_{t->t} = z for every t, the ``average_velocity`` parametrization (``x0``
    is undefined at a zero-noise end, ``endpoint``/``displacement`` are not anchored)."""
    teacher = _check_teacher(teacher, flow_map, "consistency_distillation", True)
    _require_parametrization(flow_map, "consistency_distillation")
    grid = karras_times(flow_map, n_steps, rho, dtype=x.dtype, device=x.device, include_start=True, include_end=True)
    b = x.shape[0]
    n = torch.randint(0, grid.numel() - 1, (b,), generator=generator, device=generator.device if generator is not None else None).to(x.device)
    t_hi, t_lo = grid[n + 1], grid[n]
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t_hi)
    z_prev = teacher_step(teacher, z, t_hi, t_lo, solver)
    with torch.no_grad():
        tgt = _at_end(flow_map, t_lo, z_prev, _target_map(flow_map, target).consistency(z_prev, t_lo))
    return _distance(flow_map.consistency(z, t_hi), tgt, distance, huber_c).mean()


def ict_discretisation_steps(step: int, steps: int, s0: int = 10, s1: int = 1280) -> int:
    r"""iCT's discretisation curriculum (Song & Dhariwal 2023, eq. 5): the number of times at
    training step k of K, N(k) = min(s0 2^floor(k / K'), s1) + 1 with
    K' = floor(K / (log2 floor(s1 / s0) + 1)): doubling from s0 + 1 to s1 + 1."""
    kp = max(1, math.floor(steps / (math.log2(math.floor(s1 / s0)) + 1)))
    return int(min(s0 * 2 ** math.floor(step / kp), s1)) + 1


def consistency_training_loss(flow_map: FlowMap, x: Tensor, *, generator=None, target: FlowMap | None = None,
                              step: int = 0, steps: int = 1, s0: int = 10, s1: int = 1280, p_mean: float = -1.1,
                              p_std: float = 2.0, rho: float = 7.0, huber_c: float | None = None,
                              teacher=None) -> Tensor:
    r"""Consistency training with the improvements of iCT (Song & Dhariwal 2023, "Improved
    techniques for training consistency models").

    With the discretisation sigma_1 < ... < sigma_N of :func:`karras_times` (VE levels sigma/alpha),
    N = N(k) the curriculum of :func:`ict_discretisation_steps`, i drawn with iCT's log-normal
    probabilities p(i) ∝ erf((ln sigma_{i+1} - P_mean)/(sqrt 2 P_std)) - erf((ln sigma_i - P_mean)/(sqrt 2 P_std))
    and the *same* eps at both times,

        L = E lambda(sigma_i) d( f_theta(alpha_{i+1} x + sigma_{i+1} eps, t_{i+1}),  sg f_theta(alpha_i x + sigma_i eps, t_i) ),

    lambda = 1/(sigma_{i+1} - sigma_i) (in VE levels), d the pseudo-Huber distance with
    c = 0.00054 sqrt(d), and no EMA target (``target`` is used if given). The VE levels are those
    of ``flow_map``'s process at equal log-SNR, so on VE/EDM this is iCT verbatim. Needs no
    teacher. The grid starts at t_end (the boundary condition, as in consistency distillation);
    ``average_velocity`` maps only."""
    if teacher is not None:
        raise ValueError("the consistency_training objective learns from data alone and takes no teacher "
                         "(use consistency_distillation to distil a teacher)")
    _require_parametrization(flow_map, "consistency_training")
    n_times = ict_discretisation_steps(step, steps, s0, s1)
    grid = karras_times(flow_map, n_times, rho, dtype=torch.float64, include_end=True)
    proc = flow_map.process
    lev = _ve_level(proc, grid)
    cdf = torch.erf((torch.log(lev) - p_mean) / (math.sqrt(2.0) * p_std))
    prob = (cdf[1:] - cdf[:-1]).clamp_min(0)
    b = x.shape[0]
    i = torch.multinomial(prob / prob.sum(), b, replacement=True, generator=generator).to(x.device)
    weight = (1.0 / (lev[i + 1] - lev[i])).to(x.dtype).to(x.device)
    grid = grid.to(dtype=x.dtype, device=x.device)
    t_hi, t_lo = grid[i + 1], grid[i]
    eps = _noise(x, generator)
    with torch.no_grad():
        z_lo = _noised(proc, x, eps, t_lo)
        tgt = _at_end(flow_map, t_lo, z_lo, _target_map(flow_map, target).consistency(z_lo, t_lo))
    pred = flow_map.consistency(_noised(proc, x, eps, t_hi), t_hi)
    return (weight * pseudo_huber(pred, tgt, huber_c)).mean()


def _lognormal_times(tt: TrainingTimes, n: int, generator, p_mean: float, p_std: float) -> Tensor:
    """Start times with log VE level ~ N(p_mean, p_std^2) (EDM / sCM), clamped to [t_lo, t_start]."""
    lev = torch.exp(p_mean + p_std * torch.randn(n, generator=generator, dtype=tt.dtype, device=tt.device))
    t = tt.process.t_from_log_snr(-2.0 * torch.log(lev))
    return t.clamp(tt.t_lo, tt.t_start)


def continuous_consistency_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                                tangent_c: float = 0.1, p_mean: float = -1.0, p_std: float = 1.4,
                                target=None, step: int = 0, steps: int = 1) -> Tensor:
    r"""Continuous-time consistency models (sCM: Lu & Song 2024, "Simplifying, stabilizing and
    scaling continuous-time consistency models").

    The limit N -> infinity of consistency training / distillation: the consistency function
    f(z, t) = X_{t->t_end}(z) must be constant along the PF-ODE, df/dt = partial_t f + (grad_z f) v = 0.
    Its gradient (their eq. 8, without the TrigFlow-specific factors) is E <grad_theta f_theta, g>
    with g = df_{theta^-}/dt, computed here by one JVP with tangent (v, 1) in (z, t) and written as

        L = E || f_theta(z_t, t) - sg( f_theta(z_t, t) - g / (||g|| + c) ) ||^2      (per-sample mean)

    with sCM's tangent normalisation (c = ``tangent_c``, 0.1). v is the teacher's PF-ODE velocity
    (sCD, distillation) or the conditional velocity alpha' x + sigma' eps (sCT, training: an
    unbiased estimate of v). Times: log VE level ~ N(P_mean, P_std^2) = N(-1.0, 1.4^2) as sCM.
    The time derivative is in the process's own time t; TrigFlow's adaptive weighting and
    tangent warm-up are not used. Supports every parametrization."""
    _require_parametrization(flow_map, "scm")
    _check_positive("tangent_c", tangent_c)
    teacher = _check_teacher(teacher, flow_map, "scm", False)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    t = _lognormal_times(tt, x.shape[0], generator, p_mean, p_std)
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    v = _velocity(flow_map, teacher, z, t) if teacher is not None else _conditional_velocity(flow_map.process, x, eps, t)
    f, g = _jvp(lambda zz, tt_: flow_map.consistency(zz, tt_), (z, t), (v, torch.ones_like(t)))
    g = g.detach()
    norm = g.reshape(g.shape[0], -1).norm(dim=1)
    g = g / expand_like(norm + tangent_c, g)
    return _sq(f - (f.detach() - g)).mean()


# ---------------------------------------------------------------------------------------
# MeanFlow
# ---------------------------------------------------------------------------------------
def meanflow_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                  equal_fraction: float = 0.75, p_mean: float = -0.4, p_std: float = 1.0,
                  adaptive_p: float = 1.0, adaptive_c: float = 1e-3, target=None, step: int = 0,
                  steps: int = 1) -> Tensor:
    r"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean flows for one-step generative modeling").

    The average velocity u(z, t, s) = (X_{t->s}(z) - z)/(s - t) (the ``average_velocity``
    parametrization, the network output) satisfies the MeanFlow identity
    u = v(z_t, t) - (t - s) du/dt with du/dt = partial_t u + (grad_z u) v (a JVP with tangent
    (v, 1, 0) in (z, t, s)). The loss regresses u on the stop-gradient target

        u_tgt = v - (t - s) sg(du/dt),     L = E sg(w) ||u_theta - u_tgt||^2,  w = 1/(||.||^2 + c)^p

    (their adaptive weighting, p = 1, c = 1e-3; ||.||^2 the mean over dims). v is the conditional
    velocity alpha' x + sigma' eps (training, as the paper) or the teacher's PF-ODE velocity.
    The paper's time convention (t = 1 noise, r < t the target) is ours with r = s. Times: both
    from a logit-normal (P_mean, P_std) = (-0.4, 1.0) in the flow-matching-equivalent time
    (sorted: t the larger), with s = t for a fraction ``equal_fraction`` (their 75%) of the batch.
    Only the ``average_velocity`` parametrization."""
    _require_parametrization(flow_map, "meanflow")
    teacher = _check_teacher(teacher, flow_map, "meanflow", False)
    _check_fraction("equal_fraction", equal_fraction)
    _check_positive("adaptive_p", adaptive_p, zero_ok=True)
    _check_positive("adaptive_c", adaptive_c)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    b = x.shape[0]
    dev = generator.device if generator is not None else None
    u = torch.sigmoid(p_mean + p_std * torch.randn(2, b, generator=generator, dtype=x.dtype, device=dev)).to(x.device)
    u = tt.u_end + (tt.u_start - tt.u_end) * u
    u_t, u_s = u.max(0).values.clamp_min(tt.u_lo), u.min(0).values
    eq = torch.rand(b, generator=generator, dtype=x.dtype, device=dev).to(x.device) < equal_fraction
    t = tt.from_u(u_t)
    s = torch.where(eq, t, torch.minimum(tt.from_u(u_s), t))
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    v = _velocity(flow_map, teacher, z, t) if teacher is not None else _conditional_velocity(flow_map.process, x, eps, t)
    out, dudt = _jvp(lambda zz, t_, s_: flow_map.raw(zz, t_, s_), (z, t, s), (v, torch.ones_like(t), torch.zeros_like(s)))
    u_tgt = v - expand_like(t - s, v) * dudt.detach()
    err = (out - u_tgt).pow(2).reshape(b, -1).sum(1)  # the paper's squared L2 norm, not the mean over dims
    w = 1.0 / (err.detach() + adaptive_c) ** adaptive_p
    return (w * err).mean()


# ---------------------------------------------------------------------------------------
# flow-map self-distillation (Boffi, Albergo & Vanden-Eijnden 2025)
# ---------------------------------------------------------------------------------------
def lagrangian_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                    diagonal_weight: float = 1.0, target: FlowMap | None = None, step: int = 0,
                    steps: int = 1, grid_fraction: float = 0.0) -> Tensor:
    r"""Lagrangian self-distillation, LSD (Boffi, Albergo & Vanden-Eijnden 2025, "How to build a
    consistency model: learning flow maps via self-distillation").

    The map follows the flow in its end time: d/ds X_{t->s}(z) = v(X_{t->s}(z), s). With
    z = z_t, (t, s) drawn with s <= t (:class:`TrainingTimes`),

        L = E || d/ds X_theta(z, t, s) - sg v(X_theta(z, t, s), s) ||^2 + w_diag L_diag,

    d/ds by a JVP with tangent 1 in s, v the map's own tangent (self-distillation; from
    ``target`` if given) or the teacher's velocity, and L_diag the flow-matching term
    (:func:`diagonal_loss`) that teaches the tangent.
    Boffi et al. write X_{s,t} for the map from s to t on an interpolant from noise (time 0) to
    data (time 1); here t is the start and s the target, with data at small times, so their
    d/dt (the end time) is our d/ds and their d/ds (the start time) our d/dt.
    Supports every parametrization."""
    teacher = _check_teacher(teacher, flow_map, "lagrangian", False)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    t, s = tt.pair(x.shape[0], generator, grid_fraction=grid_fraction)
    s = s.clamp_min(tt.t_lo)  # v(., s) is evaluated: stay where every parametrization gives a velocity
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    end, d_end = _jvp(lambda s_: flow_map.jump(z, t, s_), (s,), (torch.ones_like(s),))
    v = _velocity(_target_map(flow_map, target), teacher, end.detach(), s)
    loss = _sq(d_end - v).mean()
    if diagonal_weight:
        loss = loss + diagonal_weight * diagonal_loss(flow_map, x, eps, t, teacher).mean()
    return loss


def eulerian_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                  diagonal_weight: float = 1.0, target: FlowMap | None = None, step: int = 0,
                  steps: int = 1, grid_fraction: float = 0.0) -> Tensor:
    r"""Eulerian self-distillation, ESD (Boffi, Albergo & Vanden-Eijnden 2025).

    The map is constant along the flow in its start time: d/dt X_{t->s}(z_t) =
    partial_t X + (grad_z X) v(z_t, t) = 0. With (t, s), s <= t,

        L = E || partial_t X_theta(z, t, s) + (grad_z X_theta(z, t, s)) sg v(z, t) ||^2 + w_diag L_diag,

    the residual by one JVP with tangent (v, 1, 0) in (z, t, s), differentiated in full (the
    gradient goes through the JVP; with a stop-gradient on the JVP instead and the
    ``average_velocity`` parametrization this is MeanFlow, :func:`meanflow_loss`). v: the map's
    own tangent (from ``target`` if given) or the teacher's velocity.
    Boffi et al. write X_{s,t} for the map from s to t on an interpolant from noise (time 0) to
    data (time 1); here t is the start and s the target, with data at small times, so their
    d/dt (the end time) is our d/ds and their d/ds (the start time) our d/dt.
    Supports every parametrization."""
    teacher = _check_teacher(teacher, flow_map, "eulerian", False)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    t, s = tt.pair(x.shape[0], generator, grid_fraction=grid_fraction)
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    v = _velocity(_target_map(flow_map, target), teacher, z, t)
    _, dx = _jvp(lambda zz, t_: flow_map.jump(zz, t_, s), (z, t), (v, torch.ones_like(t)))
    loss = _sq(dx).mean()
    if diagonal_weight:
        loss = loss + diagonal_weight * diagonal_loss(flow_map, x, eps, t, teacher).mean()
    return loss


def progressive_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                     diagonal_weight: float = 1.0, target: FlowMap | None = None, step: int = 0,
                     steps: int = 1, grid_fraction: float = 0.0) -> Tensor:
    r"""Progressive self-distillation, PSD (Boffi, Albergo & Vanden-Eijnden 2025).

    The semigroup law: a jump t -> s equals two jumps through an intermediate time
    m = s + gamma (t - s), gamma ~ U(0, 1):

        L = E || X_theta(z, t, s) - sg X(X(z, t, m), m, s) ||^2 + w_diag L_diag

    (the two-jump target from ``target`` if given, else the map itself without gradient), plus
    the flow-matching term (:func:`diagonal_loss`; on the teacher's prediction with a
    teacher).
    Boffi et al. write X_{s,t} for the map from s to t on an interpolant from noise (time 0) to
    data (time 1); here t is the start and s the target, with data at small times, so their
    d/dt (the end time) is our d/ds and their d/ds (the start time) our d/dt.
    Supports every parametrization."""
    teacher = _check_teacher(teacher, flow_map, "progressive", False)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    t, s = tt.pair(x.shape[0], generator, grid_fraction=grid_fraction)
    gamma = torch.rand(x.shape[0], generator=generator, dtype=x.dtype,
                       device=generator.device if generator is not None else None).to(x.device)
    m = s + gamma * (t - s)
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    tm = _target_map(flow_map, target)
    with torch.no_grad():
        tgt = tm.jump(tm.jump(z, t, m), m, s)
    loss = _sq(flow_map.jump(z, t, s) - tgt).mean()
    if diagonal_weight:
        loss = loss + diagonal_weight * diagonal_loss(flow_map, x, eps, t, teacher).mean()
    return loss


# ---------------------------------------------------------------------------------------
# shortcut models (Frans, Hafner, Levine & Abbeel 2024)
# ---------------------------------------------------------------------------------------
def shortcut_loss(flow_map: FlowMap, x: Tensor, *, generator=None, teacher: Model | None = None,
                  max_steps: int = 128, self_consistency_fraction: float = 0.25,
                  target: FlowMap | None = None, step: int = 0, steps: int = 1) -> Tensor:
    r"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One step diffusion via shortcut models").

    A shortcut s(z, t, d) is the average velocity over a step of size d: here
    u(z, t, t - d) of the ``average_velocity`` parametrization. Their training mixes

    * flow matching at d = 0 (:func:`diagonal_loss`: u(z, t, t) on alpha' x + sigma' eps, or on
      the teacher) on a fraction 1 - ``self_consistency_fraction`` of the batch, and
    * self-consistency on dyadic steps d = 2^-k, k in {1, ..., log2 max_steps}: one step of 2d
      equals two steps of d,

          u(z, t, t - 2d) ~ sg [u(z, t, t - d) + u(z', t - d, t - 2d)] / 2,  z' = X_{t -> t-d}(z),

      with t on the grid of multiples of d.

    Their convention runs from noise (t = 0) to data (t = 1) with x_{t+d} = x_t + s d; here time
    runs from data to noise and the step goes down. Step sizes are taken in the flow-matching-
    equivalent time u normalised to the training range (exactly Frans et al.'s for flow
    matching), and the comparison is made for every parametrization on the endpoint scaled to
    an average velocity, ||X_theta(z,t,s) - X_tgt||^2 / (t - s)^2, which for
    ``average_velocity`` is their loss."""
    teacher = _check_teacher(teacher, flow_map, "shortcut", False)
    _check_fraction("self_consistency_fraction", self_consistency_fraction)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2 or max_steps & (max_steps - 1):
        raise ValueError(f"max_steps must be a power of two >= 2, got {max_steps!r}")
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    b = x.shape[0]
    n_sc = int(round(b * self_consistency_fraction))
    n_fm = b - n_sc
    eps = _noise(x, generator)
    loss = x.new_zeros(())
    gdev = generator.device if generator is not None else None
    if n_fm > 0:
        t = tt.from_u(tt.uniform_u(n_fm, generator, tt.u_lo))
        loss = loss + diagonal_loss(flow_map, x[:n_fm], eps[:n_fm], t, teacher).sum() / b
    if n_sc > 0:
        levels = int(math.log2(max_steps))
        k = torch.randint(1, levels + 1, (n_sc,), generator=generator, device=gdev).to(x.device)
        d = torch.pow(2.0, -k.to(x.dtype))  # fraction of the range
        n_cells = torch.round(1.0 / d)  # grid of multiples of d: t = j d, j in {2, ..., 1/d}
        j = 2 + torch.floor(torch.rand(n_sc, generator=generator, dtype=x.dtype, device=gdev).to(x.device) * (n_cells - 1))
        span = tt.u_start - tt.u_end
        u_t = tt.u_end + span * j * d
        t, m, s = tt.from_u(u_t), tt.from_u(u_t - span * d), tt.from_u(u_t - 2 * span * d)
        xs, es = x[n_fm:], eps[n_fm:]
        z = _noised(flow_map.process, xs, es, t)
        tm = _target_map(flow_map, target)
        with torch.no_grad():
            tgt = tm.jump(tm.jump(z, t, m), m, s)
        scale = expand_like(1.0 / (t - s), z)
        loss = loss + _sq(scale * (flow_map.jump(z, t, s) - tgt)).sum() / b
    return loss


# ---------------------------------------------------------------------------------------
# teacher regression: flow map matching (distillation baseline)
# ---------------------------------------------------------------------------------------
def teacher_solve(teacher: Model, z: Tensor, t: Tensor, s: Tensor, steps: int | None = 8) -> Tensor:
    r"""X_{t->s}(z) of the teacher's PF-ODE (per-sample t, s), no gradient: ``steps`` RK4 steps
    in the flow-matching view of the teacher (as :func:`unigen.flow_map.integrated`, which
    ``steps=None`` uses: dopri5 to 1e-10), landing on the teacher's x0 where s has zero noise
    and its output does not determine the velocity there."""
    if steps is None:
        return integrated(teacher).jump(z, t, s)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"teacher_steps must be a positive integer or None, got {steps!r}")
    proc = teacher.process
    with torch.no_grad():
        vel = teacher.to(_FM, "velocity")
        t_fm, c_t = time_change(proc, _FM, t)
        s_fm, c_s = time_change(proc, _FM, s)
        determined = undetermined_reason(teacher.parametrization, proc, proc.t_min) is None
        land = (proc.sigma(s) == 0) & torch.as_tensor(not determined, device=z.device)
        s_fm = torch.where(land, torch.full_like(s_fm, LANDING_TIME), s_fm)
        h = (s_fm - t_fm) / steps
        hz = expand_like(h, z)
        y = z * expand_like(c_t, z)
        for k in range(steps):
            tk = t_fm + k * h
            k1 = vel.predict(y, tk).out
            k2 = vel.predict(y + 0.5 * hz * k1, tk + 0.5 * h).out
            k3 = vel.predict(y + 0.5 * hz * k2, tk + 0.5 * h).out
            k4 = vel.predict(y + hz * k3, tk + h).out
            y = y + hz * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        if bool(land.any()):
            y = torch.where(expand_like(land, y), teacher.to(_FM, "x0").predict(y, s_fm).out, y)
        return y / expand_like(c_s, z)


def flow_map_matching_loss(flow_map: FlowMap, x: Tensor, *, teacher: Model, generator=None,
                           teacher_steps: int | None = 8, target=None, step: int = 0, steps: int = 1,
                           grid_fraction: float = 0.0) -> Tensor:
    r"""Flow map matching by teacher regression (Boffi, Albergo & Vanden-Eijnden 2024, "Flow map
    matching", the distillation form): with z = z_t and (t, s), s <= t,

        L = E || X_theta(z, t, s) - X^teacher_{t->s}(z) ||^2          (mean over dims),

    the teacher's map by :func:`teacher_solve` (``teacher_steps`` RK4 steps; None: the accurate
    dopri5 solve, ~400 teacher calls). The baseline of the self-distillation objectives.
    ``grid_fraction``: the share of (t, s) pairs that are steps of the few-step sampling grids
    (:meth:`TrainingTimes.pair`; also an option of the Lagrangian, Eulerian and progressive losses).
    Supports every parametrization."""
    teacher = _check_teacher(teacher, flow_map, "flow_map_matching", True)
    tt = TrainingTimes(flow_map, x.dtype, x.device)
    t, s = tt.pair(x.shape[0], generator, grid_fraction=grid_fraction)
    eps = _noise(x, generator)
    z = _noised(flow_map.process, x, eps, t)
    tgt = teacher_solve(teacher, z, t, s, teacher_steps)
    return _sq(flow_map.jump(z, t, s) - tgt).mean()


# ---------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------
ALL_PARAMETRIZATIONS = ("average_velocity", "x0", "displacement", "endpoint")
# consistency objectives train f(z, t) = X_{t->t_end}(z) alone: only a map with X_{t->t} = z for
# every t (including a zero-noise t_end) carries the boundary condition f(z, t_end) = z
ANCHORED = ("average_velocity",)


@dataclass(frozen=True)
class FlowMapObjective:
    """A named two-time objective: ``loss`` (the function), ``teacher`` ("required", "optional"
    or "none"), the ``parametrizations`` it can train, ``target_ema`` (the decay of the EMA
    target network the paper uses; None: the stop-gradient of the online weights), and a one-line
    ``description``."""

    name: str
    loss: Callable
    teacher: str
    parametrizations: tuple = ALL_PARAMETRIZATIONS
    target_ema: float | None = None
    description: str = ""
    defaults: dict = field(default_factory=dict)

    def check(self, parametrization: str, teacher) -> None:
        """Raise a clear error if this objective cannot train ``parametrization`` or needs a
        teacher that is missing (or takes none and got one)."""
        if parametrization not in self.parametrizations:
            raise ValueError(f"the {self.name} objective trains the {', '.join(self.parametrizations)} parametrization"
                             f"{'s' if len(self.parametrizations) > 1 else ''} only, got {parametrization!r}")
        if self.teacher == "required" and teacher is None:
            raise ValueError(f"the {self.name} objective needs a teacher (teacher=ug.Model(...) of the PF-ODE to distil)")
        if self.teacher == "none" and teacher is not None:
            raise ValueError(f"the {self.name} objective learns from data alone and takes no teacher")


FLOW_MAP_OBJECTIVES: dict[str, FlowMapObjective] = {
    o.name: o
    for o in (
        FlowMapObjective("consistency_distillation", consistency_distillation_loss, "required", ANCHORED,
                         description="CD (Song et al. 2023): one Heun teacher step between adjacent times, stop-gradient target"),
        FlowMapObjective("consistency_training", consistency_training_loss, "none", ANCHORED,
                         description="iCT (Song & Dhariwal 2023): pseudo-Huber, log-normal times, curriculum N(k)"),
        FlowMapObjective("scm", continuous_consistency_loss, "optional", ANCHORED,
                         description="sCM (Lu & Song 2024): continuous-time consistency through a JVP"),
        FlowMapObjective("meanflow", meanflow_loss, "optional", ("average_velocity",),
                         description="MeanFlow (Geng et al. 2025): u = v - (t - s) du/dt through a JVP"),
        FlowMapObjective("lagrangian", lagrangian_loss, "optional",
                         description="LSD (Boffi et al. 2025): d/ds X = v(X, s) plus flow matching"),
        FlowMapObjective("eulerian", eulerian_loss, "optional",
                         description="ESD (Boffi et al. 2025): d/dt X + (grad X) v = 0 plus flow matching"),
        FlowMapObjective("progressive", progressive_loss, "optional",
                         description="PSD (Boffi et al. 2025): semigroup X_{t->s} = X_{m->s} o X_{t->m} plus flow matching"),
        FlowMapObjective("shortcut", shortcut_loss, "optional",
                         description="shortcut models (Frans et al. 2024): dyadic self-consistency plus flow matching"),
        FlowMapObjective("flow_map_matching", flow_map_matching_loss, "required",
                         description="flow map matching (Boffi et al. 2024): regress X on the teacher's ODE solve"),
    )
}


def get_objective(objective) -> FlowMapObjective:
    """A :class:`FlowMapObjective` from its name (or itself)."""
    if isinstance(objective, FlowMapObjective):
        return objective
    if not isinstance(objective, str) or objective not in FLOW_MAP_OBJECTIVES:
        raise ValueError(f"unknown flow-map objective {objective!r}; valid names are {', '.join(FLOW_MAP_OBJECTIVES)}")
    return FLOW_MAP_OBJECTIVES[objective]
