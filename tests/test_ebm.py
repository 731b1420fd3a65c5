"""Energy-based models: score = -grad E, Langevin / MALA on a quadratic energy, MALA's
acceptance, a short contrastive-divergence run, and bad input.

References: the analytic score -A x and law N(0, A^-1) of E = x^T A x / 2, ULA's closed-form
stationary covariance A^-1 (I - delta A / 2)^-1 (docs/theory.md, section 6c), and the
Gaussian-mixture oracle's score for a noise-conditional energy. MC bounds: 5 CLT standard
errors from the samples, fixed seeds.
"""

import math
import time

import pytest
import torch
from torch import nn

import unigen as ug
from unigen.ebm import EnergyModel, PersistentChains, contrastive_divergence_loss
from unigen.metrics import sliced_wasserstein
from unigen.toy_data import eight_gaussians

A = torch.tensor([[2.0, 0.6], [0.6, 1.0]])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def quadratic(z):
    return 0.5 * ((z @ A) * z).sum(-1)


def test_score_is_minus_grad_energy():
    m = EnergyModel(quadratic)
    z = torch.randn(9, 2, generator=gen(0))
    for t in (0.01, 1.0, 30.0):  # a time-independent energy ignores t
        assert (m(z, t).score + z @ A).abs().max() < 1e-13
    with torch.no_grad():  # solvers' path: detached, no graph
        s = m.predict(z, torch.tensor(1.0)).score
    assert not s.requires_grad and (s + z @ A).abs().max() < 1e-13
    assert (m.energy(z, 1.0) - quadratic(z)).abs().max() == 0


def test_noise_conditional_energy_matches_oracle():
    """E(z, t) = |z - mu|^2 / (2 (s0^2 + sigma_t^2)) is -log p_t for data N(mu, s0^2 I), at every t,
    on VE and EDM: its score (and eps / x0 conversions) equal the oracle's."""
    mu, s0 = torch.tensor([0.5, -1.0]), 0.7
    oracle = ug.GaussianMixture(mu[None], torch.tensor([s0]))
    z = torch.randn(6, 2, generator=gen(1))
    for process in (ug.VE(), ug.EDM()):

        def energy(z, t, process=process):
            var = s0**2 * process.alpha(t) ** 2 + process.sigma(t) ** 2
            return 0.5 * ((z - process.alpha(t)[:, None] * mu) ** 2).sum(-1) / var

        m = EnergyModel(energy, process, time_dependent=True)
        ref = oracle.model(process)
        for t in torch.linspace(0.05, 0.95, 5) * process.t_max:
            tt = t.expand(6)
            p, q = m(z, tt), ref(z, tt)
            assert (p.score - q.score).abs().max() < 1e-10
            assert (p.x0 - q.x0).abs().max() < 1e-10


def second_moments(z):
    c = (z[:, :, None] * z[:, None, :]).reshape(len(z), -1)
    return c.mean(0), c.std(0) / math.sqrt(len(z))


@pytest.mark.parametrize("kind", ["Langevin", "MALA"])
def test_quadratic_energy_stationary_law(kind):
    """8000 chains x 300 steps from N(0, I) at delta = 0.1: MALA reaches N(0, A^-1) exactly;
    ULA reaches its known O(delta) biased law A^-1 (I - delta A/2)^-1 (and is off A^-1 by O(delta))."""
    m = EnergyModel(quadratic)  # EDM, t = 1: delta = step_size
    delta = 0.1
    sampler = ug.Langevin(step_size=delta, n_steps=300) if kind == "Langevin" else ug.MALA(step_size=delta, n_steps=300)
    z = sampler.run(m, torch.randn(8000, 2, generator=gen(2)), 1.0, generator=gen(3))
    cov = torch.linalg.inv(A)
    if kind == "Langevin":
        cov = cov @ torch.linalg.inv(torch.eye(2) - delta * A / 2)
    mean_se = z.std(0) / math.sqrt(len(z))
    assert (z.mean(0).abs() < 5 * mean_se).all()
    c, se = second_moments(z)
    assert ((c - cov.reshape(-1)).abs() < 5 * se).all(), (c, cov)
    if kind == "MALA":
        assert float(sampler.acceptance_rate.mean()) > 0.9


