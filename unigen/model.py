r"""A model is a network seen through a process and a parametrization.

``Model(fn, process, parametrization)`` turns any callable ``fn(z, time) -> out`` into an
object that answers every question a solver may ask, through
:class:`~unigen.parametrization.Prediction`. :meth:`Model.to` re-reads the same network
under another process and/or parametrization (math sheet, section 3): for a target
time t_B the source time is the one of equal log-SNR, t_A = lam_A^{-1}(lam_B(t_B)), the
input is rescaled by 1/c with c = alpha_B/alpha_A, and the output is converted, because
x0 = E[x|z] and eps = E[eps|z] are unchanged by the rescaling. This is how DDIM on a VP
model becomes Euler on the flow-matching ODE.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ._utils import as_time, check_time_shape, compute_dtype, expand_like
from .parametrization import Prediction, _Coefs, _reproject, check_parametrization
from .process import Process, time_change

__all__ = ["Model", "guided"]


class Model:
    r"""``fn`` seen as a prediction of type ``parametrization`` for ``process``.

    Args:
        fn: callable ``fn(z, time) -> Tensor`` with the shape of z. For
            ``parametrization="denoiser"`` it is EDM's ``D(y; s)`` and receives the VE-scaled
            input ``y = z/alpha`` and noise level ``s = sigma/alpha`` (Karras et al. 2022).
        process: the :class:`~unigen.process.Process` the network was trained for.
        parametrization: one of ``eps x0 v score velocity denoiser``.
        time_input: maps the continuous time (the VE level s for a denoiser) to what the
            network expects, e.g. ``process.timestep`` for a DDPM index, or
            ``lambda s: s.log() / 4`` for EDM's c_noise. Default: identity.
        energy: optional ``energy(z, t) -> [batch]`` with grad_z energy = -score (an EBM, or
            -log p_t up to a constant); needed by Metropolis-adjusted samplers (MALA).

    Calling ``model(z, t)`` validates shapes, devices and the time domain and returns a
    :class:`~unigen.parametrization.Prediction`; solvers call :meth:`predict`, which skips
    the validation so a step never syncs the host.
    """

    def __init__(
        self,
        fn: Callable,
        process: Process,
        parametrization: str = "eps",
        time_input: Callable | None = None,
        energy: Callable | None = None,
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

    # -- evaluation -------------------------------------------------------------------
    def __call__(self, z: Tensor, t) -> Prediction:
        t = self.validate(z, t)
        pred = self.predict(z, t)
        if not isinstance(pred.out, Tensor) or pred.out.shape != z.shape:
            got = tuple(pred.out.shape) if isinstance(pred.out, Tensor) else type(pred.out).__name__
            raise ValueError(f"the model returned shape {got}; it must return the shape of z {tuple(z.shape)}")
        return pred

    def validate(self, z: Tensor, t) -> Tensor:
        """Check (z, t) at an API boundary and return t as a tensor in the compute dtype."""
        t = as_time(t, like=z)
        check_time_shape(t, z)
        t = t.to(compute_dtype(z.dtype))
        self.process.check_t(t)
        return t

    def predict(self, z: Tensor, t: Tensor) -> Prediction:
        """Evaluate without validation (used inside solver steps)."""
        return Prediction(self.raw(z, t), z, t, self.process, self.parametrization)

    def raw(self, z: Tensor, t: Tensor, coefs=None) -> Tensor:
        """The network output in this model's own parametrization.

        ``coefs`` (a solver grid's precomputed coefficients at t) lets the denoiser input
        y = z/alpha and level s = sigma/alpha come from tables instead of schedule arithmetic.
        """
        if self.parametrization == "denoiser":
            ve = None if coefs is None else coefs.__dict__.get("ve")
            if ve is not None:
                inv_alpha, level, alpha_is_one = ve
                return self.fn(z if alpha_is_one else z * inv_alpha, self._time(level))
            alpha = self.process.alpha(t)
            return self.fn(z / expand_like(alpha, z), self._time(self.process.sigma(t) / alpha))
        return self.fn(z, self._time(t))

    def _time(self, t):
        return t if self.time_input is None else self.time_input(t)

    # -- transforms -------------------------------------------------------------------
    def to(self, process: Process | None = None, parametrization: str | None = None) -> "Model":
        """The same model seen through ``process`` and/or ``parametrization`` (exact; no refit)."""
        process = self.process if process is None else process
        parametrization = self.parametrization if parametrization is None else parametrization
        return _Transformed(self, process, parametrization)

    def __repr__(self):
        return f"{type(self).__name__}({self.parametrization}, {self.process!r})"


class _Transformed(Model):
    """``inner`` read in ``process`` at log-SNR-matched times, output converted."""

    def __init__(self, inner: Model, process: Process, parametrization: str):
        super().__init__(None, process, parametrization)
        self.inner = inner
        if callable(getattr(inner, "energy", None)):
            self.energy = self._energy

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

    def raw(self, z, t, coefs=None):
        inner = self.inner
        if self.process is inner.process:
            t_in, z_in = t, z
        else:
            t_in, c = time_change(self.process, inner.process, t)
            z_in = z * expand_like(c, z)  # c = alpha_inner / alpha_outer
        src = inner.predict(z_in, t_in)
        return _reproject(src.out, z_in, src._c, inner.parametrization, _Coefs(self.process, t, z), self.parametrization, check=False)


class _Guided(Model):
    def __init__(self, cond: Model, uncond: Model, scale: float):
        super().__init__(None, uncond.process, uncond.parametrization)
        if cond.process is not uncond.process or cond.parametrization != uncond.parametrization:
            cond = cond.to(uncond.process, uncond.parametrization)
        self.cond, self.uncond, self.scale = cond, uncond, scale

    def raw(self, z, t, coefs=None):
        u = self.uncond.raw(z, t, coefs)
        return u + self.scale * (self.cond.raw(z, t, coefs) - u)


def guided(cond: Model, uncond: Model, scale: float) -> Model:
    r"""Classifier-free guidance (Ho & Salimans 2022): ``uncond + scale (cond - uncond)``.

    Every parametrization is affine in x0 with the same z-term, so the guided model is the
    same whichever output type the combination is taken in; it is returned in
    ``uncond``'s process and parametrization (``cond`` is moved there with :meth:`Model.to`).
    ``scale = 1`` is the conditional model, ``scale = 0`` the unconditional one.
    """
    for name, m in (("cond", cond), ("uncond", uncond)):
        if not isinstance(m, Model):
            raise TypeError(f"{name} must be a unigen Model, got {type(m).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    return _Guided(cond, uncond, float(scale))
