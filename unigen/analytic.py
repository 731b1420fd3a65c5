r"""The exact Gaussian-mixture oracle: closed-form posterior means for any Gaussian path.

Data  p(x) = sum_k pi_k N(x; mu_k, diag(s_k^2)).  Under z = alpha x + sigma eps the
marginal is  p_t(z) = sum_k pi_k N(z; alpha mu_k, diag(V_k)),  V_k = alpha^2 s_k^2 + sigma^2,
and with responsibilities r_k(z) (softmax of the component log-densities):

    E[x | z]   = sum_k r_k (mu_k + alpha s_k^2 / V_k (z - alpha mu_k))
    E[eps | z] = sum_k r_k sigma / V_k (z - alpha mu_k)
    grad log p_t(z) = -sum_k r_k (z - alpha mu_k) / V_k

(Gaussian conditioning within each component, weighted by the responsibilities; derived in
docs/theory.md, section 8). Every other output type follows from these without division
by alpha or sigma, so the oracle is exact at both ends of every process. It isolates
solver error from model error in tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import as_time, check_time_shape, expand_like
from .model import Model
from .noise import randn
from .parametrization import PathCoefficients, check_parametrization, input_convention, output_coefficients

__all__ = ["GaussianMixture", "ring_mixture"]


class GaussianMixture:
    r"""sum_k w_k N(mu_k, diag(s_k^2)) on events of shape ``means.shape[1:]``.

    Args:
        means: [K, *event] component means.
        stds: [K] (isotropic) or [K, *event] (diagonal) positive standard deviations.
        weights: [K] non-negative mixture weights (normalised here). Default uniform.

    All methods compute in the dtype and on the device of their input.
    """

    def __init__(self, means, stds, weights=None):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim < 2:
            raise ValueError(f"means must have shape [K, *event], got {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=means.dtype)
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.shape == (k,):
            stds = stds.reshape((k,) + (1,) * (means.ndim - 1)).expand_as(means)
        if stds.shape != means.shape:
            raise ValueError(f"stds must have shape [K]={k} or the shape of means {tuple(means.shape)}, got {tuple(stds.shape)}")
        if not (stds > 0).all() or not torch.isfinite(stds).all():
            raise ValueError("stds must be positive and finite")
        weights = torch.full((k,), 1.0 / k, dtype=means.dtype) if weights is None else torch.as_tensor(weights, dtype=means.dtype)
        if weights.shape != (k,) or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {weights.tolist()}")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights / weights.sum()
        self.event_shape = tuple(means.shape[1:])
        self.dim = int(math.prod(self.event_shape))

    def __repr__(self):
        return f"GaussianMixture(K={self.means.shape[0]}, event_shape={self.event_shape})"

    # -- helpers ------------------------------------------------------------------------
    def _params(self, z: Tensor):
        dt, dev = z.dtype, z.device
        mu = self.means.reshape(self.means.shape[0], -1).to(dtype=dt, device=dev)
        s2 = self.stds.reshape(self.stds.shape[0], -1).to(dtype=dt, device=dev) ** 2
        logw = torch.log(self.weights.to(dtype=dt, device=dev))
        return mu, s2, logw

    def _check_event(self, z: Tensor, name: str = "z"):
        if not isinstance(z, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if tuple(z.shape[1:]) != self.event_shape:
            raise ValueError(f"{name} must have shape [batch, *{self.event_shape}], got {tuple(z.shape)}")

    def _components(self, z: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component pieces at (alpha, sigma): diff = z - alpha mu, V, log r (normalised), log p."""
        mu, s2, logw = self._params(z)
        zf = z.reshape(z.shape[0], 1, -1)  # [B, 1, D]
        a = alpha.reshape(-1, 1, 1)  # [B or 1, 1, 1]
        s = sigma.reshape(-1, 1, 1)
        diff = zf - a * mu  # [B, K, D]
        var = a * a * s2 + s * s  # [B or 1, K, D]
        comp = -0.5 * (torch.log(2 * math.pi * var) + diff * diff / var).sum(-1) + logw  # [B, K]
        logp = torch.logsumexp(comp, dim=-1)
        return diff, var, comp - logp[:, None], logp, s2, mu

    # -- exact quantities ---------------------------------------------------------------
    def posterior(self, z: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(E[x|z], E[eps|z], grad log p_t(z)) for z = alpha x + sigma eps; alpha, sigma of shape [] or [B]."""
        diff, var, logr, _, s2, mu = self._components(z, alpha, sigma)
        r = torch.exp(logr)[..., None]  # [B, K, 1]
        a = alpha.reshape(-1, 1, 1)
        s = sigma.reshape(-1, 1, 1)
        x0 = (r * (mu + a * s2 / var * diff)).sum(1)
        eps = (r * (s / var * diff)).sum(1)
        score = -(r * (diff / var)).sum(1)
        return x0.reshape(z.shape), eps.reshape(z.shape), score.reshape(z.shape)

    def marginal_log_prob(self, z: Tensor, t, process) -> Tensor:
        """log p_t(z) under ``process`` at time t (shape [] or [B]); returns [B]."""
        self._check_event(z)
        t = as_time(t, like=z)
        check_time_shape(t, z)
        process.check_t(t)
        return self._components(z, process.alpha(t), process.sigma(t))[3]

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) of the data distribution; returns [B]."""
        self._check_event(x, "x")
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return self._components(x, one, 0 * one)[3]

    def sample(self, n: int, generator=None, dtype=None, device=None) -> Tensor:
        """n exact samples; ``generator`` may be a torch.Generator or a list of n of them."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        dtype = dtype or self.means.dtype
        gens = generator if isinstance(generator, (list, tuple)) else None
        if gens is not None:
            if len(gens) != n:
                raise ValueError(f"a list of generators needs one per sample: got {len(gens)} for n={n}")
            u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
        else:
            u = torch.rand(n, generator=generator, dtype=torch.float64)
        cdf = torch.cumsum(self.weights.to(torch.float64), 0)
        k = torch.clamp(torch.searchsorted(cdf, u * cdf[-1], right=True), max=len(cdf) - 1)
        noise = randn((n,) + self.event_shape, generator=generator, dtype=torch.float64)
        x = self.means.to(torch.float64)[k] + self.stds.to(torch.float64)[k] * noise
        return x.to(dtype=dtype, device=device)

    @property
    def mean(self) -> Tensor:
        return torch.einsum("k,k...->...", self.weights, self.means)

    @property
    def covariance(self) -> Tensor:
        """Full covariance of the flattened data, [D, D]."""
        mu = self.means.reshape(self.means.shape[0], -1)
        s2 = self.stds.reshape(self.stds.shape[0], -1) ** 2
        m = self.weights @ mu
        second = torch.einsum("k,ki,kj->ij", self.weights, mu, mu) + torch.diag(self.weights @ s2)
        return second - torch.outer(m, m)

    def model(self, process, parametrization: str = "x0"):
        """An exact :class:`~unigen.model.Model` of this mixture under ``process`` in ``parametrization``.

        Each output type is assembled from the exact (x0, eps, score) triple, never by dividing
        by alpha or sigma, so it stays finite wherever the quantity itself is finite. Being
        exact at every time, it is valid on the whole domain (``t_range = (t_min, t_max)``,
        also for a DDPM table, whose networks are trained on [1/N, 1] only).
        """
        check_parametrization(parametrization)
        everywhere = (float(process.t_min), float(process.t_max))
        if input_convention(parametrization) == "ve":  # fed y = z/alpha and s = sigma/alpha (EDM's denoiser)

            def fn(y, s):
                one = torch.ones_like(s)
                x0, eps, _ = self.posterior(y, one, s)
                a, b = output_coefficients(parametrization, one, s)
                if isinstance(a, float) and isinstance(b, float) and (a, b) == (1.0, 0.0):
                    return x0
                ex = lambda c: expand_like(c, y) if isinstance(c, torch.Tensor) else c  # noqa: E731
                return ex(a) * x0 + ex(b) * eps

            return Model(fn, process, parametrization, energy=self.energy_fn(process), t_range=everywhere)

        def fn(z, t):
            self._check_event(z)
            x0, eps, score = self.posterior(z, process.alpha(t), process.sigma(t))
            if parametrization == "x0":
                return x0
            if parametrization == "eps":
                return eps
            if parametrization == "score":
                return score
            a, b = PathCoefficients(process, t, z).ab(parametrization)
            return a * x0 + b * eps

        return Model(fn, process, parametrization, energy=self.energy_fn(process), t_range=everywhere)

    def energy_fn(self, process):
        """E(z, t) = -log p_t(z) (exactly normalised), so grad_z E = -score."""

        def energy(z, t):
            return -self._components(z, process.alpha(t), process.sigma(t))[3]

        return energy

    def exact_ode_solution(self, z: Tensor, t_from, t_to, process) -> Tensor:
        """Exact probability-flow ODE map z_{t_from} -> z_{t_to} for a single-component mixture.

        For Gaussian data N(mu, diag s^2) the PF-ODE is linear: with r_t = sqrt(alpha^2 s^2 + sigma^2),
        z_t - alpha_t mu = (r_t / r_s)(z_s - alpha_s mu) componentwise.
        """
        if self.means.shape[0] != 1:
            raise ValueError("exact_ode_solution needs a single Gaussian component (K = 1)")
        self._check_event(z)
        t0, t1 = as_time(t_from, like=z), as_time(t_to, like=z)
        mu, s2, _ = self._params(z)
        mu, s2 = mu[0].reshape(self.event_shape), s2[0].reshape(self.event_shape)
        a0, a1 = expand_like(process.alpha(t0), z), expand_like(process.alpha(t1), z)
        r0 = torch.sqrt(a0 * a0 * s2 + expand_like(process.sigma(t0), z) ** 2)
        r1 = torch.sqrt(a1 * a1 * s2 + expand_like(process.sigma(t1), z) ** 2)
        return a1 * mu + (r1 / r0) * (z - a0 * mu)


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.3, dtype=torch.float64) -> GaussianMixture:
    """The "eight Gaussians" oracle: ``k`` equal isotropic Gaussians (``std``) centred on the
    circle of ``radius`` at the angles 2 pi i / k, computed in ``dtype``.

    The defaults are the exact mixture of ``unigen verify``, ``unigen sample --data gmm`` and the
    2-D problems of :mod:`unigen.bench` (they all build it here)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    for name, v in (("radius", radius), ("std", std)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    ang = torch.arange(k, dtype=dtype) * 2 * math.pi / k
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(means, torch.full((k,), std, dtype=dtype))
