r"""A model is a network seen through a process and a parametrization.

``Model(fn, process, parametrization)`` turns any callable ``fn(z, time) -> out`` into an
object that answers every question a solver may ask, through
:class:`~unigen.parametrization.Prediction`. :meth:`Model.to` re-reads the same network
under another process and/or parametrization (docs/theory.md, section 5): for a target
time t_B the source time is the one of equal log-SNR, t_A = lam_A^{-1}(lam_B(t_B)), the
input is rescaled by 1/c with c = alpha_B/alpha_A, and the output is converted, because
x0 = E[x|z] and eps = E[eps|z] are unchanged by the rescaling. This is how DDIM on a VP
model becomes Euler on the flow-matching ODE.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ._utils import as_time, check_time_shape, compute_dtype, expand_like
from .parametrization import TABLE, PathCoefficients, Prediction, reproject, check_parametrization
from .process import Process, time_change
from .schedules import sample_range

__all__ = ["Model", "TimeDomain", "guided"]

_EMPTY: dict = {}


class TimeDomain:
    """Where a model is defined: a :class:`~unigen.process.Process` and the times ``t_range``
    in it that the network was trained on. Shared by the one-time :class:`Model` and the
    two-time :class:`~unigen.flow_map.FlowMap`, so both pick and check times the same way."""

    process: Process
    t_range: tuple[float, float]

    def check_times(self, t: Tensor, name: str = "t", landing: bool = False) -> None:
        """Raise a ValueError naming :attr:`t_range` if a time leaves it (host sync: API edges only).

        With ``landing``, ``t`` is a sampling grid whose last time may lie below the range
        where sigma = 0 there (the step onto it lands on x0_hat without a network call).
        """
        lo, hi = self.t_range
        t64 = t.detach().to(torch.float64).cpu().reshape(-1)
        inside = within(t64, lo, hi)
        if landing and t64.numel() > 1 and not bool(inside[-1]):
            end = t64[-1:]
            inside[-1] = bool(end <= hi) and float(self.process.sigma(end)) == 0.0
        if not bool(inside.all()):
            bad = t64[~inside][:4].tolist()
            raise ValueError(
                f"{name} must lie in this model's valid time range [{lo:.6g}, {hi:.6g}] "
                f"({type(self.process).__name__} times where the network is defined), got {bad}"
            )

    def default_range(self) -> tuple[float, float]:
        """(t_start, t_end) that sampling and likelihood use by default.

        The process's customary range (``schedules.sample_range``) cut to :attr:`t_range`:
        the start moves down to t_hi, the end up to t_lo (a zero-noise end that t_lo
        reaches is kept, so the last step still lands on x0_hat).
        """
        start, end = sample_range(self.process)
        lo, hi = self.t_range
        return min(start, hi), max(end, lo)


class Model(TimeDomain):
    r"""``fn`` seen as a prediction of type ``parametrization`` for ``process``.

    Args:
        fn: callable ``fn(z, time, **model_kwargs) -> Tensor`` with the shape of z. For
            ``parametrization="denoiser"`` it is EDM's ``D(y; s)`` and receives the VE-scaled
            input ``y = z/alpha`` and noise level ``s = sigma/alpha`` (Karras et al. 2022).
        process: the :class:`~unigen.process.Process` the network was trained for.
        parametrization: one of ``eps x0 v score velocity denoiser``.
        time_input: maps the continuous time (the VE level s for a denoiser) to what the
            network expects, e.g. ``process.timestep`` for a DDPM index, or
            ``lambda s: s.log() / 4`` for EDM's c_noise. Default: identity.
        energy: optional ``energy(z, t) -> [batch]`` with grad_z energy = -score (an EBM, or
            -log p_t up to a constant); needed by Metropolis-adjusted samplers (MALA).
        t_range: ``(t_lo, t_hi)``, the times the network was trained on and may be called at
            (default ``process.model_range``: the whole domain, ``[1/N, 1]`` for a DDPM
            table). Sampling and likelihood start and end inside it by default and refuse
            grids that leave it; only a last grid time at zero noise (sigma = 0) may lie
            below it, because a solver lands there on x0_hat without calling the network.
        batch_time: give the network ``time`` of shape ``[batch]`` (the convention of
            diffusers' and k-diffusion's networks) instead of a 0-dim tensor for a shared time.
        dtype: the floating dtype the network computes in. Inputs (z and time) of another
            dtype are cast to it and the output is cast back to z's dtype, so float64 noise
            can drive a float32 network. Default: the dtype of ``fn``'s first floating
            parameter when ``fn`` is a ``torch.nn.Module``, else no cast.

    The network's output is checked on every call (metadata only, no host sync): a diffusers
    ``ModelOutput`` (``.sample``) or a one-element tuple is unwrapped, anything else that is
    not a tensor raises TypeError, and a shape other than z's raises ValueError (it would
    otherwise be broadcast silently).

    Calling ``model(z, t, **model_kwargs)`` validates shapes, devices and the time domain and
    returns a :class:`~unigen.parametrization.Prediction`; solvers call :meth:`predict`,
    which skips the validation so a step never syncs the host.
    """

    def __init__(
        self,
        fn: Callable,
        process: Process,
        parametrization: str = "eps",
        time_input: Callable | None = None,
        energy: Callable | None = None,
        *,
        t_range: tuple[float, float] | None = None,
        batch_time: bool = False,
        dtype: torch.dtype | None = None,
    ):
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable as fn(z, time), got {type(fn).__name__}")
        if not isinstance(process, Process):
            raise TypeError(f"process must be a unigen Process (e.g. ug.VP.linear()), got {type(process).__name__}")
        for name, f in (("time_input", time_input), ("energy", energy)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if energy is not None:
            self.energy = energy
        self.fn = fn
        self.process = process
        self.parametrization = check_parametrization(parametrization)
        self.time_input = time_input
        self.t_range = process.model_range if t_range is None else check_range(t_range, process)
        if not isinstance(batch_time, bool):
            raise TypeError(f"batch_time must be True or False, got {batch_time!r}")
        self.batch_time = batch_time
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype if dtype is not None else module_dtype(fn)

    @property
    def _inputs(self) -> str:
        """The input convention of this model's parametrization ("z" or "ve")."""
        return TABLE[self.parametrization].inputs

    # -- evaluation -------------------------------------------------------------------
    def __call__(self, z: Tensor, t, **model_kwargs) -> Prediction:
        t = self.validate(z, t)
        return self.predict(z, t, model_kwargs)

    def validate(self, z: Tensor, t) -> Tensor:
        """Check (z, t) at an API boundary and return t as a tensor in the compute dtype."""
        t = as_time(t, like=z)
        check_time_shape(t, z)
        t = t.to(compute_dtype(z.dtype))
        self.process.check_t(t)
        self.check_times(t)
        return t

    def predict(self, z: Tensor, t: Tensor, model_kwargs: dict | None = None) -> Prediction:
        """Evaluate without validation (used inside solver steps)."""
        return Prediction(self.raw(z, t, None, model_kwargs), z, t, self.process, self.parametrization)

    def raw(self, z: Tensor, t: Tensor, node=None, model_kwargs: dict | None = None) -> Tensor:
        """The network output in this model's own parametrization.

        The network is fed under its parametrization's input convention
        (``unigen.parametrization.input_convention``): (z, t), or for "ve" (EDM's denoiser)
        y = z/alpha and the level s = sigma/alpha. ``node`` (a solver grid's
        :class:`~unigen.solvers.grid.Node` at t) supplies those from precomputed tables.
        ``model_kwargs`` (conditioning: labels, embeddings, ...) go to every network call.
        """
        kw = _EMPTY if model_kwargs is None else model_kwargs
        if self._inputs == "ve":
            if node is not None and node.inv_alpha is not None:
                return self._call(z if node.alpha == 1.0 else z * node.inv_alpha, node.level, kw, z)
            alpha = self.process.alpha(t)
            return self._call(z / expand_like(alpha, z), self.process.sigma(t) / alpha, kw, z)
        return self._call(z, t, kw, z)

    def _call(self, x: Tensor, t: Tensor, kw: dict, z: Tensor) -> Tensor:
        """fn at (x, time) under this model's conventions, its output checked against z."""
        time = self._time(t)
        if self.batch_time and isinstance(time, Tensor) and time.ndim == 0:
            time = time.expand(x.shape[0])
        cast = self.dtype is not None and x.dtype != self.dtype
        if cast:
            x = x.to(self.dtype)
            if isinstance(time, Tensor) and time.is_floating_point():
                time = time.to(self.dtype)
        return checked_output(call_network(self.fn, (x, time), kw, type(self).__name__), z)

    def _time(self, t):
        return t if self.time_input is None else self.time_input(t)

    # -- transforms -------------------------------------------------------------------
    def to(self, process: Process | None = None, parametrization: str | None = None) -> "Model":
        """The same model seen through ``process`` and/or ``parametrization`` (exact; no refit).

        The new model's :attr:`t_range` is the source range mapped by equal log-SNR, cut to
        ``process``'s domain; ``model_kwargs`` given to it reach the network unchanged.
        """
        process = self.process if process is None else process
        parametrization = self.parametrization if parametrization is None else parametrization
        return _Transformed(self, process, parametrization)

    def views_at(self, t: float):
        """Every (model, time) that a call at ``t`` evaluates through: this model and, for a
        transferred or guided model, the models it reads (at their own times)."""
        yield self, t

    def __repr__(self):
        return f"{type(self).__name__}({self.parametrization}, {self.process!r})"


