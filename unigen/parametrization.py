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

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._utils import SingularConversionError, as_time, check_time_shape, expand_like

__all__ = [
    "PARAMETRIZATIONS", "TABLE", "Parametrization", "register_parametrization", "output_coefficients",
    "input_convention", "same_output", "check_determined", "undetermined_reason", "convert", "reproject", "coefficients", "Prediction", "PathCoefficients", "check_parametrization",
]

# ---------------------------------------------------------------------------------------
# The parametrization table: adding an output type is one register_parametrization call
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parametrization:
    """One network output type: ``out = a x0 + b eps`` and the inputs the network is fed.

    ``coefficients(c)`` returns (a, b) from a coefficient view ``c`` with attributes
    ``alpha, sigma, d_alpha, d_sigma`` (floats or tensors; derivatives are read only by
    outputs that need them). ``inputs`` is the input convention: ``"z"`` (the network sees
    (z_t, t)) or ``"ve"`` (EDM's D(y; s): y = z/alpha and the VE level s = sigma/alpha).
    """

    name: str
    coefficients: Callable
    inputs: str = "z"
    description: str = ""


TABLE: dict[str, Parametrization] = {}
PARAMETRIZATIONS: list[str] = []  # the registered names, in registration order (kept in sync by register)
INPUT_CONVENTIONS = ("z", "ve")


