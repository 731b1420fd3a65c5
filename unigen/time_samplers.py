r"""Training-time samplers: how :func:`unigen.loss` draws t, and the density it draws them with.

A :class:`TSampler` draws training times and knows their density p(t) and the log-SNR density
p_lam(lam) = p(t) |dt/dlam|, which the density-form weightings of :mod:`unigen.weightings`
divide by. Names accepted as ``t_sampler``: ``"uniform"`` (U[t_lo, t_hi]; by default the
process's domain, pulled in by 1e-3 of its length at an end where the log-SNR is infinite, and
starting at a discrete table's first timestep 1/N or EDM's sigma_min, i.e. where sampling
ends), ``"logsnr"`` (lam uniform between the log-SNRs of those ends), ``"logit_normal"`` (SD3's
t = sigmoid(m + s n) for processes on [0, 1]), ``"edm"`` (EDM's log-normal noise level,
ln(sigma/alpha) ~ N(-1.2, 1.2^2), any process), a :class:`TSampler` instance, or a callable
``sampler(n, generator) -> t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "TSampler",
    "Uniform",
    "LogSNRUniform",
    "LogitNormal",
    "LogNormalSigma",
    "T_SAMPLERS",
    "get_t_sampler",
    "default_t_range",
]


def _infinite_lam(process, t: float) -> bool:
    return not math.isfinite(float(process.log_snr(torch.tensor(t, dtype=torch.float64))))


def default_t_range(process) -> tuple[float, float]:
    """The training range [t_lo, t_hi] used by ``"uniform"``.

    t_lo: the process's own first trained time where it has one (1/N for a DDPM table,
    sigma_min for EDM), otherwise t_min, moved in by 1e-3 of the domain if the log-SNR is
    infinite there. t_hi: t_max, moved in by 1e-3 of the domain if alpha(t_max) = 0.
    """
    lo, hi = float(process.t_min), float(process.t_max)
    margin = 1e-3 * (hi - lo)
    end = getattr(process, "sample_end", None)
    t_lo = lo
    if end is not None and float(end) > lo and not _infinite_lam(process, float(end)):
        t_lo = float(end)
    elif _infinite_lam(process, lo):
        t_lo = lo + margin
    t_hi = hi - margin if _infinite_lam(process, hi) else hi
    return t_lo, t_hi


class TSampler:
    """Draws training times and knows their density (in t and in log-SNR)."""

    has_density = True

    def sample(self, n: int, process, generator=None, dtype=None, device=None) -> Tensor:
        raise NotImplementedError

    def density_t(self, t: Tensor, process) -> Tensor:
        """p(t), the density of the drawn times."""
        raise NotImplementedError

    def density_lambda(self, lam: Tensor, process) -> Tensor:
        """p_lam(lam) = p(t) |dt/dlam| at t = t(lam)."""
        t = process.t_from_log_snr(lam)
        inside = (t >= process.t_min) & (t <= process.t_max) & torch.isfinite(lam)
        tc = torch.where(inside, t, torch.full_like(t, 0.5 * (process.t_min + process.t_max)))
        return torch.where(inside, self.density_t(tc, process) / process.d_log_snr(tc).abs(), 0.0)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _u(n, generator, dtype, device):
    return torch.rand(n, generator=generator, dtype=dtype or torch.get_default_dtype(), device=generator.device if generator is not None else device).to(device)


def _n(n, generator, dtype, device):
    return torch.randn(n, generator=generator, dtype=dtype or torch.get_default_dtype(), device=generator.device if generator is not None else device).to(device)


class Uniform(TSampler):
    """t ~ U[t_lo, t_hi]; by default :func:`default_t_range` (finite log-SNR at both ends)."""

    def __init__(self, t_lo: float | None = None, t_hi: float | None = None):
        self.t_lo, self.t_hi = t_lo, t_hi

    def range(self, process):
        lo, hi = default_t_range(process)
        lo = lo if self.t_lo is None else float(self.t_lo)
        hi = hi if self.t_hi is None else float(self.t_hi)
        if not hi > lo:
            raise ValueError(f"Uniform sampler needs t_hi > t_lo, got t_lo={lo}, t_hi={hi}")
        process.check_t(torch.tensor([lo, hi], dtype=torch.float64), "Uniform(t_lo, t_hi)")
        return lo, hi

    def sample(self, n, process, generator=None, dtype=None, device=None):
        lo, hi = self.range(process)
        return lo + (hi - lo) * _u(n, generator, dtype, device)

    def density_t(self, t, process):
        lo, hi = self.range(process)
        inside = (t >= lo) & (t <= hi)
        return torch.where(inside, 1.0 / (hi - lo), 0.0).to(t.dtype)


class LogSNRUniform(TSampler):
    """lam ~ U[lam_min, lam_max], t = t_from_log_snr(lam); by default the log-SNRs of
    :func:`default_t_range`'s ends."""

    def __init__(self, lam_min: float | None = None, lam_max: float | None = None):
        self.lam_min, self.lam_max = lam_min, lam_max

    def range(self, process):
        t_lo, t_hi = default_t_range(process)
        lam = process.log_snr(torch.tensor([t_hi, t_lo], dtype=torch.float64))
        lo = float(lam[0]) if self.lam_min is None else float(self.lam_min)
        hi = float(lam[1]) if self.lam_max is None else float(self.lam_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"LogSNRUniform needs finite lam_min < lam_max, got {lo}, {hi}")
        r = process.log_snr_range
        if lo < r[0] - 1e-9 or hi > r[1] + 1e-9:
            raise ValueError(f"LogSNRUniform range [{lo:g}, {hi:g}] leaves {type(process).__name__}'s log-SNR range [{r[0]:g}, {r[1]:g}]")
        return lo, hi

    def sample(self, n, process, generator=None, dtype=None, device=None):
        lo, hi = self.range(process)
        return process.t_from_log_snr(lo + (hi - lo) * _u(n, generator, dtype, device))

    def density_lambda(self, lam, process):
        lo, hi = self.range(process)
        return torch.where((lam >= lo) & (lam <= hi), 1.0 / (hi - lo), 0.0).to(lam.dtype)

    def density_t(self, t, process):
        return self.density_lambda(process.log_snr(t), process) * process.d_log_snr(t).abs()


