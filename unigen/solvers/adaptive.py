r"""Adaptive-step ODE integration through torchdiffeq (Chen et al. 2018).

``Adaptive(method="dopri5", rtol, atol)`` solves the probability-flow ODE between grid
times with torchdiffeq's error-controlled integrators; with ``steps=1`` the whole path is
one adaptive solve. ``info.nfe`` counts the real function evaluations. Adaptive step
control inspects error norms on the host, so unlike the fixed-step solvers it syncs.

The last interval onto zero noise (sigma = 0) is integrated too, not jumped over onto x0_hat
as a fixed-step solver's ``final_step`` does: :meth:`Adaptive.final_step` solves it in the
flow-matching view of the model (where the velocity stays finite at sigma = 0) and, where
the model's output does not determine eps at sigma = 0, lands on x0_hat at the flow-matching
time ``LANDING_TIME`` just above it (as :func:`unigen.reference.ode_endpoint` does), or at
the lower end of the model's ``t_range`` where the network is not defined down to sigma = 0.
"""

from __future__ import annotations

import torch

from ..parametrization import PathCoefficients, reproject, undetermined_reason
from ..process import FlowMatching, time_change
from .base import Solver

__all__ = ["Adaptive", "LANDING_TIME", "landing_options"]

# the flow-matching time where a solve onto sigma = 0 stops and lands on x0_hat when the model's
# output does not determine eps at sigma = 0 (x0 / denoiser / score outputs, a VP velocity): the
# flow's x0_hat moves by O(t) there, far below any tolerance. unigen.reference uses the same value.
LANDING_TIME = 1e-9

_ADAPTIVE_RK = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def landing_options(method: str, span, options: dict | None, process=None) -> dict:
    """torchdiffeq options that make an adaptive RK method land on the end of ``span`` exactly
    instead of stepping past it and interpolating back: a process may end there (sigma would
    turn imaginary below t = 0, log(1 - t) is undefined past t = 1 for flow matching). The
    process's ``breakpoints`` (kinks of a piecewise schedule) become ``jump_t``: the solver stops
    there and re-evaluates the derivative, so neither error control nor FSAL straddles a kink."""
    options = dict(options or {})
    if method in _ADAPTIVE_RK:
        options.setdefault("step_t", span)
        lo, hi = span.min(), span.max()
        kinks = torch.tensor(list(getattr(process, "breakpoints", ())), dtype=torch.float64)
        kinks = kinks.to(dtype=span.dtype, device=span.device)  # compared in the span's dtype:
        kinks = kinks[(kinks > lo) & (kinks < hi)]  # a kink that rounds onto an end is that end
        if kinks.numel() and "jump_t" not in options:
            # jump_t, not step_t: the stored last-stage derivative (FSAL) must not cross a kink
            options["jump_t"] = kinks
    return options


