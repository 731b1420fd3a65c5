"""VAE: the one-step-diffusion identity, the Gaussian KL, the bound on a linear-Gaussian model,
a short ELBO training run, and bad input.

References are independent of unigen.vae: ``discrete_vlb`` (likelihood.py), torch.distributions,
and the closed-form marginal / posterior of a linear-Gaussian latent model.
"""

import math
import time

import pytest
import torch
from torch import nn

import unigen as ug
from unigen.metrics import sliced_wasserstein
from unigen.toy_data import two_moons
from unigen.vae import VAE, gaussian_kl, one_step_diffusion_vae


def gen(seed):
    return torch.Generator().manual_seed(seed)


def x0_net(z, t):
    """A fixed nonlinear 'denoiser' x0_hat(z, t) (any function works for the identity)."""
    return torch.tanh(1.3 * z) + 0.1 * z.roll(1, dims=-1) + 0.05 * t[:, None]


@pytest.mark.parametrize("beta1", [1e-4, 0.02, 0.3])
def test_vae_elbo_is_one_step_diffusion_vlb(beta1):
    r"""ELBO of the one-step-diffusion VAE == -(T = 1 DDPM VLB), to 1e-10 per sample.

    T = 1 VLB = KL(N(sqrt(1-b1) x, b1) || N(0, I)) - log N(x; x0_hat(z_1), b1),
    z_1 = sqrt(1-b1) x + sqrt(b1) eps (no middle terms). ``VP.discrete`` needs >= 3 betas, so the
    two terms are read off ``discrete_vlb`` on two 3-step tables, for the SAME noise eps:

    * decoder term: ``discrete_vlb(...).decoder`` on P1 = [b1, b2, b3] (its L_0 uses only beta_1,
      abar_1 = 1 - b1 and x0_hat at t_1), with the generator replayed to recover its eps, which is
      passed to ``VAE.elbo(eps=)``;
    * prior term: ``discrete_vlb(...).prior`` on P2 = [c, c, c] with (1-c)^3 = 1 - b1, so that its
      abar_T equals the one-step abar_1 (that term depends on abar_T alone).

    Also checked against an independent direct evaluation of the formula (torch.distributions).
    """
    b, d = 7, 3
    x = torch.randn(b, d, generator=gen(0))
    p1 = ug.VP.discrete([beta1, max(beta1, 0.02), 0.4])
    c = 1.0 - (1.0 - beta1) ** (1.0 / 3.0)
    p2 = ug.VP.discrete([c, c, c])
    model = ug.Model(x0_net, p1, "x0")

    res1 = ug.discrete_vlb(model, x, generator=gen(5))
    res2 = ug.discrete_vlb(ug.Model(x0_net, p2, "x0"), x, generator=gen(6))
    # replay discrete_vlb's draws: one [2b, d] block for t = 2, 3, then eps for z_1
    g = gen(5)
    torch.randn((2 * b, d), generator=g)
    eps = torch.randn((b, d), generator=g)

    vae = one_step_diffusion_vae(model)
    terms = vae.terms(x, eps=eps)
    vlb_t1 = res2.prior + res1.decoder
    assert (terms.elbo + vlb_t1).abs().max() < 1e-10
    assert (terms.kl - res2.prior).abs().max() < 1e-10
    assert (terms.reconstruction + res1.decoder).abs().max() < 1e-10

    # independent direct T = 1 formula
    a, s = math.sqrt(1 - beta1), math.sqrt(beta1)
    N = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(N(a * x, s), N(torch.zeros_like(x), 1.0)).sum(-1)
    z1 = a * x + s * eps
    t1 = torch.full((b,), 1.0 / 3.0)
    rec = N(x0_net(z1, t1), s).log_prob(x).sum(-1)
    assert (terms.elbo - (rec - kl)).abs().max() < 1e-10


def test_gaussian_kl_matches_torch():
    mu = torch.randn(6, 4, generator=gen(1))
    log_var = torch.randn(6, 4, generator=gen(2))
    N = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(N(mu, (0.5 * log_var).exp()), N(torch.zeros_like(mu), 1.0)).sum(-1)
    assert (gaussian_kl(mu, log_var) - ref).abs().max() < 1e-12


class LinearGaussian:
    """p(z) = N(0, I_k), p(x|z) = N(W z + c, s^2 I_d), W with orthogonal columns so that the
    exact posterior N(m(x), diag v) is diagonal:  v = 1/(1 + |w_j|^2/s^2), m = v W^T(x - c)/s^2."""

    def __init__(self, d=4, k=2, s=0.5):
        q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen(3)))
        self.W = q * torch.tensor([1.5, 0.7])[:k]
        self.c = torch.randn(d, generator=gen(4))
        self.s, self.d, self.k = s, d, k
        self.v = 1.0 / (1.0 + self.W.square().sum(0) / s**2)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.d)
        return torch.distributions.MultivariateNormal(self.c, cov).log_prob(x)

    def posterior(self, x):
        return self.v * ((x - self.c) @ self.W) / self.s**2, self.v

    def decoder(self, z):
        return z @ self.W.T + self.c

    def vae(self, encoder):
        return VAE(encoder, self.decoder, latent_dim=self.k, decoder_std=self.s)


