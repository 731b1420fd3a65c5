"""Langevin-type samplers: ULA, MALA, annealed Langevin (NCSN), predictor-corrector.

References are independent of the code under test: closed-form stationary laws of ULA on
Gaussians (docs/theory.md, section 6c), exact draws and log-densities of the Gaussian-mixture
oracle, and the algebraic signal-to-noise identity of score_sde's corrector. Monte-Carlo
checks use CLT standard errors computed from the samples (4 SE bounds, fixed seeds).
"""

import math

import pytest
import torch

import unigen as ug
from helpers import PROCESSES, mixture
from unigen.solvers import Dynamics, Grid, Noise

PARAMS = ["eps", "x0", "v", "score", "velocity", "denoiser"]

MIX = mixture()  # 2-D, 3 components, stds 0.38 / 0.55 / 0.78


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gaussian_model(mu, cov):
    """An energy-based model of N(mu, cov) at EDM's t = 1 (alpha = sigma = 1, so delta = step_size)."""
    prec = torch.linalg.inv(cov)

    def score(z, t):
        return -(z - mu) @ prec

    def energy(z, t):
        d = z - mu
        return 0.5 * ((d @ prec) * d).sum(-1)

    return ug.Model(score, ug.EDM(), "score", energy=energy)


def second_moment_se(z, mean):
    """Per-entry mean and standard error of (z - mean)(z - mean)^T over the samples."""
    c = ((z - mean)[:, :, None] * (z - mean)[:, None, :]).reshape(len(z), -1)
    return c.mean(0), c.std(0) / math.sqrt(len(z))


def mmd2(x, y, bw=0.5):
    """Unbiased RBF-kernel MMD^2 estimate."""

    def k(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return torch.exp(-d2.clamp_min(0) / (2 * bw * bw))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float(
        (kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1)) - 2 * k(x, y).mean()
    )


# ---------------------------------------------------------------------------------------
# ULA / MALA on Gaussians: closed-form stationary laws
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.5, 1.5])
def test_ula_stationary_variance_1d(delta):
    # x' = x + delta s + sqrt(2 delta) xi on N(0, s^2): variance s^2/(1 - eps/(4 s^2)), eps = 2 delta
    s, n = 1.5, 100_000
    model = ug.Model(lambda z, t: -z / s**2, ug.EDM(), "score")
    g = gen(1)
    z = ug.Langevin(step_size=delta, n_steps=40).run(model, s * torch.randn(n, 1, generator=g), 1.0, generator=g)
    eps = 2 * delta
    expected = s**2 / (1 - eps / (4 * s**2))
    se = expected * math.sqrt(2 / n)  # Gaussian stationary law
    assert abs(float(z.var()) - expected) < 4 * se
    assert abs(float(z.var()) - s**2) > 10 * se  # the bias is real, not noise


MU = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]])


def test_ula_and_mala_on_a_quadratic_energy():
    model = gaussian_model(MU, COV)
    n, delta = 20_000, 0.3
    start = MU + torch.randn(n, 2, generator=gen(2)) @ torch.linalg.cholesky(COV).T
    # ULA on N(mu, S): stationary N(mu, S (I - delta S^-1 / 2)^-1) exactly
    ula_cov = COV @ torch.linalg.inv(torch.eye(2) - 0.5 * delta * torch.linalg.inv(COV))
    mala = ug.MALA(step_size=delta, n_steps=30)
    for solver, cov in ((ug.Langevin(step_size=delta, n_steps=60), ula_cov), (mala, COV)):
        z = solver.run(model, start, 1.0, generator=gen(3))
        mean_se = z.std(0) / math.sqrt(n)
        assert ((z.mean(0) - MU).abs() < 4 * mean_se).all(), type(solver).__name__
        m2, se = second_moment_se(z, MU)
        assert ((m2 - cov.flatten()).abs() < 4 * se).all(), (type(solver).__name__, m2, cov)
    assert 0.5 < float(mala.acceptance_rate.mean()) < 1.0
    assert mala.last_acceptance.shape == (n,)


