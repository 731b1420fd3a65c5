
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unigen as ug
from unigen import verify
from unigen.analytic import ring_mixture
from unigen.bench.harness import gmm_problem
from helpers import PROCESSES, interior, mixture, processes, unit


@given(processes, st.lists(unit, min_size=1, max_size=5), st.booleans())
def test_tweedie_score_is_gradient_of_marginal_log_prob(p, us, diagonal):
    """The oracle's score equals autograd of its own log p_t, at every t (independent check)."""
    gm = mixture(dim=3, k=4, seed=3, diagonal=diagonal)
    t = interior(p, torch.tensor(us))
    z = 2 * torch.randn(len(us), 3, generator=torch.Generator().manual_seed(len(us)))
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gm.marginal_log_prob(zz, t, p).sum(), zz)
    x0, eps, score = gm.posterior(z, p.alpha(t), p.sigma(t))
    torch.testing.assert_close(score, g, rtol=1e-8, atol=1e-8)
    s = p.sigma(t)[:, None]
    torch.testing.assert_close(eps, -s * score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0, (z - s * eps) / p.alpha(t)[:, None], rtol=1e-8, atol=1e-8)


def test_marginal_log_prob_matches_torch_distributions():
    gm = mixture(dim=2, k=5, seed=1, diagonal=True)
    p = ug.VP.linear()
    t = torch.tensor(0.37)
    a, s = p.alpha(t), p.sigma(t)
    comp = torch.distributions.Independent(
        torch.distributions.Normal(a * gm.means, torch.sqrt(a**2 * gm.stds**2 + s**2)), 1
    )
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(gm.weights), comp)
    z = torch.randn(100, 2) * 2
    torch.testing.assert_close(gm.marginal_log_prob(z, t, p), ref.log_prob(z), rtol=1e-12, atol=1e-12)


def test_posterior_mean_by_quadrature_1d():
    """E[x|z] and E[eps|z] by numerical Bayes on a dense grid (1-D), for VP, VE and FM."""
    gm = ug.GaussianMixture(torch.tensor([[-2.0], [0.5], [3.0]]), torch.tensor([0.3, 0.7, 0.4]), [0.2, 0.5, 0.3])
    x = torch.linspace(-8, 10, 200001)
    px = gm.log_prob(x[:, None]).exp()
    for p, tv in ((ug.VP.linear(), 0.3), (ug.VE(), 0.2), (ug.FlowMatching(), 0.6)):
        t = torch.tensor(tv)
        a, s = p.alpha(t), p.sigma(t)
        for zv in (-1.0, 0.2, 2.5):
            lik = torch.exp(-0.5 * ((zv - a * x) / s) ** 2)
            w = px * lik
            ex = (x * w).sum() / w.sum()
            x0, eps, _ = gm.posterior(torch.tensor([[zv]]), a, s)
            # measured <= 1.3e-15 (the quadrature is converged to rounding)
            assert float(x0) == pytest.approx(float(ex), abs=2e-13)
            assert float(eps) == pytest.approx(float((zv - a * ex) / s), abs=2e-13)


def test_log_prob_integrates_to_one():
    gm = ug.GaussianMixture(torch.tensor([[-1.0], [2.0]]), torch.tensor([0.5, 0.8]))
    x = torch.linspace(-12, 14, 100001)
    dens = gm.log_prob(x[:, None]).exp()
    assert float(torch.trapezoid(dens, x)) == pytest.approx(1.0, abs=5e-14)  # measured <= 4.4e-16 (all three)
    z = torch.linspace(-80, 80, 200001)
    for t in (0.1, 0.9):
        dz = gm.marginal_log_prob(z[:, None], t, ug.VP.linear()).exp()
        assert float(torch.trapezoid(dz, z)) == pytest.approx(1.0, abs=5e-14)


def test_sample_moments_and_reproducibility():
    gm = mixture(dim=2, k=3, seed=4, diagonal=True)
    n = 40000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0))
    cov = gm.covariance
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - gm.mean).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.05, atol=0.05)
    # one generator per item: item i depends only on its own generator
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    a = gm.sample(4, generator=gens())
    b = gm.sample(1, generator=[torch.Generator().manual_seed(12)])
    torch.testing.assert_close(a[2:3], b)


