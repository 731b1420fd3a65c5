r"""Network output types and the ONE conversion routine between them.

Given z_t = alpha x + sigma eps, every output a network may be trained to produce is
affine in the pair (x0, eps) = (E[x|z], E[eps|z]):

===========  =====================  ==================================================
name         out = a x0 + b eps     meaning
===========  =====================  ==================================================
x0           (1, 0)                 posterior mean of the data
denoiser     (1, 0)                 EDM's D(z/alpha; sigma/alpha) = x0, fed VE inputs
eps          (0, 1)                 posterior mean of the noise (Ho et al. 2020)
v            (-sigma, alpha)        Salimans & Ho's literal alpha eps - sigma x
velocity     (alpha', sigma')       flow-matching velocity dz/dt = u (PF-ODE drift)
score        (0, -1/sigma)          grad_z log p_t(z) = -eps/sigma (Tweedie)
===========  =====================  ==================================================

:func:`convert` solves  [[alpha, sigma], [a_src, b_src]] [x0; eps] = [z; out]  and
re-projects onto (a_dst, b_dst): six coefficient pairs instead of thirty pairwise
functions (docs/theory.md, section 2). The determinant ``alpha b_src - sigma a_src`` vanishes
where the source output carries no information beyond z (x0 at sigma = 0; eps or score
at alpha = 0); a conversion that needs the missing half raises
:class:`SingularConversionError` instead of returning NaN.

Note on "v": the literal alpha eps - sigma x is the usual v for VP processes. It is *not*
invariant under (alpha, sigma) -> c (alpha, sigma), so outside VP it differs from the
scale-invariant v_n = v/sqrt(alpha^2+sigma^2) (and from EDM's F = -v_n at sigma_data = 1).
For flow matching v = (1-t) eps - t x, which is not the velocity u = eps - x.
"""

from __future__ import annotations


import torch
from torch import Tensor

from ._utils import SingularConversionError, as_time, check_time_shape, expand_like

__all__ = ["PARAMETRIZATIONS", "convert", "coefficients", "Prediction", "PathCoefficients", "check_parametrization"]

PARAMETRIZATIONS = ("eps", "x0", "v", "score", "velocity", "denoiser")

# Names whose coefficient rows are parallel for every process: converting between
# them is a rescaling that never needs the (x0, eps) hub, so it is never singular.
_FAMILY = {"x0": "x0", "denoiser": "x0", "eps": "eps", "score": "eps"}



class _lazy:
    """A per-instance memo: computed on first access, then stored in the instance dict (a
    non-data descriptor, so the stored value wins). ``functools.cached_property`` without its
    lock, which torch.compile cannot trace on Python < 3.12 (``unigen.compile``)."""

    def __init__(self, fn):
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value

def check_parametrization(name, argument: str = "parametrization") -> str:
    """Return ``name`` if it is one of ``PARAMETRIZATIONS``, else raise ValueError listing them."""
    if not isinstance(name, str) or name not in PARAMETRIZATIONS:
        raise ValueError(f"unknown {argument} {name!r}; valid names are {', '.join(PARAMETRIZATIONS)}")
    return name


class PathCoefficients:
    """alpha, sigma (and alpha', sigma' on demand) of one process at one t, broadcast to z.

    Solvers that know the values in advance (Python floats precomputed on the grid) build
    it with :meth:`fixed`; conversions then cost two tensor operations and no schedule math.
    """

    def __init__(self, process, t: Tensor, z: Tensor):
        self.process, self.t, self.z = process, t, z

    @classmethod
    def fixed(cls, process, t, alpha: float, sigma: float, d_alpha: float | None = None, d_sigma: float | None = None):
        c = cls(process, t, t)
        c.__dict__.update(alpha=alpha, sigma=sigma)
        if d_alpha is not None:
            c.__dict__.update(d_alpha=d_alpha, d_sigma=d_sigma)
        return c

    @_lazy
    def alpha(self):
        return expand_like(self.process.alpha(self.t), self.z)

    @_lazy
    def sigma(self):
        return expand_like(self.process.sigma(self.t), self.z)

    @_lazy
    def d_alpha(self):
        return expand_like(self.process.d_alpha(self.t), self.z)

    @_lazy
    def d_sigma(self):
        return expand_like(self.process.d_sigma(self.t), self.z)

    def ab(self, name: str):
        """(a, b) with out = a x0 + b eps. Zeros and ones stay Python numbers."""
        if name in ("x0", "denoiser"):
            return 1.0, 0.0
        if name == "eps":
            return 0.0, 1.0
        if name == "v":
            return -self.sigma, self.alpha
        if name == "velocity":
            return self.d_alpha, self.d_sigma
        if name == "score":
            return 0.0, -1.0 / self.sigma
        raise ValueError(f"unknown parametrization {name!r}; valid names are {', '.join(PARAMETRIZATIONS)}")


