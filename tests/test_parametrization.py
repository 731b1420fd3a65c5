import itertools
import zlib

import pytest
import torch
from hypothesis import given

import unigen as ug
from helpers import PROCESSES, interior, mixture, processes, shapes, unit

PAIRS = list(itertools.product(ug.PARAMETRIZATIONS, repeat=2))


@pytest.mark.parametrize("src, dst", PAIRS)
@given(p=processes, u=unit, shape=shapes)
def test_round_trip_all_36_pairs(src, dst, p, u, shape):
    g = torch.Generator().manual_seed(zlib.crc32(repr((src, dst, shape)).encode()))
    z = torch.randn(shape, generator=g)
    out = torch.randn(shape, generator=g)
    t = interior(p, torch.tensor(u))
    there = ug.convert(out, z, t, p, src, dst)
    back = ug.convert(there, z, t, p, dst, src)
    scale = 1 + out.abs().max() + z.abs().max()
    torch.testing.assert_close(back, out, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "fm", "subvp", "vp_discrete", "cosine", "affine"])
def test_oracle_x0_converted_equals_direct_formula(name):
    """x0 -> every other name equals the oracle's independently computed target."""
    p = PROCESSES[name]
    gm = mixture(dim=3, k=4, diagonal=True)
    z = 2 * torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    t = interior(p, torch.rand(6, generator=torch.Generator().manual_seed(2)))
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    da, ds = p.d_alpha(t)[:, None], p.d_sigma(t)[:, None]
    x0, eps, score = gm.posterior(z, p.alpha(t), p.sigma(t))
    direct = {
        "x0": x0,
        "denoiser": x0,
        "eps": eps,
        "score": score,
        "v": a * eps - s * x0,
        "velocity": da * x0 + ds * eps,
    }
    for dst, ref in direct.items():
        torch.testing.assert_close(ug.convert(x0, z, t, p, "x0", dst), ref, rtol=1e-10, atol=1e-10)
        # and back from every name to x0
        torch.testing.assert_close(ug.convert(ref, z, t, p, dst, "x0"), x0, rtol=1e-9, atol=1e-9)


def test_closed_form_conversions():
    z = torch.randn(5, 2)
    out = torch.randn(5, 2)
    vp = ug.VP.linear()
    t = torch.rand(5) * 0.9 + 0.05
    a, s = vp.alpha(t)[:, None], vp.sigma(t)[:, None]
    # VP, from literal v: x0 = alpha z - sigma v; eps = sigma z + alpha v
    torch.testing.assert_close(ug.convert(out, z, t, vp, "v", "x0"), a * z - s * out)
    torch.testing.assert_close(ug.convert(out, z, t, vp, "v", "eps"), s * z + a * out)
    fm = ug.FlowMatching()
    tt = t[:, None]
    # FM: u = eps - x0, x0 = z - t u, eps = z + (1 - t) u
    torch.testing.assert_close(ug.convert(out, z, t, fm, "velocity", "x0"), z - tt * out)
    torch.testing.assert_close(ug.convert(out, z, t, fm, "velocity", "eps"), z + (1 - tt) * out)
    # FM: literal v = (1-t) eps - t x is not the velocity
    assert not torch.allclose(ug.convert(out, z, t, fm, "velocity", "v"), out)
    # Tweedie: x0 = (z + sigma^2 score)/alpha
    torch.testing.assert_close(ug.convert(out, z, t, vp, "score", "x0"), (z + s**2 * out) / a)


def test_coefficients_table():
    p = ug.VP.linear()
    t = torch.tensor([0.3, 0.7])
    a, s, da, ds = p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t)
    expect = {"x0": (1, 0), "denoiser": (1, 0), "eps": (0, 1), "v": (-s, a), "velocity": (da, ds), "score": (0, -1 / s)}
    for name, (ea, eb) in expect.items():
        ca, cb = ug.coefficients(name, p, t)
        torch.testing.assert_close(ca, ea * torch.ones(2))
        torch.testing.assert_close(cb, eb * torch.ones(2))


def test_prediction_is_lazy_and_cached():
    p = ug.FlowMatching()
    z, out = torch.randn(3, 2), torch.randn(3, 2)
    pred = ug.Prediction(out, z, torch.tensor(0.4), p, "velocity")
    assert "x0" not in pred.__dict__
    x0 = pred.x0
    assert pred.x0 is x0 and "x0" in pred.__dict__
    for name in ug.PARAMETRIZATIONS:
        torch.testing.assert_close(pred.as_(name), ug.convert(out, z, 0.4, p, "velocity", name))


# ---- singular conversions -------------------------------------------------------------
@pytest.mark.parametrize(
    "process, t, src, dst",
    [
        (ug.VP.linear(), 0.0, "x0", "eps"),  # sigma = 0: x0 says nothing about eps
        (ug.FlowMatching(), 0.0, "x0", "velocity"),
        (ug.FlowMatching(), 1.0, "eps", "x0"),  # alpha = 0: eps says nothing about x0
        (ug.FlowMatching(), 1.0, "score", "velocity"),
        (ug.Cosine(), 1.0, "eps", "v"),
    ],
)
def test_singular_conversion_raises(process, t, src, dst):
    z, out = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ug.SingularConversionError, match=f"cannot convert '{src}' to '{dst}'"):
        ug.convert(out, z, t, process, src, dst)


# closed forms at the ends: FM z = (1 - t) x0 + t eps, u = eps - x0; VP.linear alpha(0) = 1, sigma(0) = 0
@pytest.mark.parametrize(
    "process, t, src, dst, expect",
    [
        (ug.FlowMatching(), 1.0, "eps", "score", lambda z, out: -out),  # score = -eps / sigma, sigma = 1
        (ug.FlowMatching(), 1.0, "x0", "eps", lambda z, out: z),  # z = eps at t = 1
        (ug.FlowMatching(), 1.0, "velocity", "x0", lambda z, out: z - out),  # x0 = z - t u
        (ug.FlowMatching(), 0.0, "velocity", "x0", lambda z, out: z),  # z = x0 at t = 0
        (ug.VP.linear(), 0.0, "x0", "denoiser", lambda z, out: out),  # D = x0
        (ug.VP.linear(), 0.0, "v", "x0", lambda z, out: z),  # x0 = alpha z - sigma v
    ],
)
def test_conversions_at_the_ends_equal_their_closed_forms(process, t, src, dst, expect):
    g = torch.Generator().manual_seed(0)
    z, out = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    torch.testing.assert_close(ug.convert(out, z, t, process, src, dst), expect(z, out), rtol=0, atol=1e-14)  # measured 0


def test_conversion_errors():
    p = ug.VP.linear()
    z, out = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="unknown dst 'noise'; valid names are eps, x0, v, score, velocity, denoiser"):
        ug.convert(out, z, 0.5, p, "eps", "noise")
    with pytest.raises(ValueError, match="unknown src"):
        ug.convert(out, z, 0.5, p, "epsilon", "x0")
    with pytest.raises(ValueError, match="out must have the shape of z"):
        ug.convert(torch.randn(2, 4), z, 0.5, p, "eps", "x0")
    with pytest.raises(ValueError, match="domain"):
        ug.convert(out, z, 1.2, p, "eps", "x0")
    with pytest.raises(ValueError, match="is on meta but z is on cpu"):
        ug.convert(out, z, torch.tensor(0.5, device="meta"), p, "eps", "x0")
