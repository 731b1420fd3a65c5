import pytest
import torch

import unigen as ug
from helpers import DDPM_BETAS, NAMES, PROCESSES, mixture

GM = mixture(dim=3, k=4, seed=7, diagonal=True)
SOURCE_PARAMS = ("x0", "eps", "v", "velocity")


def shared_times(A, B, n=6, seed=0):
    """Times of B whose log-SNR lies inside both processes' ranges (clipped to [-12, 12])."""
    lo = max(A.log_snr_range[0], B.log_snr_range[0], -12.0)
    hi = min(A.log_snr_range[1], B.log_snr_range[1], 12.0)
    lam = lo + (hi - lo) * (0.02 + 0.96 * torch.rand(n, generator=torch.Generator().manual_seed(seed)))
    return B.t_from_log_snr(lam)


@pytest.mark.parametrize("a", NAMES)
@pytest.mark.parametrize("b", NAMES)
def test_model_to_is_exact_for_every_process_pair(a, b):
    """The oracle built for A, moved with .to(B, P), equals the oracle built for B in P."""
    A, B = PROCESSES[a], PROCESSES[b]
    t = shared_times(A, B)
    z = 1.5 * torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    for src in SOURCE_PARAMS:
        moved_base = GM.model(A, src)
        for dst in ug.PARAMETRIZATIONS:
            got = moved_base.to(process=B, parametrization=dst)(z, t).out
            ref = GM.model(B, dst)(z, t).out
            scale = 1 + ref.abs().max()
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * scale, msg=f"{src}->{dst}")


def test_to_same_process_is_convert():
    p = ug.VP.linear()
    m = GM.model(p, "eps")
    z, t = torch.randn(5, 3), torch.rand(5) * 0.9 + 0.05
    for dst in ug.PARAMETRIZATIONS:
        torch.testing.assert_close(m.to(parametrization=dst)(z, t).out, ug.convert(m(z, t).out, z, t, p, "eps", dst))


def test_denoiser_model_is_x0():
    """D(z/alpha; sigma/alpha) = x0 for every process (the oracle's denoiser path is VE-only)."""
    z = torch.randn(4, 3)
    for name in ("vp_linear", "fm", "subvp", "edm"):
        p = PROCESSES[name]
        t = shared_times(p, p, n=4)
        torch.testing.assert_close(GM.model(p, "denoiser")(z, t).out, GM.model(p, "x0")(z, t).out, rtol=1e-12, atol=1e-12)


def test_denoiser_receives_ve_inputs():
    seen = {}

    def D(y, s):
        seen["y"], seen["s"] = y, s
        return y

    p = ug.VP.linear()
    z, t = torch.randn(2, 3), torch.tensor(0.5)
    ug.Model(D, p, "denoiser")(z, t)
    torch.testing.assert_close(seen["y"], z / p.alpha(t))
    torch.testing.assert_close(seen["s"], p.sigma(t) / p.alpha(t))


def test_time_input_maps_to_discrete_index():
    p = ug.VP.discrete(DDPM_BETAS)
    seen = {}

    def net(z, n):
        seen["n"] = n
        return torch.zeros_like(z)

    m = ug.Model(net, p, "eps", time_input=p.timestep)
    m(torch.randn(2, 2), p.t_from_timestep(torch.tensor([999, 0])))
    torch.testing.assert_close(seen["n"], torch.tensor([999.0, 0.0]))


def test_guidance_is_parametrization_invariant():
    cond_gm = mixture(dim=3, k=2, seed=11)
    p = ug.VP.linear()
    z, t = torch.randn(5, 3), torch.rand(5) * 0.8 + 0.1
    x0s = []
    for param in ("eps", "x0", "v", "velocity", "score"):
        g = ug.guided(cond_gm.model(p, param), GM.model(p, param), scale=3.0)
        x0s.append(g(z, t).x0)
    for x in x0s[1:]:
        torch.testing.assert_close(x, x0s[0], rtol=1e-10, atol=1e-10)
    # the definition, in x0: uncond + s (cond - uncond)
    xc, xu = cond_gm.model(p, "x0")(z, t).out, GM.model(p, "x0")(z, t).out
    torch.testing.assert_close(x0s[0], xu + 3.0 * (xc - xu), rtol=1e-10, atol=1e-10)
    # scale 1 is the conditional model; mixed parametrizations and processes are aligned first
    g1 = ug.guided(cond_gm.model(ug.FlowMatching(), "velocity"), GM.model(p, "eps"), 1.0)
    torch.testing.assert_close(g1(z, t).x0, xc, rtol=1e-10, atol=1e-10)


# ---- bad input ------------------------------------------------------------------------
def test_model_errors():
    p = ug.VP.linear()
    with pytest.raises(ValueError, match="unknown parametrization 'epsilon'; valid names are eps, x0"):
        ug.Model(lambda z, t: z, p, "epsilon")
    with pytest.raises(TypeError, match="fn must be callable"):
        ug.Model(3, p)
    with pytest.raises(TypeError, match="process must be a unigen Process"):
        ug.Model(lambda z, t: z, "vp")
    m = ug.Model(lambda z, t: z[:, :1], p)
    with pytest.raises(ValueError, match=r"the network returned shape \(2, 1\)"):
        m(torch.randn(2, 3), 0.5)
    good = GM.model(p, "eps")
    with pytest.raises(ValueError, match="domain"):
        good(torch.randn(2, 3), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"shape \[\] or \[batch\]"):
        good(torch.randn(2, 3), torch.rand(3))
    with pytest.raises(TypeError, match="floating-point tensor"):
        good(torch.randn(2, 3), torch.tensor(1))
    with pytest.raises(ValueError, match="is on meta"):
        good(torch.randn(2, 3), torch.tensor(0.5, device="meta"))
    with pytest.raises(TypeError, match="cond must be a unigen Model"):
        ug.guided(lambda z, t: z, good, 2.0)


def test_to_outside_source_log_snr_range_raises():
    ve = ug.VE()  # lam in [-7.8, 9.2]; VP at t=1 has lam = -10.05
    m = GM.model(ve, "x0").to(process=ug.VP.linear())
    with pytest.raises(ValueError, match=r"valid time range \[0.000916.*got \[1.0\]"):
        m(torch.randn(2, 3), 1.0)
    assert torch.isfinite(m(torch.randn(2, 3), 0.5).out).all()


def test_zero_terminal_snr_model_to_is_finite():
    p = ug.VP.discrete(DDPM_BETAS, rescale_zero_terminal_snr=True)
    m = GM.model(p, "v")
    z = torch.randn(3, 3)
    for param in ("x0", "v", "eps"):
        assert torch.isfinite(m.to(parametrization=param)(z, 1.0).out).all()
    fm = m.to(process=ug.FlowMatching(), parametrization="velocity")
    assert torch.isfinite(fm(z, 1.0).out).all()
    torch.testing.assert_close(fm(z, 1.0).x0, GM.mean.expand(3, 3), rtol=1e-12, atol=1e-12)
