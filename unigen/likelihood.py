r"""Likelihoods: the probability-flow ODE with the instantaneous change of variables, bits/dim,
and the discrete DDPM variational bound.

**PF-ODE likelihood** (Chen et al. 2018; Song et al. 2021, App. D). Along dz/dt = u(z, t),
d log p_t(z_t)/dt = -div u, so starting at z_{t0} = x and integrating to T,

    log p_{t0}(x) = log p_T(z_T) + int_{t0}^{T} div u(z_t, t) dt.

The state [z, Delta] is integrated with torchdiffeq; ``div u`` is exact (one batched
vector-Jacobian product per dimension, ``is_grads_batched``) or Hutchinson's estimate
E[xi^T J xi] with Rademacher or Gaussian probes held fixed along the solve (FFJORD).
The prior defaults to N(0, sigma_T^2 I); pass ``prior=`` (a callable z -> log p_T(z)) to use
the exact p_T, e.g. the oracle's ``marginal_log_prob`` when isolating the ODE error.

**DDPM bound** (Ho et al. 2020; docs/theory.md, section 9): for a ``VP.discrete`` table,
L = KL(q(z_T|x) || N(0, I)) + sum_{t>=2} KL(q(z_{t-1}|z_t, x) || p(z_{t-1}|z_t)) - log p(x|z_1),
with p(z_{t-1}|z_t) = q(z_{t-1}|z_t, x0_hat) (variance beta-tilde), whose KL is
1/2 (SNR_{t-1} - SNR_t) ||x - x0_hat(z_t)||^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._utils import refuse_non_finite
from .model import Model
from .noise import randn
from .sample import check_model_kwargs
from .schedules import finite_end
from .solvers.adaptive import landing_options

__all__ = [
    "log_likelihood", "likelihood_range", "bits_per_dim", "discrete_vlb", "LikelihoodInfo", "VLBResult", "divergence",
    "AugmentedODE", "trainable_parameters",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass
class LikelihoodInfo:
    """Pieces of a likelihood solve: log p = prior_logp + delta_logp; ``nfe`` model calls.
    For Hutchinson, ``per_probe`` holds the k single-probe estimates of log p ([k, batch])."""

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    per_probe: Tensor | None
    z_T: Tensor
    nfe: int
    t0: float
    T: float


def divergence(v: Tensor, z: Tensor, probes: Tensor | None = None, create_graph: bool = False, reduce: bool = True) -> Tensor:
    """div_z v per batch item: exact trace of dv/dz, or Hutchinson with ``probes`` [k, *z.shape]
    (their mean, or with ``reduce=False`` one estimate per probe, [k, batch]).

    Exact: one batched vector-Jacobian product with the D basis vectors (vectorised over the
    batch and, through ``is_grads_batched``, over D); falls back to a loop over D only if the
    model does not support batched gradients.
    """
    b = z.shape[0]
    if probes is not None:
        try:
            (vjp,) = torch.autograd.grad(v, z, probes, create_graph=create_graph, is_grads_batched=True)
        except RuntimeError:
            vjp = torch.stack([torch.autograd.grad(v, z, p, create_graph=create_graph, retain_graph=True)[0] for p in probes])
        est = (vjp * probes).reshape(probes.shape[0], b, -1).sum(-1)
        return est.mean(0) if reduce else est
    d = v[0].numel()
    eye = torch.eye(d, dtype=v.dtype, device=v.device).reshape(d, 1, *v.shape[1:]).expand(d, *v.shape)
    try:
        (jac,) = torch.autograd.grad(v, z, eye, create_graph=create_graph, is_grads_batched=True)
        return jac.reshape(d, b, d).diagonal(dim1=0, dim2=2).sum(-1)
    except RuntimeError:
        vf = v.reshape(b, d)
        rows = [torch.autograd.grad(vf[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0].reshape(b, d)[:, i] for i in range(d)]
        return torch.stack(rows, 1).sum(1)


class AugmentedODE(nn.Module):
    """(z, Delta) -> (u, div u): the vector field torchdiffeq integrates (an nn.Module for the adjoint);
    ``log_likelihood`` and ``flows.ContinuousFlow.inverse`` integrate it in opposite directions."""

    def __init__(self, model: Model, probes: Tensor | None, params: list, model_kwargs: dict | None = None):
        super().__init__()
        self.model, self.probes, self.model_kwargs = model, probes, model_kwargs
        self._params = nn.ParameterList([p for p in params if isinstance(p, nn.Parameter)])
        self.nfe = 0

    def forward(self, t, state):
        z, _ = state
        outer_grad = torch.is_grad_enabled()  # True when differentiating (backprop or adjoint backward)
        with torch.enable_grad():
            zz = z if z.requires_grad else z.detach().requires_grad_(True)
            self.nfe += 1
            v = self.model.predict(zz, t, self.model_kwargs).velocity
            div = divergence(v, zz, self.probes, create_graph=outer_grad, reduce=False)
        if not outer_grad:
            v, div = v.detach(), div.detach()
        return v, div


def trainable_parameters(model) -> list:
    """Trainable tensors reachable from a Model (its network, or the models it wraps)."""
    out, seen, stack = [], set(), [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, nn.Module):
            out += [p for p in m.parameters() if p.requires_grad]
            continue
        for name in ("fn", "inner", "cond", "uncond"):
            child = getattr(m, name, None)
            if child is not None:
                stack.append(child)
    uniq = {id(p): p for p in out}
    return list(uniq.values())


def _gaussian_prior(std: float):
    def logp(z):
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * std**2) - z.reshape(z.shape[0], -1).square().sum(-1) / (2 * std**2)

    return logp


def likelihood_range(model: Model, t0: float | None = None, T: float | None = None) -> tuple[float, float]:
    """(t0, T) of a likelihood solve: the given times, checked against the process's domain and
    the model's valid ``t_range``, or the defaults: T the start of ``model.default_range()``,
    t0 the smallest customary time with finite log-SNR, raised to the model's ``t_range``."""
    process = model.process
    explicit = t0 is not None or T is not None
    T = model.default_range()[0] if T is None else float(T)
    t0 = max(finite_end(process), model.t_range[0]) if t0 is None else float(t0)
    if not T > t0:
        raise ValueError(f"T must exceed t0, got t0={t0}, T={T}")
    process.check_t(torch.tensor([t0, T], dtype=torch.float64), "t0/T")
    if explicit:
        model.check_times(torch.tensor([t0, T], dtype=torch.float64), "t0/T")
    return t0, T


