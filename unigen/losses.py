r"""Training losses in every parametrization, as one weighted noise-prediction error.

With z = alpha x + sigma eps, every output type P = a_P x + b_P eps is, at fixed z, affine in
the posterior-mean estimate x_hat:  P_hat - P = B_P (x_hat - x)  with  B_P = (a_P sigma - b_P alpha)/sigma
(because z is fixed, alpha (x_hat - x) + sigma (eps_hat - eps) = 0; docs/theory.md, section 10).
Hence any two squared errors are proportional:

    ||P_hat - P||^2 = (D_P / D_M)^2 ||M_hat - M||^2,      D_Q = a_Q sigma - b_Q alpha,

and relative to the noise error (D_eps = -alpha) each target carries the per-time weight
w_P(t) = D_P^2 / alpha^2 = B_P^2 e^{-lam}:

==========  ==========================  ===============================================
weighting   w(t) on ||eps_hat - eps||^2   meaning
==========  ==========================  ===============================================
eps         1                           Ho et al. 2020 "simple" loss
x0, snr     sigma^2/alpha^2 = e^{-lam}   ||x_hat - x||^2 (eps-MSE / SNR)
v           (alpha^2+sigma^2)^2/alpha^2  literal v = alpha eps - sigma x; 1 + e^{-lam} for VP
v_n         (alpha^2+sigma^2)/alpha^2    scale-invariant v / sqrt(alpha^2+sigma^2); 1 + e^{-lam}
velocity    (sigma' - alpha' sigma/alpha)^2 = sigma^2 lam'^2/4
                                        flow matching ||u_hat - u||^2, u = alpha' x + sigma' eps;
                                        1/(1-t)^2 for rectified flow
score       1/sigma^2                   denoising score matching ||s_hat + eps/sigma||^2
edm         1 + e^{-lam}/sigma_d^2       EDM's lambda(s)||D - x||^2, lambda = (s^2+sigma_d^2)/(s sigma_d)^2
min_snr     min(1, gamma e^{-lam})      Min-SNR-gamma (Hang et al. 2023), gamma = 5
sigmoid     density form, see below     Kingma & Gao (2023), w(lam) = sigmoid(b - lam), b = 0
elbo        density form, w(lam) = 1    the continuous-time diffusion ELBO term (VDM)
callable    w(t, process) -> [B]        any per-sample weight on the eps-MSE
==========  ==========================  ===============================================

So e.g. ``loss(model, x, weighting="x0")`` *is* the x0-MSE ||x_hat - x||^2 of the model's own
output, whatever parametrization the model has; :func:`target_mse` computes such direct MSEs
through the conversion hub, and the tests check the identities per sample to 1e-10.

**How the value is computed.** The model's own output M_hat (its parametrization) is compared
with its exact target M = a_M x + b_M eps, with no division, and the squared error is
multiplied by (D_P/D_M)^2 (or w(t) alpha^2 / D_M^2 for a weight that is not a target's). The
two are equal to w(t) ||eps_hat - eps||^2, but this form never forms eps_hat: when weighting
and parametrization agree the value is exactly the network's own MSE (factor 1), and it stays
finite where a conversion would divide by zero (e.g. a velocity or v network at alpha = 0).

**Density form.** The per-sample weight w(t) and the t-sampling density p(t) act together: the
objective is  E_t[w(t) E||eps_hat - eps||^2] = int w(t(lam)) p_lam(lam) E||...||^2 dlam, so the
weighting *as a function of log-SNR* is  W(lam) = w(t(lam)) p_lam(lam)  with
p_lam(lam) = p(t) |dt/dlam| (Kingma & Gao 2023; docs/theory.md, section 10). Weightings of different
processes or time densities compare only in this form, the Jacobian |dt/dlam| included.
:func:`lambda_weight` returns W(lam). With t ~ U[0, 1] (``Uniform(0, 1)``):

* flow matching velocity loss:   W = e^{-lam/2}/2
* v-MSE on the cosine path:      W = e^{-lam/2}/pi
* so FM with uniform t is the cosine v-loss times pi/2 ("diffusion meets flow matching").

The density-form weightings ``sigmoid`` and ``elbo`` follow Kingma & Gao's definition
L_w = 1/2 int w(lam) E||eps_hat - eps||^2 dlam exactly: the per-sample weight is
w(lam) / (2 p_lam(lam)) with p_lam the density of the ``t_sampler`` (which is assumed to have
drawn ``t`` also when ``t`` is passed in), so the objective does not depend on the sampler.
``elbo`` (w = 1) is then the diffusion term of the continuous-time negative ELBO in nats,
1/2 E_t[-lam'(t) ||eps_hat - eps||^2] for t ~ U[0, 1]. Kingma & Gao write the sigmoid weighting
as sigmoid(b - lam) with a bias b tuned per dataset; ``"sigmoid"`` uses b = 0 and
``sigmoid_weighting(bias)`` builds other biases.

Time samplers (``t_sampler``): ``"uniform"`` (U[t_lo, t_hi]; by default the process's domain,
pulled in by 1e-3 of its length at an end where the log-SNR is infinite, and starting at a
discrete table's first timestep 1/N or EDM's sigma_min, i.e. where sampling ends),
``"logsnr"`` (lam uniform between the log-SNRs of those ends), ``"logit_normal"`` (SD3's
t = sigmoid(m + s n) for processes on [0, 1]), ``"edm"`` (EDM's log-normal noise level,
ln(sigma/alpha) ~ N(-1.2, 1.2^2), any process), a :class:`TSampler` instance, or a callable
``sampler(n, generator) -> t``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._utils import as_time, check_time_shape, compute_dtype, expand_like
from .model import Model
from .noise import randn
from .parametrization import PathCoefficients

__all__ = [
    "loss",
    "target_mse",
    "dsm_loss",
    "sliced_score_matching",
    "weight",
    "lambda_weight",
    "get_weighting",
    "get_t_sampler",
    "default_t_range",
    "Weighting",
    "sigmoid_weighting",
    "min_snr_weighting",
    "TSampler",
    "Uniform",
    "LogSNRUniform",
    "LogitNormal",
    "LogNormalSigma",
    "WEIGHTINGS",
    "T_SAMPLERS",
    "TARGETS",
]

TARGETS = ("eps", "x0", "denoiser", "v", "v_n", "velocity", "score")
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------
# D_Q = a_Q sigma - b_Q alpha: ||P_hat - P||^2 = (D_P/D_M)^2 ||M_hat - M||^2
# ---------------------------------------------------------------------------------------
def _d_coef(name: str, c: PathCoefficients):
    """D_name for P = a x + b eps (B_P = D_P / sigma); written to avoid dividing by alpha."""
    if name in ("x0", "denoiser"):
        return c.sigma
    if name == "eps":
        return -c.alpha
    if name == "v":  # a = -sigma, b = alpha
        return -(c.alpha * c.alpha + c.sigma * c.sigma)
    if name == "v_n":
        return -torch.hypot(torch.as_tensor(c.alpha), torch.as_tensor(c.sigma))
    if name == "velocity":  # a = alpha', b = sigma'
        return c.d_alpha * c.sigma - c.d_sigma * c.alpha
    if name == "score":  # a = 0, b = -1/sigma
        return c.alpha / c.sigma
    raise ValueError(f"unknown target {name!r}; valid targets are {', '.join(TARGETS)}")


def _target(name: str, c: PathCoefficients, x: Tensor, eps: Tensor) -> Tensor:
    """The exact value of output type ``name`` for the pair (x, eps)."""
    if name in ("x0", "denoiser"):
        return x
    if name == "eps":
        return eps
    if name == "v_n":
        n = torch.hypot(torch.as_tensor(c.alpha), torch.as_tensor(c.sigma))
        return (c.alpha * eps - c.sigma * x) / n
    a, b = c.ab(name)
    return a * x + b * eps


_SAME = {"x0": "x0", "denoiser": "x0", "snr": "x0"}


# ---------------------------------------------------------------------------------------
# Weightings
# ---------------------------------------------------------------------------------------
class Weighting:
    r"""A weighting of the noise-prediction error.

    Exactly one of:
      * ``target``: the weighting is the plain MSE of that output type (w = D_P^2/alpha^2);
      * ``numerator(c) -> w alpha^2`` (c: coefficients at t), a per-sample weight written
        times alpha^2 so it stays finite at alpha = 0;
      * ``density(lam) -> w(lam)``: a Kingma-Gao density-form weighting; the per-sample weight
        is w(lam) / (2 p_lam(lam)) for the t-sampler's log-SNR density p_lam.
    """

    def __init__(self, name: str, target: str | None = None, numerator: Callable | None = None, density: Callable | None = None):
        if sum(v is not None for v in (target, numerator, density)) != 1:
            raise ValueError("a Weighting needs exactly one of target, numerator, density")
        self.name, self.target, self.numerator, self.density = name, target, numerator, density

    def __repr__(self):
        return f"Weighting({self.name!r})"

    def _num(self, c: PathCoefficients, sampler: "TSampler | None"):
        """w(t) alpha^2 (shape of c.t or broadcastable)."""
        if self.target is not None:
            d = _d_coef(self.target, c)
            return d * d
        if self.numerator is not None:
            return self.numerator(c)
        return self._density_weight(c, sampler) * c.alpha * c.alpha

    def _density_weight(self, c: PathCoefficients, sampler):
        if sampler is None or not sampler.has_density:
            raise ValueError(
                f"weighting {self.name!r} is a density-form weighting (Kingma & Gao 2023): it divides by the "
                "log-SNR density of the t-sampler, so t_sampler must be a named sampler or a TSampler with a "
                "density, not a plain callable"
            )
        process, t = c.process, c.t
        lam = process.log_snr(t)
        return 0.5 * self.density(lam) / sampler.density_lambda(lam, process)

    def per_sample(self, process, t: Tensor, sampler=None) -> Tensor:
        """w(t), the weight on ||eps_hat - eps||^2 (infinite where alpha = 0 for most targets)."""
        c = PathCoefficients(process, t, t)
        if self.density is not None:
            return self._density_weight(c, sampler) * torch.ones_like(t)
        return self._num(c, sampler) / (c.alpha * c.alpha) * torch.ones_like(t)

    def factor(self, c: PathCoefficients, model_param: str, sampler=None):
        """Multiplier on ||M_hat - M||^2 for a model of parametrization ``model_param``."""
        if self.target is not None and _SAME.get(self.target, self.target) == _SAME.get(model_param, model_param):
            return 1.0
        d = _d_coef(model_param, c)
        return self._num(c, sampler) / (d * d)


def _edm_numerator(c: PathCoefficients):
    sd = float(getattr(c.process, "sigma_data", 0.5))
    return c.alpha * c.alpha + c.sigma * c.sigma / (sd * sd)


def min_snr_weighting(gamma: float = 5.0) -> Weighting:
    r"""Min-SNR-gamma (Hang et al. 2023): the x0-MSE weighted by min(SNR, gamma), i.e.
    w = min(1, gamma / SNR) on the eps-MSE (numerator min(alpha^2, gamma sigma^2))."""
    if not (isinstance(gamma, (int, float)) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    g = float(gamma)
    return Weighting(f"min_snr(gamma={g:g})", numerator=lambda c: torch.minimum(
        torch.as_tensor(c.alpha * c.alpha), g * torch.as_tensor(c.sigma * c.sigma)))


def sigmoid_weighting(bias: float = 0.0) -> Weighting:
    r"""Kingma & Gao (2023) sigmoid weighting in density form, w(lam) = sigmoid(bias - lam):
    L = 1/2 int sigmoid(b - lam) E||eps_hat - eps||^2 dlam, independent of the t-sampler."""
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise ValueError(f"bias must be a finite number, got {bias!r}")
    b = float(bias)
    return Weighting(f"sigmoid(bias={b:g})", density=lambda lam: torch.sigmoid(b - lam))


WEIGHTINGS = {
    "eps": Weighting("eps", target="eps"),
    "x0": Weighting("x0", target="x0"),
    "snr": Weighting("snr", target="x0"),
    "v": Weighting("v", target="v"),
    "v_n": Weighting("v_n", target="v_n"),
    "velocity": Weighting("velocity", target="velocity"),
    "score": Weighting("score", target="score"),
    "edm": Weighting("edm", numerator=_edm_numerator),
    "min_snr": min_snr_weighting(5.0),
    "sigmoid": sigmoid_weighting(0.0),
    "elbo": Weighting("elbo", density=lambda lam: torch.ones_like(lam)),
}


def get_weighting(weighting) -> Weighting:
    """Resolve a weighting name, :class:`Weighting` or callable ``w(t, process) -> [B]``."""
    if isinstance(weighting, Weighting):
        return weighting
    if isinstance(weighting, str):
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown weighting {weighting!r}; valid names are {', '.join(WEIGHTINGS)}, "
                "or a callable w(t, process) -> [batch]"
            )
        return WEIGHTINGS[weighting]
    if callable(weighting):
        fn = weighting

        def numerator(c):
            w = fn(c.t, c.process)
            if not isinstance(w, Tensor) or w.shape not in ((), c.t.shape):
                got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
                raise ValueError(f"a weighting callable w(t, process) must return a tensor of shape [] or {tuple(c.t.shape)}, got {got}")
            return w * c.alpha * c.alpha

        return Weighting(getattr(fn, "__name__", "callable"), numerator=numerator)
    raise TypeError(f"weighting must be a name, a Weighting or a callable w(t, process), got {type(weighting).__name__}")


# ---------------------------------------------------------------------------------------
# Time samplers
# ---------------------------------------------------------------------------------------
def _infinite_lam(process, t: float) -> bool:
    return not math.isfinite(float(process.log_snr(torch.tensor(t, dtype=torch.float64))))


def default_t_range(process) -> tuple[float, float]:
    """The training range [t_lo, t_hi] used by ``"uniform"``.

    t_lo: the process's own first trained time where it has one (1/N for a DDPM table,
    sigma_min for EDM), otherwise t_min, moved in by 1e-3 of the domain if the log-SNR is
    infinite there. t_hi: t_max, moved in by 1e-3 of the domain if alpha(t_max) = 0.
    """
    lo, hi = float(process.t_min), float(process.t_max)
    margin = 1e-3 * (hi - lo)
    end = getattr(process, "sample_end", None)
    t_lo = lo
    if end is not None and float(end) > lo and not _infinite_lam(process, float(end)):
        t_lo = float(end)
    elif _infinite_lam(process, lo):
        t_lo = lo + margin
    t_hi = hi - margin if _infinite_lam(process, hi) else hi
    return t_lo, t_hi


class TSampler:
    """Draws training times and knows their density (in t and in log-SNR)."""

    has_density = True

    def sample(self, n: int, process, generator=None, dtype=None, device=None) -> Tensor:
        raise NotImplementedError

    def density_t(self, t: Tensor, process) -> Tensor:
        """p(t), the density of the drawn times."""
        raise NotImplementedError

    def density_lambda(self, lam: Tensor, process) -> Tensor:
        """p_lam(lam) = p(t) |dt/dlam| at t = t(lam)."""
        t = process.t_from_log_snr(lam)
        inside = (t >= process.t_min) & (t <= process.t_max) & torch.isfinite(lam)
        tc = torch.where(inside, t, torch.full_like(t, 0.5 * (process.t_min + process.t_max)))
        return torch.where(inside, self.density_t(tc, process) / process.d_log_snr(tc).abs(), 0.0)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _u(n, generator, dtype, device):
    return torch.rand(n, generator=generator, dtype=dtype or torch.get_default_dtype(), device=generator.device if generator is not None else device).to(device)


def _n(n, generator, dtype, device):
    return torch.randn(n, generator=generator, dtype=dtype or torch.get_default_dtype(), device=generator.device if generator is not None else device).to(device)


class Uniform(TSampler):
    """t ~ U[t_lo, t_hi]; by default :func:`default_t_range` (finite log-SNR at both ends)."""

    def __init__(self, t_lo: float | None = None, t_hi: float | None = None):
        self.t_lo, self.t_hi = t_lo, t_hi

    def range(self, process):
        lo, hi = default_t_range(process)
        lo = lo if self.t_lo is None else float(self.t_lo)
        hi = hi if self.t_hi is None else float(self.t_hi)
        if not hi > lo:
            raise ValueError(f"Uniform sampler needs t_hi > t_lo, got t_lo={lo}, t_hi={hi}")
        process.check_t(torch.tensor([lo, hi], dtype=torch.float64), "Uniform(t_lo, t_hi)")
        return lo, hi

    def sample(self, n, process, generator=None, dtype=None, device=None):
        lo, hi = self.range(process)
        return lo + (hi - lo) * _u(n, generator, dtype, device)

    def density_t(self, t, process):
        lo, hi = self.range(process)
        inside = (t >= lo) & (t <= hi)
        return torch.where(inside, 1.0 / (hi - lo), 0.0).to(t.dtype)


class LogSNRUniform(TSampler):
    """lam ~ U[lam_min, lam_max], t = t_from_log_snr(lam); by default the log-SNRs of
    :func:`default_t_range`'s ends."""

    def __init__(self, lam_min: float | None = None, lam_max: float | None = None):
        self.lam_min, self.lam_max = lam_min, lam_max

    def range(self, process):
        t_lo, t_hi = default_t_range(process)
        lam = process.log_snr(torch.tensor([t_hi, t_lo], dtype=torch.float64))
        lo = float(lam[0]) if self.lam_min is None else float(self.lam_min)
        hi = float(lam[1]) if self.lam_max is None else float(self.lam_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"LogSNRUniform needs finite lam_min < lam_max, got {lo}, {hi}")
        r = process.log_snr_range
        if lo < r[0] - 1e-9 or hi > r[1] + 1e-9:
            raise ValueError(f"LogSNRUniform range [{lo:g}, {hi:g}] leaves {type(process).__name__}'s log-SNR range [{r[0]:g}, {r[1]:g}]")
        return lo, hi

    def sample(self, n, process, generator=None, dtype=None, device=None):
        lo, hi = self.range(process)
        return process.t_from_log_snr(lo + (hi - lo) * _u(n, generator, dtype, device))

    def density_lambda(self, lam, process):
        lo, hi = self.range(process)
        return torch.where((lam >= lo) & (lam <= hi), 1.0 / (hi - lo), 0.0).to(lam.dtype)

    def density_t(self, t, process):
        return self.density_lambda(process.log_snr(t), process) * process.d_log_snr(t).abs()


