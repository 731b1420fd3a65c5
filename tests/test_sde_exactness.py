r"""Transition exactness of the stochastic solvers (issue 12, "guard first"; the SDE half of
tests/test_exactness.py).

For a model whose x0_hat does not depend on z (a fixed polynomial in a time variable), every
step of DDIM(eta > 0), DDPM, EulerMaruyama, SDEDPMSolverPP (1 and 2M) and EDMStochastic is an
affine map of the current state plus one Gaussian draw:

    z_{i+1} = A_i z_i + b_i + c_i xi_i.

A_i, b_i, c_i are written below from the papers' formulas (not from the solver code). The noise
is *replayed*: ``sample`` draws every xi_i as ``randn(z.shape, generator)`` in step order, so a
second generator seeded identically reproduces the draws, for the steps where the closed form
says c_i > 0. Each step output (from the solver's own previous state, ``info.trajectory``) must
match to 1e-12, and the two generators must end in the same state (so the solver drew exactly
once on exactly those steps). A 0.1% change of any coefficient, noise std included, moves a
step by ~1e-3 and fails.

TorchSDE is not covered: its noise comes from a torchsde BrownianInterval seeded from the
generator, not from per-step draws.
"""

import math

import numpy as np
import pytest
import torch

import unigen as ug

F64 = torch.float64
VP = ug.VP.linear()
EDM = ug.EDM()
Z0_SHAPE = (4, 3)
RTOL = ATOL = 1e-12


def _f(process, name, t):
    return float(getattr(process, name)(torch.tensor(float(t), dtype=F64)))


def alpha(p, t):
    return _f(p, "alpha", t)


def sigma(p, t):
    return _f(p, "sigma", t)


def lam(p, t):
    """DPM-Solver's lambda = log(alpha/sigma)."""
    return math.log(alpha(p, t) / sigma(p, t))


def derivs(p, t):
    """alpha'(t), sigma'(t) by autograd (independent of the process's d_alpha / d_sigma)."""
    tt = torch.tensor(float(t), dtype=F64, requires_grad=True)
    (da,) = torch.autograd.grad(p.alpha(tt), tt)
    tt = torch.tensor(float(t), dtype=F64, requires_grad=True)
    (ds,) = torch.autograd.grad(p.sigma(tt), tt)
    return float(da), float(ds)


# ---- the oracle: x0_hat(t) = P(x(t)) per coordinate, x a chosen time variable -----------------
class Oracle:
    def __init__(self, process, var, degree=2, seed=0):
        rng = np.random.default_rng(seed)
        self.coef = rng.standard_normal((degree + 1, Z0_SHAPE[1]))
        self.process, self.var = process, var

    def x(self, t):
        if self.var == "t":
            return float(t)
        if self.var == "level":  # the VE level s = sigma/alpha (EDM's sigma)
            return sigma(self.process, t) / alpha(self.process, t)
        raise ValueError(self.var)

    def at_x(self, x):
        return torch.as_tensor(sum(c * x**j for j, c in enumerate(self.coef)), dtype=F64)

    def __call__(self, t):
        return self.at_x(self.x(t))

    def model(self):
        def fn(z, t):
            return torch.zeros_like(z) + self(t.detach()).to(z.dtype)

        return ug.Model(fn, self.process, "x0")


class Replay:
    """The solver's noise, re-drawn in order from an identically seeded generator."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self):
        return torch.randn(Z0_SHAPE, generator=self.gen, dtype=F64)


def run(solver, oracle, ts, seed):
    """The solver's trajectory from a fixed z0 with generator ``seed``, and that generator."""
    z0 = torch.randn(Z0_SHAPE, generator=torch.Generator().manual_seed(123), dtype=F64)
    z0 = z0 * sigma(oracle.process, ts[0])
    gen = torch.Generator().manual_seed(seed)
    _, info = ug.sample(oracle.model(), solver, schedule=torch.tensor(ts, dtype=F64), noise=z0,
                        generator=gen, return_trajectory=True)
    return info.trajectory, gen


