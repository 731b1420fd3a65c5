"""The equivalences the solver engine claims, to 1e-10 in float64 on the exact oracle."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unigen as ug
from helpers import DETERMINISTIC, PROCESSES, mixture, solver_id

GM = mixture(dim=2, k=4, seed=5)
Z = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
TOL = dict(rtol=1e-10, atol=1e-10)
FIRST_ORDER = [
    ug.DDIM(),
    ug.DPMSolver(1),
    ug.DPMSolverPP(1),
    ug.UniPC(1, corrector=False),
    ug.Euler(clock="sigma"),
    ug.DEIS(1),
    ug.DPMSolver(1, multistep=False),
]
FINITE_START = ["vp_linear", "vp_discrete", "vp_cosine", "subvp", "ve", "edm"]


@given(
    name=st.sampled_from(FINITE_START),
    param=st.sampled_from(["eps", "x0", "v", "velocity"]),
    steps=st.integers(1, 25),
)
def test_first_order_exponential_integrators_are_ddim(name, param, steps):
    """DDIM == DPM-Solver-1 == DPM-Solver++-1 == UniP-1 == Euler(sigma clock) == DEIS-1."""
    p = PROCESSES[name]
    model = GM.model(p, param)
    z = Z * float(p.sigma(torch.tensor(ug.schedules.sample_range(p)[0])))
    ref, _ = ug.sample(model, ug.DDIM(), steps=steps, noise=z)
    for s in FIRST_ORDER[1:]:
        torch.testing.assert_close(ug.sample(model, s, steps=steps, noise=z)[0], ref, **TOL, msg=repr(s))


def test_unip2_bh2_is_dpmsolverpp_2m():
    model = GM.model(ug.VP.linear(), "eps")
    a = ug.sample(model, ug.UniPC(2, variant="bh2", corrector=False), steps=20, noise=Z)[0]
    b = ug.sample(model, ug.DPMSolverPP(2), steps=20, noise=Z)[0]
    torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("param", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", ["logsnr", "uniform", "karras"])
def test_ddim_on_vp_is_euler_on_flow_matching(param, schedule):
    """DDIM on VP.linear == Euler (in t) on FlowMatching via Model.to, on lambda-matched grids."""
    vp, fm = ug.VP.linear(), ug.FlowMatching()
    model = GM.model(vp, param)
    ts = ug.make_grid(vp, schedule, 30)
    t_fm, c = ug.time_change(vp, fm, ts)
    x_vp, _ = ug.sample(model, ug.DDIM(), schedule=ts, noise=Z)
    fm_model = model.to(process=fm, parametrization="velocity")
    x_fm, _ = ug.sample(fm_model, ug.Euler(), schedule=t_fm, noise=Z * c[0])
    torch.testing.assert_close(x_fm / c[-1], x_vp, **TOL)
    # counter-check (DDIM is Euler in the sigma clock, not in t): Euler in t on the VP ODE is a different sampler
    x_vp_euler, _ = ug.sample(model, ug.Euler(), schedule=ts, noise=Z)
    assert (x_vp_euler - x_vp).abs().max() > 1e-3


def test_ddim_is_invariant_to_rescaling_the_process():
    """(alpha, sigma) -> c(t) (alpha, sigma) changes nothing DDIM sees but the scale of z."""
    vp = ug.VP.linear()
    c = lambda t: 1.0 + 2.0 * t**2  # noqa: E731  any positive time-dependent scale
    scaled = ug.Affine(alpha=lambda t: c(t) * vp.alpha(t), sigma=lambda t: c(t) * vp.sigma(t), t_min=0.0, t_max=1.0)
    ts = ug.make_grid(vp, "logsnr", 25)
    for param in ("eps", "x0", "v"):
        x, _ = ug.sample(GM.model(vp, param), ug.DDIM(), schedule=ts, noise=Z)
        xs, _ = ug.sample(GM.model(scaled, param), ug.DDIM(), schedule=ts, noise=Z * c(ts[0]))
        torch.testing.assert_close(xs / c(ts[-1]), x, **TOL)


def test_edm_heun_is_heun_on_the_sigma_clock():
    """Heun in t on the EDM process (t = sigma) == Heun in the sigma clock on a VP model."""
    edm, vp = ug.EDM(), ug.VP.linear()
    lam = torch.linspace(-2 * math.log(70.0), 8.0, 16)  # inside both ranges (EDM: sigma <= 80)
    t_vp = vp.t_from_log_snr(lam)
    t_edm = edm.t_from_log_snr(lam)
    x_edm, i_edm = ug.sample(GM.model(edm, "x0"), ug.Heun(), schedule=t_edm, noise=Z * t_edm[0])
    z_vp = Z * t_edm[0] * vp.alpha(t_vp[0])  # same VE state y = z/alpha
    x_vp, i_vp = ug.sample(GM.model(vp, "eps"), ug.Heun(clock="sigma"), schedule=t_vp, noise=z_vp)
    torch.testing.assert_close(x_vp / vp.alpha(t_vp[-1]), x_edm, **TOL)
    assert i_edm.nfe == i_vp.nfe == 2 * 15


@pytest.mark.parametrize("solver", DETERMINISTIC, ids=solver_id)
def test_same_trajectory_in_every_parametrization(solver):
    """The same oracle in eps-, x0-, v- and velocity-form gives the same samples."""
    p = ug.VP.linear()
    ref, _ = ug.sample(GM.model(p, "eps"), solver, steps=12, noise=Z)
    for param in ("x0", "v", "velocity", "score", "denoiser"):
        torch.testing.assert_close(ug.sample(GM.model(p, param), solver, steps=12, noise=Z)[0], ref, **TOL, msg=param)


def test_dpm_lambda_is_half_the_log_snr():
    """The one place the conventions meet: Grid.lam_dpm = log(alpha/sigma) = log_snr / 2."""
    p = ug.VP.linear()
    ts = torch.linspace(0.9, 0.1, 5)
    g = ug.solvers.Grid(p, ts, torch.float64, "cpu")
    ref = torch.log(p.alpha(ts) / p.sigma(ts))
    torch.testing.assert_close(torch.tensor(g.lam_dpm), ref, rtol=1e-13, atol=1e-13)
    assert g.h(0) == pytest.approx(float(ref[1] - ref[0]), rel=1e-12)


def test_ddpm_small_variance_is_ddim_eta_one():
    model = GM.model(ug.VP.linear(), "eps")
    a, _ = ug.sample(model, ug.DDPM("small"), steps=20, noise=Z, generator=torch.Generator().manual_seed(1))
    b, _ = ug.sample(model, ug.DDIM(eta=1.0), steps=20, noise=Z, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, **TOL)


def test_adaptive_matches_exact_flow():
    gauss = ug.GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([[0.6, 1.3]]))
    p = ug.VP.linear()
    x, info = ug.sample(gauss.model(p, "eps"), ug.Adaptive("dopri5", rtol=1e-10, atol=1e-10), steps=1, noise=Z)
    exact = gauss.exact_ode_solution(Z, 1.0, ug.schedules.sample_range(p)[1], p)
    torch.testing.assert_close(x, exact, rtol=1e-8, atol=1e-8)
    assert info.nfe > 20  # real count of dopri5 evaluations


@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_warmup_and_order_table(order):
    """DPM-Solver++ multistep at N = 64 on a lambda-uniform grid is within the error scale expected for its order."""
    gauss = ug.GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([[0.6, 1.3]]))
    p = ug.VP.linear()
    exact = gauss.exact_ode_solution(Z, 1.0, 1e-3, p)
    errs = []
    for n in (32, 64):
        x, info = ug.sample(gauss.model(p, "eps"), ug.DPMSolverPP(order, match_reference_3m=False), steps=n, noise=Z)
        assert info.nfe == n
        errs.append(float((x - exact).abs().max()))
    assert math.log2(errs[0] / errs[1]) > order - 0.6


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "subvp"])
@pytest.mark.parametrize("k", [2, 3])
def test_deis_is_dpm_solver_taylor_form(name, k):
    """Two derivations, one algorithm: DEIS integrates the Lagrange interpolant of eps in log(rho)
    exactly (by quadrature); DPM-Solver-kM (noise form, Taylor variant) expands eps in lambda with
    divided differences. Equal to rounding, which independently pins the 3M coefficient 2 psi_3."""
    p = PROCESSES[name]
    model = GM.model(p, "x0")
    z = Z * float(p.sigma(torch.tensor(ug.schedules.sample_range(p)[0])))
    for n in (5, 30):
        a, _ = ug.sample(model, ug.DEIS(k), steps=n, noise=z)
        b, _ = ug.sample(model, ug.DPMSolver(k, solver_type="taylor"), steps=n, noise=z)
        torch.testing.assert_close(a, b, **TOL)
    if k == 3:  # the published coefficient psi_3 (no factor 2) is a different, second-order method
        c, _ = ug.sample(model, ug.DPMSolver(3, solver_type="taylor", match_reference_3m=True), steps=30, noise=z)
        assert (c - b).abs().max() > 1e-8