def within(t64: Tensor, lo: float, hi: float) -> Tensor:
    slack = 1e-6 * max(1.0, abs(lo), abs(hi))
    return (t64 >= lo - slack) & (t64 <= hi + slack)


def check_range(t_range, process: Process) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in t_range)
    except (TypeError, ValueError):
        raise TypeError(f"t_range must be a pair (t_lo, t_hi) of numbers, got {t_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"t_range must be finite with t_lo < t_hi, got {t_range!r}")
    if not bool(within(torch.tensor([lo, hi], dtype=torch.float64), process.t_min, process.t_max).all()):
        raise ValueError(
            f"t_range {t_range!r} leaves {type(process).__name__}'s domain [{process.t_min:g}, {process.t_max:g}]"
        )
    return max(lo, process.t_min), min(hi, process.t_max)


def module_dtype(fn) -> torch.dtype | None:
    if isinstance(fn, nn.Module):
        for p in fn.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def call_network(fn, args: tuple, kw: dict, owner: str = "Model"):
    """``fn(*args, **kw)``; a dtype mismatch inside the network (float64 input to a float32 net)
    becomes a TypeError that says how to declare the network's dtype."""
    try:
        return fn(*args, **kw)
    except RuntimeError as e:
        msg = str(e)
        if "dtype" in msg or "scalar type" in msg or ("type" in msg and "should be the same" in msg):
            raise TypeError(
                f"the network failed on input of dtype {args[0].dtype} ({e}); declare the dtype it computes in, "
                f"{owner}(..., dtype=torch.float32), so inputs are cast to it, or pass noise of that dtype"
            ) from e
        raise


def checked_output(out, z: Tensor) -> Tensor:
    """The network's output as a tensor shaped like z (metadata checks only: no host sync)."""
    if type(out) is Tensor and out.dtype is z.dtype and out.shape == z.shape:
        return out  # the common case in two comparisons (a device mismatch fails in the next op)
    if not isinstance(out, Tensor):
        sample = getattr(out, "sample", None)  # diffusers' ModelOutput
        if isinstance(sample, Tensor):
            out = sample
        elif isinstance(out, (tuple, list)) and len(out) == 1 and isinstance(out[0], Tensor):
            out = out[0]
        else:
            what = f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise TypeError(
                f"the network must return a tensor shaped like z {tuple(z.shape)} (or a one-element tuple or an "
                f"object with .sample holding it), got {what}"
            )
    if out.shape != z.shape:
        raise ValueError(
            f"the network returned shape {tuple(out.shape)} for z of shape {tuple(z.shape)}; it must return z's "
            f"shape exactly (no broadcasting)"
        )
    if out.device != z.device:
        raise ValueError(f"the network returned a tensor on {out.device} for z on {z.device}")
    if not out.is_floating_point():
        raise TypeError(f"the network must return a floating tensor, got dtype {out.dtype}")
    return out if out.dtype == z.dtype else out.to(z.dtype)


def map_time(src: Process, dst: Process, t: float) -> float:
    """The dst time of equal log-SNR to src time ``t`` (float64), clamped to dst's domain;
    an infinite log-SNR maps to the end of dst's domain that reaches it, or the nearest end."""
    lam = float(src.log_snr(torch.tensor(t, dtype=torch.float64)))
    lam_lo, lam_hi = (float(v) for v in dst.log_snr(torch.tensor([dst.t_max, dst.t_min], dtype=torch.float64)))
    if lam >= lam_hi:
        return dst.t_min
    if lam <= lam_lo:
        return dst.t_max
    out = float(dst.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)))
    return min(max(out, dst.t_min), dst.t_max)