def register_parametrization(name: str, coefficients: Callable, inputs: str = "z", description: str = "") -> Parametrization:
    """Add an output type ``name`` = a x0 + b eps with (a, b) = ``coefficients(c)``.

    It then works everywhere a parametrization name is accepted: :func:`convert`,
    :class:`~unigen.model.Model`, ``Model.to``, every solver, ``sample``, the losses and
    ``train.fit`` (docs/contributing.md walks through adding ``v_n``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a parametrization name must be an identifier, got {name!r}")
    if name in TABLE:
        raise ValueError(f"parametrization {name!r} is already registered")
    if not callable(coefficients):
        raise TypeError("coefficients must be a callable c -> (a, b)")
    if inputs not in INPUT_CONVENTIONS:
        raise ValueError(f"unknown input convention {inputs!r}; valid conventions are {', '.join(INPUT_CONVENTIONS)}")
    row = _probe(name, coefficients, _Values(0.3, 1.7, -0.7, 0.9))
    if inputs == "ve":
        # a VE-input network sees only y = z/alpha and s = sigma/alpha: its row must not change under
        # (alpha, sigma) -> k (alpha, sigma), and cannot use alpha', sigma' (not defined in those inputs)
        scaled = _probe(name, coefficients, _Values(0.6, 3.4, None, None))
        if any(abs(u - v) > 1e-12 * (abs(u) + abs(v) + 1e-300) for u, v in zip(row, scaled)):
            raise ValueError(
                f"parametrization {name!r} with inputs='ve' must have a row (a, b) invariant to scaling "
                f"(alpha, sigma) -> k (alpha, sigma) (a function of sigma/alpha only): got {row} at (0.3, 1.7) and "
                f"{scaled} at (0.6, 3.4)"
            )
    entry = TABLE[name] = Parametrization(name, coefficients, inputs, description)
    PARAMETRIZATIONS.append(name)
    return entry


class _Values:
    __slots__ = ("alpha", "sigma", "d_alpha", "d_sigma")

    def __init__(self, alpha, sigma, d_alpha, d_sigma):
        self.alpha, self.sigma, self.d_alpha, self.d_sigma = alpha, sigma, d_alpha, d_sigma


def _probe(name: str, coefficients: Callable, values) -> tuple[float, float]:
    """coefficients(values) checked to be a pair of finite numbers (ValueError naming ``name`` else)."""
    try:
        a, b = coefficients(values)
        row = (float(a), float(b))
    except Exception as e:  # noqa: BLE001 - any failure of a user callable is reported as its contract
        raise ValueError(
            f"coefficients of parametrization {name!r} must map c (with alpha, sigma, d_alpha, d_sigma) to a pair "
            f"of numbers (a, b); at alpha={values.alpha}, sigma={values.sigma} it raised {type(e).__name__}: {e}"
        ) from e
    if not all(math.isfinite(v) for v in row):
        raise ValueError(f"coefficients of parametrization {name!r} are not finite at alpha={values.alpha}, sigma={values.sigma}: {row}")
    return row


register_parametrization("eps", lambda c: (0.0, 1.0), description="posterior mean of the noise (Ho et al. 2020)")
register_parametrization("x0", lambda c: (1.0, 0.0), description="posterior mean of the data")
register_parametrization("v", lambda c: (-c.sigma, c.alpha), description="Salimans & Ho's alpha eps - sigma x")
register_parametrization("score", lambda c: (0.0, -1.0 / c.sigma), description="grad log p_t = -eps/sigma (Tweedie)")
register_parametrization("velocity", lambda c: (c.d_alpha, c.d_sigma), description="flow-matching velocity dz/dt")
register_parametrization("denoiser", lambda c: (1.0, 0.0), inputs="ve", description="EDM's D(z/alpha; sigma/alpha) = x0")
register_parametrization(
    "v_n", lambda c: (-c.sigma / (c.alpha * c.alpha + c.sigma * c.sigma) ** 0.5, c.alpha / (c.alpha * c.alpha + c.sigma * c.sigma) ** 0.5),
    description="scale-invariant v / sqrt(alpha^2 + sigma^2) (EDM's -F at sigma_data = 1)",
)


def output_coefficients(name: str, alpha, sigma, d_alpha=None, d_sigma=None):
    """(a, b) with output ``name`` = a x0 + b eps for the given schedule values."""
    return TABLE[check_parametrization(name)].coefficients(_Values(alpha, sigma, d_alpha, d_sigma))


def same_output(a: str, b: str) -> bool:
    """True if output types ``a`` and ``b`` are the same quantity (e.g. x0 and denoiser), read
    from the table at generic schedule values."""
    probe = _Values(0.3, 1.7, -0.7, 0.9)  # generic: alpha^2 + sigma^2 != 1, no coincidences
    return a == b or TABLE[check_parametrization(a)].coefficients(probe) == TABLE[check_parametrization(b)].coefficients(probe)


def input_convention(name: str) -> str:
    """``"z"`` or ``"ve"``: what a network of output type ``name`` is fed (see :class:`Parametrization`)."""
    return TABLE[check_parametrization(name)].inputs


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
        """(a, b) with out = a x0 + b eps (the parametrization table). Zeros and ones stay Python numbers."""
        return TABLE[check_parametrization(name)].coefficients(self)


def coefficients(name: str, process, t) -> tuple[Tensor, Tensor]:
    """The pair (a_t, b_t) with ``name`` = a_t x0 + b_t eps, as tensors shaped like t."""
    check_parametrization(name)
    t = as_time(t)
    a, b = PathCoefficients(process, t, t).ab(name)
    return a * torch.ones_like(t), b * torch.ones_like(t)


def reproject(out: Tensor, z: Tensor, src_c: PathCoefficients, src: str, dst_c: PathCoefficients, dst: str, check: bool) -> Tensor:
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
        check_determined(det, alpha, sigma, a, b, src, dst, src_c.t)
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


def _solve_det(alpha, sigma, a, b, src, dst):
    det = alpha * b - sigma * a
    if isinstance(det, float) and det == 0.0:
        raise SingularConversionError(f"cannot convert {src!r} to {dst!r}: alpha={alpha}, sigma={sigma} make it singular")
    return det


def check_determined(det, alpha, sigma, a, b, src, dst, t):
    """Raise SingularConversionError where ``det = alpha b - sigma a`` vanishes (relative to the
    coefficients' size) or is not finite: a ``src`` output then does not determine (x0, eps)."""
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


def undetermined_reason(name: str, process, t: float) -> str | None:
    """Why a ``name`` output of ``process`` at time t does not determine (x0, eps), or None if it
    does: its inputs are undefined (a "ve" network at alpha = 0), or alpha b - sigma a vanishes
    or is not finite there (:func:`check_determined`'s criterion)."""
    t0 = torch.tensor([float(t)], dtype=torch.float64)
    c = PathCoefficients(process, t0, t0)
    if input_convention(name) == "ve" and float(c.alpha) == 0.0:
        return f"alpha = 0: a {name} network's inputs z/alpha and sigma/alpha are undefined there."
    with torch.no_grad():
        a, b = c.ab(name)
    try:
        check_determined(c.alpha * b - c.sigma * a, c.alpha, c.sigma, a, b, name, "x0/eps", t0)
    except SingularConversionError as e:
        return str(e)
    return None


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
    return reproject(out, z, c, src, c, dst, check)


_NAMED = ("x0", "eps", "v", "score", "velocity", "denoiser")  # Prediction's attributes


class Prediction:
    """One network evaluation at (z, t), readable in every parametrization.

    Attributes ``x0, eps, v, score, velocity, denoiser`` are computed on first access and
    cached, so a solver that needs (x0, eps) pays for the conversion once per model call.
    ``coefs`` is the :class:`PathCoefficients` view of the process at (t, z) the conversions use.
    """

    def __init__(self, out: Tensor, z: Tensor, t: Tensor, process, parametrization: str, coefs=None):
        self.out, self.z, self.t, self.process = out, z, t, process
        self.parametrization = parametrization
        self.coefs = PathCoefficients(process, t, z) if coefs is None else coefs

    def as_(self, name: str) -> Tensor:
        """The prediction as output type ``name``, any registered one (no singularity check:
        see :func:`convert`)."""
        check_parametrization(name, "name")
        if name in _NAMED:
            return getattr(self, name)
        cache = self.__dict__.setdefault("_as", {})
        if name not in cache:
            cache[name] = self._get(name)
        return cache[name]

    def _get(self, name):
        return reproject(self.out, self.z, self.coefs, self.parametrization, self.coefs, name, check=False)

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