def test_elbo_bounds_log_likelihood_with_equality_at_the_posterior():
    """log p(x) - ELBO = KL(q || p(z|x)) (>= 0, = 0 at the exact posterior), within 5 MC SEs."""
    lg = LinearGaussian()
    x = torch.randn(5, lg.d, generator=gen(7)) + lg.c
    n = 20000

    def mc(vae, seed):
        e = torch.randn(n, *x.shape[:1], lg.k, generator=gen(seed))
        t = vae.terms(x, eps=e, n_samples=n)
        # the SE of the reconstruction mean, from the per-draw values
        z = t.mu + (0.5 * t.log_var).exp() * e
        per = torch.distributions.Normal(lg.decoder(z), lg.s).log_prob(x).sum(-1)
        return t.elbo, per.std(0) / math.sqrt(n)

    exact = lg.vae(lambda x: (lg.posterior(x)[0], lg.posterior(x)[1].log().expand(x.shape[0], -1)))
    elbo, se = mc(exact, 8)
    assert ((elbo - lg.log_px(x)).abs() < 5 * se + 1e-12).all()

    # a wrong encoder: the gap is KL(q || posterior), closed form, and clearly positive
    def wrong(x):
        m, v = lg.posterior(x)
        return m + 0.3, (2.0 * v).log().expand(x.shape[0], -1)

    elbo_w, se_w = mc(lg.vae(wrong), 9)
    m, v = lg.posterior(x)
    N = torch.distributions.Normal
    gap = torch.distributions.kl_divergence(N(m + 0.3, (2 * v).sqrt()), N(m, v.sqrt())).sum(-1)
    assert (gap > 20 * se_w).all()
    assert ((lg.log_px(x) - elbo_w - gap).abs() < 5 * se_w).all()


def mlp(i, o, h=64):
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, o))


def test_vae_training_on_two_moons_beats_untrained():
    """~600 Adam steps of -ELBO on two_moons lower SW_2(samples, data) well below the untrained
    VAE's (margin: trained <= 0.6 x untrained; measured 0.145 vs 0.361). The SW estimate's own
    sampling noise at n = 2000 is ~0.02, far below the margin."""
    torch.manual_seed(0)
    vae = VAE(mlp(2, 4), mlp(2, 2), latent_dim=2, decoder_std=1.0, learn_decoder_std=True)
    test = two_moons(2000, generator=gen(11))
    base = sliced_wasserstein(vae.sample(2000, generator=gen(12)), test, generator=gen(13))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = gen(14)
    t0 = time.perf_counter()
    for _ in range(600):
        loss = vae.loss(two_moons(256, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    trained = sliced_wasserstein(vae.sample(2000, generator=gen(12)), test, generator=gen(13))
    print(f"VAE two_moons: untrained SW {base:.3f}, trained SW {trained:.3f}, {secs:.2f}s")
    assert trained < 0.6 * base


def test_bad_input():
    enc = lambda x: (x[:, :2], x[:, :2])
    dec = lambda z: torch.cat([z, z], 1)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="latent dim mismatch"):
        VAE(enc, dec, latent_dim=3).elbo(x)
    with pytest.raises(ValueError, match="even dim 1"):
        VAE(lambda x: x[:, :3], dec).elbo(x)
    with pytest.raises(ValueError, match="encoder output shapes"):
        VAE(lambda x: (x[:, :2], x[:, :3]), dec).elbo(x)
    with pytest.raises(TypeError, match="encoder"):
        VAE(lambda x: [x], dec).elbo(x)
    with pytest.raises(ValueError, match="shape of x"):
        VAE(enc, lambda z: z).elbo(x)
    with pytest.raises(ValueError, match="latent_dim must"):
        VAE(enc, dec, latent_dim=0)
    with pytest.raises(ValueError, match="latent_dim is unknown"):
        VAE(enc, dec).sample(2)
    with pytest.raises(ValueError, match="n_samples"):
        VAE(enc, dec).elbo(x, n_samples=0)
    with pytest.raises(ValueError, match="decoder_std"):
        VAE(enc, dec, decoder_std=-1.0)
    with pytest.raises(ValueError, match="VP.discrete"):
        one_step_diffusion_vae(ug.Model(x0_net, ug.VE(), "x0"))