class _Transformed(Model):
    """``inner`` read in ``process`` at log-SNR-matched times, output converted."""

    def __init__(self, inner: Model, process: Process, parametrization: str):
        super().__init__(None, process, parametrization)
        self.inner = inner
        if callable(getattr(inner, "energy", None)):
            self.energy = self._energy
        self.t_range = inner.t_range if process is inner.process else self._mapped_range()

    def _mapped_range(self) -> tuple[float, float]:
        src, dst = self.inner.process, self.process
        lo_in, hi_in = self.inner.t_range
        lam = src.log_snr(torch.tensor([hi_in, lo_in], dtype=torch.float64))
        dom = dst.log_snr(torch.tensor([dst.t_max, dst.t_min], dtype=torch.float64))
        if not (float(lam[0]) < float(dom[1]) and float(lam[1]) > float(dom[0])):
            raise ValueError(
                f"{type(src).__name__} on [{lo_in:g}, {hi_in:g}] covers log-SNR [{float(lam[0]):.4g}, {float(lam[1]):.4g}], "
                f"which does not meet {type(dst).__name__}'s [{float(dom[0]):.4g}, {float(dom[1]):.4g}]"
            )
        return map_time(src, dst, lo_in), map_time(src, dst, hi_in)

    def default_range(self) -> tuple[float, float]:
        """The target process's customary range cut to :attr:`t_range`, starting no earlier
        than the source model would (its own default start at equal log-SNR): a source whose
        customary start avoids a singular end (e.g. VP.cosine's t = 0.9946) keeps avoiding it."""
        start, end = super().default_range()
        if self.process is not self.inner.process:
            start = min(start, map_time(self.inner.process, self.process, self.inner.default_range()[0]))
        return start, end

    def views_at(self, t: float):
        yield from super().views_at(t)
        t_in = t if self.process is self.inner.process else map_time(self.process, self.inner.process, t)
        yield from self.inner.views_at(t_in)

    def _energy(self, z, t):
        # p_B(z, t) = p_A(c z, t_A) c^d: the energy moves with the input, up to a constant in z
        t_in, c = time_change(self.process, self.inner.process, t)
        return self.inner.energy(z * expand_like(c, z), t_in)

    def validate(self, z, t):
        t = super().validate(z, t)
        if self.process is not self.inner.process:
            t_in, _ = time_change(self.process, self.inner.process, t)
            self.inner.process.check_t(t_in, name=f"t mapped by equal log-SNR into {type(self.inner.process).__name__}")
        return t

    def raw(self, z, t, node=None, model_kwargs=None):
        inner = self.inner
        if self.process is inner.process:
            t_in, z_in = t, z
        else:
            t_in, c = time_change(self.process, inner.process, t)
            z_in = z * expand_like(c, z)  # c = alpha_inner / alpha_outer
        src = inner.predict(z_in, t_in, model_kwargs)
        return reproject(src.out, z_in, src.coefs, inner.parametrization, PathCoefficients(self.process, t, z), self.parametrization, check=False)