class Adaptive(Solver):
    """torchdiffeq ``odeint`` on dz/dt = velocity(z, t) (``clock="t"``)."""

    order = None
    requires = frozenset({"ode"})
    syncs_host = True
    adaptive = True  # chooses its own steps: sample() needs no ``steps`` for it
    batch_coupled = True  # one step-size controller for the whole batch

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, options: dict | None = None):
        from torchdiffeq._impl.odeint import SOLVERS

        methods = sorted(SOLVERS)
        if method not in methods:
            raise ValueError(f"unknown method {method!r}; torchdiffeq methods are {', '.join(methods)}")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        self.method, self.rtol, self.atol, self.options = method, float(rtol), float(atol), options

    def expected_nfe(self, n_steps, ends_at_zero):
        return None  # adaptive: known only after the solve (info.nfe)

    def step(self, dyn, z, i, grid, state, noise):
        return self.solve(dyn, z, grid.ts[i : i + 2], grid.process)[-1], state

    def final_step(self, dyn, z, i, grid, state, noise):
        """The last interval, onto sigma = 0, integrated to the tolerance like the others.

        The PF-ODE is solved in the flow-matching view of the model (z_fm = c z at the time of
        equal log-SNR, ``time_change``): its velocity eps_hat - x0_hat stays finite up to sigma
        = 0, where a VP clock's sigma' ~ t^(-1/2) would make the step size underflow, and a
        DDPM table's kinks are not kinks of that clock. Every model call goes through ``dyn``
        (counted in ``info.nfe``), in the model's own process. Where the model's output does
        not determine eps at sigma = 0 (x0 / denoiser / score outputs, a VP velocity) the
        velocity there is 0/0: the solve stops at the flow-matching time ``LANDING_TIME`` and
        lands on x0_hat there (one more call); otherwise it runs onto sigma = 0 itself. A model
        whose valid range (``t_range``) ends above sigma = 0 (a DDPM network, trained on
        t >= 1/N) is never called below it: the solve stops at its lower end and lands there.
        """
        process = grid.process
        t_from, t_to = grid.times[i], grid.times[i + 1]
        t_lo = float(getattr(dyn.model, "t_range", (t_to, None))[0])
        above = t_lo > t_to  # the network is not defined down to sigma = 0
        land = above or undetermined_reason(dyn.model.parametrization, process, t_to) is not None
        own = isinstance(process, FlowMatching)  # already the flow-matching clock: no change of variables
        fm = process if own else FlowMatching()
        ts = torch.tensor([t_from, t_lo if above else t_to, t_to], dtype=torch.float64)
        span, scale = (ts, torch.ones_like(ts)) if own else time_change(process, fm, ts)
        span, scale = span[:2], scale[[0, 2]]
        if land:
            span[-1] = max(float(span[-1]), LANDING_TIME)
        if float(span[0]) <= float(span[-1]):  # the interval starts where the solve would stop: land at once
            return super().final_step(dyn, z, i, grid, state, noise)
        span = span.to(dtype=z.dtype, device=z.device)

        def state_at(s, y):  # (z, t) of the model's process at flow-matching time s and state y
            if own:
                return y, s
            t, c = time_change(fm, process, s)
            return y * c, t

        def f(s, y):
            z_own, t = state_at(s, y)
            pred = dyn.predict(z_own, t)
            return reproject(pred.out, pred.z, pred.coefs, pred.parametrization, PathCoefficients(fm, s, y), "velocity",
                             check=False)

        where = (f"{t_from:.6g} to {t_to:.6g} (the last interval, onto sigma = 0, solved in the flow-matching view "
                 f"from its time {float(span[0]):.6g} to {float(span[-1]):.3g})")
        options = self.options
        if options and not own:  # times given in the process's clock: moved into the flow-matching one
            options = {k: time_change(process, fm, torch.as_tensor(v, dtype=torch.float64))[0].to(span)
                       if k in ("step_t", "jump_t") else v for k, v in options.items()}
        y = self._odeint(f, z * float(scale[0]), span, landing_options(self.method, span, options), where)[-1]
        if land:
            return dyn.predict(*state_at(span[-1], y)).x0, state
        return y / float(scale[-1]), state

    def solve(self, dyn, z, span, process):
        """One error-controlled solve from z at span[0] through every later time of ``span``
        (landing on each exactly): the states at all of them, stacked."""

        def f(t, y):
            return dyn.velocity(y, t)

        options = landing_options(self.method, span, self.options, process)
        return self._odeint(f, z, span, options, f"{float(span[0]):.6g} to {float(span[-1]):.6g}")

    def _odeint(self, f, z, span, options, where):
        from torchdiffeq import odeint

        try:
            return odeint(f, z, span, method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        except AssertionError as e:  # torchdiffeq's step-size controller gave up
            if "underflow in dt" not in str(e):
                raise
            raise FloatingPointError(
                f"{type(self).__name__}({self.method!r}) could not step from t={where}: its step size underflowed, "
                "which happens when the network returns NaN/inf (check ug.Model(...)(z, t) at these times) or the ODE "
                "is too stiff for rtol/atol"
            ) from e
