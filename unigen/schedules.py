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

Grids are validated: strictly decreasing, inside the process's domain, no duplicates.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

__all__ = ["SCHEDULES", "make_grid", "check_grid", "sample_range", "default_schedule"]

SCHEDULES = ("uniform", "logsnr", "karras", "quadratic", "leading", "trailing", "linspace")
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
_MEMO: OrderedDict = OrderedDict()
_MEMO_SIZE = 64


def _memo(process) -> dict:
    key = process.value_key() if hasattr(process, "value_key") else process
    try:
        memo = _MEMO.get(key)
    except TypeError:  # an unhashable process: no memo
        return {}
    if memo is None:
        memo = _MEMO[key] = {}
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(key)
    return memo


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
            end = _finite_end(process)
        memo["range"] = (float(start), float(end))
    return memo["range"]


def _finite_end(process) -> float:
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


def make_grid(process, schedule="logsnr", steps: int | None = None, t_start=None, t_end=None, rho: float = 7.0) -> Tensor:
    """Build the float64 time grid of ``steps + 1`` points (or validate a user tensor)."""
    if isinstance(schedule, Tensor):
        if steps is not None and steps != schedule.numel() - 1:
            raise ValueError(f"steps={steps} disagrees with a schedule tensor of {schedule.numel()} times; pass one or the other")
        return check_grid(schedule.to(torch.float64), process)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid names are {', '.join(SCHEDULES)}, or a tensor of times")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    d_start, d_end = sample_range(process)
    start = d_start if t_start is None else float(t_start)
    end = d_end if t_end is None else float(t_end)
    if not start > end:
        raise ValueError(f"t_start must exceed t_end (sampling runs noise -> data), got {start} and {end}")
    process.check_t(torch.tensor([start, end], dtype=torch.float64), "t_start/t_end")

    if schedule in _DISCRETE:
        return check_grid(_discrete(process, schedule, steps), process)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    if schedule == "uniform":
        return check_grid(torch.linspace(start, end, steps + 1, dtype=torch.float64), process)
    if schedule == "quadratic":
        u = torch.linspace(math.sqrt(start - end), 0.0, steps + 1, dtype=torch.float64)
        ts = end + u * u
        ts[0] = start
        return check_grid(ts, process)

    # spacings in the log-SNR or the VE level; an end at zero noise is appended (EDM rule)
    lam_start = float(process.log_snr(f64(start)))
    zero_end = math.isinf(float(process.log_snr(f64(end))))
    n = steps
    if zero_end:
        if steps < 2:
            raise ValueError(f"schedule {schedule!r} ending at zero noise needs steps >= 2, got {steps}")
        end_finite, n = _finite_end(process), steps - 1
    else:
        end_finite = end
    lam_end = float(process.log_snr(f64(end_finite)))
    if not (math.isfinite(lam_start) and math.isfinite(lam_end)):
        raise ValueError(
            f"schedule {schedule!r} spaces times by log-SNR, which is infinite at t_start={start} for "
            f"{type(process).__name__} (zero terminal SNR); pass a smaller t_start or use schedule='uniform'"
        )
    if schedule == "logsnr":
        lam = torch.linspace(lam_start, lam_end, n + 1, dtype=torch.float64)
    else:  # karras
        s_max, s_min = math.exp(-0.5 * lam_start), math.exp(-0.5 * lam_end)
        r = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        s = (s_max ** (1 / rho) + r * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lam = -2.0 * torch.log(s)
    ts = process.t_from_log_snr(lam)
    ts[0], ts[-1] = start, end_finite  # exact endpoints (no inverse round-off)
    if zero_end:
        ts = torch.cat([ts, f64([end])])
    return check_grid(ts, process)


def _discrete(process, spacing: str, steps: int) -> Tensor:
    n_train = getattr(process, "num_timesteps", None)
    if n_train is None:
        raise ValueError(f"schedule {spacing!r} is a diffusers spacing for VP.discrete processes, not {type(process).__name__}")
    if steps > n_train:
        raise ValueError(f"steps must be <= the {n_train} training timesteps for schedule {spacing!r}, got {steps}")
    if spacing == "leading":
        k = n_train // steps
        idx = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * k
    elif spacing == "trailing":
        idx = torch.round(torch.arange(n_train, 0, -n_train / steps, dtype=torch.float64)) - 1
    else:
        idx = torch.round(torch.linspace(n_train - 1, 0, steps, dtype=torch.float64))
    if idx.numel() != steps or (idx[1:] >= idx[:-1]).any():
        raise ValueError(f"schedule {spacing!r} with steps={steps} produced duplicated timesteps {idx.tolist()}")
    # the last model timestep steps to the clean point t = 0 (diffusers' set_alpha_to_one=True)
    return torch.cat([process.t_from_timestep(idx), torch.zeros(1, dtype=torch.float64)])
