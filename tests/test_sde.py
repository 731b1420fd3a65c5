"""Stochastic samplers: EulerMaruyama, EDMStochastic, SDEDPMSolverPP, TorchSDE (unigen/solvers/sde.py),
and the ancestral DDPM / DDIM(eta=1) steps, against exact references.

* equivalences to 1e-12 in float64 (eta = 0 / churn = 0 limits, DDPM == DDIM(eta=1), zero-SNR starts);
* weak and strong order of Euler-Maruyama on Gaussian data (closed-form marginals, shared Brownian paths);
* every stochastic solver reproduces the exact Gaussian-mixture marginal (moments and RBF-MMD);
* reproducibility from generators, honest NFE counts and argument validation.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unigen as ug
from helpers import NAMES, PROCESSES, mixture
from unigen.solvers import Dynamics, Grid

GM = mixture(dim=2, k=3, seed=0)
TOL = dict(rtol=1e-12, atol=1e-12)
ZERO_SNR = ("fm", "cosine", "vp_discrete_zsnr", "affine")  # alpha(t_max) = 0



def gen(seed):
    return torch.Generator().manual_seed(seed)


def gens(seeds):
    return [gen(s) for s in seeds]


def schedule_for(name):
    # the Affine helper path has zero terminal SNR, where a log-SNR grid cannot start
    return "uniform" if name == "affine" else None


class GivenNoise:
    """A Noise stand-in that hands out prescribed standard normals, one per call."""

    generator = None

    def __init__(self, xis):
        self.xis, self.k = list(xis), 0

    def __call__(self, like):
        x = self.xis[self.k]
        self.k += 1
        return x


def run_steps(solver, model, z, ts, xis):
    """The loop of ``ug.sample`` with prescribed noise (grids here never end at sigma = 0)."""
    grid = Grid(model.process, ts, z.dtype, z.device)
    dyn = Dynamics(model, z.dtype)
    state = solver.init(dyn, z, grid)
    noise = GivenNoise(xis)
    for i in range(grid.n):
        z, state = solver.step(dyn, z, i, grid, state, noise)
    return z


def nested_noise(dW, ts):
    """Standard normals xi_i = (W(t_i) - W(t_{i+1}))/sqrt(h_i) of a uniform coarse grid from fine increments."""
    n = ts.numel() - 1
    inc = dW.reshape(n, dW.shape[0] // n, *dW.shape[1:]).sum(1)
    h = (ts[:-1] - ts[1:]).tolist()
    return [inc[i] / math.sqrt(h[i]) for i in range(n)]


def fitted_order(ns, errs):
    """Least-squares slope of -log2(error) against log2(steps)."""
    x = torch.tensor([math.log2(n) for n in ns])
    y = torch.tensor([math.log2(e) for e in errs])
    x = x - x.mean()
    return float(-(x * (y - y.mean())).sum() / (x * x).sum())


def exact_marginal(gm, process, t):
    """Mean and covariance of z_t = alpha x + sigma eps for x ~ gm."""
    a, s = float(process.alpha(torch.tensor(t))), float(process.sigma(torch.tensor(t)))
    return a * gm.mean, a * a * gm.covariance + s * s * torch.eye(gm.dim), a, s


# ---- equivalences ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_euler_maruyama_eta0_is_euler(name):
    """eta = 0: z - h (f z - g^2 score/2) with the PF drift written as the velocity u is Euler in t."""
    p = PROCESSES[name]
    for param in ("velocity", "x0"):
        model = GM.model(p, param)
        kw = dict(steps=12, shape=(8, 2), schedule=schedule_for(name))
        a, info = ug.sample(model, ug.EulerMaruyama(eta=0), generator=gen(1), **kw)
        b, _ = ug.sample(model, ug.Euler(), generator=gen(1), **kw)
        torch.testing.assert_close(a, b, **TOL)
        assert info.nfe == 12


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete", "subvp", "ve", "edm", "fm", "cosine"])
def test_edm_stochastic_without_churn_is_heun_on_the_sigma_clock(name):
    p = PROCESSES[name]
    t_start = 0.98 if name in ZERO_SNR else None  # the sigma clock needs alpha > 0 at the start
    for param in ("eps", "v", "x0"):
        model = GM.model(p, param)
        kw = dict(steps=10, shape=(8, 2), t_start=t_start)
        a, ia = ug.sample(model, ug.EDMStochastic(), generator=gen(2), **kw)
        b, ib = ug.sample(model, ug.Heun(clock="sigma"), generator=gen(2), **kw)
        torch.testing.assert_close(a, b, **TOL)
        assert ia.nfe == ib.nfe
    if name == "edm":  # sigma = t: also Heun in the process's own clock, on a grid ending at 0 too
        model = GM.model(p, "denoiser")
        for ts in (ug.make_grid(p, "karras", 10), ug.make_grid(p, "karras", 10, t_end=0.0)):
            a, ia = ug.sample(model, ug.EDMStochastic(), schedule=ts, shape=(8, 2), generator=gen(3))
            b, ib = ug.sample(model, ug.Heun(), schedule=ts, shape=(8, 2), generator=gen(3))
            torch.testing.assert_close(a, b, **TOL)
            assert ia.nfe == ib.nfe == (19 if float(ts[-1]) == 0 else 20)


@given(
    name=st.sampled_from(["vp_linear", "vp_cosine", "vp_discrete", "subvp", "ve", "edm"]),
    param=st.sampled_from(["eps", "x0", "v", "velocity", "score"]),
    steps=st.integers(2, 12),
    churn=st.floats(0.0, 80.0),
    s_noise=st.floats(0.5, 1.5),
    schedule=st.sampled_from(["logsnr", "uniform", "karras"]),
    data=st.data(),
)
def test_churn_outside_its_window_is_heun(name, param, steps, churn, s_noise, schedule, data):
    """A window [s_tmin, s_tmax] strictly between two adjacent step levels s_{k+1} < s_k (inside the
    grid's span, no level in it) -> no noise is drawn and the sampler is EDM's Heun; the same
    window widened to hold s_{k+1} churns (a different result), so the window does touch the grid."""
    p = PROCESSES[name]
    model = GM.model(p, param)
    ts = ug.make_grid(p, schedule, steps)
    levels = (p.sigma(ts) / p.alpha(ts)).tolist()  # EDM's s = sigma / alpha; steps start at levels[:-1]
    k = data.draw(st.integers(0, steps - 2), label="k")
    lo_frac, hi_frac = data.draw(st.floats(1e-3, 0.45), label="lo"), data.draw(st.floats(1e-3, 0.45), label="hi")
    gap = levels[k] - levels[k + 1]
    s_tmin, s_tmax = levels[k + 1] + lo_frac * gap, levels[k] - hi_frac * gap
    starts = levels[:-1]
    assert min(starts) < s_tmin <= s_tmax < max(starts)  # the window lies among the grid's levels ...
    assert not any(s_tmin <= s <= s_tmax for s in starts)  # ... and holds none of them
    z = torch.randn(4, 2, generator=gen(0)) * float(p.sigma(ts[0]))
    solver = ug.EDMStochastic(churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    a, ia = ug.sample(model, solver, schedule=ts, noise=z, generator=gen(1))
    b, ib = ug.sample(model, ug.Heun(clock="sigma"), schedule=ts, noise=z)
    torch.testing.assert_close(a, b, **TOL)
    assert ia.nfe == ib.nfe
    if churn / steps >= 1e-3:  # gamma = churn / N: large enough to move the result
        wide = ug.EDMStochastic(churn=churn, s_tmin=levels[k + 1] * (1 - 1e-9), s_tmax=s_tmax, s_noise=s_noise)
        c, _ = ug.sample(model, wide, schedule=ts, noise=z, generator=gen(1))
        assert (c - b).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["vp_linear", "vp_discrete", "subvp", "ve", "edm", "fm"])
@pytest.mark.parametrize("steps", [8, 20])
def test_sde_dpmpp_limits(name, steps):
    """eta = 0 is DPM-Solver++(2M) (same lower_order_final rule: last step first order below 15
    steps); order 1 with eta = 1 is DDPM(small) = DDIM(eta=1), draw for draw."""
    p = PROCESSES[name]
    model = GM.model(p, "eps" if name not in ZERO_SNR else "v")
    kw = dict(steps=steps, shape=(8, 2))
    a, _ = ug.sample(model, ug.SDEDPMSolverPP(eta=0), generator=gen(4), **kw)
    b, _ = ug.sample(model, ug.DPMSolverPP(2), generator=gen(4), **kw)
    torch.testing.assert_close(a, b, **TOL)
    c, _ = ug.sample(model, ug.SDEDPMSolverPP(order=1, eta=1.0), generator=gen(5), **kw)
    d, _ = ug.sample(model, ug.DDPM(), generator=gen(5), **kw)
    e, _ = ug.sample(model, ug.DDIM(eta=1.0), generator=gen(5), **kw)
    torch.testing.assert_close(c, d, **TOL)
    torch.testing.assert_close(c, e, **TOL)


@pytest.mark.parametrize("name", ["vp_linear", "vp_discrete", "ve", "fm"])
def test_ddpm_small_variance_is_ddim_eta_one_step_for_step(name):
    p = PROCESSES[name]
    model = GM.model(p, "x0")
    kw = dict(steps=15, shape=(6, 2), return_trajectory=True)
    _, a = ug.sample(model, ug.DDPM(variance="small"), generator=gen(6), **kw)
    _, b = ug.sample(model, ug.DDIM(eta=1.0), generator=gen(6), **kw)
    assert len(a.trajectory) == len(b.trajectory) == 16
    for za, zb in zip(a.trajectory, b.trajectory):
        torch.testing.assert_close(za, zb, **TOL)


@pytest.mark.parametrize("name", ZERO_SNR)
def test_step_out_of_zero_snr_is_the_posterior_draw(name):
    """At alpha = 0 the family's coefficients are infinite; every eta > 0 solver takes the exact
    step alpha' x0_hat + sigma' xi there, which is also DDPM's step."""
    p = PROCESSES[name]
    model = GM.model(p, "x0")
    ts = torch.tensor([1.0, 0.9, 0.7])
    ref, _ = ug.sample(model, ug.DDPM(), schedule=ts[:2], shape=(6, 2), generator=gen(7))
    for solver in (ug.EulerMaruyama(), ug.EulerMaruyama(eta=0.3), ug.SDEDPMSolverPP(), ug.TorchSDE()):
        x, _ = ug.sample(model, solver, schedule=ts[:2], shape=(6, 2), generator=gen(7))
        torch.testing.assert_close(x, ref, **TOL)
        x, _ = ug.sample(model, solver, schedule=ts, shape=(6, 2), generator=gen(7))
        assert torch.isfinite(x).all()


def test_torchsde_euler_is_euler_maruyama_on_the_same_brownian_path():
    import torchsde

    p = ug.VP.linear()
    model = GM.model(p, "eps")
    ts = ug.make_grid(p, "logsnr", 12, t_end=0.02)
    z = torch.randn(5, 2, generator=gen(0))
    x, info = ug.sample(model, ug.TorchSDE(eta=0.7), schedule=ts, noise=z, generator=gen(8))
    # the same Brownian interval: TorchSDE draws its seed from the generator with randint
    seed = int(torch.randint(0, 2**62, (), generator=gen(8)))
    bm = torchsde.BrownianInterval(t0=-float(ts[0]), t1=-float(ts[-1]), size=(10, 1), entropy=seed)
    t = ts.tolist()
    xis = [bm(-t[i], -t[i + 1]).reshape(z.shape) / math.sqrt(t[i] - t[i + 1]) for i in range(12)]
    y = run_steps(ug.EulerMaruyama(eta=0.7), model, z, ts, xis)
    torch.testing.assert_close(x, y, **TOL)
    assert info.nfe == 12


# ---- every process x parametrization ----------------------------------------------------------
SOLVERS = [
    ug.EulerMaruyama(),
    ug.EDMStochastic(churn=5.0),
    ug.SDEDPMSolverPP(),
    ug.SDEDPMSolverPP(order=1),
    ug.TorchSDE(),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_runs_finite_on_every_process_and_parametrization(solver, name):
    p = PROCESSES[name]
    for param in ug.PARAMETRIZATIONS:
        model = GM.model(p, param)
        kw = dict(steps=8, shape=(6, 2), schedule=schedule_for(name), generator=gen(9))
        if name in ZERO_SNR and param in ("eps", "score", "denoiser"):
            # sample() refuses these outputs at alpha = 0 (they do not determine x0 there)
            with pytest.raises(ug.SingularConversionError):
                ug.sample(model, solver, **kw)
            continue
        x, info = ug.sample(model, solver, **kw)
        assert torch.isfinite(x).all(), (name, param)
        assert info.nfe >= 8


# ---- orders on Gaussian data ------------------------------------------------------------------
GAUSS_1D = ug.GaussianMixture(torch.tensor([[1.0]]), torch.tensor([0.5]))
T0, T1 = 1.0, 1e-2


def test_euler_maruyama_weak_order_one():
    """|E z_N^2 - E z^2| against the exact marginal N(alpha mu, alpha^2 s^2 + sigma^2) at t = 1e-2.

    For Gaussian data the oracle x0_hat is affine in z, so z_N is an affine function of the
    inputs (z_T, xi_1, ..., xi_n). Drawing those inputs as the columns of a centred, exactly
    orthonormal Gaussian matrix (scaled to unit sample variance) makes the sample mean and second
    moment of z_N equal the scheme's exact moments: the measured error is pure discretisation
    error (MC standard error 0). With i.i.d. draws instead, the standard error of E z^2 would be
    sqrt(Var z^2 / B) ~ 8e-3 at B = 20000, comparable to the n = 128 error (1.2e-2).
    The coarse grids' increments are sums of the finest ones (the same random numbers).
    """
    p = ug.VP.linear()
    model = GAUSS_1D.model(p, "eps")
    nf, b = 128, 4096
    g = torch.randn(b, nf + 1, generator=gen(10))
    q, _ = torch.linalg.qr(g - g.mean(0))
    u = q * math.sqrt(b)
    a1, s1 = float(p.alpha(torch.tensor(T0))), float(p.sigma(torch.tensor(T0)))
    z0 = (a1 * 1.0 + math.sqrt(a1**2 * 0.25 + s1**2) * u[:, 0]).unsqueeze(1)
    dW = (u[:, 1:].T * math.sqrt((T0 - T1) / nf)).unsqueeze(-1)
    mean, cov, _, _ = exact_marginal(GAUSS_1D, p, T1)
    m2 = float(mean.square().sum() + cov.trace())
    ns, errs = [16, 32, 64, 128], []
    for n in ns:
        ts = torch.linspace(T0, T1, n + 1)
        z = run_steps(ug.EulerMaruyama(), model, z0, ts, nested_noise(dW, ts))
        errs.append(abs(float(z.square().mean()) - m2))
    order = fitted_order(ns, errs)
    # measured: errors 1.09e-1, 5.04e-2, 2.44e-2, 1.20e-2 -> order 1.06
    assert abs(order - ug.EulerMaruyama.weak_order) <= 0.3, (order, errs)


def test_euler_maruyama_strong_order_one_for_additive_noise():
    """RMS pathwise error against the same scheme on 2048 steps of the same Brownian path.

    The reverse SDE's noise eta g(t) dW does not depend on z (additive noise), so Milstein's
    correction vanishes and Euler-Maruyama converges with strong order 1, not 0.5.
    """
    p = ug.VP.linear()
    model = GAUSS_1D.model(p, "eps")
    nf, b = 2048, 1000
    g = gen(11)
    a1, s1 = float(p.alpha(torch.tensor(T0))), float(p.sigma(torch.tensor(T0)))
    z0 = a1 + math.sqrt(a1**2 * 0.25 + s1**2) * torch.randn(b, 1, generator=g)
    dW = torch.randn(nf, b, 1, generator=g) * math.sqrt((T0 - T1) / nf)
    ts_ref = torch.linspace(T0, T1, nf + 1)
    ref = run_steps(ug.EulerMaruyama(), model, z0, ts_ref, nested_noise(dW, ts_ref))
    ns, errs = [16, 32, 64, 128], []
    for n in ns:
        ts = torch.linspace(T0, T1, n + 1)
        z = run_steps(ug.EulerMaruyama(), model, z0, ts, nested_noise(dW, ts))
        errs.append(float((z - ref).square().mean().sqrt()))
    order = fitted_order(ns, errs)
    # measured: errors 1.29e-1, 6.19e-2, 3.07e-2, 1.49e-2 -> order 1.03
    assert ug.EulerMaruyama.strong_order == 1.0
    assert abs(order - 1.0) <= 0.3, (order, errs)


# ---- distributions -----------------------------------------------------------------------------
MMD_N, MMD_BANDWIDTHS = 2000, (0.5, 1.0, 2.0)
# Unbiased RBF-MMD^2 (sum of three bandwidths) between two independent exact samples of 2000
# points of this mixture: mean -7e-5, sd 1.0e-3, max 2.2e-3 over 20 pairs. 5e-3 is 5 null sds;
# test_mmd_threshold_has_power checks both sides of that on the fly.
MMD_THRESHOLD = 5e-3
VP = ug.VP.linear()
T_END = ug.schedules.sample_range(VP)[1]


def mmd2(x, y):
    def k(a, b):
        d = torch.cdist(a, b).square()
        return sum(torch.exp(-d / (2 * h * h)) for h in MMD_BANDWIDTHS)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def exact_samples(n, g):
    _, _, a, s = exact_marginal(GM, VP, T_END)
    return a * GM.sample(n, generator=g) + s * torch.randn(n, GM.dim, generator=g)


def test_mmd_threshold_has_power():
    g = gen(12)
    null = [mmd2(exact_samples(MMD_N, g), exact_samples(MMD_N, g)) for _ in range(4)]
    assert max(null) < MMD_THRESHOLD / 2, null
    coarse, _ = ug.sample(GM.model(VP, "eps"), ug.DDIM(eta=1.0), steps=10, shape=(MMD_N, 2), generator=gen(13))
    assert mmd2(coarse, exact_samples(MMD_N, g)) > 4 * MMD_THRESHOLD  # measured 6e-2


STOCHASTIC = [
    (ug.EulerMaruyama(), 200),
    (ug.EulerMaruyama(eta=0.5), 200),
    (ug.EDMStochastic(churn=10.0), 100),  # 2 calls per step
    (ug.SDEDPMSolverPP(), 200),
    (ug.TorchSDE(), 200),
    (ug.TorchSDE(method="srk"), 100),  # 2 calls per step
    (ug.DDPM(), 200),
    (ug.DDIM(eta=1.0), 200),
]


@pytest.mark.parametrize("solver,steps", STOCHASTIC, ids=[repr(s) for s, _ in STOCHASTIC])
def test_stochastic_solvers_sample_the_mixture(solver, steps):
    """Mean, covariance and MMD of 10^4 samples at t_end = 1e-3 (VP, exact oracle) vs the exact marginal.

    Tolerances: 4 Monte-Carlo standard errors (from the samples' own second/fourth moments) plus
    a discretisation slack of 1% (mean) and 2% (covariance) of the largest std / variance. Seen:
    at most 2.65 standard errors and 1.1% of the largest variance; MMD^2 at most 2.7e-3.
    """
    b = 10000
    x, info = ug.sample(GM.model(VP, "eps"), solver, steps=steps, shape=(b, 2), generator=gen(14))
    mean, cov, _, _ = exact_marginal(GM, VP, T_END)
    xc = x - x.mean(0)
    se_mean = xc.std(0) / math.sqrt(b)
    prod = (xc[:, :, None] * xc[:, None, :]).reshape(b, -1)
    se_cov = (prod.std(0) / math.sqrt(b)).reshape(2, 2)
    scale = float(cov.diagonal().max())
    assert ((x.mean(0) - mean).abs() <= 4 * se_mean + 0.01 * math.sqrt(scale)).all(), (x.mean(0), mean)
    assert ((torch.cov(x.T) - cov).abs() <= 4 * se_cov + 0.02 * scale).all(), (torch.cov(x.T), cov)
    assert mmd2(x[:MMD_N], exact_samples(MMD_N, gen(15))) < MMD_THRESHOLD


# ---- EDM churn bookkeeping ----------------------------------------------------------------------
def test_edm_churn_levels_window_and_cap():
    """gamma = min(churn/N, sqrt(2)-1) inside [s_tmin, s_tmax]; s_hat = s (1 + gamma) capped at sigma_max."""
    p = ug.EDM()
    seen = []

    def D(y, s):
        seen.append(s.clone())
        return GM.posterior(y, torch.ones_like(s), s)[0]

    model = ug.Model(D, p, "denoiser")
    ts = ug.make_grid(p, "karras", 8)
    solver = ug.EDMStochastic(churn=6.0, s_tmin=0.05, s_tmax=50.0)
    ug.sample(model, solver, schedule=ts, shape=(4, 2), generator=gen(16))
    gamma = min(6.0 / 8, math.sqrt(2) - 1)
    first_stage = [float(s) for s in seen[0::2]]  # two calls per step: (s_hat, s_{i+1})
    for i, s_i in enumerate(ts[:-1].tolist()):
        expect = min(s_i * (1 + gamma), 80.0) if 0.05 <= s_i <= 50.0 else s_i
        assert math.isclose(first_stage[i], expect, rel_tol=1e-12), (i, first_stage[i], expect)
    assert [float(s) for s in seen[1::2]] == pytest.approx(ts[1:].tolist(), rel=1e-12)


def test_edm_churn_cap_at_the_top_of_the_domain():
    """Churn at the first level of a VP grid would leave the domain; s_hat is capped at s(t_max)."""
    p = ug.VP.linear()
    times = []

    def fn(z, t):
        times.append(float(t))
        return GM.model(p, "eps").fn(z, t)

    model = ug.Model(fn, p, "eps")
    x, _ = ug.sample(model, ug.EDMStochastic(churn=100.0), steps=5, shape=(4, 2), generator=gen(17))
    assert torch.isfinite(x).all() and max(times) <= 1.0 and times[0] == 1.0


# ---- reproducibility, NFE, validation ------------------------------------------------------------
REPRO = [
    ug.EulerMaruyama(),
    ug.EDMStochastic(churn=10.0),
    ug.SDEDPMSolverPP(),
    ug.TorchSDE(),
    ug.TorchSDE(method="heun"),
]
TORCHSDE_CALLS = [("euler", 1), ("milstein", 1), ("srk", 2), ("heun", 2), ("midpoint", 2)]


@pytest.mark.parametrize("solver", REPRO, ids=repr)
def test_same_generator_same_samples_and_per_item_generators(solver):
    model = GM.model(ug.FlowMatching(), "velocity")
    kw = dict(steps=8, shape=(4, 2))
    a, _ = ug.sample(model, solver, generator=gen(20), **kw)
    b, _ = ug.sample(model, solver, generator=gen(20), **kw)
    c, _ = ug.sample(model, solver, generator=gen(21), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    batch, _ = ug.sample(model, solver, generator=gens([30, 31, 32, 33]), **kw)
    one, _ = ug.sample(model, solver, generator=gens([32]), steps=8, shape=(1, 2))
    torch.testing.assert_close(one, batch[2:3], **TOL)


@pytest.mark.parametrize(
    "solver,per_step",
    [(ug.EulerMaruyama(), 1), (ug.EDMStochastic(churn=3.0), 2), (ug.SDEDPMSolverPP(), 1)]
    + [(ug.TorchSDE(method=m), c) for m, c in TORCHSDE_CALLS],
    ids=repr,
)
def test_nfe_is_counted_and_predicted(solver, per_step):
    model = GM.model(VP, "eps")
    _, info = ug.sample(model, solver, steps=6, shape=(3, 2), generator=gen(22))
    assert solver.nfe_per_step == per_step
    assert info.nfe == solver.expected_nfe(6, False) == 6 * per_step


def test_torchsde_substeps_cost_what_they_say():
    ts = torch.tensor([1.0, 0.5, 0.3, 0.1])
    _, info = ug.sample(GM.model(VP, "eps"), ug.TorchSDE(method="heun", dt=0.15), schedule=ts, shape=(3, 2))
    assert info.nfe == 2 * (4 + 2 + 2)  # ceil(0.5/0.15), ceil(0.2/0.15), ceil(0.2/0.15) substeps
    assert ug.TorchSDE(dt=0.1).expected_nfe(5, False) is None


def test_bad_arguments_raise():
    for bad in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"eta must lie in \[0, inf\)"):
            ug.EulerMaruyama(eta=bad)
        with pytest.raises(ValueError, match=r"eta must lie in \[0, inf\)"):
            ug.SDEDPMSolverPP(eta=bad)
        with pytest.raises(ValueError, match=r"eta must lie in \[0, inf\)"):
            ug.TorchSDE(eta=bad)
        with pytest.raises(ValueError, match=r"churn must lie in \[0, inf\)"):
            ug.EDMStochastic(churn=bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"s_noise must lie in \(0, inf\)"):
            ug.EDMStochastic(s_noise=bad)
    with pytest.raises(ValueError, match="s_tmax must be >= s_tmin"):
        ug.EDMStochastic(s_tmin=2.0, s_tmax=1.0)
    with pytest.raises(ValueError, match=r"s_tmin must lie in \[0, inf\)"):
        ug.EDMStochastic(s_tmin=-1.0)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        ug.SDEDPMSolverPP(order=3)
    with pytest.raises(ValueError, match="unknown method 'rk45'; TorchSDE methods are euler, milstein, srk"):
        ug.TorchSDE(method="rk45")
    with pytest.raises(ValueError, match=r"dt must be None or lie in \(0, inf\)"):
        ug.TorchSDE(dt=0.0)


def test_eta_zero_is_deterministic_and_flags_say_so():
    assert not ug.EulerMaruyama(eta=0).stochastic and ug.EulerMaruyama().stochastic
    assert not ug.EDMStochastic().stochastic and ug.EDMStochastic(churn=1.0).stochastic
    assert not ug.SDEDPMSolverPP(eta=0).stochastic and ug.SDEDPMSolverPP().stochastic
    assert ug.TorchSDE().syncs_host and not ug.EulerMaruyama().syncs_host
    model = GM.model(VP, "eps")
    z = torch.randn(4, 2, generator=gen(0))
    for solver in (ug.EulerMaruyama(eta=0), ug.SDEDPMSolverPP(eta=0), ug.EDMStochastic()):
        a, _ = ug.sample(model, solver, steps=6, noise=z, generator=gen(1))
        b, _ = ug.sample(model, solver, steps=6, noise=z, generator=gen(2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
