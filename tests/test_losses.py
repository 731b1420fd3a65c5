"""Losses: every weighting is the direct MSE of its target; density-form identities; DSM, SSM;
t-samplers; bad input.

References are independent of the code under test: direct target MSEs go through the
conversion hub (``target_mse``), closed-form weights are written from process primitives,
derivatives come from autograd, and the exact Gaussian-mixture oracle supplies consistent
(x0, eps, v, velocity, score) models of one distribution.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unigen as ug
from unigen import losses as L
from unigen import time_samplers as TS
from unigen import weightings as W
from helpers import NAMES, PROCESSES, grad, interior, mixture

GM = mixture(dim=3, k=3, seed=11)
TARGETS = ("eps", "x0", "v", "v_n", "velocity", "score")
B = 4


def random_net(seed, dim=3):
    """A fixed nonlinear "network" (z, time) -> output: an arbitrary, wrong prediction."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(dim, dim, generator=g), torch.randn(dim, generator=g)

    def fn(z, s):
        s = torch.as_tensor(s, dtype=z.dtype).reshape(-1, 1)
        return torch.tanh(z @ w1.to(z.dtype)) + 0.3 * torch.sin(3 * s) * w2.to(z.dtype) + 0.1 * z

    return fn


def setup(name, us, seed):
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(seed)
    x = GM.sample(B, generator=g)
    eps = torch.randn(B, 3, generator=g)
    t = interior(p, torch.tensor(us, dtype=torch.float64))
    return p, x, eps, t


def rel_err(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


times = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=B, max_size=B)
params = st.sampled_from(ug.PARAMETRIZATIONS)


# ---------------------------------------------------------------------------------------
# the weighted loss IS the direct MSE of the target, per sample
# ---------------------------------------------------------------------------------------
@given(name=st.sampled_from(NAMES), param=params, us=times, seed=st.integers(0, 10**6))
def test_weighted_loss_equals_direct_target_mse(name, param, us, seed):
    p, x, eps, t = setup(name, us, seed)
    model = ug.Model(random_net(seed), p, param)
    for target in TARGETS:
        got = ug.loss(model, x, t, weighting=target, reduction="none", eps=eps)
        ref = L.target_mse(model, x, t, eps, target)
        assert rel_err(got, ref) < 1e-10, (target, got, ref)
    # "snr" is the x0 loss, "denoiser" the x0 target
    torch.testing.assert_close(ug.loss(model, x, t, weighting="snr", reduction="none", eps=eps),
                               L.target_mse(model, x, t, eps, "denoiser"), rtol=1e-10, atol=0)


def closed_form_weight(target, p, name, t):
    """w(t) on ||eps_hat - eps||^2, from docs/theory.md, section 10 (written independently)."""
    a, s = p.alpha(t), p.sigma(t)
    snr = a * a / (s * s)
    if target == "eps":
        return torch.ones_like(t)
    if target == "x0":
        return 1.0 / snr  # e^{-lam}
    if target == "v":
        return (1.0 + 1.0 / snr) if name.startswith("vp") else (a * a + s * s) ** 2 / (a * a)
    if target == "v_n":
        return 1.0 + 1.0 / snr
    if target == "score":
        return 1.0 / (s * s)
    if target == "velocity":
        lam_dot = grad(p.log_snr, t)  # autograd, independent of d_log_snr
        w = s * s * lam_dot**2 / 4.0
        if name == "fm":
            torch.testing.assert_close(w, 1.0 / (1.0 - t) ** 2, rtol=1e-10, atol=0)
        return w
    raise AssertionError(target)