def log_likelihood(
    model: Model,
    x: Tensor,
    *,
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    t0: float | None = None,
    T: float | None = None,
    prior=None,
    grad: bool = False,
    adjoint: bool = False,
    generator=None,
    return_info: bool = False,
    options: dict | None = None,
    model_kwargs: dict | None = None,
):
    r"""log p_{t0}(x) in nats per sample, through the probability-flow ODE.

    Args:
        model: any :class:`~unigen.model.Model` (every process and parametrization).
        x: data [batch, ...] (the state at t0).
        divergence: "exact" or "hutchinson" (``n_probes`` probes of kind ``probe``).
        rtol, atol, method, options: passed to torchdiffeq.
        t0, T: integration range; default: the model's sampling range reversed
            (``Model.default_range``; t0 is the smallest time with finite log-SNR, e.g. 1e-3
            for VP, sigma_min for EDM, raised to the model's valid ``t_range``). Times outside
            ``t_range`` are refused.
        prior: callable z -> log p_T(z) [batch]; default N(0, sigma_T^2 I).
        grad: keep the graph so the result can be differentiated w.r.t. the model's parameters
            (and x) by backpropagation through the solver.
        adjoint: with ``grad``, use torchdiffeq's adjoint method instead (Chen et al. 2018).
        generator: for the Hutchinson probes.
        return_info: also return a :class:`LikelihoodInfo` (prior and divergence parts, NFE).
        model_kwargs: keyword arguments for every network call (conditioning), giving
            log p(x | condition).
    """
    from torchdiffeq import odeint, odeint_adjoint

    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"x must be a floating tensor of shape [batch, ...], got {getattr(x, 'shape', type(x).__name__)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid names are {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid names are {', '.join(PROBES)}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if adjoint and not grad:
        raise ValueError("adjoint=True computes gradients: pass grad=True as well")
    refuse_non_finite(x, "x")
    model_kwargs = check_model_kwargs(model_kwargs)
    process = model.process
    t0, T = likelihood_range(model, t0, T)
    if prior is None:
        prior = _gaussian_prior(float(process.sigma(torch.tensor(T, dtype=torch.float64))))
    elif not callable(prior):
        raise TypeError(f"prior must be a callable z -> log p_T(z), got {type(prior).__name__}")

    probes = None
    if divergence == "hutchinson":
        shape = (n_probes,) + tuple(x.shape)
        g = randn(shape, generator=generator, dtype=x.dtype, device=x.device)
        probes = g if probe == "gaussian" else torch.sign(g)

    params = trainable_parameters(model) if grad else []
    func = AugmentedODE(model, probes, params, model_kwargs)
    ts = torch.tensor([t0, T], dtype=x.dtype, device=x.device)
    delta_shape = (x.shape[0],) if probes is None else (n_probes, x.shape[0])
    state = (x, torch.zeros(delta_shape, dtype=x.dtype, device=x.device))
    kw = dict(rtol=rtol, atol=atol, method=method, options=landing_options(method, ts, options, process))
    with torch.set_grad_enabled(grad):
        if adjoint:
            z_T, delta = (s[-1] for s in odeint_adjoint(func, state, ts, adjoint_params=tuple(params), **kw))
        else:
            z_T, delta = (s[-1] for s in odeint(func, state, ts, **kw))
        prior_logp = prior(z_T)
        per_probe = None if probes is None else prior_logp + delta
        delta = delta if probes is None else delta.mean(0)
        logp = prior_logp + delta
    if return_info:
        return logp, LikelihoodInfo(logp, prior_logp, delta, per_probe, z_T, func.nfe, t0, T)
    return logp


