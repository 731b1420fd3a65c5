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

__all__ = ["ode_endpoint"]


def ode_endpoint(model: Model, z: Tensor, t_start: float, t_end: float, tol: float = 1e-10) -> tuple[Tensor, int]:
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
    solver error this reference measures). Returns (x, model evaluations).
    """
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    scale = torch.ones(2, dtype=torch.float64)
    land = _zero_noise(model.process, t_end) and not _determines_eps(model, t_end)
    if not isinstance(model.process, FlowMatching) or land:
        fm = FlowMatching()
        ends, scale = time_change(model.process, fm, ends)
        model = model.to(fm, "velocity")
    if land:  # stop just above sigma = 0 and land on x0_hat there (see the docstring)
        ends[1] = LANDING_TIME
    work = compute_dtype(z.dtype)  # z's dtype is the model's input dtype (float64 for a reference)
    tol = max(tol, 10 * torch.finfo(work).eps)
    dyn = Dynamics(model, z.dtype)
    grid = Grid(model.process, ends.to(torch.float64), work, z.device, model.parametrization)
    with torch.no_grad():
        x, _ = Adaptive("dopri5", rtol=tol, atol=tol).step(dyn, z.to(work) * float(scale[0]), 0, grid, None, None)
        if land:  # x0 is the same in every process: no rescaling
            return dyn.predict(x, grid.t[-1], grid.node(1)).x0.to(z.dtype), dyn.nfe
    return (x / float(scale[1])).to(z.dtype), dyn.nfe


LANDING_TIME = 1e-9  # the flow-matching time where a solve onto sigma = 0 lands on x0_hat (see ode_endpoint)


def _zero_noise(process, t: float) -> bool:
    return float(process.sigma(torch.tensor(t, dtype=torch.float64))) == 0.0


def _determines_eps(model: Model, t: float) -> bool:
    """True if the model's output and z determine eps at time t."""
    return undetermined_reason(model.parametrization, model.process, t) is None