@given(name=st.sampled_from(NAMES), param=params, us=times, seed=st.integers(0, 10**6))
def test_target_mse_is_weighted_eps_mse(name, param, us, seed):
    """x0-MSE = eps-MSE/SNR; v-MSE = (1 + 1/SNR) eps-MSE (VP) or (a^2+s^2)^2/a^2 eps-MSE;
    score-MSE = eps-MSE/sigma^2; FM velocity MSE = sigma^2 lam'^2/4 eps-MSE = eps-MSE/(1-t)^2."""
    p, x, eps, t = setup(name, us, seed)
    model = ug.Model(random_net(seed + 1), p, param)
    eps_mse = L.target_mse(model, x, t, eps, "eps")
    for target in TARGETS:
        ref = closed_form_weight(target, p, name, t) * eps_mse
        assert rel_err(L.target_mse(model, x, t, eps, target), ref) < 1e-10, target
        assert rel_err(W.weight(target, p, t) * eps_mse, ref) < 1e-10, target


@pytest.mark.parametrize("name", NAMES)
def test_identities_across_exact_oracle_models(name):
    """The oracle's x0-, eps-, v-, velocity- and score-models of one mixture are consistent, so
    the x0-loss of the x0-model equals the eps-loss of the eps-model divided by SNR, etc."""
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(3)
    x, eps = GM.sample(6, generator=g), torch.randn(6, 3, generator=g)
    t = interior(p, torch.rand(6, generator=g))
    eps_loss = ug.loss(GM.model(p, "eps"), x, t, weighting="eps", reduction="none", eps=eps)
    for target in TARGETS:
        own = ug.loss(GM.model(p, "v" if target == "v_n" else target), x, t, weighting=target, reduction="none", eps=eps)
        assert rel_err(own, closed_form_weight(target, p, name, t) * eps_loss) < 1e-10, target


@given(name=st.sampled_from(NAMES), param=params, us=times, seed=st.integers(0, 10**6))
def test_edm_min_snr_and_callable_weightings(name, param, us, seed):
    p, x, eps, t = setup(name, us, seed)
    model = ug.Model(random_net(seed + 2), p, param)
    x0_mse = L.target_mse(model, x, t, eps, "x0")
    eps_mse = L.target_mse(model, x, t, eps, "eps")
    ve = p.sigma(t) / p.alpha(t)  # EDM's noise level
    sd = getattr(p, "sigma_data", 0.5)
    edm_lambda = (ve**2 + sd**2) / (ve * sd) ** 2  # Karras et al. (2022) lambda(sigma)
    assert rel_err(ug.loss(model, x, t, weighting="edm", reduction="none", eps=eps), edm_lambda * x0_mse) < 1e-10
    snr = (p.alpha(t) / p.sigma(t)) ** 2
    assert rel_err(ug.loss(model, x, t, weighting="min_snr", reduction="none", eps=eps), torch.clamp(snr, max=5.0) * x0_mse) < 1e-10
    w = lambda tt, proc: 1.0 + tt**2
    assert rel_err(ug.loss(model, x, t, weighting=w, reduction="none", eps=eps), (1 + t**2) * eps_mse) < 1e-10


# ---------------------------------------------------------------------------------------
# density form: w(t(lam)) |dt/dlam| with t ~ U[0, 1]
# ---------------------------------------------------------------------------------------
LAM = torch.linspace(-12.0, 12.0, 241, dtype=torch.float64)


def dt_dlam(p, lam):
    return grad(p.t_from_log_snr, lam).abs()  # autograd through the inverse log-SNR


def test_density_form_closed_forms():
    fm, cos = ug.FlowMatching(), ug.Cosine()
    fm_u = W.weight("velocity", fm, fm.t_from_log_snr(LAM)) * dt_dlam(fm, LAM)
    cos_v = W.weight("v", cos, cos.t_from_log_snr(LAM)) * dt_dlam(cos, LAM)
    cos_u = W.weight("velocity", cos, cos.t_from_log_snr(LAM)) * dt_dlam(cos, LAM)
    assert rel_err(fm_u, 0.5 * torch.exp(-LAM / 2)) < 1e-9
    assert rel_err(cos_v, torch.exp(-LAM / 2) / math.pi) < 1e-9
    assert rel_err(cos_u, (math.pi / 4) * torch.exp(-LAM / 2)) < 1e-9
    ratio = fm_u / cos_v  # FM with uniform t = v-MSE on the cosine path x pi/2
    assert float((ratio - math.pi / 2).abs().max()) < 1e-9 * math.pi / 2
    # the library's own density-form query agrees
    u01 = TS.Uniform(0.0, 1.0)
    assert rel_err(W.lambda_weight("velocity", fm, LAM, u01), 0.5 * torch.exp(-LAM / 2)) < 1e-9
    assert rel_err(W.lambda_weight("v", cos, LAM, u01), torch.exp(-LAM / 2) / math.pi) < 1e-9