def test_mala_rejection_vanishes_with_the_step():
    # rejection rate of MALA at fixed dimension is O(delta^{3/2})
    model = gaussian_model(MU, COV)
    start = MU + torch.randn(20_000, 2, generator=gen(4)) @ torch.linalg.cholesky(COV).T
    deltas = [0.2, 0.1, 0.05, 0.025]
    rej = []
    for d in deltas:
        mala = ug.MALA(step_size=d, n_steps=3)
        mala.run(model, start, 1.0, generator=gen(5))
        rej.append(1 - float(mala.acceptance_rate.mean()))
    assert all(a > b for a, b in zip(rej, rej[1:])), rej
    assert rej[-1] < 0.05, rej
    slope = math.log(rej[1] / rej[-1]) / math.log(deltas[1] / deltas[-1])
    assert 1.2 < slope < 1.9, (slope, rej)


# ---------------------------------------------------------------------------------------
# invariance of the oracle's marginal p_t at a fixed time
# ---------------------------------------------------------------------------------------
def test_mala_keeps_p_t_invariant_where_ula_drifts():
    process, t = ug.VP.linear(), 0.1
    tt = torch.tensor(t)
    a, s = float(process.alpha(tt)), float(process.sigma(tt))
    model = MIX.model(process, "eps")

    def exact(n, seed):
        g = gen(seed)
        x = MIX.sample(n, generator=g)
        return a * x + s * torch.randn(x.shape, generator=g)

    def logp(z):
        return MIX.marginal_log_prob(z, t, process)

    n, m = 6000, 2000
    z0 = exact(n, 10)
    mean = a * MIX.mean
    floor = max(abs(mmd2(exact(m, 100 + k), exact(m, 200 + k))) for k in range(3))
    ref = exact(m, 11)
    r = 1.8  # delta = r sigma_t^2; the narrowest component has delta/V = 0.8
    out = {}
    for solver in (ug.MALA(step_size=r, n_steps=20), ug.Langevin(step_size=r, n_steps=20)):
        z1 = solver.run(model, z0, t, generator=gen(12))
        # paired differences from the exact start: zero mean under invariance, CLT errors
        d = logp(z1) - logp(z0)
        dm = z1 - z0
        c1 = ((z1 - mean)[:, :, None] * (z1 - mean)[:, None, :]).reshape(n, -1)
        c0 = ((z0 - mean)[:, :, None] * (z0 - mean)[:, None, :]).reshape(n, -1)
        dc = c1 - c0
        out[type(solver).__name__] = dict(
            dlogp=float(d.mean()) / (float(d.std()) / math.sqrt(n)),
            dmean=(dm.mean(0) / (dm.std(0) / math.sqrt(n))).abs().max().item(),
            dcov=(dc.mean(0) / (dc.std(0) / math.sqrt(n))).abs().max().item(),
            mmd=mmd2(z1[:m], ref),
        )
    mala, ula = out["MALA"], out["Langevin"]
    assert abs(mala["dlogp"]) < 4 and mala["dmean"] < 4 and mala["dcov"] < 4, mala
    assert mala["mmd"] < 2 * floor, (mala, floor)
    # ULA at the same step: log-density visibly lower (mass spread out), MMD above the floor
    assert ula["dlogp"] < -8, ula
    assert ula["mmd"] > 2 * floor and ula["mmd"] > 4 * max(mala["mmd"], floor / 2), (ula, mala, floor)


# ---------------------------------------------------------------------------------------
# predictor-corrector
# ---------------------------------------------------------------------------------------
def test_pc_sampler_matches_the_mixture():
    process, n = ug.VP.linear(), 4000
    pc = ug.PredictorCorrector(ug.DDPM(), "langevin", snr=0.16)
    x, info = ug.sample(MIX.model(process, "eps"), pc, steps=200, shape=(n, 2), generator=gen(1))
    assert info.nfe == pc.expected_nfe(200, False) == 400
    t_end = info.times[-1]
    a, s = float(process.alpha(t_end)), float(process.sigma(t_end))
    mean, cov = a * MIX.mean, a * a * MIX.covariance + s * s * torch.eye(2)
    assert ((x.mean(0) - mean).abs() < 4 * x.std(0) / math.sqrt(n)).all()
    m2, se = second_moment_se(x, mean)
    assert ((m2 - cov.flatten()).abs() < 4 * se).all(), (m2, cov)


