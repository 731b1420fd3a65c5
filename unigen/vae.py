r"""Variational autoencoders, and the VAE that a one-step Gaussian diffusion is.

**ELBO** (Kingma & Welling 2014; Rezende et al. 2014; docs/theory.md, section 11). For a prior
p(z) = N(0, I), a diagonal Gaussian encoder q(z|x) = N(mu(x), diag s^2(x)) and a decoder
p(x|z),

    log p(x) >= ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || N(0, I)),
    KL = 1/2 sum_i (mu_i^2 + s_i^2 - 1 - log s_i^2),

and log p(x) - ELBO(x) = KL(q(z|x) || p(z|x)), so the bound is tight exactly when the
encoder is the true posterior. The expectation is estimated with the reparametrisation
z = mu + s * eps, eps ~ N(0, I) (``n_samples`` draws averaged); the KL is analytic.

**A one-step diffusion is a VAE** (Ho et al. 2020, Eq. 5 with T = 1; Kingma et al. 2021).
The DDPM bound L = KL(q(z_T|x) || N(0, I)) + sum_{t>=2} KL(...) - E log p(x|z_1) has no
middle terms when T = 1, and it is -ELBO of the VAE with

    encoder  q(z_1|x) = N(sqrt(1 - beta_1) x, beta_1 I)        (the forward step),
    prior    N(0, I)                                            (the diffusion prior),
    decoder  p(x|z_1) = N(x0_hat(z_1, t_1), beta_1 I)           (DDPM's Gaussian L_0).

:func:`one_step_diffusion_vae` builds that VAE from a unigen ``Model`` on a ``VP.discrete``
table (its first step); ``tests/test_vae.py`` checks elbo == -(T = 1 VLB) to 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .noise import randn

__all__ = ["VAE", "ELBOTerms", "gaussian_kl", "gaussian_log_prob", "one_step_diffusion_vae"]

_LOG_2PI = math.log(2.0 * math.pi)


def _flat_sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(-1)


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    r"""KL(N(mu, diag e^{log_var}) || N(0, I)) = 1/2 sum (mu^2 + s^2 - 1 - log s^2), per batch item ([batch])."""
    return 0.5 * _flat_sum(mu.square() + log_var.exp() - 1.0 - log_var)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    r"""log N(x; mean, diag e^{log_var}) summed over the event, per batch item ([batch]).
    ``log_var`` broadcasts (a scalar gives a shared variance)."""
    log_var = torch.as_tensor(log_var, dtype=x.dtype, device=x.device)
    return -0.5 * _flat_sum((_LOG_2PI + log_var + (x - mean).square() * torch.exp(-log_var)).expand_as(x))


@dataclass
class ELBOTerms:
    """Per-sample pieces (each [batch]): ``elbo = reconstruction - kl``; ``reconstruction`` is the
    Monte-Carlo mean of log p(x|z) over the ``n_samples`` draws, ``kl`` the analytic KL."""

    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    mu: Tensor
    log_var: Tensor


class VAE(nn.Module):
    r"""A Gaussian VAE with prior N(0, I) (module docstring for the bound).

    Args:
        encoder: ``encoder(x)`` -> ``(mu, log_var)``, or one tensor [batch, 2k] (or
            [batch, 2k, ...]) split in half along dim 1 into mu and log_var.
        decoder: ``decoder(z)`` -> ``(mean, log_var)`` (a per-pixel variance), or the mean
            alone with the scalar std below. The mean must have the shape of x.
        latent_dim: the latent event size (int, or a shape tuple). Checked against the encoder
            output on every call; inferred from the first call if None. :meth:`sample` needs it.
        decoder_std: the decoder's scalar std when ``decoder`` returns the mean alone.
        learn_decoder_std: make that std a learned parameter (``log_decoder_std``), initialised
            at ``decoder_std``.
    """

    def __init__(
        self,
        encoder,
        decoder,
        latent_dim=None,
        decoder_std: float = 1.0,
        learn_decoder_std: bool = False,
    ):
        super().__init__()
        for name, f in (("encoder", encoder), ("decoder", decoder)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if isinstance(decoder_std, bool) or not isinstance(decoder_std, (int, float)) or not (
            decoder_std > 0 and math.isfinite(decoder_std)
        ):
            raise ValueError(f"decoder_std must be a finite number > 0, got {decoder_std!r}")
        self.encoder, self.decoder = encoder, decoder
        self.latent_shape = None if latent_dim is None else self._as_shape(latent_dim)
        log_std = torch.tensor(math.log(decoder_std), dtype=torch.get_default_dtype())
        if learn_decoder_std:
            self.log_decoder_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_decoder_std", log_std)

    @staticmethod
    def _as_shape(latent_dim) -> tuple:
        shape = (latent_dim,) if isinstance(latent_dim, int) and not isinstance(latent_dim, bool) else latent_dim
        if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise ValueError(f"latent_dim must be a positive int or a shape tuple of positive ints, got {latent_dim!r}")
        return tuple(shape)

    # -- the two networks, validated -------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log_var) of q(z|x), each [batch, *latent_shape]."""
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(f"x must be a tensor of shape [batch, ...], got {getattr(x, 'shape', type(x).__name__)}")
        out = self.encoder(x)
        if isinstance(out, Tensor):
            if out.ndim < 2 or out.shape[1] % 2:
                raise ValueError(
                    "a single-tensor encoder output is split in half along dim 1 into (mu, log_var), so it must be "
                    f"[batch, 2k, ...] with an even dim 1; got shape {tuple(out.shape)}"
                )
            mu, log_var = out.chunk(2, dim=1)
        elif isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, Tensor) for o in out):
            mu, log_var = out
        else:
            raise TypeError(f"encoder(x) must return (mu, log_var) or one tensor to split, got {type(out).__name__}")
        if mu.shape != log_var.shape or mu.ndim < 2 or mu.shape[0] != x.shape[0]:
            raise ValueError(
                f"encoder output shapes mu {tuple(mu.shape)} and log_var {tuple(log_var.shape)} must be equal and "
                f"[batch={x.shape[0]}, *latent]"
            )
        latent = tuple(mu.shape[1:])
        if self.latent_shape is None:
            self.latent_shape = latent
        elif latent != self.latent_shape:
            raise ValueError(f"latent dim mismatch: the encoder gave latent shape {latent}, latent_dim is {self.latent_shape}")
        return mu, log_var

    def decode(self, z: Tensor, like: tuple | None = None) -> tuple[Tensor, Tensor]:
        """(mean, log_var) of p(x|z); log_var is a 0-dim tensor for a scalar std."""
        out = self.decoder(z)
        if isinstance(out, Tensor):
            mean, log_var = out, 2.0 * self.log_decoder_std.to(out.dtype)
        elif isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, Tensor) for o in out):
            mean, log_var = out
            if log_var.shape != mean.shape:
                raise ValueError(f"decoder log_var {tuple(log_var.shape)} must have the shape of its mean {tuple(mean.shape)}")
        else:
            raise TypeError(f"decoder(z) must return the mean or (mean, log_var), got {type(out).__name__}")
        if like is not None and tuple(mean.shape) != tuple(like):
            raise ValueError(f"decoder mean has shape {tuple(mean.shape)}; it must have the shape of x {tuple(like)}")
        return mean, log_var

    # -- the bound ---------------------------------------------------------------------
    def terms(self, x: Tensor, generator=None, n_samples: int = 1, eps: Tensor | None = None) -> ELBOTerms:
        r"""ELBO pieces per sample. ``eps`` ([n_samples, batch, *latent] or [batch, *latent] for
        one draw) fixes the reparametrisation noise z = mu + e^{log_var/2} eps (common random
        numbers); otherwise it is drawn from ``generator``."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        mu, log_var = self.encode(x)
        b = x.shape[0]
        shape = (n_samples,) + tuple(mu.shape)
        if eps is None:
            eps = randn((n_samples * b,) + tuple(mu.shape[1:]), generator=generator, dtype=mu.dtype, device=mu.device)
        elif tuple(eps.shape) == tuple(mu.shape) and n_samples == 1:
            eps = eps.to(mu.dtype)
        elif tuple(eps.shape) != shape:
            raise ValueError(f"eps must have shape {shape} (or {tuple(mu.shape)} for one draw), got {tuple(eps.shape)}")
        eps = eps.reshape((n_samples * b,) + tuple(mu.shape[1:]))
        rep = lambda v: v.repeat((n_samples,) + (1,) * (v.ndim - 1))
        z = rep(mu) + rep((0.5 * log_var).exp()) * eps
        mean, dec_log_var = self.decode(z, like=(n_samples * b,) + tuple(x.shape[1:]))
        rec = gaussian_log_prob(rep(x), mean, dec_log_var).reshape(n_samples, b).mean(0)
        kl = gaussian_kl(mu, log_var)
        return ELBOTerms(rec - kl, rec, kl, mu, log_var)

    def elbo(self, x: Tensor, generator=None, n_samples: int = 1, eps: Tensor | None = None) -> Tensor:
        r"""E_q[log p(x|z)] - KL(q(z|x) || N(0, I)) per sample ([batch], nats), a lower bound on log p(x)."""
        return self.terms(x, generator=generator, n_samples=n_samples, eps=eps).elbo

    def loss(self, x: Tensor, generator=None, n_samples: int = 1) -> Tensor:
        """The training loss -mean ELBO (a 0-dim tensor)."""
        return -self.elbo(x, generator=generator, n_samples=n_samples).mean()

    forward = loss

    @torch.no_grad()
    def sample(self, n: int, generator=None, mean: bool = False, dtype=None, device=None) -> Tensor:
        """n draws x ~ p(x|z), z ~ N(0, I) (``mean=True``: the decoder means instead)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if self.latent_shape is None:
            raise ValueError("latent_dim is unknown: pass latent_dim= or call elbo/encode once first")
        if dtype is None:
            dtype = self.log_decoder_std.dtype
        z = randn((n,) + self.latent_shape, generator=generator, dtype=dtype, device=device)
        m, log_var = self.decode(z)
        if mean:
            return m
        return m + (0.5 * log_var).exp() * randn(tuple(m.shape), generator=generator, dtype=m.dtype, device=m.device)