def test_density_form_holds_for_the_loss_values():
    """Per sample at equal log-SNR: FM velocity loss x |dt_fm/dlam| = pi/2 x cosine v-loss x
    |dt_cos/dlam|, for one model of the data (the oracle, and a network moved with Model.to)."""
    fm, cos = ug.FlowMatching(), ug.Cosine()
    lam = torch.linspace(-8.0, 8.0, 33)
    n = lam.numel()
    g = torch.Generator().manual_seed(5)
    x, eps = GM.sample(n, generator=g), torch.randn(n, 3, generator=g)
    t_fm, t_cos = fm.t_from_log_snr(lam), cos.t_from_log_snr(lam)
    pairs = [(GM.model(fm, "velocity"), GM.model(cos, "v"))]
    net = ug.Model(random_net(9), ug.VP.linear(), "eps")
    pairs.append((net.to(fm, "velocity"), net.to(cos, "v")))
    for m_fm, m_cos in pairs:
        l_fm = ug.loss(m_fm, x, t_fm, weighting="velocity", reduction="none", eps=eps) * dt_dlam(fm, lam)
        l_cos = ug.loss(m_cos, x, t_cos, weighting="v", reduction="none", eps=eps) * dt_dlam(cos, lam)
        assert rel_err(l_fm, (math.pi / 2) * l_cos) < 1e-9


def test_density_form_weightings_do_not_depend_on_the_sampler():
    """sigmoid and elbo are Kingma & Gao's L_w = 1/2 int w(lam) E||eps_hat - eps||^2 dlam."""
    lam = torch.linspace(-6.0, 6.0, 25)
    for p in (ug.VP.linear(), ug.FlowMatching(), ug.EDM()):
        for sampler in ("uniform", "logsnr", "edm", TS.Uniform(p.t_min, p.t_max)):
            torch.testing.assert_close(W.lambda_weight("sigmoid", p, lam, sampler), 0.5 * torch.sigmoid(-lam), rtol=1e-10, atol=0)
            torch.testing.assert_close(W.lambda_weight("elbo", p, lam, sampler), torch.full_like(lam, 0.5), rtol=1e-10, atol=0)
            biased = W.sigmoid_weighting(2.0)
            torch.testing.assert_close(W.lambda_weight(biased, p, lam, sampler), 0.5 * torch.sigmoid(2.0 - lam), rtol=1e-10, atol=0)


def test_elbo_weight_is_the_continuous_vlb():
    """Per sample with t ~ U[0, 1]: 1/2 (-dSNR/dt) ||x - x_hat||^2 (the t-derivative of the DDPM
    VLB term 1/2 (SNR_s - SNR_t) ||x - x_hat||^2, docs/theory.md, section 9) = elbo-weighted loss."""
    p = ug.VP.linear()
    g = torch.Generator().manual_seed(2)
    t = 0.02 + 0.96 * torch.rand(8, generator=g)
    x, eps = GM.sample(8, generator=g), torch.randn(8, 3, generator=g)
    model = ug.Model(random_net(4), p, "eps")
    snr_dot = grad(lambda tt: torch.exp(p.log_snr(tt)), t)
    ref = 0.5 * (-snr_dot) * L.target_mse(model, x, t, eps, "x0")
    got = ug.loss(model, x, t, weighting="elbo", t_sampler=TS.Uniform(0.0, 1.0), reduction="none", eps=eps)
    assert rel_err(got, ref) < 1e-9


