import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unigen as ug
from helpers import DDPM_BETAS, NAMES, PROCESSES, grad, interior, processes, unit


def times(p, us):
    return interior(p, torch.tensor(us, dtype=torch.float64))


@given(processes, st.lists(unit, min_size=1, max_size=8))
def test_derivatives_match_autograd(p, us):
    t = times(p, us)
    torch.testing.assert_close(p.d_alpha(t), grad(p.alpha, t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.d_sigma(t), grad(p.sigma, t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.d_log_snr(t), grad(p.log_snr, t), rtol=1e-9, atol=1e-9)


@given(processes, st.lists(unit, min_size=2, max_size=16, unique=True))
def test_log_snr_strictly_decreasing(p, us):
    t = torch.sort(times(p, us)).values
    t = t[torch.cat([torch.tensor([True]), t[1:] > t[:-1]])]
    lam = p.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_decreasing_on_dense_grid(name):
    p = PROCESSES[name]
    t = torch.linspace(p.t_min, p.t_max, 4001)
    lam = p.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()


@given(processes, st.lists(unit, min_size=1, max_size=8))
def test_t_from_log_snr_inverts(p, us):
    t = times(p, us)
    back = p.t_from_log_snr(p.log_snr(t))
    torch.testing.assert_close(back, t, rtol=1e-9, atol=1e-9 * (p.t_max - p.t_min))


@given(processes, st.lists(unit, min_size=1, max_size=8))
def test_sde_coefficients(p, us):
    """f = d log alpha/dt and d sigma^2/dt = 2 f sigma^2 + g^2 (docs/theory.md, section 1)."""
    t = times(p, us)
    torch.testing.assert_close(grad(p.alpha, t), p.drift(t) * p.alpha(t), rtol=1e-10, atol=1e-10)
    dvar = grad(lambda u: p.sigma(u) ** 2, t)
    torch.testing.assert_close(dvar, 2 * p.drift(t) * p.sigma(t) ** 2 + p.diffusion(t) ** 2, rtol=1e-9, atol=1e-9)
    # g^2 = -sigma^2 d lam/dt
    torch.testing.assert_close(p.g2(t), -p.sigma(t) ** 2 * p.d_log_snr(t), rtol=1e-9, atol=1e-9)


def test_closed_form_sde_coefficients_match_table():
    t = torch.linspace(0.05, 0.95, 19)
    vp, sub = ug.VP.linear(0.1, 20.0), ug.SubVP(0.1, 20.0)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(vp.g2(t), beta, rtol=1e-14, atol=0)
    torch.testing.assert_close(sub.g2(t), beta * (1 - torch.exp(-0.2 * t - 19.9 * t**2)), rtol=1e-13, atol=0)
    torch.testing.assert_close(ug.FlowMatching().g2(t), 2 * t / (1 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(ug.Cosine().g2(t), math.pi * torch.tan(math.pi * t / 2), rtol=1e-14, atol=0)
    ve = ug.VE(0.01, 50.0)
    torch.testing.assert_close(ve.g2(t), 2 * ve.sigma(t) ** 2 * math.log(5000), rtol=1e-14, atol=0)


def test_variance_preserving_and_subvp_std():
    t = torch.linspace(0.0, 1.0, 101)
    for p in (ug.VP.linear(), ug.VP.cosine(), ug.VP.discrete(DDPM_BETAS), ug.Cosine()):
        tt = t.clamp(p.t_min, p.t_max)
        torch.testing.assert_close(p.alpha(tt) ** 2 + p.sigma(tt) ** 2, torch.ones_like(tt), rtol=0, atol=1e-14)
    sub = ug.SubVP()
    torch.testing.assert_close(sub.sigma(t), 1 - sub.alpha(t) ** 2, rtol=1e-13, atol=1e-15)


def test_discrete_matches_cumprod_at_grid_points():
    p = ug.VP.discrete(DDPM_BETAS)
    abar = torch.cumprod(1 - DDPM_BETAS, 0)
    n = torch.arange(1000)
    t = p.t_from_timestep(n)
    torch.testing.assert_close(p.alpha(t) ** 2, abar, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(p.timestep(t), n.double(), rtol=0, atol=1e-9)
    assert p.t_min == 0.0 and p.sample_end == pytest.approx(1e-3) and p.t_max == 1.0
    assert float(p.alpha(torch.tensor(0.0))) == 1.0  # the clean point (set_alpha_to_one)
    # known values of the linear 1000-step DDPM table
    assert float(abar[-1]) == pytest.approx(4.04e-5, rel=1e-2)
    lo, hi = float(p.log_snr(torch.tensor(1.0))), float(p.log_snr(torch.tensor(1e-3)))
    assert lo == pytest.approx(-10.12, abs=0.01) and hi == pytest.approx(9.21, abs=0.01)


def test_discrete_interpolates_log_alpha_linearly():
    p = ug.VP.discrete(DDPM_BETAS)
    la = 0.5 * torch.log(torch.cumprod(1 - DDPM_BETAS, 0))
    i = torch.tensor([0, 10, 500, 998])
    frac = torch.tensor([0.3, 0.5, 0.9, 0.25])
    t = (i + 1 + frac) / 1000
    torch.testing.assert_close(torch.log(p.alpha(t)), la[i] + frac * (la[i + 1] - la[i]), rtol=1e-12, atol=1e-14)


def nichol_dhariwal_alpha_bar(t, s=0.008):
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def test_cosine_matches_nichol_dhariwal():
    p = ug.VP.cosine(0.008)
    T = 1000
    n = torch.arange(0, T)  # t = n/T, before the 0.999 clip bites (only the last step)
    ref = torch.tensor([nichol_dhariwal_alpha_bar(k / T) for k in range(T)])
    torch.testing.assert_close(p.alpha(n / T) ** 2, ref, rtol=1e-12, atol=1e-15)
    # their discrete beta table, fed to VP.discrete, agrees with VP.cosine at every grid point
    betas = torch.tensor(
        [min(1 - nichol_dhariwal_alpha_bar((k + 1) / T) / nichol_dhariwal_alpha_bar(k / T), 0.999) for k in range(T)]
    )
    d = ug.VP.discrete(betas)
    t = torch.arange(1, T) / T  # all but the clipped last step
    torch.testing.assert_close(d.alpha(t), p.alpha(t), rtol=1e-10, atol=1e-14)
    assert float(d.alpha(torch.tensor(1.0)) ** 2) == pytest.approx(2.4e-9, rel=0.1)  # alpha_bar at the clipped last step


def test_cosine_with_s0_is_the_cosine_interpolant():
    t = torch.linspace(0.01, 0.99, 50)
    a, b = ug.VP.cosine(0.0), ug.Cosine()
    torch.testing.assert_close(a.alpha(t), b.alpha(t), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(a.sigma(t), b.sigma(t), rtol=1e-14, atol=1e-15)


def test_zero_terminal_snr():
    p = ug.VP.discrete(DDPM_BETAS, rescale_zero_terminal_snr=True)
    plain = ug.VP.discrete(DDPM_BETAS)
    one = torch.tensor(1.0)
    assert float(p.alpha(one)) == 0.0 and float(p.sigma(one)) == 1.0
    assert float(p.log_snr(one)) == -math.inf
    assert float(p.t_from_log_snr(torch.tensor(-math.inf))) == 1.0
    t0 = torch.tensor(1e-3)
    torch.testing.assert_close(p.alpha(t0), plain.alpha(t0), rtol=1e-14, atol=0)  # first step kept
    t = torch.linspace(p.t_min, 1.0, 2001)
    for fn in (p.alpha, p.sigma, p.d_alpha, p.d_sigma, p.log_snr):
        assert not torch.isnan(fn(t)).any()
    assert torch.isfinite(p.alpha(t)).all() and torch.isfinite(p.d_alpha(t)).all()
    lam = p.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    # the last segment is linear in alpha and reaches 0 at t = 1
    a = p.alpha(torch.tensor([0.999, 0.9995, 1.0]))
    torch.testing.assert_close(a[1], 0.5 * a[0], rtol=1e-12, atol=0)


def test_time_change_matches_log_snr_and_scale():
    g = torch.Generator().manual_seed(0)
    for a in NAMES:
        for b in NAMES:
            A, B = PROCESSES[a], PROCESSES[b]
            lo = max(A.log_snr_range[0], B.log_snr_range[0], -12.0)
            hi = min(A.log_snr_range[1], B.log_snr_range[1], 12.0)
            lam = lo + (hi - lo) * (0.05 + 0.9 * torch.rand(7, generator=g))
            tA = A.t_from_log_snr(lam)
            tB, c = ug.time_change(A, B, tA)
            torch.testing.assert_close(B.log_snr(tB), lam, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(c, B.alpha(tB) / A.alpha(tA), rtol=1e-10, atol=0)
            torch.testing.assert_close(c, B.sigma(tB) / A.sigma(tA), rtol=1e-10, atol=0)


def test_vp_to_fm_closed_form():
    vp, fm = ug.VP.linear(), ug.FlowMatching()
    t = torch.linspace(0.01, 1.0, 50)
    t_fm, c = ug.time_change(vp, fm, t)
    a, s = vp.alpha(t), vp.sigma(t)
    torch.testing.assert_close(t_fm, s / (a + s), rtol=1e-13, atol=0)
    torch.testing.assert_close(c, 1 / (a + s), rtol=1e-13, atol=0)


def test_affine_autograd_matches_closed_forms():
    aff = ug.Affine(alpha=lambda t: 1 - t, sigma=lambda t: t)
    fm = ug.FlowMatching()
    t = torch.linspace(0.01, 0.99, 33)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr", "drift", "g2"):
        torch.testing.assert_close(getattr(aff, name)(t), getattr(fm, name)(t), rtol=1e-12, atol=1e-12)
    lam = fm.log_snr(t)
    torch.testing.assert_close(aff.t_from_log_snr(lam), t, rtol=1e-12, atol=1e-12)


def test_marginal_and_prior():
    p = ug.VP.linear()
    x = torch.randn(4, 3)
    eps = torch.randn(4, 3)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4])
    z = p.marginal(x, t, eps)
    torch.testing.assert_close(z, p.alpha(t)[:, None] * x + p.sigma(t)[:, None] * eps)
    z1 = ug.VE().prior_sample((20000, 2), generator=torch.Generator().manual_seed(0))
    assert z1.std().item() == pytest.approx(50.0, rel=0.02)


# ---- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "betas, match",
    [
        (torch.tensor([1e-4, -0.01, 0.02]), "open interval"),
        (torch.tensor([1e-4, 0.01, 1.0]), "open interval"),
        (torch.tensor([0.02, 0.01, 0.03]), "non-decreasing"),
        (torch.ones(3, 2) * 0.01, "1-D"),
        (torch.tensor([0.01, float("nan"), 0.02]), "open interval"),
    ],
)
def test_discrete_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        ug.VP.discrete(betas)


def test_bad_process_parameters():
    with pytest.raises(ValueError, match="sigma_max must exceed sigma_min"):
        ug.VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min must be a positive"):
        ug.VP.linear(beta_min=-1.0)
    with pytest.raises(ValueError, match="s must lie in"):
        ug.VP.cosine(s=-0.1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ug.Affine(alpha=lambda t: 1 - (t - 0.5) ** 2, sigma=lambda t: 0.5 + 0 * t)
    with pytest.raises(TypeError, match="alpha must be callable"):
        ug.Affine(alpha=1.0, sigma=lambda t: t)


def test_time_errors():
    p = ug.VP.linear()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in VPLinear's domain \[0, 1\]"):
        p.marginal(x, 1.5, torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating-point tensor"):
        p.marginal(x, torch.tensor([1, 2]), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"shape \[\] or \[batch\]"):
        p.marginal(x, torch.tensor([0.1, 0.2, 0.3]), torch.randn(2, 3))
    with pytest.raises(ValueError, match="eps must have the shape"):
        p.marginal(x, 0.5, torch.randn(2, 4))
    with pytest.raises(ValueError, match="one per batch item"):
        p.prior_sample((3, 2), generator=[torch.Generator()] * 2)


# ---- the registry: configs, names, examples ------------------------------------------------
import json  # noqa: E402

import unigen.interop  # noqa: E402,F401  (registers ShiftedFlowMatching too)
from unigen import process as P  # noqa: E402

floats = st.floats


def _betas(draw):
    n = draw(st.integers(3, 60))
    lo = draw(floats(1e-5, 0.05))
    hi = draw(floats(lo, 0.5))
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@st.composite
def _vp_linear_args(draw):
    b0 = draw(floats(0.01, 5.0))
    return {"beta_min": b0, "beta_max": draw(floats(b0, 40.0))}


@st.composite
def _sigma_pair(draw):
    lo = draw(floats(1e-4, 1.0))
    return {"sigma_min": lo, "sigma_max": draw(floats(lo * 1.01, 200.0))}


@st.composite
def _edm_args(draw):
    return {**draw(_sigma_pair()), "sigma_data": draw(floats(0.05, 2.0))}


@st.composite
def _discrete_args(draw):
    return {"betas": _betas(draw), "rescale_zero_terminal_snr": draw(st.booleans())}


# constructor settings of every configurable registered class (a new process must add its own)
SETTINGS = {
    "VPLinear": _vp_linear_args(),
    "SubVP": _vp_linear_args(),
    "VPCosine": st.builds(dict, s=floats(0.0, 0.5)),
    "VPDiscrete": _discrete_args(),
    "VE": _sigma_pair(),
    "EDM": _edm_args(),
    "FlowMatching": st.just({}),
    "Cosine": st.just({}),
    "ShiftedFlowMatching": st.builds(dict, shift=floats(0.05, 20.0)),
}
CONFIGURABLE = sorted(n for n, c in P.REGISTRY.items() if c.configurable)


def test_every_configurable_process_has_settings():
    assert sorted(SETTINGS) == CONFIGURABLE


@given(st.sampled_from(CONFIGURABLE).flatmap(lambda n: SETTINGS[n].map(lambda kw: (n, kw))),
       st.lists(unit, min_size=1, max_size=16))
def test_config_round_trip_is_exact(name_kwargs, us):
    name, kwargs = name_kwargs
    p = P.REGISTRY[name](**kwargs)
    cfg = p.to_config()
    assert cfg["class"] == name
    q = P.from_config(json.loads(json.dumps(cfg)))  # through JSON text: plain data only
    assert type(q) is type(p) and repr(q) == repr(p) and q.to_config() == cfg
    assert (q.t_min, q.t_max, q.model_range) == (p.t_min, p.t_max, p.model_range)
    u = torch.tensor(us, dtype=torch.float64)
    t = torch.cat([p.t_min + u * (p.t_max - p.t_min), torch.tensor([p.t_min, p.t_max], dtype=torch.float64)])
    for f in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr", "d_log_snr", "g2"):
        a, b = getattr(p, f)(t), getattr(q, f)(t)
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=1e-15, atol=0.0, equal_nan=True), f
    for dtype in (torch.float32, torch.float64):
        lam = p.log_snr(t[:-2].to(dtype))
        assert torch.equal(p.t_from_log_snr(lam), q.t_from_log_snr(lam))


@pytest.mark.parametrize("label", [n for n in NAMES if PROCESSES[n].configurable])
def test_example_configs_round_trip(label):
    p = PROCESSES[label]
    q = P.from_config(json.loads(json.dumps(p.to_config())))
    t = torch.linspace(p.t_min, p.t_max, 1001, dtype=torch.float64)
    for f in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr"):
        assert torch.equal(getattr(p, f)(t), getattr(q, f)(t)), f


def test_config_contents():
    assert ug.VP.linear(0.2, 10.0).to_config() == {"class": "VPLinear", "beta_min": 0.2, "beta_max": 10.0}
    assert ug.EDM(sigma_data=0.7).to_config() == {"class": "EDM", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.7}
    assert ug.FlowMatching().to_config() == {"class": "FlowMatching"}
    cfg = ug.VP.discrete(DDPM_BETAS, rescale_zero_terminal_snr=True).to_config()
    assert cfg["betas"] == DDPM_BETAS.tolist() and cfg["rescale_zero_terminal_snr"] is True
    assert unigen.interop.ShiftedFlowMatching(3.0).to_config() == {"class": "ShiftedFlowMatching", "shift": 3.0}


def test_from_config_errors():
    with pytest.raises(ValueError, match=r"unknown process class 'Nope'.*registered processes are .*VPLinear"):
        P.from_config({"class": "Nope"})
    with pytest.raises(ValueError, match="unknown process class None"):
        P.from_config({"beta_min": 0.1})
    with pytest.raises(ValueError, match=r"unknown field\(s\) sigma in the config of VE; its fields are sigma_max, sigma_min"):
        P.from_config({"class": "VE", "sigma": 1.0})
    with pytest.raises(ValueError, match=r"config of VPDiscrete lacks the field\(s\) betas"):
        P.from_config({"class": "VPDiscrete"})
    with pytest.raises(ValueError, match="bad config of VE: sigma_min must be a positive"):
        P.from_config({"class": "VE", "sigma_min": -1.0})
    with pytest.raises(ValueError, match="Affine takes Python callables"):
        P.from_config({"class": "Affine"})
    with pytest.raises(TypeError, match="takes the dict"):
        P.from_config("VE")
    with pytest.raises(TypeError, match="Affine takes Python callables"):
        PROCESSES["affine"].to_config()


def test_unregistered_and_unplain_processes_have_no_config():
    class _Local(ug.FlowMatching):  # a leading underscore: not registered
        pass

    assert "_Local" not in P.REGISTRY
    with pytest.raises(TypeError, match="not in unigen.process.REGISTRY"):
        _Local().to_config()

    class _Odd(ug.Process, register=False):
        def __init__(self, fn=print):
            self.fn = fn

    assert "_Odd" not in P.REGISTRY
    P.REGISTRY["_Odd"] = _Odd
    try:
        with pytest.raises(TypeError, match=r"_Odd.fn is a builtin_function_or_method.*override to_config"):
            _Odd().to_config()
    finally:
        del P.REGISTRY["_Odd"]


def test_get_process_and_names():
    assert type(P.get_process("vp")) is P.VPLinear and type(P.get_process("VPLinear")) is P.VPLinear
    assert type(P.get_process("FM")) is ug.FlowMatching and type(P.get_process("subvp")) is ug.SubVP
    assert P.get_process("ve", sigma_max=10.0).sigma_max == 10.0
    p = ug.EDM()
    assert P.get_process(p) is p
    with pytest.raises(ValueError, match=r"unknown process 'vpp'; valid names are .*VPLinear.*fm"):
        P.get_process("vpp")
    with pytest.raises(TypeError, match="VPDiscrete"):
        P.get_process("vp_discrete")  # needs betas
    names = P.process_names()
    assert names["vp"] is P.VPLinear and names["SubVP"] is ug.SubVP and "VP" not in P.REGISTRY
    assert ug.SubVP.aliases == ("subvp",)  # aliases are not inherited


def test_examples_cover_the_registry():
    builtin = [c for c in P.REGISTRY.values() if c.__module__ == "unigen.process"]
    ex = P.process_examples()
    assert list(ex) == list(P.process_examples(builtin))
    assert sorted(ex) == NAMES  # the test suite's processes are exactly these
    assert {type(p) for p in ex.values()} == set(builtin)

    class _NeedsArg(ug.Process):
        def __init__(self, k):
            self.k = k

    with pytest.raises(TypeError, match=r"_NeedsArg\(\) needs k: define the classmethod _NeedsArg.examples\(\)"):
        _NeedsArg.examples()

    class _Sub(ug.VE):  # inherits VE's label
        pass

    with pytest.raises(ValueError, match="the example label 've' is used by VE and _Sub"):
        P.process_examples([ug.VE, _Sub])

    class _Wrong(ug.VE):
        @classmethod
        def examples(cls):
            return {"wrong": ug.VE()}

    with pytest.raises(ValueError, match=r"_Wrong.examples\(\) returned a VE under 'wrong'"):
        P.process_examples([_Wrong])