def one_step_diffusion_vae(model, timestep: int = 0) -> VAE:
    r"""The VAE of one DDPM step of ``model`` (a unigen ``Model`` on a ``VP.discrete`` process).

    With Ho's t = 1 (``timestep=0``): encoder N(sqrt(1 - beta_1) x, beta_1 I), prior N(0, I),
    decoder N(x0_hat(z_1, t_1), beta_1 I). Its ELBO is minus the DDPM bound of the one-step
    diffusion whose table is [beta_1] (module docstring). Only ``timestep=0`` is supported.
    """
    process = getattr(model, "process", None)
    if not hasattr(process, "alphas_cumprod"):
        raise ValueError(f"model must be on a VP.discrete process, got {type(process).__name__}")
    if timestep != 0:
        raise ValueError(f"only timestep=0 (the first DDPM step) is a one-step diffusion, got {timestep!r}")
    beta = process.betas[0]

    def encoder(x):
        b = beta.to(dtype=x.dtype, device=x.device)
        return (1.0 - b).sqrt() * x, torch.log(b).expand_as(x)

    def decoder(z):
        t1 = process.t_from_timestep(torch.zeros((), dtype=z.dtype)).to(dtype=z.dtype, device=z.device)
        return model.predict(z, t1.expand(z.shape[0])).x0

    return VAE(encoder, decoder, decoder_std=float(beta.sqrt()))