def test_dtype_follows_input():
    gm = mixture(dim=2)
    z = torch.randn(4, 2, dtype=torch.float32)
    p = ug.FlowMatching()
    t = torch.tensor(0.5, dtype=torch.float32)
    x0, eps, score = gm.posterior(z, p.alpha(t), p.sigma(t))
    assert x0.dtype == eps.dtype == score.dtype == torch.float32
    assert gm.marginal_log_prob(z, t, p).dtype == torch.float32
    assert gm.sample(3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_oracle_model_finite_at_domain_ends(name):
    p = PROCESSES[name]
    gm = mixture(dim=2)
    z = torch.randn(3, 2)
    for param in ("x0", "v", "velocity"):
        m = gm.model(p, param)
        for t in (p.t_min, p.t_max):
            tt = torch.tensor(t)
            if param == "velocity" and not torch.isfinite(p.d_sigma(tt) * p.d_alpha(tt)):
                continue  # VP-type paths: sigma ~ sqrt(t), so sigma' is infinite at t = 0
            out = m(z, t).out
            assert torch.isfinite(out).all(), (param, t)


def test_event_shapes_and_errors():
    gm = ug.GaussianMixture(torch.zeros(2, 2, 2), torch.ones(2))
    z = torch.randn(3, 2, 2)
    assert gm.log_prob(z).shape == (3,)
    with pytest.raises(ValueError, match=r"z must have shape \[batch, \*\(2, 2\)\]"):
        gm.marginal_log_prob(torch.randn(3, 4), 0.5, ug.FlowMatching())
    with pytest.raises(ValueError, match="stds must be positive"):
        ug.GaussianMixture(torch.zeros(2, 3), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        ug.GaussianMixture(torch.zeros(2, 3), torch.ones(2), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="means must have shape"):
        ug.GaussianMixture(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        gm.sample(0)
    with pytest.raises(ValueError, match="single Gaussian component"):
        gm.exact_ode_solution(z, 1.0, 0.5, ug.FlowMatching())


def test_exact_ode_solution_solves_the_pf_ode():
    """For one Gaussian the closed-form flow satisfies dz/dt = velocity (by finite difference)."""
    gm = ug.GaussianMixture(torch.tensor([[1.0, -0.5]]), torch.tensor([[0.3, 1.7]]))
    for p in (ug.VP.linear(), ug.FlowMatching(), ug.VE()):
        m = gm.model(p, "velocity")
        z1 = torch.randn(4, 2)
        t, h = torch.tensor(0.5), 1e-5
        zp = gm.exact_ode_solution(z1, 0.9, t + h, p)
        zm = gm.exact_ode_solution(z1, 0.9, t - h, p)
        zt = gm.exact_ode_solution(z1, 0.9, t, p)
        # central difference, h = 1e-5: measured <= 8.4e-10 (h^2 truncation + rounding / h), so 1e-7 is ~100x
        torch.testing.assert_close((zp - zm) / (2 * h), m(zt, t).out, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(gm.exact_ode_solution(zt, t, 0.9, p), z1, rtol=0, atol=3e-13)  # measured 2.9e-15


def test_ring_mixture_is_the_eight_gaussians_oracle():
    gm = ring_mixture()
    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    assert torch.equal(gm.means, 2.0 * torch.stack([ang.cos(), ang.sin()], 1))
    assert torch.equal(gm.stds, torch.full((8, 2), 0.3, dtype=torch.float64))
    assert torch.equal(gm.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.equal(verify.oracle().means, gm.means) and torch.equal(gmm_problem(2, "vp").mixture.means, gm.means)
    g32 = ring_mixture(dtype=torch.float32)  # what unigen sample --data gmm uses, in float32 arithmetic
    ang32 = torch.arange(8, dtype=torch.float32) * (2 * torch.pi / 8)
    assert g32.means.dtype == torch.float32 and torch.equal(g32.means, 2.0 * torch.stack([ang32.cos(), ang32.sin()], 1))
    small = ring_mixture(k=3, radius=1.5, std=0.1)
    assert small.means.shape == (3, 2) and torch.allclose(small.means.norm(dim=1), torch.full((3,), 1.5, dtype=torch.float64))
    for kw, match in (({"k": 0}, "k must be a positive integer"), ({"radius": -1.0}, "radius must be a positive"),
                      ({"std": float("nan")}, "std must be a positive"), ({"dtype": torch.int64}, "floating torch dtype")):
        with pytest.raises((ValueError, TypeError), match=match):
            ring_mixture(**kw)