class LogitNormal(TSampler):
    """SD3's logit-normal times (Esser et al. 2024): t = sigmoid(mean + std n), n ~ N(0, 1).
    Only for processes on [0, 1]."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not (isinstance(std, (int, float)) and std > 0):
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    @staticmethod
    def _check(process):
        if process.t_min != 0.0 or process.t_max != 1.0:
            raise ValueError(
                f"t_sampler 'logit_normal' needs a process on [0, 1]; {type(process).__name__} lives on "
                f"[{process.t_min:g}, {process.t_max:g}] (use 'logsnr' or 'edm')"
            )

    def sample(self, n, process, generator=None, dtype=None, device=None):
        self._check(process)
        return torch.sigmoid(self.mean + self.std * _n(n, generator, dtype, device))

    def density_t(self, t, process):
        self._check(process)
        inside = (t > 0) & (t < 1)
        tc = torch.where(inside, t, torch.full_like(t, 0.5))
        q = (torch.log(tc) - torch.log1p(-tc) - self.mean) / self.std
        dens = torch.exp(-0.5 * q * q) / (self.std * math.sqrt(2 * math.pi) * tc * (1 - tc))
        return torch.where(inside, dens, 0.0)


class LogNormalSigma(TSampler):
    """EDM's training noise levels (Karras et al. 2022): ln s ~ N(p_mean, p_std^2) for the VE
    level s = sigma/alpha = e^{-lam/2}, mapped to t through the log-SNR; lam is clipped to the
    process's log-SNR range (a negligible mass for the defaults)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not (isinstance(p_std, (int, float)) and p_std > 0):
            raise ValueError(f"p_std must be positive, got {p_std!r}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, n, process, generator=None, dtype=None, device=None):
        log_s = self.p_mean + self.p_std * _n(n, generator, dtype, device)
        t_lo, t_hi = default_t_range(process)
        lam_r = process.log_snr(torch.tensor([t_hi, t_lo], dtype=torch.float64))
        lam = torch.clamp(-2.0 * log_s, float(lam_r[0]), float(lam_r[1]))
        return process.t_from_log_snr(lam)

    def density_lambda(self, lam, process):
        q = (-0.5 * lam - self.p_mean) / self.p_std
        return 0.5 * torch.exp(-0.5 * q * q) / (self.p_std * math.sqrt(2 * math.pi))

    def density_t(self, t, process):
        return self.density_lambda(process.log_snr(t), process) * process.d_log_snr(t).abs()


class _CallableSampler(TSampler):
    has_density = False

    def __init__(self, fn):
        self.fn = fn

    def sample(self, n, process, generator=None, dtype=None, device=None):
        t = self.fn(n, generator)
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != (n,):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t_sampler(n, generator) must return a floating tensor of shape [{n}], got {got}")
        process.check_t(t, "t drawn by t_sampler")
        return t.to(dtype=dtype or t.dtype, device=device)

    def density_t(self, t, process):
        raise ValueError("a callable t_sampler has no known density")


T_SAMPLERS = {"uniform": Uniform, "logsnr": LogSNRUniform, "logit_normal": LogitNormal, "edm": LogNormalSigma}


def get_t_sampler(t_sampler) -> TSampler:
    """Resolve a sampler name, :class:`TSampler` or callable ``(n, generator) -> t``."""
    if isinstance(t_sampler, TSampler):
        return t_sampler
    if isinstance(t_sampler, str):
        if t_sampler not in T_SAMPLERS:
            raise ValueError(
                f"unknown t_sampler {t_sampler!r}; valid names are {', '.join(T_SAMPLERS)}, "
                "a TSampler, or a callable (n, generator) -> t"
            )
        return T_SAMPLERS[t_sampler]()
    if callable(t_sampler):
        return _CallableSampler(t_sampler)
    raise TypeError(f"t_sampler must be a name, a TSampler or a callable, got {type(t_sampler).__name__}")