def bits_per_dim(model: Model, x: Tensor, *, n_bins: int = 256, data_range=(-1.0, 1.0), **kwargs) -> Tensor:
    r"""Bits per dimension of dequantised data x (x = (k + u)/n_bins rescaled to ``data_range``).

    bpd = -log p(x) / (D ln 2) + log2(n_bins / width): the offset is 8 for [0, 1] data and
    7 for [-1, 1] data with 256 bins (log2(256/2), the offset score_sde uses). With
    uniform dequantisation this upper-bounds the discrete model's bits/dim.
    """
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (low, high) with high > low, got {data_range}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    logp = log_likelihood(model, x, **kwargs)
    d = x[0].numel()
    return -logp / (d * math.log(2)) + math.log2(n_bins / (hi - lo))


@dataclass
class VLBResult:
    """DDPM bound in nats per sample: ``total = prior + sum(terms) + decoder`` ([batch] each;
    ``terms`` is [T-1, batch] for t = 2..T), and ``bpd`` = total / (D ln 2) (+ offset if discrete)."""

    total: Tensor
    prior: Tensor
    terms: Tensor
    decoder: Tensor
    bpd: Tensor
    timesteps: Tensor


def _discretized_gaussian_log_prob(x, mean, std, n_bins, lo, hi):
    """log P(bin of x) under N(mean, std^2) with edge bins open (Ho et al. 2020, eq. 13)."""
    half = 0.5 * (hi - lo) / (n_bins - 1)
    normal = torch.distributions.Normal(mean, std)
    upper = torch.where(x >= hi - half, torch.ones_like(x), normal.cdf(x + half))
    lower = torch.where(x <= lo + half, torch.zeros_like(x), normal.cdf(x - half))
    return torch.log((upper - lower).clamp_min(1e-12))