def coefficients(name: str, process, t) -> tuple[Tensor, Tensor]:
    """The pair (a_t, b_t) with ``name`` = a_t x0 + b_t eps, as tensors shaped like t."""
    check_parametrization(name)
    t = as_time(t)
    a, b = PathCoefficients(process, t, t).ab(name)
    return a * torch.ones_like(t), b * torch.ones_like(t)


def _reproject(out: Tensor, z: Tensor, src_c: PathCoefficients, src: str, dst_c: PathCoefficients, dst: str, check: bool) -> Tensor:
    """The single conversion formula.

    With (x0, eps) solved from  alpha x0 + sigma eps = z,  a x0 + b eps = out  (det = alpha b - sigma a)
    the target a' x0 + b' eps equals  [(a' b - b' a) z + (b' alpha - a' sigma) out] / det.
    ``src_c`` and ``dst_c`` are the coefficients of the source and target processes; they
    differ only inside Model.to, where x0 and eps are shared between two processes.
    """
    if _FAMILY.get(src) is not None and _FAMILY.get(src) == _FAMILY.get(dst):
        if src == dst or {src, dst} == {"x0", "denoiser"}:
            return out
        # eps <-> score: score = -eps / sigma
        return out * (-1.0 / dst_c.sigma) if dst == "score" else out * (-src_c.sigma)
    a, b = src_c.ab(src)
    a2, b2 = dst_c.ab(dst)
    alpha, sigma = src_c.alpha, src_c.sigma
    det = _solve_det(alpha, sigma, a, b, src, dst)
    if check:
        _check_det(det, alpha, sigma, a, b, src, dst, src_c.t)
    return _lin((a2 * b - b2 * a) / det, z, (b2 * alpha - a2 * sigma) / det, out)


def _lin(cz, z: Tensor, co, out: Tensor) -> Tensor:
    """cz z + co out with as few tensor operations as the coefficients allow.

    Branches look only at Python floats (precomputed grid values), never at tensors.
    """
    cz_float, co_float = isinstance(cz, float), isinstance(co, float)
    if cz_float and cz == 0.0:
        return out if co_float and co == 1.0 else co * out
    if co_float and co == 0.0:
        return cz * z
    if co_float:
        return torch.add(cz * z, out, alpha=co)
    return cz * z + co * out


def lin_coefs(c: "PathCoefficients", src: str, cx, ce):
    """(cz, co) with  cx x0 + ce eps = cz z + co out  for a ``src``-type output at coefficients c."""
    src = "x0" if src == "denoiser" else src
    a, b = c.ab(src)
    det = _solve_det(c.alpha, c.sigma, a, b, src, "x0/eps")
    return (cx * b - ce * a) / det, (ce * c.alpha - cx * c.sigma) / det


def apply_lin(k, z: Tensor, out: Tensor) -> Tensor:
    """cz z + co out from a precomputed (cz, co, cz_tensor, co_tensor): branches on the floats,
    multiplies by 0-dim tensors (a Python scalar costs an extra ~1.5 us per op on CPU)."""
    cz, co, tz, to = k
    if cz == 0.0:
        return out if co == 1.0 else out * to
    if co == 0.0:
        return z * tz
    return torch.addcmul(z * tz, to, out)