def test_mala_rejection_shrinks_with_step():
    """At stationarity (chains started at exact N(0, A^-1) draws), MALA's rejection rate falls
    like delta^{3/2} (Roberts & Rosenthal 1998): each 4x smaller step cuts it by ~8x (>= 3x asked)."""
    m = EnergyModel(quadratic)
    L = torch.linalg.cholesky(torch.linalg.inv(A))
    z0 = torch.randn(20000, 2, generator=gen(4)) @ L.T
    rej = []
    for delta in (0.4, 0.1, 0.025):
        s = ug.MALA(step_size=delta, n_steps=5)
        s.run(m, z0, 1.0, generator=gen(5))
        rej.append(1.0 - float(s.acceptance_rate.mean()))
    print("MALA rejection at delta 0.4, 0.1, 0.025:", rej)
    assert rej[0] > 3 * rej[1] > 9 * rej[2] > 0
    assert rej[2] < 0.01


def test_cd_loss_gradient_signs_and_buffer():
    """CD loss = mean E(data) - mean E(negatives); the negatives carry no gradient; the sampler's
    n_steps is restored; a persistent buffer is written back."""
    net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))
    m = EnergyModel(lambda z: net(z).squeeze(-1))
    x = eight_gaussians(64, generator=gen(6))
    sampler = ug.MALA(step_size=0.05)
    loss, neg = contrastive_divergence_loss(m, x, sampler, n_steps=3, generator=gen(7), return_negatives=True)
    assert sampler.n_steps == 1 and not neg.requires_grad
    assert abs(float(loss.detach()) - float((m.energy(x, 1.0).mean() - m.energy(neg, 1.0).mean()).detach())) < 1e-12
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    buf = PersistentChains(torch.randn(100, 2, generator=gen(8)), reinit=0.0)
    before = buf.states.clone()
    contrastive_divergence_loss(m, x, ug.Langevin(step_size=0.01), persistent=buf, generator=gen(9))
    assert (buf.states != before).any(dim=1).sum() > 0


class Energy(nn.Module):
    def __init__(self, h=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    def forward(self, z):
        # a confining quadratic keeps the untrained and trained densities normalisable
        return self.net(z).squeeze(-1) + 0.05 * z.square().sum(-1)


def test_ebm_cd_training_on_eight_gaussians_beats_untrained():
    """Persistent CD (Langevin, 20 steps per update, 100 updates) on eight_gaussians. Both models are
    sampled the same way (long Langevin chains from N(0, I), 1000 of them); SW_2 to the data must
    drop to <= 0.6 x the untrained model's (measured 0.284 vs 1.079, 0.26x; 0.23x after 150 updates;
    after 250 with 2000 chains, 0.11x). SW noise at n = 1000 is ~0.03."""
    torch.manual_seed(0)
    e = Energy()
    m = EnergyModel(e)
    test = eight_gaussians(1000, generator=gen(10))
    sampler = ug.Langevin(step_size=0.005, n_steps=20)

    def samples():
        with torch.no_grad():
            return ug.Langevin(step_size=0.005, n_steps=400).run(m, torch.randn(1000, 2, generator=gen(11)), 1.0, generator=gen(12))

    base = sliced_wasserstein(samples(), test, generator=gen(13))
    buf = PersistentChains(torch.randn(2000, 2, generator=gen(14)), reinit=0.05)
    opt = torch.optim.Adam(e.parameters(), lr=2e-3, betas=(0.0, 0.999))
    g = gen(15)
    t0 = time.perf_counter()
    for _ in range(100):
        loss = contrastive_divergence_loss(m, eight_gaussians(128, generator=g), sampler, persistent=buf, generator=g, reg=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    trained = sliced_wasserstein(samples(), test, generator=gen(13))
    print(f"EBM eight_gaussians: untrained SW {base:.3f}, trained SW {trained:.3f}, {secs:.2f}s")
    assert trained < 0.6 * base


def test_bad_input():
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        EnergyModel(lambda z: z.sum(-1, keepdim=True))(z, 1.0)
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        EnergyModel(lambda z: z.sum())(z, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        EnergyModel(lambda z: z.sum(-1) / 0.0 * 0.0, check_finite=True)(z, 1.0)
    with pytest.raises(TypeError, match="energy must be callable"):
        EnergyModel(3.0)
    with pytest.raises(TypeError, match="sampler must be"):
        contrastive_divergence_loss(EnergyModel(quadratic), z, sampler=ug.DDIM())
    with pytest.raises(ValueError, match="n_steps"):
        contrastive_divergence_loss(EnergyModel(quadratic), z, n_steps=0)
    with pytest.raises(ValueError, match="reinit"):
        PersistentChains(z, reinit=2.0)
    with pytest.raises(TypeError, match="EnergyModel"):
        contrastive_divergence_loss(ug.Model(lambda z, t: z, ug.EDM(), "score"), z)