# ---------------------------------------------------------------------------------------
# numerics: the loss never forms eps_hat
# ---------------------------------------------------------------------------------------
def test_matching_weighting_is_the_networks_own_mse_in_float32():
    """weighting == parametrization: the value is ||out - target||^2 of the raw output (factor 1,
    no conversion), here an x0-network in float32 at sigma ~ 3e-3."""
    p = ug.VP.linear()
    x = GM.sample(64, generator=torch.Generator().manual_seed(0)).float()
    eps = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)).float()
    t = torch.full((64,), 1e-4, dtype=torch.float32)
    fn = random_net(3)
    model = ug.Model(lambda z, s: z / p.alpha(s)[:, None] + 1e-3 * fn(z, s), p, "x0")
    got = ug.loss(model, x, t, weighting="x0", reduction="none", eps=eps)
    z = p.alpha(t)[:, None] * x + p.sigma(t)[:, None] * eps
    direct = (model.raw(z, t) - x).square().sum(1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=0)


def test_zero_terminal_snr_is_finite():
    """At alpha = 0 (FM, t = 1) a velocity model's velocity/v/x0/edm losses stay finite."""
    fm = ug.FlowMatching()
    x = GM.sample(5, generator=torch.Generator().manual_seed(0))
    model = ug.Model(random_net(1), fm, "velocity")
    t = torch.ones(5)
    for w in ("velocity", "v", "x0", "edm", "eps"):
        assert torch.isfinite(ug.loss(model, x, t, weighting=w, reduction="none")).all(), w
    assert ug.loss(model, x, t, weighting="velocity", t_sampler=TS.Uniform(0.0, 1.0)) > 0


# ---------------------------------------------------------------------------------------
# DSM and sliced score matching
# ---------------------------------------------------------------------------------------
@given(name=st.sampled_from(NAMES), param=params, us=times, seed=st.integers(0, 10**6))
def test_dsm_is_score_weighting(name, param, us, seed):
    p, x, eps, t = setup(name, us, seed)
    model = ug.Model(random_net(seed + 3), p, param)
    dsm = L.dsm_loss(model, x, t, reduction="none", eps=eps)
    assert rel_err(dsm, ug.loss(model, x, t, weighting="score", reduction="none", eps=eps)) < 1e-10
    eps_mse = L.target_mse(model, x, t, eps, "eps")
    assert rel_err(dsm, eps_mse / p.sigma(t) ** 2) < 1e-10
    assert rel_err(L.dsm_loss(model, x, t, reduction="none", eps=eps, sigma_weighted=True), eps_mse) < 1e-10


SIGMA = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])


def gaussian_sample(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) @ torch.linalg.cholesky(SIGMA).T


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("vr", [False, True])
def test_sliced_score_matching_true_score_value(projection, vr):
    """J(s*) = E[tr grad s* + 1/2 ||s*||^2] = -1/2 tr Sigma^{-1} for N(0, Sigma), within MC error."""
    prec = torch.linalg.inv(SIGMA)
    x = gaussian_sample(20000, 0)
    per = L.sliced_score_matching(lambda y: -y @ prec, x, n_projections=2, generator=torch.Generator().manual_seed(1),
                                  reduction="none", projection=projection, variance_reduction=vr).detach()
    target = -0.5 * torch.trace(prec)
    se = per.std() / math.sqrt(per.numel())
    assert abs(float(per.mean() - target)) < 4 * float(se), (float(per.mean()), float(target), float(se))


def test_sliced_score_matching_prefers_the_true_score():
    """J(s) - J(s*) = 1/2 E||s - s*||^2 > 0 (Hyvarinen's identity), checked with common random numbers."""
    prec = torch.linalg.inv(SIGMA)
    x = gaussian_sample(20000, 2)
    true = lambda y: -y @ prec
    wrong = lambda y: -y  # the score of N(0, I)
    kw = dict(n_projections=1, reduction="none", variance_reduction=True)
    j_true = L.sliced_score_matching(true, x, generator=torch.Generator().manual_seed(3), **kw)
    j_wrong = L.sliced_score_matching(wrong, x, generator=torch.Generator().manual_seed(3), **kw)
    diff = (j_wrong - j_true).detach()
    fisher = 0.5 * (wrong(x) - true(x)).square().sum(1)
    assert float(diff.mean()) > 0
    se = (diff - fisher).std() / math.sqrt(x.shape[0])
    assert abs(float((diff - fisher).mean())) < 4 * float(se) + 1e-12