def check(solver, oracle, ts, expected_step, seed=2024):
    """Every step output against ``expected_step(i, z_i, replay, state) -> (z_{i+1}, noise_term)``."""
    traj, gen = run(solver, oracle, ts, seed)
    assert len(traj) == len(ts)
    replay = Replay(seed)
    state = {}
    noise_seen = 0.0
    for i in range(len(ts) - 1):
        want, noise_term = expected_step(i, traj[i], replay, state)
        torch.testing.assert_close(traj[i + 1], want, rtol=RTOL, atol=ATOL, msg=lambda m: f"step {i}: {m}")
        noise_seen = max(noise_seen, float(noise_term.abs().max()) if torch.is_tensor(noise_term) else 0.0)
    # the solver drew exactly the replayed draws: both generators are in the same state now
    assert torch.equal(gen.get_state(), replay.gen.get_state()), "the solver drew a different number of noises"
    return noise_seen


# ---- DDIM(eta) and DDPM: Song et al. 2021 eq. (12)/(16), Ho et al. 2020 eq. (6)-(7) -------------
# On a VP path alpha_bar_t = alpha(t)^2 and 1 - alpha_bar_t = sigma(t)^2; step t = t_i -> s = t_{i+1}.
VP_TS = [0.9, 0.75, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05]
VP_TS_ZERO = [0.9, 0.7, 0.5, 0.3, 0.15, 0.0]


def ddim_step(p, ts, oracle, eta):
    def step(i, z, replay, state):
        t, s = ts[i], ts[i + 1]
        ab_t, ab_s = alpha(p, t) ** 2, alpha(p, s) ** 2
        x0 = oracle(t)
        if s == 0.0:  # onto zero noise: the posterior is a point mass at x0_hat
            return x0.expand_as(z), 0.0
        eps = (z - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        # eq. (16): sigma_t(eta) = eta sqrt((1 - ab_{t-1})/(1 - ab_t)) sqrt(1 - ab_t/ab_{t-1})
        c = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s)
        out = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - c * c) * eps
        noise = c * replay() if c > 0 else 0.0
        return out + noise, noise

    return step


def ddpm_step(p, ts, oracle, variance):
    def step(i, z, replay, state):
        t, s = ts[i], ts[i + 1]
        ab_t, ab_s = alpha(p, t) ** 2, alpha(p, s) ** 2
        x0 = oracle(t)
        if s == 0.0:
            return x0.expand_as(z), 0.0
        beta = 1 - ab_t / ab_s
        # posterior mean (eq. 7): sqrt(ab_{t-1}) beta_t/(1-ab_t) x0 + sqrt(1-beta_t)(1-ab_{t-1})/(1-ab_t) x_t
        mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * z
        var = (1 - ab_s) / (1 - ab_t) * beta if variance == "small" else beta
        noise = math.sqrt(var) * replay()
        return mean + noise, noise

    return step


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("ts", [VP_TS, VP_TS_ZERO], ids=["to-0.05", "to-zero"])
def test_ddim_eta_transition_exact(eta, ts):
    oracle = Oracle(VP, "t", seed=1)
    assert check(ug.solvers.DDIM(eta=eta), oracle, ts, ddim_step(VP, ts, oracle, eta)) > 1e-2


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("ts", [VP_TS, VP_TS_ZERO], ids=["to-0.05", "to-zero"])
def test_ddpm_transition_exact(variance, ts):
    oracle = Oracle(VP, "t", seed=2)
    assert check(ug.solvers.DDPM(variance=variance), oracle, ts, ddpm_step(VP, ts, oracle, variance)) > 1e-2


# ---- Euler-Maruyama on dz = [f z - (1 + eta^2)/2 g^2 score] dt + eta g dW (Anderson 1982) -----
def em_step(p, ts, oracle, eta):
    def step(i, z, replay, state):
        t, s = ts[i], ts[i + 1]
        a, sg = alpha(p, t), sigma(p, t)
        da, ds = derivs(p, t)
        f = da / a
        g2 = 2 * sg * ds - 2 * f * sg * sg  # d sigma^2/dt - 2 f sigma^2
        score = -(z - a * oracle(t)) / sg**2
        dt = s - t
        drift = f * z - 0.5 * (1 + eta**2) * g2 * score
        noise = eta * math.sqrt(g2 * (t - s)) * replay()
        return z + dt * drift + noise, noise

    return step


