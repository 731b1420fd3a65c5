r"""The reference solve: the probability-flow ODE integrated to high accuracy.

The target that calibration tunes grids against, the benchmarks measure endpoint error
against, and the tests compare solvers with: one implementation, here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import compute_dtype
from .model import Model
from .parametrization import undetermined_reason
from .process import FlowMatching, time_change
from .solvers import Adaptive, Dynamics, Grid
from .solvers.adaptive import LANDING_TIME  # the one flow-matching time where solves onto sigma = 0 land

__all__ = ["ode_endpoint", "ode_trajectory"]


def ode_endpoint(model: Model, z: Tensor, t_start: float, t_end: float, tol: float = 1e-10,
                 model_kwargs: dict | None = None) -> tuple[Tensor, int]:
    r"""The probability-flow ODE solved accurately from z at t_start to t_end (dopri5, rtol = atol
    = ``tol``, in z's dtype: pass float64 for a reference): the target of calibration and of
    the benchmarks' endpoint RMSE.

    The PF-ODE in VE variables, dx/ds = (x - D(x, s)) / s with x = z / alpha and s = sigma / alpha,
    is the same for every Gaussian path, so any model is solved on its flow-matching view
    (``Model.to(FlowMatching(), "velocity")`` at the equal-log-SNR times, z_fm = c z by
    ``time_change``): the velocity there is smooth and finite up to sigma = 0, where a VP
    clock's d sigma / dt ~ t^(-1/2) would make dopri5 underflow, and a DDPM table's kinks
    vanish. Unlike ``ug.sample`` it integrates all the way onto sigma = 0 instead of jumping
    to x0_hat in a last step, wherever the model's output determines eps there (eps, v,
    score models; flow-matching velocity). An output that does not (x0 or an EDM denoiser at
    sigma = 0, a VP velocity at t = 0, where sigma' is infinite) gives the velocity as 0/0 at
    the end, so the solve stops at the flow-matching time ``LANDING_TIME`` and lands on x0_hat
    there (the flow's x0_hat moves by O(t) near t = 0; measured 2e-9 against the exact Gaussian flow, far below any
    solver error this reference measures). ``model_kwargs`` (conditioning) go to every network
    call. Returns (x, model evaluations).
    """
    x, nfe = ode_trajectory(model, z, torch.tensor([float(t_start), float(t_end)], dtype=torch.float64), tol,
                            model_kwargs=model_kwargs)
    return x[-1], nfe


def ode_trajectory(model: Model, z: Tensor, times: Tensor, tol: float = 1e-10, interpolate: bool = False,
                   model_kwargs: dict | None = None) -> tuple[Tensor, int]:
    r"""The probability-flow ODE solved accurately from z at ``times[0]`` through every later
    time, in ONE error-controlled solve (as :func:`ode_endpoint`, which is its two-time case):
    the states stacked, shape ``(len(times), *z.shape)``, and the model evaluations.

    The solve lands on every time exactly, or with ``interpolate`` only on the last one, the
    others read off dopri5's fourth-order dense output (far fewer steps when the times are
    dense; their error is then of the order of ``tol``, not below it)."""
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    steps = times.diff()
    if times.numel() < 2 or not (bool((steps < 0).all()) or bool((steps > 0).all())):
        raise ValueError(f"times must hold at least two strictly monotone times, got {times.tolist()}")
    t_end = float(times[-1])
    scale = torch.ones_like(times)
    land = _zero_noise(model.process, t_end) and not _determines_eps(model, t_end)
    if not isinstance(model.process, FlowMatching) or land:
        fm = FlowMatching()
        times, scale = time_change(model.process, fm, times)
        model = model.to(fm, "velocity")
    if land:  # stop just above sigma = 0 and land on x0_hat there (see ode_endpoint)
        times[-1] = LANDING_TIME
    work = compute_dtype(z.dtype)  # z's dtype is the model's input dtype (float64 for a reference)
    tol = max(tol, 10 * torch.finfo(work).eps)
    dyn = Dynamics(model, z.dtype, model_kwargs)
    grid = Grid(model.process, times.to(torch.float64), work, z.device, model.parametrization)
    with torch.no_grad():
        options = {"step_t": grid.ts[-1:]} if interpolate else None
        xs = Adaptive("dopri5", rtol=tol, atol=tol, options=options).solve(dyn, z.to(work) * float(scale[0]), grid.ts,
                                                                            grid.process)
        landed = dyn.predict(xs[-1], grid.t[-1], grid.node(grid.n)).x0 if land else None
        xs = xs / scale.to(dtype=work, device=z.device).reshape(-1, *[1] * z.ndim)
        if land:  # x0 is the same in every process: no rescaling
            xs[-1] = landed
    return xs.to(z.dtype), dyn.nfe


def _zero_noise(process, t: float) -> bool:
    return float(process.sigma(torch.tensor(t, dtype=torch.float64))) == 0.0


def _determines_eps(model: Model, t: float) -> bool:
    """True if the model's output and z determine eps at time t."""
    return undetermined_reason(model.parametrization, model.process, t) is None