def test_sliced_score_matching_is_differentiable():
    w = torch.zeros(3, 3, requires_grad=True)
    x = gaussian_sample(256, 4)
    val = L.sliced_score_matching(lambda y: y @ w - y, x, generator=torch.Generator().manual_seed(0))
    val.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# time samplers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sampler", ["uniform", "logsnr", "edm"])
def test_samplers_stay_in_the_domain_with_finite_loss(name, sampler):
    p = PROCESSES[name]
    t = TS.get_t_sampler(sampler).sample(512, p, generator=torch.Generator().manual_seed(0))
    assert t.shape == (512,) and t.dtype == torch.float64
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.t_max
    assert torch.isfinite(p.log_snr(t)).all()
    x = GM.sample(512, generator=torch.Generator().manual_seed(1))
    val = ug.loss(GM.model(p, "eps"), x, t_sampler=sampler, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(val)


def test_default_uniform_range():
    assert TS.default_t_range(ug.VP.linear()) == (1e-3, 1.0)
    assert TS.default_t_range(ug.FlowMatching()) == (1e-3, 1.0 - 1e-3)
    assert TS.default_t_range(ug.VE()) == (0.0, 1.0)
    assert TS.default_t_range(ug.EDM()) == (0.002, 80.0)
    assert TS.default_t_range(PROCESSES["vp_discrete"]) == (1e-3, 1.0)  # 1/N: the first DDPM timestep


# logit-normal is for [0, 1] processes: (edm, logit_normal) is not a case (tested as an error below)
@pytest.mark.parametrize(
    "name, sampler",
    [(n, s) for n in ["vp_linear", "fm", "edm", "cosine", "subvp"] for s in ["uniform", "logsnr", "edm", "logit_normal"]
     if (n, s) != ("edm", "logit_normal")],
)
def test_sampler_density_matches_its_samples(name, sampler):
    """density_lambda integrates to 1 and its CDF matches the empirical CDF of drawn log-SNRs (KS)."""
    p = PROCESSES[name]
    s = TS.get_t_sampler(sampler)
    lam_draw = p.log_snr(s.sample(4000, p, generator=torch.Generator().manual_seed(0))).sort().values
    lo = max(float(lam_draw[0]) - 1.0, p.log_snr_range[0])
    hi = min(float(lam_draw[-1]) + 1.0, p.log_snr_range[1])
    grid = torch.linspace(lo, hi, 20001)
    dens = s.density_lambda(grid, p)
    cdf = torch.cumulative_trapezoid(dens, grid)
    if sampler != "edm":  # the clipped log-normal puts its (tiny) tail mass at the ends
        assert abs(float(cdf[-1]) - 1.0) < 2e-3
    cdf_at = torch.from_numpy(__import__("numpy").interp(lam_draw.numpy(), grid[1:].numpy(), cdf.numpy()))
    emp = torch.arange(1, 4001, dtype=torch.float64) / 4000
    assert float((cdf_at - emp).abs().max()) < 0.03  # KS critical value at n = 4000 is ~0.021 (1%)


def test_logit_normal_and_callable_samplers():
    fm = ug.FlowMatching()
    t = TS.get_t_sampler("logit_normal").sample(20000, fm, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean())) < 0.05 and abs(float(logit.std()) - 1.0) < 0.05
    calls = []

    def mine(n, generator):
        calls.append(n)
        return torch.full((n,), 0.25)

    x = GM.sample(3, generator=torch.Generator().manual_seed(0))
    model = GM.model(fm, "velocity")
    torch.testing.assert_close(ug.loss(model, x, t_sampler=mine, weighting="velocity", reduction="none", eps=torch.zeros(3, 3)),
                               ug.loss(model, x, 0.25, weighting="velocity", reduction="none", eps=torch.zeros(3, 3)))
    assert calls == [3]


