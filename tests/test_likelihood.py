"""PF-ODE likelihood, bits/dim and the DDPM bound against closed forms and autograd."""

import math

import pytest
import torch
from torch import nn

import unigen as ug
from helpers import DDPM_BETAS
from unigen.likelihood import bits_per_dim, discrete_vlb, divergence, log_likelihood

TIGHT = dict(rtol=1e-10, atol=1e-10)


def mixture(dim, seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    return ug.GaussianMixture(torch.randn(k, dim, generator=g), 0.3 + torch.rand(k, generator=g))


def exact_prior(gm, process, T=None):
    T = ug.schedules.sample_range(process)[0] if T is None else T
    return lambda z: gm.marginal_log_prob(z, torch.tensor(T, dtype=z.dtype), process)


CASES = [("vp", ug.VP.linear(), "eps"), ("ve", ug.VE(), "x0"), ("edm", ug.EDM(), "denoiser"), ("fm", ug.FlowMatching(), "velocity")]
# about 100x the measured error of each case (nats): measured vp 1.3e-10 / 4.6e-10, ve 7.6e-10 / 2.9e-9,
# edm 1.2e-9 / 4.8e-9, fm 5.5e-11 / 3.1e-10 (dim 2 / dim 8)
ORACLE_TOL = {("vp", 2): 1.5e-8, ("vp", 8): 5e-8, ("ve", 2): 1e-7, ("ve", 8): 3e-7,
              ("edm", 2): 1.5e-7, ("edm", 8): 5e-7, ("fm", 2): 6e-9, ("fm", 8): 3e-8}


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name, process, param", CASES, ids=[c[0] for c in CASES])
def test_oracle_likelihood_matches_closed_form(name, process, param, dim):
    """log p_{t0}(x) by the PF-ODE equals the mixture's closed-form marginal to ORACLE_TOL (about 100x
    the measured error of each case). A divergence off by a factor 1 + 1e-7 moves it by 8e-7 to 4e-6
    (each case fails then; the old 1e-4 tolerance let it pass)."""
    gm = mixture(dim)
    x = gm.sample(12, generator=torch.Generator().manual_seed(1))
    logp, info = log_likelihood(gm.model(process, param), x, prior=exact_prior(gm, process), return_info=True, **TIGHT)
    ref = gm.marginal_log_prob(x, info.t0, process)
    assert (logp - ref).abs().max() <= ORACLE_TOL[name, dim]
    assert info.nfe > 0 and torch.isfinite(info.z_T).all()


def test_discrete_process_likelihood():
    """VP.discrete's velocity has a kink at each of its 1000 knots; the solver steps onto them
    (``process.breakpoints``), so error control never straddles one. The solve runs from t0 = 1e-3
    to T = 0.2 (the exact marginal there as the prior): 200 knots, ~7 dopri5 calls each (1436 NFE,
    ~4 s; the whole range [1e-3, 1] takes 7036 NFE, ~24 s). The error is 1.9e-6 on both ranges
    (at rtol 1e-8), asserted to 2e-5; without the breakpoints it is 2.4e-4 on this range (4.0e-4
    on the whole one), at 9x the calls."""
    p = ug.VP.discrete(DDPM_BETAS)
    gm = mixture(2)
    x = gm.sample(4, generator=torch.Generator().manual_seed(2))
    T = 0.2
    logp, info = log_likelihood(gm.model(p, "eps"), x, T=T, prior=exact_prior(gm, p, T), return_info=True,
                                rtol=1e-8, atol=1e-8)
    assert info.t0 == pytest.approx(1e-3) and info.T == T
    torch.testing.assert_close(logp, gm.marginal_log_prob(x, info.t0, p), rtol=0, atol=2e-5)  # measured 1.9e-6 (rtol 1e-8)


def test_same_likelihood_in_every_parametrization():
    """The same ODE solve in every output type, so it needs no tight tolerance: at rtol = atol = 1e-6
    (3.6x cheaper than 1e-10) the five solves still agree to 2.7e-14 (2.8e-14 at 1e-10), asserted
    to 3e-12; an output off by a relative 1e-11 moves log p by 1.2e-10 (measured), 40x that."""
    gm, p = mixture(3, seed=4), ug.VP.linear()
    x = gm.sample(6, generator=torch.Generator().manual_seed(3))
    tol = dict(rtol=1e-6, atol=1e-6)
    ref = log_likelihood(gm.model(p, "eps"), x, **tol)
    for param in ("v", "velocity", "x0", "score"):
        # measured <= 2.7e-14: the same ODE solve up to rounding in the conversion
        torch.testing.assert_close(log_likelihood(gm.model(p, param), x, **tol), ref, rtol=0, atol=3e-12)


def test_model_to_changes_log_p_by_the_input_scale_jacobian():
    """Moving the VP oracle to flow matching: z_FM = c z_VP, so log p_FM(c x) = log p_VP(x) - D log c."""
    gm, vp, fm = mixture(2, seed=5), ug.VP.linear(), ug.FlowMatching()
    x = gm.sample(6, generator=torch.Generator().manual_seed(4))
    t0_vp, T_vp = 1e-3, 1.0
    (t0_fm, T_fm), c = ug.time_change(vp, fm, torch.tensor([t0_vp, T_vp]))
    lp_vp = log_likelihood(gm.model(vp, "eps"), x, t0=t0_vp, T=T_vp, prior=exact_prior(gm, vp, T_vp), **TIGHT)
    moved = gm.model(vp, "eps").to(fm, "velocity")
    prior_fm = lambda z: gm.marginal_log_prob(z / c[1], torch.tensor(T_vp), vp) - 2 * torch.log(c[1])  # noqa: E731
    lp_fm = log_likelihood(moved, c[0] * x, t0=float(t0_fm), T=float(T_fm), prior=prior_fm, **TIGHT)
    torch.testing.assert_close(lp_fm - lp_vp, (-2 * torch.log(c[0])).expand(6), rtol=0, atol=1.5e-8)  # measured 1.4e-10


class TinyNet(nn.Module):
    def __init__(self, d=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(0.5 * torch.randn(d + 1, 16, generator=g))
        self.w2 = nn.Parameter(0.5 * torch.randn(16, d, generator=g))

    def forward(self, z, t):
        h = torch.tanh(torch.cat([z, t.expand(z.shape[0], 1)], 1) @ self.w1)
        return h @ self.w2


def test_adjoint_gradient_equals_backprop():
    net = TinyNet()
    model = ug.Model(net, ug.FlowMatching(), "velocity")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        log_likelihood(model, x, grad=True, adjoint=adjoint, rtol=1e-9, atol=1e-9).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):  # measured <= 3.4e-8 (two solves, each to rtol = atol = 1e-9)
        torch.testing.assert_close(a, b, rtol=0, atol=3e-6)
    assert grads[0][0].abs().sum() > 0


def test_hutchinson_is_unbiased():
    gm, p = mixture(4, seed=6), ug.VP.linear()
    x = gm.sample(4, generator=torch.Generator().manual_seed(5))
    exact = log_likelihood(gm.model(p, "eps"), x, rtol=1e-8, atol=1e-8)
    for probe in ("rademacher", "gaussian"):
        _, info = log_likelihood(gm.model(p, "eps"), x, divergence="hutchinson", n_probes=200, probe=probe,
                                 generator=torch.Generator().manual_seed(7), rtol=1e-8, atol=1e-8, return_info=True)
        est = info.per_probe  # [200, batch]
        se = est.std(0) / math.sqrt(est.shape[0])
        assert ((est.mean(0) - exact).abs() <= 3 * se + 1e-6).all(), (est.mean(0) - exact, se)
        assert (se > 0).all()


def test_divergence_exact_matches_autograd_jacobian_trace():
    net = TinyNet(3)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor(0.3)
    v = net(z, t)
    div = divergence(v, z)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda u: net(u[None], t)[0], z[i].detach()).trace() for i in range(4)])
    torch.testing.assert_close(div, ref, rtol=2e-14, atol=2e-14)  # measured 2.2e-16 (1.6e-16 relative)