@pytest.mark.parametrize("eta", [0.6, 1.0])
def test_euler_maruyama_transition_exact(eta):
    oracle = Oracle(VP, "t", seed=3)
    assert check(ug.solvers.EulerMaruyama(eta=eta), oracle, VP_TS, em_step(VP, VP_TS, oracle, eta)) > 1e-2


# ---- SDE-DPM-Solver++ (Lu et al. 2022b) --------------------------------------------------------
# In lambda = log(alpha/sigma) the family reads dz = [(log alpha)_lam - k] z dlam + k alpha x0 dlam
# + eta sqrt(2) sigma dW_lam, k = 1 + eta^2 (g^2 = -2 sigma^2 dlam/dt, score = -(z - alpha x0)/sigma^2).
# Transition s -> t, h = lam_t - lam_s, integrating factor (alpha_t/alpha_s) e^{-k h} = (sigma_t/sigma_s) e^{-eta^2 h}:
#   z_t = (sigma_t/sigma_s) e^{-eta^2 h} z_s + k alpha_t int_0^h e^{-k (h-u)} x0(u) du + sigma_t sqrt(1 - e^{-2 eta^2 h}) xi.
# Order 1 freezes x0 = x0_s: alpha_t (1 - e^{-k h}) x0_s. 2M takes x0 linear in lambda through the
# previous point, x0(u) = x0_s + u D, D = (x0_s - x0_prev)/h_prev, and (midpoint form, as
# k-diffusion's sample_dpmpp_2m_sde) replaces the exact int_0^h k e^{-k(h-u)} u du = h - (1 - e^{-kh})/k
# by its leading-order stand-in (1 - e^{-kh}) h/2, i.e. the correction alpha_t (1 - e^{-kh}) h/2 D
# = alpha_t (1 - e^{-kh})/(2 r) (x0_s - x0_prev), r = h_prev/h. First step first order; with
# lower_order_final and fewer than 15 steps the last step first order too.
def dpmpp_sde_step(p, ts, oracle, order, eta, lower_order_final):
    n = len(ts) - 1

    def step(i, z, replay, state):
        t_s, t_t = ts[i], ts[i + 1]
        x0 = oracle(t_s)
        if t_t == 0.0:
            return x0.expand_as(z), 0.0
        h = lam(p, t_t) - lam(p, t_s)
        k = 1 + eta**2
        out = sigma(p, t_t) / sigma(p, t_s) * math.exp(-(eta**2) * h) * z
        out = out + alpha(p, t_t) * (1 - math.exp(-k * h)) * x0
        second = order == 2 and i > 0 and not (lower_order_final and n < 15 and i == n - 1)
        if second:
            h_prev = lam(p, t_s) - lam(p, ts[i - 1])
            D = (x0 - oracle(ts[i - 1])) / h_prev
            out = out + alpha(p, t_t) * (1 - math.exp(-k * h)) * h / 2 * D
        noise = 0.0
        if eta > 0:
            noise = sigma(p, t_t) * math.sqrt(1 - math.exp(-2 * eta**2 * h)) * replay()
        return out + noise, noise

    return step


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("eta", [0.7, 1.0])
@pytest.mark.parametrize("lof", [True, False])
@pytest.mark.parametrize("ts", [VP_TS, VP_TS_ZERO], ids=["to-0.05", "to-zero"])
def test_sde_dpmpp_transition_exact(order, eta, lof, ts):
    oracle = Oracle(VP, "t", seed=4)
    solver = ug.solvers.SDEDPMSolverPP(order=order, eta=eta, lower_order_final=lof)
    assert check(solver, oracle, ts, dpmpp_sde_step(VP, ts, oracle, order, eta, lof)) > 1e-2