class _Guided(Model):
    def __init__(self, cond: Model, uncond: Model, scale: float, cond_kwargs: dict, uncond_kwargs: dict):
        super().__init__(None, uncond.process, uncond.parametrization)
        if cond.process is not uncond.process or cond.parametrization != uncond.parametrization:
            cond = cond.to(uncond.process, uncond.parametrization)
        self.cond, self.uncond, self.scale = cond, uncond, scale
        self.cond_kwargs, self.uncond_kwargs = cond_kwargs, uncond_kwargs
        (lo_c, hi_c), (lo_u, hi_u) = cond.t_range, uncond.t_range
        if max(lo_c, lo_u) >= min(hi_c, hi_u):
            raise ValueError(f"the valid time ranges of cond {cond.t_range} and uncond {uncond.t_range} do not overlap")
        self.t_range = (max(lo_c, lo_u), min(hi_c, hi_u))

    def views_at(self, t: float):
        yield from super().views_at(t)
        yield from self.cond.views_at(t)
        yield from self.uncond.views_at(t)

    def raw(self, z, t, node=None, model_kwargs=None):
        kw = _EMPTY if model_kwargs is None else model_kwargs
        if kw and (self.cond_kwargs or self.uncond_kwargs):
            unused = sorted(set(kw) & set(self.cond_kwargs or ()) & set(self.uncond_kwargs or ()))
            if unused:  # overridden in both branches: the value given at sampling would reach nothing
                raise ValueError(
                    f"model_kwargs {unused} are also set by guided()'s cond_kwargs and uncond_kwargs, so the "
                    "values given here would reach neither branch; pass them in one place"
                )
        u = self.uncond.raw(z, t, node, {**kw, **self.uncond_kwargs} if self.uncond_kwargs else kw)
        c = self.cond.raw(z, t, node, {**kw, **self.cond_kwargs} if self.cond_kwargs else kw)
        return u + self.scale * (c - u)