def test_bits_per_dim_offset():
    gm, p = mixture(2), ug.FlowMatching()
    x = gm.sample(4, generator=torch.Generator().manual_seed(0))
    model = gm.model(p, "velocity")
    lp = log_likelihood(model, x)
    torch.testing.assert_close(bits_per_dim(model, x), -lp / (2 * math.log(2)) + 7.0)
    torch.testing.assert_close(bits_per_dim(model, x, data_range=(0.0, 1.0)), -lp / (2 * math.log(2)) + 8.0)


# ---- DDPM bound ----------------------------------------------------------------------------------
def test_vlb_kl_term_equals_direct_gaussian_kl():
    """1/2 (SNR_{t-1} - SNR_t) ||x - x0_hat||^2 == KL(q(z_{t-1}|z_t, x) || q(z_{t-1}|z_t, x0_hat))."""
    p = ug.VP.discrete(DDPM_BETAS)
    abar = p.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x, xh, zt = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    for t in (2, 10, 500, 1000):  # Ho's 1-based t
        a_t, a_s = abar[t - 1], abar[t - 2]
        beta = DDPM_BETAS[t - 1]
        var = beta * (1 - a_s) / (1 - a_t)
        mean = lambda x0: a_s.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_s) / (1 - a_t) * zt  # noqa: E731
        kl_direct = (mean(x) - mean(xh)).square().sum(-1) / (2 * var)
        snr = lambda a: a / (1 - a)  # noqa: E731
        kl_snr = 0.5 * (snr(a_s) - snr(a_t)) * (x - xh).square().sum(-1)
        torch.testing.assert_close(kl_snr, kl_direct, rtol=1e-10, atol=1e-12)


