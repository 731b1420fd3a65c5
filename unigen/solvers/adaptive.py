r"""Adaptive-step ODE integration through torchdiffeq (Chen et al. 2018).

``Adaptive(method="dopri5", rtol, atol)`` solves the probability-flow ODE between grid
times with torchdiffeq's error-controlled integrators; with ``steps=1`` the whole path is
one adaptive solve. ``info.nfe`` counts the real function evaluations. Adaptive step
control inspects error norms on the host, so unlike the fixed-step solvers it syncs.
"""

from __future__ import annotations

import torch


from .base import Solver

__all__ = ["Adaptive"]

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

    def solve(self, dyn, z, span, process):
        """One error-controlled solve from z at span[0] through every later time of ``span``
        (landing on each exactly): the states at all of them, stacked."""
        from torchdiffeq import odeint

        def f(t, y):
            return dyn.velocity(y, t)

        options = landing_options(self.method, span, self.options, process)
        try:
            return odeint(f, z, span, method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        except AssertionError as e:  # torchdiffeq's step-size controller gave up
            if "underflow in dt" not in str(e):
                raise
            raise FloatingPointError(
                f"{type(self).__name__}({self.method!r}) could not step from t={float(span[0]):.6g} to "
                f"{float(span[-1]):.6g}: its step size underflowed, which happens when the network returns NaN/inf "
                "(check ug.Model(...)(z, t) at these times) or the ODE is too stiff for rtol/atol"
            ) from e