class LogitNormal(TSampler):
    """SD3's logit-normal times (Esser et al. 2024): t = sigmoid(mean + std n), n ~ N(0, 1).
    Only for processes on [0, 1]."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not (isinstance(std, (int, float)) and std > 0):
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    @staticmethod
    def _check(process):
        if process.t_min != 0.0 or process.t_max != 1.0:
            raise ValueError(
                f"t_sampler 'logit_normal' needs a process on [0, 1]; {type(process).__name__} lives on "
                f"[{process.t_min:g}, {process.t_max:g}] (use 'logsnr' or 'edm')"
            )

    def sample(self, n, process, generator=None, dtype=None, device=None):
        self._check(process)
        return torch.sigmoid(self.mean + self.std * _n(n, generator, dtype, device))

    def density_t(self, t, process):
        self._check(process)
        inside = (t > 0) & (t < 1)
        tc = torch.where(inside, t, torch.full_like(t, 0.5))
        q = (torch.log(tc) - torch.log1p(-tc) - self.mean) / self.std
        dens = torch.exp(-0.5 * q * q) / (self.std * math.sqrt(2 * math.pi) * tc * (1 - tc))
        return torch.where(inside, dens, 0.0)


class LogNormalSigma(TSampler):
    """EDM's training noise levels (Karras et al. 2022): ln s ~ N(p_mean, p_std^2) for the VE
    level s = sigma/alpha = e^{-lam/2}, mapped to t through the log-SNR; lam is clipped to the
    process's log-SNR range (a negligible mass for the defaults)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not (isinstance(p_std, (int, float)) and p_std > 0):
            raise ValueError(f"p_std must be positive, got {p_std!r}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, n, process, generator=None, dtype=None, device=None):
        log_s = self.p_mean + self.p_std * _n(n, generator, dtype, device)
        t_lo, t_hi = default_t_range(process)
        lam_r = process.log_snr(torch.tensor([t_hi, t_lo], dtype=torch.float64))
        lam = torch.clamp(-2.0 * log_s, float(lam_r[0]), float(lam_r[1]))
        return process.t_from_log_snr(lam)

    def density_lambda(self, lam, process):
        q = (-0.5 * lam - self.p_mean) / self.p_std
        return 0.5 * torch.exp(-0.5 * q * q) / (self.p_std * math.sqrt(2 * math.pi))

    def density_t(self, t, process):
        return self.density_lambda(process.log_snr(t), process) * process.d_log_snr(t).abs()


class _CallableSampler(TSampler):
    has_density = False

    def __init__(self, fn):
        self.fn = fn

    def sample(self, n, process, generator=None, dtype=None, device=None):
        t = self.fn(n, generator)
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != (n,):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t_sampler(n, generator) must return a floating tensor of shape [{n}], got {got}")
        process.check_t(t, "t drawn by t_sampler")
        return t.to(dtype=dtype or t.dtype, device=device)

    def density_t(self, t, process):
        raise ValueError("a callable t_sampler has no known density")


T_SAMPLERS = {"uniform": Uniform, "logsnr": LogSNRUniform, "logit_normal": LogitNormal, "edm": LogNormalSigma}


def get_t_sampler(t_sampler) -> TSampler:
    """Resolve a sampler name, :class:`TSampler` or callable ``(n, generator) -> t``."""
    if isinstance(t_sampler, TSampler):
        return t_sampler
    if isinstance(t_sampler, str):
        if t_sampler not in T_SAMPLERS:
            raise ValueError(
                f"unknown t_sampler {t_sampler!r}; valid names are {', '.join(T_SAMPLERS)}, "
                "a TSampler, or a callable (n, generator) -> t"
            )
        return T_SAMPLERS[t_sampler]()
    if callable(t_sampler):
        return _CallableSampler(t_sampler)
    raise TypeError(f"t_sampler must be a name, a TSampler or a callable, got {type(t_sampler).__name__}")


# ---------------------------------------------------------------------------------------
# Public weight queries
# ---------------------------------------------------------------------------------------
def weight(weighting, process, t, t_sampler="uniform") -> Tensor:
    r"""w(t): the per-sample weight on ||eps_hat - eps||^2 that ``weighting`` stands for.

    For a target P it is D_P^2/alpha^2 (table in the module docstring); for a density-form
    weighting it is w(lam)/(2 p_lam(lam)) under ``t_sampler``.
    """
    t = as_time(t)
    return get_weighting(weighting).per_sample(process, t, get_t_sampler(t_sampler))


def lambda_weight(weighting, process, lam, t_sampler="uniform") -> Tensor:
    r"""The weighting as a density in log-SNR, W(lam) = w(t(lam)) p_lam(lam) (Kingma & Gao).

    E_t[w(t) ||eps_hat - eps||^2] = int W(lam) ||eps_hat - eps||^2(lam) dlam. With
    ``t_sampler=Uniform(0, 1)`` the flow-matching velocity loss gives e^{-lam/2}/2 and the
    cosine-path v-loss e^{-lam/2}/pi.
    """
    lam = as_time(lam)
    sampler = get_t_sampler(t_sampler)
    t = process.t_from_log_snr(lam)
    return get_weighting(weighting).per_sample(process, t, sampler) * sampler.density_lambda(lam, process)


# ---------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------
def _check_model(model):
    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model (ug.Model(net, process, parametrization)), got {type(model).__name__}")


def _event_shape(model):
    for obj in (model, getattr(model, "fn", None)):
        es = getattr(obj, "event_shape", None)
        if es is not None:
            return tuple(es)
    return None


def _check_x(x, model=None, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor [batch, *event], got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [batch, *event] with batch >= 1, got {tuple(x.shape)}")
    es = _event_shape(model) if model is not None else None
    if es is not None and tuple(x.shape[1:]) != es:
        raise ValueError(f"{name} has event shape {tuple(x.shape[1:])} but the model expects {es} (x of shape [batch, *{es}])")
    return x


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid values are {', '.join(REDUCTIONS)}")


def _reduce(per: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


def _times(model, x, t, sampler, generator) -> Tensor:
    process, b = model.process, x.shape[0]
    wd = compute_dtype(x.dtype)
    if t is None:
        t = sampler.sample(b, process, generator=generator, dtype=wd, device=x.device)
    else:
        t = as_time(t, like=x)
        check_time_shape(t, x)
        process.check_t(t)
    t = t.to(dtype=wd, device=x.device)
    return t.expand(b) if t.ndim == 0 else t


def _noise(x, eps, generator):
    if eps is None:
        return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if not isinstance(eps, Tensor) or eps.shape != x.shape:
        raise ValueError(f"eps must be a tensor of the shape of x {tuple(x.shape)}, got {tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__}")
    return eps


def _raw(model, z, t):
    out = model.raw(z, t)
    if not isinstance(out, Tensor) or out.shape != z.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model returned shape {got}; it must return the shape of its input {tuple(z.shape)}")
    return out


def loss(
    model: Model,
    x: Tensor,
    t=None,
    weighting="eps",
    t_sampler="uniform",
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    *,
    eps: Tensor | None = None,
) -> Tensor:
    r"""Weighted denoising loss  w(t) ||eps_hat(z_t, t) - eps||^2,  z_t = alpha x + sigma eps.

    Args:
        model: a :class:`~unigen.model.Model` in any parametrization.
        x: clean data [batch, *event].
        t: times [] or [batch] in the process's domain; drawn from ``t_sampler`` if None.
        weighting: a name from ``WEIGHTINGS`` (module docstring), a :class:`Weighting`, or a
            callable ``w(t, process) -> [batch]``. A target name P makes the value exactly the
            MSE ||P_hat - P||^2 of the model's own output read as P.
        t_sampler: ``"uniform" | "logsnr" | "logit_normal" | "edm"``, a :class:`TSampler` or a
            callable ``(n, generator) -> t``.
        generator: torch.Generator for t and eps.
        reduction: ``"mean"`` over the batch (of per-sample sums over the event), ``"sum"``,
            or ``"none"`` for the [batch] vector.
        eps: the noise (drawn if None).

    Raises:
        ValueError: unknown weighting/sampler/reduction, x of the wrong event shape, t
            outside the domain, a model output of the wrong shape.
    """
    _check_model(model)
    x = _check_x(x, model)
    w = get_weighting(weighting)
    sampler = get_t_sampler(t_sampler)
    _check_reduction(reduction)
    process = model.process
    t = _times(model, x, t, sampler, generator)
    eps = _noise(x, eps, generator)
    c = PathCoefficients(process, t, x)
    z = c.alpha * x + c.sigma * eps
    out = _raw(model, z.to(x.dtype), t)
    m = "x0" if model.parametrization == "denoiser" else model.parametrization
    err = (out - _target(m, c, x, eps)).flatten(1).square().sum(1)
    factor = w.factor(PathCoefficients(process, t, t), m, sampler)
    return _reduce(factor * err, reduction)


def target_mse(model: Model, x: Tensor, t, eps: Tensor, target: str = "eps") -> Tensor:
    r"""Direct per-sample MSE ||P_hat - P||^2 of output type ``target`` (one of ``TARGETS``).

    P_hat is the model's prediction read as ``target`` through the conversion hub
    (``model(z, t).as_(target)``), P = a_P x + b_P eps its exact value; returns [batch].
    This is the reference the weighted :func:`loss` is tested against.
    """
    _check_model(model)
    x = _check_x(x, model)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets are {', '.join(TARGETS)}")
    if t is None or eps is None:
        raise ValueError("target_mse needs explicit t and eps (it is a reference computation)")
    t = _times(model, x, t, None, None)
    eps = _noise(x, eps, None)
    process = model.process
    c = PathCoefficients(process, t, x)
    z = c.alpha * x + c.sigma * eps
    pred = model(z, t)
    if target == "v_n":
        p_hat = pred.v / torch.hypot(c.alpha, c.sigma)
    else:
        p_hat = pred.as_(target)
    return (p_hat - _target(target, c, x, eps)).flatten(1).square().sum(1)


def dsm_loss(
    model: Model,
    x: Tensor,
    t=None,
    t_sampler="uniform",
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    *,
    eps: Tensor | None = None,
    sigma_weighted: bool = False,
) -> Tensor:
    r"""Denoising score matching (Vincent 2011; Song & Ermon 2019):

        ||s_hat(z_t, t) - grad_z log q(z_t | x)||^2,   grad_z log q(z_t | x) = -(z_t - alpha x)/sigma^2 = -eps/sigma.

    ``s_hat`` is the model's prediction read as a score (any parametrization). Unweighted this
    equals ``loss(..., weighting="score")`` = eps-MSE / sigma^2; ``sigma_weighted=True`` applies
    Song et al.'s lambda(t) = sigma^2, which gives the eps-MSE.
    """
    _check_model(model)
    x = _check_x(x, model)
    _check_reduction(reduction)
    sampler = get_t_sampler(t_sampler)
    t = _times(model, x, t, sampler, generator)
    eps = _noise(x, eps, generator)
    process = model.process
    alpha = expand_like(process.alpha(t), x)
    sigma = expand_like(process.sigma(t), x)
    z = alpha * x + sigma * eps
    s_hat = model.predict(z, t).score
    if s_hat.shape != z.shape:
        raise ValueError(f"the model returned shape {tuple(s_hat.shape)}; it must return the shape of its input {tuple(z.shape)}")
    per = (s_hat + (z - alpha * x) / (sigma * sigma)).flatten(1).square().sum(1)
    if sigma_weighted:
        per = per * process.sigma(t) ** 2
    return _reduce(per, reduction)


def sliced_score_matching(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    projection: str = "gaussian",
    variance_reduction: bool = False,
) -> Tensor:
    r"""Sliced score matching (Song, Garg, Shi & Ermon 2019) for a noise-free score model.

        J(s) = E_x E_v [ v^T grad_x(v^T s(x)) + 1/2 (v^T s(x))^2 ],   E[v v^T] = I,

    an unbiased estimate of Hyvarinen's E[tr grad s + 1/2 ||s||^2], which equals
    1/2 E||s - grad log p||^2 minus a constant of the data. For the true score of N(0, Sigma)
    it is -1/2 tr Sigma^{-1}. ``variance_reduction=True`` uses 1/2 ||s||^2 in place of
    1/2 (v^T s)^2 (SSM-VR). One vector-Jacobian product per projection; the graph is kept, so
    the result is differentiable in the score model's parameters.

    Args:
        score_fn: ``s(x) -> tensor`` of the shape of x (e.g. ``lambda x: -grad E(x)``).
        x: data [batch, *event].
        n_projections: projections per sample (averaged).
        projection: ``"gaussian"`` or ``"rademacher"``.
    """
    x = _check_x(x)
    _check_reduction(reduction)
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    if projection not in ("gaussian", "rademacher"):
        raise ValueError(f"unknown projection {projection!r}; valid values are gaussian, rademacher")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score_fn(xg)
        if not isinstance(s, Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"score_fn returned shape {got}; it must return the shape of x {tuple(x.shape)}")
        total = torch.zeros(x.shape[0], dtype=s.dtype, device=x.device)
        for _ in range(n_projections):
            v = randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if projection == "rademacher":
                v = torch.sign(v)
            sv = (v * s).flatten(1).sum(1)
            (g,) = torch.autograd.grad(sv.sum(), xg, create_graph=True)
            total = total + (v * g).flatten(1).sum(1)
            if not variance_reduction:
                total = total + 0.5 * sv * sv
        per = total / n_projections
        if variance_reduction:
            per = per + 0.5 * s.flatten(1).square().sum(1)
    return _reduce(per, reduction)
