r"""k-diffusion's denoiser convention  <->  unigen models.

k-diffusion samplers call a denoiser ``D(x, sigma)`` on VE variables: ``x = z/alpha``, the
noise level ``sigma = sigma_t/alpha_t`` (a per-batch tensor), and ``D`` returns
x0_hat = E[x | z] (Karras et al. 2022). Any unigen model gives one through the time of
equal VE level, t = lam^{-1}(-2 ln sigma); conversely ``D`` is a unigen model with
parametrization "denoiser" (docs/theory.md, section 2). :func:`kdiffusion_sampler` turns any
unigen solver into a function with k-diffusion's sampler signature, for tools that call
``sampler(model, x, sigmas, extra_args, callback, disable)``. k-diffusion is never imported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._utils import compute_dtype, expand_like
from ..model import Model
from ..process import EDM, Process
from ..progress import tqdm_available
from ..sample import sample
from ..schedules import finite_end, sample_range
from ..solvers import get_solver

__all__ = ["from_kdiffusion_denoiser", "to_kdiffusion_denoiser", "kdiffusion_sampler"]


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


def kdiffusion_sampler(solver="DPMSolverPP") -> Callable:
    r"""A k-diffusion sampler function running the unigen ``solver`` (instance, class or name).

    The returned ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None)`` follows
    k-diffusion's conventions: ``model(x, sigma[batch], **extra_args)`` is a denoiser returning
    x0_hat on VE variables; ``x`` is the starting sample at level ``sigmas[0]`` (noise times
    sigmas[0]); ``sigmas`` is strictly decreasing, usually ending at 0 (then the last step lands
    on x0_hat, as k-diffusion's samplers do); ``callback`` receives, after every step, the dict
    ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` with x the state at the start of step i and
    ``denoised`` the denoiser's output at sigma_i (a corrector's reused evaluation included), or,
    for a churning solver, at the step's first (raised) level ``sigma_hat``;
    ``disable`` hides the progress bar (shown with tqdm when installed). Stochastic solvers draw
    from torch's global generator, as k-diffusion's do. Returns the sample at ``sigmas[-1]``.

    The grid is the ``sigmas`` given, used exactly, on the process ``EDM(sigma_min, sigma_max)``
    spanning them (t = sigma, alpha = 1), so e.g. ``kdiffusion_sampler(ug.Heun(clock="sigma"))``
    is k-diffusion's ``sample_heun`` and ``kdiffusion_sampler(ug.DPMSolverPP(2,
    lower_order_final=False))`` its ``sample_dpmpp_2m``, to float rounding.
    """
    solver = get_solver(solver)

    def fn(model, x: Tensor, sigmas, extra_args: dict | None = None, callback: Callable | None = None,
           disable: bool | None = None) -> Tensor:
        if not callable(model):
            raise TypeError(f"model must be a denoiser model(x, sigma, **extra_args), got {type(model).__name__}")
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating tensor (the sample at sigmas[0])")
        levels = _check_sigmas(sigmas)
        kwargs = dict(extra_args or {})
        positive = levels[levels > 0]
        process = EDM(sigma_min=float(positive.min()) if positive.numel() < levels.numel() else float(levels[-1]) / 2,
                      sigma_max=float(levels[0]))
        seen: dict = {}  # level -> denoiser output, for the callbacks' "denoised"
        this_step: list = []  # (level, output) of the evaluations made during the current step

        def denoiser(y: Tensor, s: Tensor) -> Tensor:
            out = model(y, _batch_sigma(s, y), **kwargs)
            if callback is not None:  # the host sync only where a callback asks for `denoised`
                seen[float(s)] = out
                this_step.append((float(s), out))
            return out

        unigen_model = Model(denoiser, process, "denoiser")
        start = {"x": x}

        def on_step(i, t, z):
            level = float(levels[i])
            # the evaluation at sigma_i (made in this step, or in the previous one by a corrector that
            # reuses it); else the step's first evaluation, at its churned level sigma_hat
            hat, denoised = (level, seen[level]) if level in seen else (this_step[0] if this_step else (level, None))
            callback({"x": start["x"], "i": i, "sigma": sigmas[i], "sigma_hat": sigmas.new_tensor(hat) if isinstance(sigmas, Tensor) else hat,
                      "denoised": denoised})
            start["x"] = z
            for key in [k for k in seen if k >= level]:
                del seen[key]
            this_step.clear()

        progress = not disable and tqdm_available()
        out, _ = sample(unigen_model, solver, schedule=levels, noise=x, model_kwargs=None,
                        callback=on_step if callback is not None else None, progress=progress)
        return out

    fn.__name__ = f"sample_unigen_{type(solver).__name__.lower()}"
    fn.solver = solver
    return fn


def _check_sigmas(sigmas) -> Tensor:
    """k-diffusion's sigmas as float64: 1-D, at least 2, finite, >= 0, strictly decreasing."""
    if not isinstance(sigmas, Tensor):
        sigmas = torch.as_tensor(sigmas)
    levels = sigmas.detach().to(device="cpu", dtype=torch.float64)
    if levels.ndim != 1 or levels.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(levels.shape)}")
    if not bool(torch.isfinite(levels).all()) or bool((levels < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0, got {levels.tolist()[:6]}")
    if float(levels[0]) == 0.0:
        raise ValueError("only the last of the sigmas may be 0")
    if not bool((levels[1:] < levels[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (noise -> data), got {levels.tolist()[:6]}")
    return levels