@pytest.mark.parametrize("name", ["vp_linear", "ve"])
def test_pc_corrector_signal_to_noise_identity(name):
    # one PC step: DDIM predictor (deterministic), then one corrector step; recover
    # delta from z_out - z_pred = delta s + sqrt(2 delta) xi and check ||delta s||/||sqrt(2 delta) xi|| = r sqrt(alpha_c)
    process, r = PROCESSES[name], 0.16
    model = MIX.model(process, "eps")
    ts = torch.tensor([0.5, 0.4])
    grid = Grid(process, ts, torch.float64, "cpu")
    z = float(process.sigma(ts[:1])) * torch.randn(64, 2, generator=gen(3)) + 0.7

    class Rec(Dynamics):
        def predict(self, z, t, *args, **kwargs):
            self.last = super().predict(z, t, *args, **kwargs)
            return self.last

    class RecNoise(Noise):
        def __call__(self, like):
            self.last = super().__call__(like)
            return self.last

    pc = ug.PredictorCorrector(ug.DDIM(), "langevin", snr=r)
    dyn, noise = Rec(model, torch.float64), RecNoise(gen(4))
    z_out, _ = pc.step(dyn, z, 0, grid, pc.init(dyn, z, grid), noise)
    score, xi = dyn.last.score, noise.last
    assert float(dyn.last.t) == 0.4 and dyn.nfe == 2
    ddim = ug.DDIM()
    plain = Dynamics(model, torch.float64)
    z_pred, _ = ddim.step(plain, z, 0, grid, ddim.init(plain, z, grid), None)
    coef, *_ = torch.linalg.lstsq(torch.stack([score.flatten(), xi.flatten()], 1), (z_out - z_pred).flatten()[:, None])
    delta, noise_scale = coef.flatten().tolist()
    resid = (z_out - z_pred) - delta * score - noise_scale * xi
    assert float(resid.abs().max()) < 1e-12
    assert noise_scale == pytest.approx(math.sqrt(2 * delta), rel=1e-10)
    alpha_c = (float(process.alpha(ts[0])) / float(process.alpha(ts[1]))) ** 2
    if name == "ve":
        assert alpha_c == 1.0
    else:
        assert alpha_c < 1.0
    norm = lambda v: torch.linalg.vector_norm(v, dim=-1).mean()  # noqa: E731  batch mean of per-sample norms
    realised = float(norm(delta * score) / norm(noise_scale * xi))
    assert realised == pytest.approx(r * math.sqrt(alpha_c), rel=1e-12)


def test_pc_without_corrector_is_the_predictor():
    model = MIX.model(ug.VP.linear(), "v")
    x1, i1 = ug.sample(model, ug.PredictorCorrector(ug.DDPM(), "none"), steps=8, shape=(16, 2), generator=gen(5))
    x2, i2 = ug.sample(model, ug.DDPM(), steps=8, shape=(16, 2), generator=gen(5))
    assert torch.equal(x1, x2) and i1.nfe == i2.nfe == 8


# ---------------------------------------------------------------------------------------
# annealed Langevin (NCSN) on VE
# ---------------------------------------------------------------------------------------
def test_annealed_langevin_reproduces_the_mixture_on_ve():
    n = 2000
    solver = ug.AnnealedLangevin(n_steps=10)
    x, info = ug.sample(MIX.model(ug.VE(), "eps"), solver, steps=40, shape=(n, 2), generator=gen(6))
    assert info.nfe == 400
    data = MIX.sample(n, generator=gen(7))
    floor = abs(mmd2(MIX.sample(n, generator=gen(8)), data))
    # The best Gaussian fit (the mixture's own mean and covariance) is the natural "wrong answer":
    # requiring MMD^2 below 5% of its distance means the sampler found the modes and roughly their
    # weights; the residual comes from the finite annealing (40 levels x 10 steps), ULA's O(delta)
    # bias at relative step 0.2 and sigma_min = 0.01 smoothing.
    gauss = MIX.mean + torch.randn(n, 2, generator=gen(9)) @ torch.linalg.cholesky(MIX.covariance).T
    wrong = mmd2(gauss, data)
    got = mmd2(x, data)
    assert got < 0.05 * wrong and wrong > 50 * floor, (got, wrong, floor)