def _solve_det(alpha, sigma, a, b, src, dst):
    det = alpha * b - sigma * a
    if isinstance(det, float) and det == 0.0:
        raise SingularConversionError(f"cannot convert {src!r} to {dst!r}: alpha={alpha}, sigma={sigma} make it singular")
    return det


def _check_det(det, alpha, sigma, a, b, src, dst, t):
    det = torch.as_tensor(det)
    size = (torch.as_tensor(alpha).abs() + torch.as_tensor(sigma).abs()) * (
        torch.as_tensor(a).abs() + torch.as_tensor(b).abs()
    )
    tiny = 64 * torch.finfo(det.dtype).eps
    if bool(((det.abs() <= tiny * size) | ~torch.isfinite(det)).any()):
        raise SingularConversionError(
            f"cannot convert {src!r} to {dst!r} at t={t.flatten()[:4].tolist()}: there alpha="
            f"{torch.as_tensor(alpha).flatten()[:1].tolist()} and sigma={torch.as_tensor(sigma).flatten()[:1].tolist()}, "
            f"so a {src!r} output does not determine (x0, eps). Predict x0, v or velocity there, "
            "or stop the grid short of that time."
        )


def convert(out: Tensor, z: Tensor, t, process, src: str = "eps", dst: str = "x0", *, check: bool = True) -> Tensor:
    r"""Convert a network output ``out`` of type ``src`` at (z, t) into type ``dst``.

    Args:
        out: the output, shape of ``z``.
        z: the noisy input z_t, shape [batch, ...].
        t: time, shape [] or [batch], in the process's domain.
        process: a :class:`unigen.process.Process`.
        src, dst: names from ``PARAMETRIZATIONS``.
        check: validate inputs and singularity (syncs the host; solvers pass False).

    Raises:
        ValueError: unknown name, mismatched shapes/devices, t outside the domain.
        SingularConversionError: the conversion is undetermined at this t.
    """
    check_parametrization(src, "src")
    check_parametrization(dst, "dst")
    t = as_time(t, like=z)
    if check:
        check_time_shape(t, z)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            raise ValueError(
                f"out must have the shape of z {tuple(z.shape)}, got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        if out.device != z.device:
            raise ValueError(f"out is on {out.device} but z is on {z.device}")
        process.check_t(t)
    c = PathCoefficients(process, t.to(out.dtype) if t.dtype != out.dtype else t, z)
    return _reproject(out, z, c, src, c, dst, check)


class Prediction:
    """One network evaluation at (z, t), readable in every parametrization.

    Attributes ``x0, eps, v, score, velocity, denoiser`` are computed on first access and
    cached, so a solver that needs (x0, eps) pays for the conversion once per model call.
    """

    def __init__(self, out: Tensor, z: Tensor, t: Tensor, process, parametrization: str, coefs: PathCoefficients | None = None):
        self.out, self.z, self.t, self.process = out, z, t, process
        self.parametrization = parametrization
        self._c = PathCoefficients(process, t, z) if coefs is None else coefs

    def as_(self, name: str) -> Tensor:
        """The prediction as output type ``name`` (no singularity check: see :func:`convert`)."""
        check_parametrization(name, "name")
        return getattr(self, name)

    def _get(self, name):
        fast = self._c.__dict__.get("lin", {}).get((self.parametrization, name))
        if fast is not None:  # precomputed on the grid: 0-dim tensor coefficients
            return apply_lin(fast, self.z, self.out)
        return _reproject(self.out, self.z, self._c, self.parametrization, self._c, name, check=False)

    @_lazy
    def x0(self) -> Tensor:
        return self._get("x0")

    @_lazy
    def eps(self) -> Tensor:
        return self._get("eps")

    @_lazy
    def v(self) -> Tensor:
        return self._get("v")

    @_lazy
    def score(self) -> Tensor:
        return self._get("score")

    @_lazy
    def velocity(self) -> Tensor:
        return self._get("velocity")

    @_lazy
    def denoiser(self) -> Tensor:
        return self.x0

    def __repr__(self):
        return f"Prediction({self.parametrization}, shape={tuple(self.z.shape)}, process={self.process!r})"
