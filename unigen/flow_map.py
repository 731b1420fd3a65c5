r"""Two-time models: the flow map X_{t->s} of the probability-flow ODE and what it is read as.

The flow map X_{t->s}(z) is the solution at time s of the PF-ODE dz/dtau = v(z, tau) started
at z at time t (Boffi, Albergo & Vanden-Eijnden 2024, "flow map matching"). It satisfies

* X_{t->t} = id and the semigroup law X_{u->s} o X_{t->u} = X_{t->s};
* the tangent d/ds X_{t->s}(z) at s = t is the PF-ODE velocity v(z, t): the one-time
  :class:`~unigen.model.Model` is the flow map's derivative;
* the consistency function f(z, t) = X_{t->t_end}(z) is constant along every trajectory
  (Song et al. 2023, consistency models);
* the average velocity u(z, t, s) = (X_{t->s}(z) - z)/(s - t) obeys MeanFlow's identity
  u = v(z_t, t) + (s - t) d/dt u(z_t, t, s) with d/dt = partial_t + v . grad_z (Geng et al. 2025).

A :class:`FlowMap` is a network ``fn(z, t, s)`` seen through a process and one of the
parametrizations in ``FLOW_MAP_PARAMETRIZATIONS`` (each maps the network output to the endpoint):

===================  ==================================================  ===============
name                 X_{t->s}(z)                                         tangent at s=t
===================  ==================================================  ===============
endpoint             out                                                 d out / ds
displacement         z + out                                             d out / ds
average_velocity     z + (s - t) out           (MeanFlow, shortcut)      velocity = out
x0                   (sigma_s/sigma_t) z + (alpha_s - sigma_s alpha_t/    x0 = out
                     sigma_t) out              (CTM; DDIM with out = x0)
===================  ==================================================  ===============

``average_velocity`` and ``x0`` satisfy X_{t->t} = id by construction. :func:`integrated` turns a ``Model`` into
its flow map by an accurate ODE solve (the teacher; exact to the tolerance for the oracle),
:meth:`FlowMap.tangent` turns a flow map back into a ``Model``, and :meth:`FlowMap.to` moves it to
another process by the equal-log-SNR time change of ``Model.to``:
X^B_{t_B->s_B}(c_t z) = c_s X^A_{t->s}(z) with c = alpha_B / alpha_A (docs/theory.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._utils import as_time, check_time_shape, compute_dtype, expand_like, refuse_non_finite
from .model import Model, TimeDomain, call_network, check_range, checked_output, module_dtype
from .parametrization import undetermined_reason
from .process import FlowMatching, Process, time_change
from .solvers.adaptive import LANDING_TIME  # where a map onto sigma = 0 lands on x0_hat, as the reference

__all__ = ["FlowMap", "FLOW_MAP_PARAMETRIZATIONS", "FlowMapParametrization", "integrated"]

_EMPTY: dict = {}



class JumpCoefficients:
    """alpha, sigma at both times of a jump t -> s, broadcast against z."""

    def __init__(self, process: Process, t: Tensor, s: Tensor, z: Tensor):
        self.t, self.s = expand_like(t, z), expand_like(s, z)
        self.alpha_t, self.sigma_t = expand_like(process.alpha(t), z), expand_like(process.sigma(t), z)
        self.alpha_s, self.sigma_s = expand_like(process.alpha(s), z), expand_like(process.sigma(s), z)

    def ddim(self) -> tuple[Tensor, Tensor]:
        """(a, b) with the DDIM jump X = a z + b x0: a = sigma_s/sigma_t, b = alpha_s - a alpha_t."""
        a = self.sigma_s / self.sigma_t
        return a, self.alpha_s - a * self.alpha_t


@dataclass(frozen=True)
class FlowMapParametrization:
    """One output type of a two-time network: ``endpoint(out, z, c)`` is X_{t->s}(z) from the
    network output (c a :class:`JumpCoefficients`); ``tangent`` names the one-time
    parametrization that the output equals at s = t (None: the tangent is d out/ds)."""

    name: str
    endpoint: Callable
    tangent: str | None
    identity_at_equal_times: bool


def _ddim_endpoint(out, z, c):
    a, b = c.ddim()
    return a * z + b * out


FLOW_MAP_PARAMETRIZATIONS: dict[str, FlowMapParametrization] = {
    p.name: p
    for p in (
        FlowMapParametrization("endpoint", lambda out, z, c: out, None, False),
        FlowMapParametrization("displacement", lambda out, z, c: z + out, None, False),
        FlowMapParametrization("average_velocity", lambda out, z, c: z + (c.s - c.t) * out, "velocity", True),
        FlowMapParametrization("x0", _ddim_endpoint, "x0", True),
    )
}


def check_flow_map_parametrization(name) -> str:
    if name not in FLOW_MAP_PARAMETRIZATIONS:
        raise ValueError(f"unknown flow-map parametrization {name!r}; valid names are {', '.join(FLOW_MAP_PARAMETRIZATIONS)}")
    return name


class FlowMap(TimeDomain):
    r"""``fn(z, t, s)`` seen as the flow map X_{t->s}(z) of ``process``'s probability-flow ODE.

    Args:
        fn: callable ``fn(z, t, s, **model_kwargs) -> Tensor`` shaped like z; ``t`` (the start)
            and ``s`` (the target time) are 0-dim or ``[batch]`` tensors.
        process: the :class:`~unigen.process.Process` whose PF-ODE the map follows.
        parametrization: how the output gives the endpoint (``FLOW_MAP_PARAMETRIZATIONS``:
            ``endpoint``, ``displacement``, ``average_velocity`` (MeanFlow's u), ``x0`` (CTM's
            jump denoiser: the DDIM step with out in place of x0_hat)).
        time_input: maps a continuous time to what the network expects (applied to t and s).
        t_range: the times where the network is defined (default ``process.model_range``).
        dtype: the floating dtype the network computes in (default: its first floating
            parameter's); inputs are cast to it and the output back to z's dtype.

    ``flow_map(z, t, s, **model_kwargs)`` validates and returns X_{t->s}(z); samplers call
    :meth:`jump`, which skips validation (no host sync).
    """

    def __init__(self, fn: Callable | None, process: Process, parametrization: str = "average_velocity", *,
                 time_input: Callable | None = None, t_range: tuple[float, float] | None = None,
                 dtype: torch.dtype | None = None):
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable as fn(z, t, s), got {type(fn).__name__}")
        if not isinstance(process, Process):
            raise TypeError(f"process must be a unigen Process (e.g. ug.FlowMatching()), got {type(process).__name__}")
        if time_input is not None and not callable(time_input):
            raise TypeError(f"time_input must be callable, got {type(time_input).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.fn = fn
        self.process = process
        self.parametrization = check_flow_map_parametrization(parametrization)
        self.time_input = time_input
        self.t_range = process.model_range if t_range is None else check_range(t_range, process)
        self.dtype = dtype if dtype is not None else module_dtype(fn)

    # -- evaluation -------------------------------------------------------------------
    def __call__(self, z: Tensor, t, s, **model_kwargs) -> Tensor:
        t, s = self.validate(z, t, s)
        return self.jump(z, t, s, model_kwargs)

    def validate(self, z: Tensor, t, s) -> tuple[Tensor, Tensor]:
        """Check (z, t, s) at an API boundary; return t and s as tensors in the compute dtype."""
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating tensor, got {type(z).__name__ if not isinstance(z, Tensor) else z.dtype}")
        refuse_non_finite(z, "z")
        out = []
        for name, v in (("t", t), ("s", s)):
            v = as_time(v, like=z)
            check_time_shape(v, z, name)
            v = v.to(compute_dtype(z.dtype))
            self.process.check_t(v, name)
            self.check_times(v, name)  # s too: a flow map calls its network at s (no landing exemption)
            out.append(v)
        return out[0], out[1]

    def jump(self, z: Tensor, t: Tensor, s: Tensor, model_kwargs: dict | None = None) -> Tensor:
        """X_{t->s}(z) without validation (what samplers and losses call)."""
        out = self.raw(z, t, s, model_kwargs)
        return FLOW_MAP_PARAMETRIZATIONS[self.parametrization].endpoint(out, z, JumpCoefficients(self.process, t, s, z))

    def raw(self, z: Tensor, t: Tensor, s: Tensor, model_kwargs: dict | None = None) -> Tensor:
        """The network output in this map's own parametrization."""
        kw = _EMPTY if model_kwargs is None else model_kwargs
        x, tt, ss = z, self._time(t), self._time(s)
        if self.dtype is not None and x.dtype != self.dtype:
            x = x.to(self.dtype)
            tt, ss = (v.to(self.dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for v in (tt, ss))
        return checked_output(call_network(self.fn, (x, tt, ss), kw, "FlowMap"), z)

    def _time(self, t):
        return t if self.time_input is None else self.time_input(t)

    def consistency(self, z: Tensor, t, model_kwargs: dict | None = None) -> Tensor:
        """The consistency function f(z, t) = X_{t->t_end}(z), t_end the end of sampling
        (:meth:`default_range`): what a consistency model learns."""
        t = as_time(t, like=z)
        return self.jump(z, t, torch.full_like(t, self.default_range()[1]), model_kwargs)

    # -- conversions ------------------------------------------------------------------
    def tangent(self) -> Model:
        r"""The one-time model d/ds X_{t->s}(z) at s = t: the PF-ODE velocity this map follows.

        For ``average_velocity`` and ``x0`` the output at s = t *is* the velocity / x0_hat; for
        ``endpoint`` and ``displacement`` the derivative in s is taken by forward-mode autograd.
        """
        return Model(_Tangent(self), self.process, FLOW_MAP_PARAMETRIZATIONS[self.parametrization].tangent or "velocity",
                     t_range=self.t_range)

    def to(self, process: Process) -> "FlowMap":
        """The same map in ``process`` (exact; no refit): X^B_{t_B->s_B}(z) = c_s X^A_{t->s}(z / c_t)
        at the equal-log-SNR times, c = alpha_B/alpha_A. Its :meth:`tangent` is the source's
        tangent moved by ``Model.to``."""
        if not isinstance(process, Process):
            raise TypeError(f"process must be a unigen Process, got {type(process).__name__}")
        return _TransformedFlowMap(self, process)

    def __repr__(self):
        return f"{type(self).__name__}({self.parametrization}, {self.process!r})"


class _Tangent:
    """fn(z, t) of the tangent model of a flow map (a picklable callable, not a closure)."""

    def __init__(self, flow_map: FlowMap):
        self.flow_map = flow_map

    def __call__(self, z, t, **kw):
        fm = self.flow_map
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        if FLOW_MAP_PARAMETRIZATIONS[fm.parametrization].tangent is not None:
            return fm.raw(z, t, t, kw)
        _, velocity = torch.func.jvp(lambda s: fm.jump(z, t, s, kw), (t,), (torch.ones_like(t),))
        return velocity


class _TransformedFlowMap(FlowMap):
    """``inner`` read in ``process`` at equal-log-SNR times, the state rescaled."""

    def __init__(self, inner: FlowMap, process: Process):
        super().__init__(None, process, "endpoint")
        self.inner = inner
        self.tangent_model = inner.tangent().to(process)  # its t_range is the source range mapped
        self.t_range = self.tangent_model.t_range

    def default_range(self) -> tuple[float, float]:
        return self.tangent_model.default_range()

    def jump(self, z, t, s, model_kwargs=None):
        src = self.inner.process
        t_in, c_t = time_change(self.process, src, t)
        s_in, c_s = time_change(self.process, src, s)
        return self.inner.jump(z * expand_like(c_t, z), t_in, s_in, model_kwargs) / expand_like(c_s, z)

    def raw(self, z, t, s, model_kwargs=None):
        return self.jump(z, t, s, model_kwargs)

    def tangent(self) -> Model:
        return self.tangent_model


# ---------------------------------------------------------------------------------------
# a Model's flow map by integration: the teacher
# ---------------------------------------------------------------------------------------
def integrated(model: Model, tol: float = 1e-10) -> FlowMap:
    r"""The flow map of ``model``'s probability-flow ODE by an accurate solve (dopri5, rtol =
    atol = ``tol``): the teacher of distillation and, for the exact oracle, the exact map up
    to ``tol``. Works for per-sample times t, s ([batch]) in one solve, by integrating in
    tau in [0, 1] along t + tau (s - t):

        dz/dtau = (s - t) v(z, t + tau (s - t)),

    in the flow-matching view of the model (``Model.to(FlowMatching(), "velocity")``, smooth up
    to sigma = 0, as :func:`unigen.reference.ode_endpoint`). A target time at sigma = 0 where the
    model's output does not determine the velocity stops at ``LANDING_TIME`` and lands on x0_hat.
    Pass float64 z for a reference. ``.nfe`` counts the model evaluations of every solve so far; its :meth:`~FlowMap.tangent` is
    ``model`` itself.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
    if not (isinstance(tol, float) and 0 < tol < 1):
        raise ValueError(f"tol must be a float in (0, 1), got {tol!r}")
    return _IntegratedFlowMap(model, tol)


class _IntegratedFlowMap(FlowMap):
    """The flow map of a Model by integration; its tangent is that Model (exactly)."""

    def __init__(self, model: Model, tol: float):
        super().__init__(_Integrated(model, tol), model.process, "endpoint", t_range=model.t_range)
        self.model = model

    def default_range(self) -> tuple[float, float]:
        return self.model.default_range()

    def tangent(self) -> Model:
        return self.model

    @property
    def nfe(self) -> int:
        """Model evaluations of every solve so far."""
        return self.fn.nfe


class _Integrated:
    """fn(z, t, s) = X_{t->s}(z) by one dopri5 solve in the flow-matching view of ``model``."""

    def __init__(self, model: Model, tol: float):
        self.model, self.tol = model, tol
        self.fm = FlowMatching()
        self.velocity = model.to(self.fm, "velocity")
        self.x0 = model.to(self.fm, "x0")
        self.nfe = 0
        self.determined_at_zero_noise = undetermined_reason(model.parametrization, model.process, model.process.t_min) is None

    def __call__(self, z: Tensor, t: Tensor, s: Tensor, **kw) -> Tensor:
        import torchdiffeq  # deferred: imports scipy.integrate (see tests/test_module_hygiene.py)

        b = z.shape[0]
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(b) if torch.as_tensor(t).ndim == 0 else t
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device).expand(b) if torch.as_tensor(s).ndim == 0 else s
        proc = self.model.process
        t_fm, c_t = time_change(proc, self.fm, t)
        s_fm, c_s = time_change(proc, self.fm, s)
        land = (proc.sigma(s) == 0) & torch.as_tensor(not self.determined_at_zero_noise, device=z.device)
        s_fm = torch.where(land, torch.full_like(s_fm, LANDING_TIME), s_fm)
        span = expand_like(s_fm - t_fm, z)
        kw = kw or None

        def rhs(tau, y):
            self.nfe += 1
            time = t_fm + tau * (s_fm - t_fm)
            return span * self.velocity.predict(y, time, kw).out

        tol = max(self.tol, 10 * torch.finfo(z.dtype).eps)
        with torch.no_grad():
            y0 = z * expand_like(c_t, z)
            tau = torch.tensor([0.0, 1.0], dtype=z.dtype, device=z.device)
            # step_t: land on tau = 1 exactly instead of stepping past it (FM time below 0)
            try:
                y1 = torchdiffeq.odeint(rhs, y0, tau, rtol=tol, atol=tol, method="dopri5", options={"step_t": tau[1:]})[-1]
            except AssertionError as e:  # torchdiffeq's step-size controller gave up
                raise FloatingPointError(
                    "the flow-map solve could not step (its step size underflowed): the model returns NaN/inf on the "
                    "way, e.g. an output that does not determine the velocity at an end of the path (eps at alpha = 0); "
                    "check ug.Model(...)(z, t) at these times"
                ) from e
            out = y1 / expand_like(c_s, z)
            if bool(land.any()):
                self.nfe += 1
                out = torch.where(expand_like(land, z), self.x0.predict(y1, s_fm, kw).out, out)
        return out
