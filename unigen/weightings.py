r"""Loss weightings: the per-time weight w(t) on the noise-prediction error ||eps_hat - eps||^2.

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

So e.g. ``unigen.loss(model, x, weighting="x0")`` *is* the x0-MSE ||x_hat - x||^2 of the model's
own output, whatever parametrization the model has; :func:`unigen.losses.target_mse` computes
such direct MSEs through the conversion hub, and the tests check the identities per sample to
1e-10.

**Density form.** The per-sample weight w(t) and the t-sampling density p(t) act together: the
objective is  E_t[w(t) E||eps_hat - eps||^2] = int w(t(lam)) p_lam(lam) E||...||^2 dlam, so the
weighting *as a function of log-SNR* is  W(lam) = w(t(lam)) p_lam(lam)  with
p_lam(lam) = p(t) |dt/dlam| (Kingma & Gao 2023; docs/theory.md, section 10). Weightings of different
processes or time densities compare only in this form, the Jacobian |dt/dlam| included.
:func:`lambda_weight` returns W(lam). With t ~ U[0, 1] (``time_samplers.Uniform(0, 1)``):

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
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._utils import as_time
from .parametrization import PARAMETRIZATIONS, PathCoefficients, same_output
from .time_samplers import TSampler, get_t_sampler

__all__ = [
    "Weighting",
    "min_snr_weighting",
    "sigmoid_weighting",
    "WEIGHTINGS",
    "get_weighting",
    "weight",
    "lambda_weight",
    "TARGETS",
]

TARGETS = PARAMETRIZATIONS  # every registered output type is a target (the live list of the table)


# ---------------------------------------------------------------------------------------
# D_Q = a_Q sigma - b_Q alpha: ||P_hat - P||^2 = (D_P/D_M)^2 ||M_hat - M||^2
# ---------------------------------------------------------------------------------------
def _d_coef(name: str, c: PathCoefficients):
    """D_name = a sigma - b alpha for P = a x + b eps (the parametrization table's row); it
    never divides by alpha (x0: sigma, eps: -alpha, v: -(alpha^2 + sigma^2), ...)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; valid targets are {', '.join(TARGETS)}")
    a, b = c.ab(name)
    return a * c.sigma - b * c.alpha


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

    def _num(self, c: PathCoefficients, sampler: TSampler | None):
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
        if self.target is not None and same_output(self.target, model_param):
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
        if weighting not in WEIGHTINGS and weighting in TARGETS:  # a parametrization: its plain MSE
            return Weighting(weighting, target=weighting)
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
