r"""Sampling grids: ``steps + 1`` times from the start (noise) to the end (data).

=============  ==========================================================================
name           spacing
=============  ==========================================================================
uniform        uniform in t
logsnr         uniform in the log-SNR lam = log(alpha^2/sigma^2) (DPM-Solver's "logSNR")
karras         uniform in s^(1/rho), s = sigma/alpha the VE noise level (EDM, rho = 7)
quadratic      uniform in sqrt(t - t_end) (DDIM's "quad" skip, Song et al. 2021a)
leading        diffusers: integer timesteps k*(N//steps) + offset, k = steps-1..0
trailing       diffusers: round(N - k N/steps) - 1, k = 0..steps-1 (reaches t_max)
linspace       diffusers: round(linspace(N-1, 0, steps))
=============  ==========================================================================

The three diffusers spacings exist only for :class:`~unigen.process.VPDiscrete` and give
the ``steps`` model timesteps; the grid appends the clean point t = 0 (alpha = 1) as the
end, as diffusers' DDIM does with ``set_alpha_to_one=True`` (for ``False``, pass the times
as a tensor ending at ``process.t_from_timestep(0)``).
A spacing that needs finite log-SNR (logsnr, karras) and is asked to end at zero noise
spaces ``steps`` points down to the process's finite ``sample_end`` and appends the
zero-noise time (EDM's sigma_N = 0 rule), so the last step lands on x0_hat.

Every schedule is a :class:`Schedule` object with one protocol, ``times(process, steps,
t_start, t_end, **context)``; ``SCHEDULES`` maps the names above to them (a name, a
:class:`Schedule` or a tensor of times is accepted wherever a schedule is). A schedule that
depends on the model (``needs_model``, e.g. ``"optimized"``, registered by
``unigen.calibration``) receives model, solver, event_shape and dtype in ``context``.

Grids are validated: strictly decreasing, inside the process's domain, no duplicates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import LRUCache

__all__ = [
    "SCHEDULES", "Schedule", "Uniform", "Quadratic", "LogSNR", "Karras", "DiffusersSpacing", "Times",
    "register_schedule", "get_schedule", "make_grid", "check_grid", "sample_range", "finite_end", "default_schedule",
]

_DISCRETE = ("leading", "trailing", "linspace")


def default_schedule(process, t_start: float | None = None) -> str:
    """The family's customary grid: the process's ``default_schedule`` if it names one,
    else "logsnr", or "uniform" where the log-SNR at the start is infinite (alpha = 0).

    A diffusers spacing ("leading", "trailing", "linspace") covers the whole training table,
    so for a ``t_start`` below ``t_max`` (a model defined on part of the range only, e.g.
    one moved over by ``Model.to``) the log-SNR rule applies instead."""
    start = sample_range(process)[0] if t_start is None else float(t_start)
    memo = _memo(process)
    if ("schedule", start) not in memo:
        name = getattr(process, "default_schedule", None)
        if name is None or (name in _DISCRETE and start < process.t_max):
            finite = math.isfinite(float(process.log_snr(torch.tensor(start, dtype=torch.float64))))
            name = "logsnr" if finite else "uniform"
        memo[("schedule", start)] = name
    return memo[("schedule", start)]


# per-process answers of sample_range/default_schedule (schedule arithmetic that every sample()
# call would otherwise redo), keyed by the process's VALUE (Process.value_key: equal processes
# share them), least recently used first out
_MEMO = LRUCache(64)


def _memo(process) -> dict:
    key = process.value_key() if hasattr(process, "value_key") else process
    try:
        return _MEMO.get(key, dict)
    except TypeError:  # an unhashable process: no memo
        return {}


def sample_range(process) -> tuple[float, float]:
    """Default (t_start, t_end) of sampling for a process.

    The start is t_max. The end is the smallest time with a finite log-SNR that is customary
    for the family: 1e-3 for VP / sub-VP / flow matching / cosine (score_sde's eps),
    t_min = 1/N for a DDPM table, t_min for VE (sigma_min > 0) and sigma_min for EDM.
    """
    memo = _memo(process)
    if "range" not in memo:
        start, end = getattr(process, "sample_start", None), getattr(process, "sample_end", None)
        if start is None:
            start = process.t_max
        if end is None:
            end = finite_end(process)
        memo["range"] = (float(start), float(end))
    return memo["range"]


def finite_end(process) -> float:
    """The smallest customary time with finite log-SNR (t_min, or t_min + 1e-3 of the domain)."""
    end = getattr(process, "sample_end", None)
    for cand in ([end] if end is not None else []) + [process.t_min]:
        if math.isfinite(float(process.log_snr(torch.tensor(cand, dtype=torch.float64)))):
            return float(cand)
    return process.t_min + 1e-3 * (process.t_max - process.t_min)


def check_grid(ts: Tensor, process, name: str = "schedule") -> Tensor:
    """Validate a user grid: 1-D, >= 2 times, strictly decreasing, inside the domain."""
    if not isinstance(ts, Tensor) or not ts.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of times, got {type(ts).__name__}")
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all():
        raise ValueError(f"{name} contains non-finite times")
    d = ts[1:] - ts[:-1]
    if not (d < 0).all():
        i = int(torch.nonzero(d >= 0)[0])
        kind = "a duplicated time" if float(d[i]) == 0 else "an increase"
        raise ValueError(
            f"{name} must be strictly decreasing (noise -> data); it has {kind} at index {i}: "
            f"{float(ts[i]):.6g} -> {float(ts[i + 1]):.6g}"
        )
    process.check_t(ts, name)
    return ts


class Schedule:
    """A sampling grid rule: :meth:`times` returns ``steps + 1`` float64 times, strictly
    decreasing from t_start (noise) to t_end (data), validated by :func:`check_grid`."""

    name = ""
    needs_model = False  # True: times() needs model, solver, event_shape, dtype in its context

    def times(self, process, steps: int | None, t_start=None, t_end=None, **context) -> Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def _range(process, steps, t_start, t_end) -> tuple[float, float]:
    """(start, end): the process's sampling range unless given; steps >= 1 and start > end checked."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    d_start, d_end = sample_range(process)
    start = d_start if t_start is None else float(t_start)
    end = d_end if t_end is None else float(t_end)
    if not start > end:
        raise ValueError(f"t_start must exceed t_end (sampling runs noise -> data), got {start} and {end}")
    process.check_t(torch.tensor([start, end], dtype=torch.float64), "t_start/t_end")
    return start, end


class Uniform(Schedule):
    """Uniform in t."""

    name = "uniform"

    def times(self, process, steps, t_start=None, t_end=None, **context):
        start, end = _range(process, steps, t_start, t_end)
        return check_grid(torch.linspace(start, end, steps + 1, dtype=torch.float64), process)


class Quadratic(Schedule):
    """Uniform in sqrt(t - t_end) (DDIM's "quad" skip, Song et al. 2021a)."""

    name = "quadratic"

    def times(self, process, steps, t_start=None, t_end=None, **context):
        start, end = _range(process, steps, t_start, t_end)
        u = torch.linspace(math.sqrt(start - end), 0.0, steps + 1, dtype=torch.float64)
        ts = end + u * u
        ts[0] = start
        return check_grid(ts, process)


class _LevelSpacing(Schedule):
    """Spacings of the log-SNR between its values at the two ends; an end at zero noise is
    appended after a finite last level (EDM's sigma_N = 0 rule)."""

    def lambdas(self, lam_start: float, lam_end: float, n: int) -> Tensor:
        raise NotImplementedError

    def times(self, process, steps, t_start=None, t_end=None, **context):
        start, end = _range(process, steps, t_start, t_end)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        lam_start = float(process.log_snr(f64(start)))
        zero_end = math.isinf(float(process.log_snr(f64(end))))
        n = steps
        if zero_end:
            if steps < 2:
                raise ValueError(f"schedule {self.name!r} ending at zero noise needs steps >= 2, got {steps}")
            end_finite, n = finite_end(process), steps - 1
        else:
            end_finite = end
        lam_end = float(process.log_snr(f64(end_finite)))
        if not (math.isfinite(lam_start) and math.isfinite(lam_end)):
            raise ValueError(
                f"schedule {self.name!r} spaces times by log-SNR, which is infinite at t_start={start} for "
                f"{type(process).__name__} (zero terminal SNR); pass a smaller t_start or use schedule='uniform'"
            )
        ts = process.t_from_log_snr(self.lambdas(lam_start, lam_end, n))
        ts[0], ts[-1] = start, end_finite  # exact endpoints (no inverse round-off)
        if zero_end:
            ts = torch.cat([ts, f64([end])])
        return check_grid(ts, process)


class LogSNR(_LevelSpacing):
    """Uniform in the log-SNR lam = log(alpha^2/sigma^2) (DPM-Solver's "logSNR")."""

    name = "logsnr"

    def lambdas(self, lam_start, lam_end, n):
        return torch.linspace(lam_start, lam_end, n + 1, dtype=torch.float64)


class Karras(_LevelSpacing):
    """Uniform in s^(1/rho), s = sigma/alpha the VE noise level (Karras et al. 2022, eq. 5)."""

    name = "karras"

    def __init__(self, rho: float = 7.0):
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 < rho < math.inf):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        self.rho = float(rho)

    def lambdas(self, lam_start, lam_end, n):
        rho = self.rho
        s_max, s_min = math.exp(-0.5 * lam_start), math.exp(-0.5 * lam_end)
        r = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        s = (s_max ** (1 / rho) + r * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        return -2.0 * torch.log(s)

    def __repr__(self):
        return f"Karras(rho={self.rho:g})"


class DiffusersSpacing(Schedule):
    """diffusers' integer timesteps of a DDPM table ("leading", "trailing", "linspace"), then
    the clean point t = 0 (diffusers' ``set_alpha_to_one=True``)."""

    def __init__(self, spacing: str):
        if spacing not in _DISCRETE:
            raise ValueError(f"unknown spacing {spacing!r}; valid spacings are {', '.join(_DISCRETE)}")
        self.name = spacing

    def times(self, process, steps, t_start=None, t_end=None, **context):
        _range(process, steps, t_start, t_end)
        n_train = getattr(process, "num_timesteps", None)
        if n_train is None:
            raise ValueError(f"schedule {self.name!r} is a diffusers spacing for VP.discrete processes, not {type(process).__name__}")
        if steps > n_train:
            raise ValueError(f"steps must be <= the {n_train} training timesteps for schedule {self.name!r}, got {steps}")
        if self.name == "leading":
            k = n_train // steps
            idx = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * k
        elif self.name == "trailing":
            idx = torch.round(torch.arange(n_train, 0, -n_train / steps, dtype=torch.float64)) - 1
        else:
            idx = torch.round(torch.linspace(n_train - 1, 0, steps, dtype=torch.float64))
        if idx.numel() != steps or (idx[1:] >= idx[:-1]).any():
            raise ValueError(f"schedule {self.name!r} with steps={steps} produced duplicated timesteps {idx.tolist()}")
        ts = torch.cat([process.t_from_timestep(idx), torch.zeros(1, dtype=torch.float64)])
        return check_grid(ts, process)

    def __repr__(self):
        return f"DiffusersSpacing({self.name!r})"


class Times(Schedule):
    """Given times, used exactly (first to last)."""

    name = "times"

    def __init__(self, ts):
        self.ts = torch.as_tensor(ts, dtype=torch.float64) if not isinstance(ts, Tensor) else ts

    def times(self, process, steps=None, t_start=None, t_end=None, **context):
        if steps is not None and steps != self.ts.numel() - 1:
            raise ValueError(f"steps={steps} disagrees with a schedule tensor of {self.ts.numel()} times; pass one or the other")
        if not self.ts.is_floating_point():
            raise TypeError(f"schedule must be a floating tensor of times, got {self.ts.dtype}")
        return check_grid(self.ts.to(torch.float64), process)

    def __repr__(self):
        return f"Times({self.ts.tolist()})"


SCHEDULES: dict[str, Schedule] = {}
"""The registered schedules by name (the module table above; ``unigen.calibration`` adds "optimized")."""


def register_schedule(schedule: Schedule) -> Schedule:
    """Make ``schedule`` available by its ``name`` everywhere a schedule name is accepted."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"register a Schedule instance, got {type(schedule).__name__}")
    if not schedule.name or schedule.name in SCHEDULES:
        raise ValueError(f"a schedule needs a new name, got {schedule.name!r}")
    SCHEDULES[schedule.name] = schedule
    return schedule


for _s in (Uniform(), LogSNR(), Karras(), Quadratic(), *(DiffusersSpacing(n) for n in _DISCRETE)):
    register_schedule(_s)


def get_schedule(schedule) -> Schedule:
    """A :class:`Schedule` from a registered name, a Schedule, or a tensor / list of times."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Tensor):
        return Times(schedule)
    if isinstance(schedule, (list, tuple)):
        return Times(torch.tensor([float(v) for v in schedule], dtype=torch.float64))
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]
    raise ValueError(f"unknown schedule {schedule!r}; valid names are {', '.join(SCHEDULES)}, or a tensor of times")


def make_grid(process, schedule="logsnr", steps: int | None = None, t_start=None, t_end=None, rho: float = 7.0) -> Tensor:
    """Build the float64 time grid of ``steps + 1`` points (or validate a user tensor).

    ``schedule`` is a name of ``SCHEDULES``, a :class:`Schedule` or a tensor of times; ``rho``
    is Karras's exponent for ``"karras"``. Schedules that need the model (``"optimized"``)
    are resolved by ``ug.sample``.
    """
    if isinstance(schedule, Tensor) and not schedule.is_floating_point():
        raise TypeError(f"schedule must be a floating tensor of times, got {type(schedule).__name__}")
    sched = get_schedule(schedule)
    if sched.needs_model:
        raise ValueError(f"schedule {sched.name!r} depends on the model: pass it to ug.sample (schedule={sched.name!r})")
    if isinstance(sched, Karras) and rho != 7.0:
        sched = Karras(rho)
    return sched.times(process, steps, t_start, t_end)