def test_reductions_and_gradients():
    p = ug.VP.linear()
    x = GM.sample(16, generator=torch.Generator().manual_seed(0))
    lin = torch.nn.Linear(3, 3)
    model = ug.Model(lambda z, t: lin(z), p, "eps")
    kw = dict(t=torch.linspace(0.1, 0.9, 16), eps=torch.randn(16, 3, generator=torch.Generator().manual_seed(1)))
    per = ug.loss(model, x, reduction="none", **kw)
    torch.testing.assert_close(ug.loss(model, x, **kw), per.mean())
    torch.testing.assert_close(ug.loss(model, x, reduction="sum", **kw), per.sum())
    ug.loss(model, x, **kw).backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    # generator reproducibility
    a = ug.loss(model, x, generator=torch.Generator().manual_seed(7))
    b = ug.loss(model, x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def test_bad_input_errors():
    p = ug.VP.linear()
    model = GM.model(p, "eps")
    x = GM.sample(4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"unknown weighting 'l1'; valid names are eps, x0, snr, v, v_n, velocity, score, edm"):
        ug.loss(model, x, weighting="l1")
    with pytest.raises(ValueError, match=r"unknown t_sampler 'cosine'; valid names are uniform, logsnr, logit_normal, edm"):
        ug.loss(model, x, t_sampler="cosine")
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        ug.loss(model, x, reduction="avg")
    with pytest.raises(ValueError, match=r"t must lie in VPLinear's domain \[0, 1\]"):
        ug.loss(model, x, t=torch.tensor([0.5, 0.5, 1.5, 0.5]))
    with pytest.raises(ValueError, match=r"t must have shape \[\] or \[batch\]=\[4\]"):
        ug.loss(model, x, t=torch.rand(3))
    with pytest.raises(ValueError, match=r"z must have shape \[batch, \*\(3,\)\]"):  # the oracle's own check
        ug.loss(model, x[:, :2])
    from unigen.networks import MLP

    net_model = ug.Model(MLP(3, hidden=8, depth=1), p, "eps")
    with pytest.raises(ValueError, match=r"x has event shape \(2,\) but the model expects \(3,\)"):
        ug.loss(net_model, x[:, :2])
    with pytest.raises(ValueError, match="it must return z.s shape exactly"):
        ug.loss(ug.Model(lambda z, t: z[:, :1], p, "eps"), x)
    with pytest.raises(ValueError, match="eps must be a tensor of the shape of x"):
        ug.loss(model, x, eps=torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, \*event\]"):
        ug.loss(model, x[0])
    with pytest.raises(TypeError, match="model must be a unigen Model"):
        ug.loss(lambda z, t: z, x)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        ug.loss(model, x, weighting=lambda t, proc: torch.ones(7))
    with pytest.raises(ValueError, match="'logit_normal' needs a process on \\[0, 1\\]"):
        ug.loss(GM.model(ug.EDM(), "eps"), x, t_sampler="logit_normal")
    with pytest.raises(ValueError, match="density-form weighting"):
        ug.loss(model, x, weighting="sigmoid", t_sampler=lambda n, g: torch.full((n,), 0.5))
    with pytest.raises(ValueError, match="shape \\[4\\]"):
        ug.loss(model, x, t_sampler=lambda n, g: torch.full((n + 1,), 0.5))
    with pytest.raises(ValueError, match="unknown target 'u'"):
        L.target_mse(model, x, torch.full((4,), 0.5), torch.zeros_like(x), "u")
    with pytest.raises(ValueError, match="n_projections must be a positive integer"):
        L.sliced_score_matching(lambda y: -y, x, n_projections=0)
    with pytest.raises(ValueError, match="score_fn returned shape"):
        L.sliced_score_matching(lambda y: y.sum(1), x)