def test_discrete_vlb_bounds_the_nll_and_improves_with_the_model():
    p = ug.VP.discrete(DDPM_BETAS)
    gm = mixture(2, seed=8)
    x = gm.sample(64, generator=torch.Generator().manual_seed(9))
    res = discrete_vlb(gm.model(p, "eps"), x, generator=torch.Generator().manual_seed(10))
    assert torch.isfinite(res.total).all() and res.terms.shape == (999, 64)
    torch.testing.assert_close(res.total, res.prior + res.terms.sum(0) + res.decoder)
    nll = -gm.log_prob(x)
    # a bound: E[VLB] >= NLL of the data density (the decoder makes it continuous), checked on the mean
    gap = (res.total - nll).mean()
    assert gap > -3 * (res.total - nll).std() / 8
    # a worse model (means shifted) has a larger bound: the bound decreases toward the NLL as the model improves
    worse = ug.GaussianMixture(gm.means + 0.3, gm.stds, gm.weights)
    res_w = discrete_vlb(worse.model(p, "eps"), x, generator=torch.Generator().manual_seed(10))
    assert res_w.total.mean() > res.total.mean() + 0.1


def test_discrete_vlb_terms_and_both_decoders_match_closed_forms():
    """A network whose x0 prediction is a fixed m (whatever z is) makes every term of the bound a
    closed form: L_T = KL(N(sqrt(abar_T) x, 1 - abar_T) || N(0, 1)); L_{t-1} = (SNR_{t-1} - SNR_t)/2
    ||x - m||^2; L_0 = -log N(x; m, beta_1) (gaussian) or -log P(bin of x) from erf over 255-wide
    bins of [-1, 1] with open edge bins (discretized, Ho et al. eq. 13). Data on bin centres,
    both edge bins included. Measured: <= 1.7e-16 relative (0 for all but the discretised decoder)."""
    p = ug.VP.discrete(DDPM_BETAS)
    half = 1 / 255  # half a bin of [-1, 1] with 256 bins
    x = torch.tensor([[-1.0, 1.0, half], [-1 + 6 * half, 1 - 4 * half, -half]])  # bin centres
    m = x + torch.tensor([[0.004, -0.003, 0.002], [-0.01, 0.015, 0.0]])  # beta_1 = 1e-4: std 0.01
    model = ug.Model(lambda z, t: m.repeat(z.shape[0] // 2, 1), p, "x0")
    abar = torch.cumprod(1 - DDPM_BETAS, 0)
    snr = abar / (1 - abar)
    sq = (x - m).square().sum(1)
    prior = 0.5 * (1 - abar[-1] + abar[-1] * x.square() - 1 - torch.log(1 - abar[-1])).sum(1)
    terms = 0.5 * (snr[:-1] - snr[1:])[:, None] * sq  # Ho's t = 2..1000
    std = math.sqrt(float(DDPM_BETAS[0]))
    phi = lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2)))  # noqa: E731

    def log_bin(xv, mv):
        hi = 1.0 if xv >= 1 - half else phi((xv + half - mv) / std)
        lo = 0.0 if xv <= -1 + half else phi((xv - half - mv) / std)
        return math.log(hi - lo)

    dec = {
        "gaussian": torch.tensor([sum(0.5 * ((xv - mv) / std) ** 2 + math.log(std) + 0.5 * math.log(2 * math.pi)
                                      for xv, mv in zip(xr.tolist(), mr.tolist())) for xr, mr in zip(x, m)]),
        "discretized": torch.tensor([-sum(log_bin(xv, mv) for xv, mv in zip(xr.tolist(), mr.tolist()))
                                     for xr, mr in zip(x, m)]),
    }
    for decoder, ref in dec.items():
        res = discrete_vlb(model, x, decoder=decoder, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(res.prior, prior, rtol=2e-14, atol=0)
        torch.testing.assert_close(res.terms, terms, rtol=2e-14, atol=0)
        torch.testing.assert_close(res.decoder, ref, rtol=2e-14, atol=0)
        torch.testing.assert_close(res.total, prior + terms.sum(0) + ref, rtol=2e-14, atol=0)
        torch.testing.assert_close(res.bpd, res.total / (3 * math.log(2)), rtol=1e-15, atol=0)


# ---- bad input ------------------------------------------------------------------------------------
def test_likelihood_errors():
    gm, p = mixture(2), ug.VP.linear()
    model, x = gm.model(p, "eps"), torch.randn(3, 2)
    with pytest.raises(ValueError, match="unknown divergence 'trace'; valid names are exact, hutchinson"):
        log_likelihood(model, x, divergence="trace")
    with pytest.raises(ValueError, match="n_probes must be an integer >= 1"):
        log_likelihood(model, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="adjoint=True computes gradients"):
        log_likelihood(model, x, adjoint=True)
    with pytest.raises(ValueError, match="T must exceed t0"):
        log_likelihood(model, x, t0=0.5, T=0.2)
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape \[batch, ...\]"):
        log_likelihood(model, torch.randn(3))
    with pytest.raises(TypeError, match="model must be a unigen Model"):
        log_likelihood(lambda z, t: z, x)
    with pytest.raises(ValueError, match="discrete_vlb needs a VP.discrete process, got VPLinear"):
        discrete_vlb(model, x)
    with pytest.raises(ValueError, match="data_range must be"):
        bits_per_dim(model, x, data_range=(1.0, 0.0))
