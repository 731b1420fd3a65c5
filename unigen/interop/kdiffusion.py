r"""k-diffusion's denoiser convention  <->  unigen models.

k-diffusion samplers call a denoiser ``D(x, sigma)`` on VE variables: ``x = z/alpha``, the
noise level ``sigma = sigma_t/alpha_t`` (a per-batch tensor), and ``D`` returns
x0_hat = E[x | z] (Karras et al. 2022). Any unigen model gives one through the time of
equal VE level, t = lam^{-1}(-2 ln sigma); conversely ``D`` is a unigen model with
parametrization "denoiser" (docs/theory.md, section 2). k-diffusion is never imported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._utils import compute_dtype, expand_like
from ..model import Model
from ..process import EDM, Process
from ..schedules import finite_end, sample_range

__all__ = ["from_kdiffusion_denoiser", "to_kdiffusion_denoiser"]


def _batch_sigma(sigma, x: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, device=x.device)
    if not sigma.is_floating_point():
        sigma = sigma.to(compute_dtype(x.dtype))
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape [batch]={x.shape[0]}, got {tuple(sigma.shape)}")
    return sigma


def to_kdiffusion_denoiser(model: Model) -> Callable[[Tensor, Tensor], Tensor]:
    r"""A k-diffusion denoiser ``D(x, sigma) -> x0_hat`` for any unigen model.

    ``D(y; s) = x0_hat(z = alpha(t) y, t)`` with t the time where sigma_t/alpha_t = s. A plain
    ``"denoiser"`` model is called directly (its network already takes (y, s)).
    The returned callable carries ``sigma_min``/``sigma_max`` (the VE levels of the process's
    customary sampling range), as k-diffusion's model wrappers do.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
    process = model.process
    direct = type(model) is Model and model.parametrization == "denoiser"

    def denoiser(x: Tensor, sigma) -> Tensor:
        s = _batch_sigma(sigma, x)
        if direct:
            return model.fn(x, s if model.time_input is None else model.time_input(s))
        t = process.t_from_log_snr(-2.0 * torch.log(s)).clamp(process.t_min, process.t_max)
        z = x * expand_like(process.alpha(t), x)
        return model.predict(z, t).x0

    t_start, t_end = sample_range(process)[0], finite_end(process)
    ve = process.ve_sigma(torch.tensor([t_end, t_start], dtype=torch.float64))
    denoiser.sigma_min, denoiser.sigma_max = float(ve[0]), float(ve[1])
    denoiser.model = model
    return denoiser


def from_kdiffusion_denoiser(denoiser: Callable, process: Process | None = None) -> Model:
    r"""A k-diffusion denoiser ``D(x, sigma[batch]) -> x0_hat`` as a unigen :class:`Model`
    with parametrization ``"denoiser"``.

    ``process`` is the path to sample along; any process works, since D is read at the
    equal VE level. Default: ``EDM(sigma_min, sigma_max)`` from the denoiser's attributes
    (k-diffusion's wrappers have them), else ``EDM()``.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
    if process is None:
        lo, hi = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
        kw = {}
        if lo is not None and hi is not None:
            kw = {"sigma_min": float(lo), "sigma_max": float(hi)}
        process = EDM(**kw)

    def fn(y: Tensor, s: Tensor) -> Tensor:
        return denoiser(y, _batch_sigma(s, y))

    return Model(fn, process, "denoiser")