def test_annealed_langevin_is_langevin_with_rescaled_step():
    # delta_i = step_lr (s_i/s_L)^2 alpha_i^2 = (step_lr / s_L^2) sigma_i^2
    process, steps, lr = ug.VE(), 6, 3e-5
    model = MIX.model(process, "x0")
    ts = ug.make_grid(process, "logsnr", steps)
    zeta_l = float(process.sigma(ts[-1]) / process.alpha(ts[-1]))
    x1, _ = ug.sample(model, ug.AnnealedLangevin(step_lr=lr, n_steps=3), steps=steps, shape=(8, 2), generator=gen(1))
    x2, _ = ug.sample(model, ug.Langevin(step_size=lr / zeta_l**2, n_steps=3), steps=steps, shape=(8, 2), generator=gen(1))
    torch.testing.assert_close(x1, x2, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------
# conformance: every process x parametrization, NFE, no host sync, per-sample generators
# ---------------------------------------------------------------------------------------
DEFAULTS = [ug.Langevin, ug.MALA, ug.AnnealedLangevin, ug.PredictorCorrector]


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_defaults_run_on_every_process_and_parametrization(name):
    """Finite output wherever DDIM runs; the same refusal where the library refuses the start."""
    process = PROCESSES[name]
    for param in PARAMS:
        model = MIX.model(process, param)
        kw = dict(steps=4, shape=(8, 2), generator=gen(0))
        try:
            ref, _ = ug.sample(model, ug.DDIM(), **kw)
        except (ValueError, TypeError) as e:
            for cls in DEFAULTS:
                with pytest.raises(type(e)):
                    ug.sample(model, cls(), **kw)
            continue
        for cls in DEFAULTS:
            solver = cls()
            x, info = ug.sample(model, solver, **kw)
            assert x.shape == (8, 2) and x.dtype == torch.float64
            assert torch.isfinite(x).all(), (name, param, solver)
            ends_at_zero = float(process.sigma(info.times[-1])) == 0.0
            assert info.nfe == solver.expected_nfe(4, ends_at_zero), (name, param, solver)


def _solvers_under_test():
    return [
        ug.Langevin(n_steps=2),
        ug.Langevin(snr=0.2, n_steps=2),
        ug.MALA(n_steps=2),
        ug.AnnealedLangevin(n_steps=2),
        ug.PredictorCorrector(),
        ug.PredictorCorrector(ug.DDIM(), "ald", snr=0.1, n_corrector_steps=2),
        ug.PredictorCorrector("DPMSolverPP", ug.MALA(n_steps=2)),
    ]


@pytest.mark.parametrize("solver", _solvers_under_test(), ids=lambda s: type(s).__name__)
def test_no_host_sync_inside_step(solver, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("host sync inside a solver step")

    inner = solver.step

    def guarded(*a, **k):
        with monkeypatch.context() as m:
            for attr in ("item", "__bool__", "__float__", "__int__", "tolist"):
                m.setattr(torch.Tensor, attr, boom)
            with pytest.raises(AssertionError):  # the guard is live
                bool(torch.ones(()))
            return inner(*a, **k)

    monkeypatch.setattr(solver, "step", guarded)
    for process, param in ((ug.VP.linear(), "eps"), (ug.FlowMatching(), "velocity")):
        x, _ = ug.sample(MIX.model(process, param), solver, steps=4, shape=(6, 2), generator=gen(2))
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("solver", [ug.Langevin(n_steps=2), ug.MALA(n_steps=2), ug.AnnealedLangevin(n_steps=2)],
                         ids=lambda s: type(s).__name__)
def test_per_sample_generators_make_items_independent(solver):
    model = MIX.model(ug.VP.linear(), "eps")
    x, _ = ug.sample(model, solver, steps=5, shape=(4, 2), generator=[gen(k) for k in range(4)])
    x2, _ = ug.sample(model, solver, steps=5, shape=(1, 2), generator=[gen(2)])
    torch.testing.assert_close(x[2:3], x2, rtol=1e-12, atol=1e-12)
    assert not solver.batch_coupled


def test_batch_mean_step_rules_declare_the_coupling():
    # score_sde's rule shares one step size across the batch: item 2 changes with its neighbours
    model = MIX.model(ug.VP.linear(), "eps")
    for solver in (ug.Langevin(snr=0.2), ug.PredictorCorrector()):
        assert solver.batch_coupled
        x, _ = ug.sample(model, solver, steps=5, shape=(4, 2), generator=[gen(k) for k in range(4)])
        x2, _ = ug.sample(model, solver, steps=5, shape=(1, 2), generator=[gen(2)])
        assert not torch.allclose(x[2:3], x2)
    assert not ug.PredictorCorrector(corrector="ald").batch_coupled
    assert not ug.PredictorCorrector(corrector=ug.MALA()).batch_coupled


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ug.Langevin(step_size=0.0), "step_size must be a number > 0"),
        (lambda: ug.Langevin(step_size=-1.0), "step_size"),
        (lambda: ug.Langevin(step_size=float("nan")), "step_size"),
        (lambda: ug.Langevin(step_size=float("inf")), "step_size"),
        (lambda: ug.Langevin(n_steps=0), "n_steps must be an integer >= 1"),
        (lambda: ug.Langevin(n_steps=1.5), "n_steps"),
        (lambda: ug.Langevin(snr=0.0), "snr must be a number > 0"),
        (lambda: ug.Langevin(snr=-0.1), "snr"),
        (lambda: ug.Langevin(step_size=0.1, snr=0.1), "not both"),
        (lambda: ug.MALA(step_size=0.0), "step_size"),
        (lambda: ug.MALA(n_steps=0), "n_steps"),
        (lambda: ug.AnnealedLangevin(step_lr=-1e-5), "step_lr"),
        (lambda: ug.AnnealedLangevin(n_steps=0), "n_steps"),
        (lambda: ug.PredictorCorrector(snr=0.0), "snr"),
        (lambda: ug.PredictorCorrector(n_corrector_steps=0), "n_corrector_steps"),
        (lambda: ug.PredictorCorrector(corrector="bogus"), "corrector must be one of"),
        (lambda: ug.PredictorCorrector(corrector=ug.Langevin(), snr=0.2), "on the Langevin instance"),
        (lambda: ug.PredictorCorrector(predictor="Nope"), "unknown solver"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mala_needs_an_energy():
    model = ug.Model(lambda z, t: -z, ug.VP.linear(), "score")  # no energy
    for solver, name in ((ug.MALA(), "MALA"), (ug.PredictorCorrector(ug.DDIM(), ug.MALA()), "PredictorCorrector")):
        with pytest.raises(ug.IncompatibleSolverError, match=rf"{name} requires energy.*this model \(Model\)"):
            ug.sample(model, solver, steps=3, shape=(4, 2))
    with pytest.raises(ug.IncompatibleSolverError, match=r"MALA requires energy.*Model"):
        ug.MALA().run(model, torch.zeros(4, 2), 0.5)


def test_run_rejects_bad_times():
    model = MIX.model(ug.FlowMatching(), "velocity")
    with pytest.raises(ValueError, match="sigma_t > 0"):
        ug.Langevin().run(model, torch.zeros(4, 2), 0.0)
    with pytest.raises(ValueError, match=r"single time \(shape \[\]\)"):
        ug.Langevin().run(model, torch.zeros(4, 2), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="domain"):
        ug.Langevin().run(model, torch.zeros(4, 2), 1.5)
