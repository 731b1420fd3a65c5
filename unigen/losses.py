r"""Training losses in every parametrization, as one weighted noise-prediction error.

:func:`loss` (the weighted denoising loss), :func:`target_mse` (the direct MSE of one output
type, its reference), :func:`dsm_loss` (denoising score matching) and
:func:`sliced_score_matching`. ``loss(model, x, weighting=..., t_sampler=...)`` is
w(t) ||eps_hat - eps||^2 for a weighting w of :mod:`unigen.weightings` (a target name P makes
it exactly the MSE ||P_hat - P||^2 of the model's own output read as P; the table, the density
form and the derivation are there) and times drawn by a sampler of :mod:`unigen.time_samplers`.

**How the value is computed.** The model's own output M_hat (its parametrization) is compared
with its exact target M = a_M x + b_M eps, with no division, and the squared error is
multiplied by (D_P/D_M)^2 (or w(t) alpha^2 / D_M^2 for a weight that is not a target's). The
two are equal to w(t) ||eps_hat - eps||^2, but this form never forms eps_hat: when weighting
and parametrization agree the value is exactly the network's own MSE (factor 1), and it stays
finite where a conversion would divide by zero (e.g. a velocity or v network at alpha = 0).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._utils import as_time, check_time_shape, compute_dtype, expand_like
from .model import Model
from .noise import randn
from .parametrization import PathCoefficients
from .time_samplers import get_t_sampler
from .weightings import TARGETS, get_weighting

__all__ = [
    "loss",
    "target_mse",
    "dsm_loss",
    "sliced_score_matching",
]

REDUCTIONS = ("mean", "sum", "none")


def _target(name: str, c: PathCoefficients, x: Tensor, eps: Tensor) -> Tensor:
    """The exact value a x + b eps of output type ``name`` for the pair (x, eps) (the table's row;
    a zero coefficient contributes nothing, so x0 is x exactly even where eps is not finite)."""
    a, b = c.ab(name)
    out = 0.0
    if not (isinstance(a, float) and a == 0.0):
        out = x if isinstance(a, float) and a == 1.0 else a * x
    if not (isinstance(b, float) and b == 0.0):
        out = out + (eps if isinstance(b, float) and b == 1.0 else b * eps)
    return out


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
        weighting: a name from ``WEIGHTINGS`` (:mod:`unigen.weightings`), a
            :class:`~unigen.weightings.Weighting`, or a callable ``w(t, process) -> [batch]``.
            A target name P makes the value exactly the MSE ||P_hat - P||^2 of the model's own
            output read as P.
        t_sampler: ``"uniform" | "logsnr" | "logit_normal" | "edm"``, a
            :class:`~unigen.time_samplers.TSampler` or a callable ``(n, generator) -> t``.
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
    m = model.parametrization
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