def test_sde_dpmpp_2m_correction_is_live():
    """The 2M term is large enough here that a 0.1% change of its coefficient is far above 1e-12."""
    oracle = Oracle(VP, "t", seed=4)
    ts = VP_TS
    i = 3
    h = lam(VP, ts[i + 1]) - lam(VP, ts[i])
    h_prev = lam(VP, ts[i]) - lam(VP, ts[i - 1])
    corr = alpha(VP, ts[i + 1]) * (1 - math.exp(-2 * h)) * h / 2 * (oracle(ts[i]) - oracle(ts[i - 1])) / h_prev
    assert float(corr.abs().max()) * 1e-3 > 1e3 * ATOL


# ---- EDMStochastic: Karras et al. 2022, Algorithm 2, in VE variables y = z/alpha, s = sigma/alpha --
def edm_step(p, ts, oracle, n, churn, s_tmin, s_tmax, s_noise):
    s_top = sigma(p, p.t_max) / alpha(p, p.t_max)

    def step(i, z, replay, state):
        s_i = sigma(p, ts[i]) / alpha(p, ts[i])
        s_next = sigma(p, ts[i + 1]) / alpha(p, ts[i + 1])
        y = z / alpha(p, ts[i])
        gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= s_i <= s_tmax else 0.0
        s_hat = min(s_i * (1 + gamma), s_top)
        noise = 0.0
        if s_hat > s_i:
            noise = s_noise * math.sqrt(s_hat**2 - s_i**2) * replay()  # line 5: eps ~ N(0, S_noise^2 I)
        y_hat = y + noise
        if s_next == 0.0:  # last step onto s = 0: Euler lands on D(y_hat; s_hat)
            return oracle.at_x(s_hat).expand_as(z), noise
        d = (y_hat - oracle.at_x(s_hat)) / s_hat  # line 7
        y1 = y_hat + (s_next - s_hat) * d  # line 8
        d1 = (y1 - oracle.at_x(s_next)) / s_next  # line 10
        y1 = y_hat + (s_next - s_hat) * 0.5 * (d + d1)  # line 11
        return alpha(p, ts[i + 1]) * y1, alpha(p, ts[i + 1]) * noise

    return step


EDM_TS = [20.0, 10.0, 5.0, 2.5, 1.2, 0.6, 0.3, 0.1]
EDM_TS_ZERO = [20.0, 8.0, 3.0, 1.0, 0.3, 0.05, 0.0]
EDM_TS_CAP = [70.0, 30.0, 10.0, 3.0, 1.0, 0.3]  # s_hat = 70 (1 + gamma) is capped at s(t_max) = 80
VP_EDM_TS = [0.7, 0.55, 0.4, 0.3, 0.2, 0.1, 0.05]


@pytest.mark.parametrize(
    "process,ts",
    [(EDM, EDM_TS), (EDM, EDM_TS_ZERO), (EDM, EDM_TS_CAP), (VP, VP_EDM_TS)],
    ids=["edm", "edm-to-zero", "edm-cap", "vp"],
)
@pytest.mark.parametrize(
    "churn,s_tmin,s_tmax,s_noise",
    [(2.0, 0.0, math.inf, 1.0), (40.0, 0.2, 6.0, 1.007), (1.0, 0.0, math.inf, 0.9)],
    ids=["plain", "windowed-gamma-max", "small-churn"],
)
def test_edm_stochastic_transition_exact(process, ts, churn, s_tmin, s_tmax, s_noise):
    oracle = Oracle(process, "level", seed=5)
    n = len(ts) - 1
    solver = ug.solvers.EDMStochastic(churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    step = edm_step(process, ts, oracle, n, churn, s_tmin, s_tmax, s_noise)
    assert check(solver, oracle, ts, step) > 1e-3


def test_edm_stochastic_churn_zero_draws_nothing():
    """churn = 0 is Heun in sigma (Algorithm 1): no draws, same closed form with gamma = 0."""
    oracle = Oracle(EDM, "level", seed=6)
    n = len(EDM_TS) - 1
    check(ug.solvers.EDMStochastic(churn=0.0), oracle, EDM_TS, edm_step(EDM, EDM_TS, oracle, n, 0.0, 0.0, math.inf, 1.0))