def discrete_vlb(
    model: Model,
    x: Tensor,
    *,
    decoder: str = "gaussian",
    n_bins: int = 256,
    data_range=(-1.0, 1.0),
    generator=None,
    batch_t: int = 100,
) -> VLBResult:
    r"""The DDPM variational bound of ``model`` (any parametrization) on a ``VP.discrete`` process.

    Every term is evaluated (one fresh z_t ~ q(z_t|x) per term and sample, so ``total`` is an
    unbiased one-sample estimate of the bound). ``decoder="gaussian"`` uses the continuous
    density N(x; x0_hat(z_1), beta_1) for L_0 (continuous data); ``"discretized"`` uses Ho et al.'s
    discretised Gaussian over ``n_bins`` bins of ``data_range`` (then ``bpd`` adds no offset:
    it is already a discrete probability). Model calls are batched ``batch_t`` timesteps at a time.
    """
    process = model.process
    if not hasattr(process, "alphas_cumprod"):
        raise ValueError(f"discrete_vlb needs a VP.discrete process, got {type(process).__name__}")
    if decoder not in ("gaussian", "discretized"):
        raise ValueError(f"unknown decoder {decoder!r}; valid names are gaussian, discretized")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape [batch, ...], got {getattr(x, 'shape', type(x).__name__)}")
    dt, dev = x.dtype, x.device
    n = process.num_timesteps
    abar = process.alphas_cumprod.to(dtype=dt, device=dev)  # abar[k] is Ho's t = k + 1
    b, d = x.shape[0], x[0].numel()
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731

    # L_T = KL(N(sqrt(abar_T) x, 1 - abar_T) || N(0, 1))
    aT, vT = abar[-1], 1 - abar[-1]
    prior = 0.5 * (vT + aT * flat(x).square() - 1 - torch.log(vT)).sum(-1)

    snr = abar / (1 - abar)
    ho_t = torch.arange(2, n + 1, device=dev)  # t = 2..T
    terms = torch.empty(n - 1, b, dtype=dt, device=dev)
    with torch.no_grad():
        for start in range(0, n - 1, batch_t):
            ks = ho_t[start : start + batch_t]
            m = ks.numel()
            t = process.t_from_timestep((ks - 1).to(dt)).to(dt)  # continuous time of Ho's t
            eps = randn((m * b,) + tuple(x.shape[1:]), generator=generator, dtype=dt, device=dev)
            a = abar[ks - 1].sqrt().repeat_interleave(b)
            s = (1 - abar[ks - 1]).sqrt().repeat_interleave(b)
            xr = x.repeat((m,) + (1,) * (x.ndim - 1))
            z = a.reshape(-1, *([1] * (x.ndim - 1))) * xr + s.reshape(-1, *([1] * (x.ndim - 1))) * eps
            x0 = model.predict(z, t.repeat_interleave(b)).x0
            coef = 0.5 * (snr[ks - 2] - snr[ks - 1])
            terms[start : start + m] = coef[:, None] * flat(x0 - xr).square().sum(-1).reshape(m, b)

        # L_0 = -log p(x | z_1), decoder mean x0_hat(z_1, t=1), variance beta_1
        t1 = process.t_from_timestep(torch.zeros((), dtype=dt)).to(dtype=dt, device=dev)
        eps = randn(tuple(x.shape), generator=generator, dtype=dt, device=dev)
        z1 = abar[0].sqrt() * x + (1 - abar[0]).sqrt() * eps
        mean = model.predict(z1, t1.expand(b)).x0
        std = process.betas[0].to(dtype=dt, device=dev).sqrt()
        if decoder == "gaussian":
            logpx = torch.distributions.Normal(mean, std).log_prob(x)
        else:
            logpx = _discretized_gaussian_log_prob(x, mean, std, n_bins, *data_range)
        dec = -flat(logpx).sum(-1)
    total = prior + terms.sum(0) + dec
    bpd = total / (d * math.log(2))
    return VLBResult(total, prior, terms, dec, bpd, ho_t)