def guided(cond: Model, uncond: Model | None = None, scale: float = 1.0, *,
           cond_kwargs: dict | None = None, uncond_kwargs: dict | None = None) -> Model:
    r"""Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale (cond - uncond)``.

    Every parametrization is affine in x0 with the same z-term, so the guided model is the
    same whichever output type the combination is taken in; it is returned in
    ``uncond``'s process and parametrization (``cond`` is moved there with :meth:`Model.to`).
    ``scale = 1`` is the conditional model, ``scale = 0`` the unconditional one.

    With one conditional network, pass it alone (``uncond=None`` reuses ``cond``) and say how
    each branch is conditioned, as diffusers pipelines do::

        guided(model, scale=7.5, cond_kwargs={"y": labels}, uncond_kwargs={"y": null_labels})

    Each branch's kwargs are added to (and override) the ``model_kwargs`` given at sampling; a
    key that both branches override is refused there (its sampling value would reach neither).
    """
    uncond = cond if uncond is None else uncond
    for name, m in (("cond", cond), ("uncond", uncond)):
        if not isinstance(m, Model):
            raise TypeError(f"{name} must be a unigen Model, got {type(m).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    for name, kw in (("cond_kwargs", cond_kwargs), ("uncond_kwargs", uncond_kwargs)):
        if kw is not None and not isinstance(kw, dict):
            raise TypeError(f"{name} must be a dict of keyword arguments for the network, got {type(kw).__name__}")
    return _Guided(cond, uncond, float(scale), dict(cond_kwargs or {}), dict(uncond_kwargs or {}))
