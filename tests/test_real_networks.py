"""Users' own float32 networks, not the oracle: valid time ranges through ``Model.to``, the
output contract, non-finite results, dtype rules and conditioning (``model_kwargs``).

The network here is written as a user would (an ``nn.Module`` taking ``(z, t, y=None)``), in
float32, untrained unless a test trains it; every number it returns is finite wherever it is
called inside its time range, so a non-finite sample can only come from the library.
"""

import math

import pytest
import torch
from torch import nn

import unigen as ug
from unigen.bench.metrics import sliced_wasserstein2
from unigen.solvers import REGISTRY

F32 = torch.float32


class UserNet(nn.Module):
    """A small time- and label-conditional MLP, float32; ``t`` of shape [] or [batch]."""

    def __init__(self, dim=2, classes=0, hidden=32, seed=0, expect_batch_time=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.classes, self.expect_batch_time = classes, expect_batch_time
        self.body = nn.Sequential(nn.Linear(dim + 3 + classes, hidden), nn.SiLU(), nn.Linear(hidden, dim)).to(F32)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F32) * 0.3)
        self.times, self.labels = [], []

    def forward(self, z, t, y=None):
        if self.expect_batch_time:
            assert t.shape == (z.shape[0],), f"expected time of shape [batch], got {tuple(t.shape)}"
        self.times.append(t.detach().reshape(-1)[:1].double())
        t = t.expand(z.shape[0]) if t.ndim == 0 else t
        feats = [z, t[:, None], torch.sin(3 * t)[:, None], torch.cos(3 * t)[:, None]]
        if self.classes:
            self.labels.append(y)
            feats.append(nn.functional.one_hot(y, self.classes).to(z.dtype))
        return self.body(torch.cat(feats, 1))


def _processes():
    # a 50-step DDPM table: adaptive solves stop at every knot of a discrete schedule (its
    # kinks), so a 1000-step table costs ~7000 calls per solve (100 steps: ~700, and ~1400 for a
    # log-likelihood; those solves were 80% of this file's time); the library treats all alike.
    # Betas to 0.35 put its last log-SNR at -10.07, where the 1000-step DDPM table's is -10.12.
    betas = torch.linspace(2e-3, 0.35, 50, dtype=torch.float64)
    return {
        "vp_linear": ug.VP.linear(),
        "vp_cosine": ug.VP.cosine(),
        "vp_discrete": ug.VP.discrete(betas),
        "vp_discrete_zsnr": ug.VP.discrete(betas, rescale_zero_terminal_snr=True),
        "ve": ug.VE(),
        "edm": ug.EDM(),
        "fm": ug.FlowMatching(),
        "cosine": ug.Cosine(),
    }


PROCS = _processes()
# what a network of each family is customarily trained to predict, and the time it is fed
PARAM = {"vp_linear": "eps", "vp_cosine": "eps", "vp_discrete": "eps", "vp_discrete_zsnr": "v",
         "ve": "eps", "edm": "denoiser", "fm": "velocity", "cosine": "v"}


def _time_input(name):
    p = PROCS[name]
    if name.startswith("vp_discrete"):
        return lambda t: p.timestep(t) / p.num_timesteps  # the network's index, normalised
    if name == "edm":
        return lambda s: s.log() / 4  # EDM's c_noise
    return None


def user_model(name, **kw):
    return ug.Model(UserNet(**kw), PROCS[name], PARAM[name], time_input=_time_input(name))


DETERMINISTIC = sorted(n for n, cls in REGISTRY.items() if not cls.stochastic)


def _inside(model, times):
    """Every time the network saw lies in the source model's valid range (slack for float32)."""
    lo, hi = model.t_range
    seen = torch.cat(times)
    return bool(((seen >= lo - 1e-5 * max(1, hi)) & (seen <= hi + 1e-5 * max(1, hi))).all())


@pytest.mark.parametrize("src", sorted(PROCS))
def test_every_process_pair_samples_finite_with_every_deterministic_solver(src):
    """model.to(B) of a float32 network, sampled at default settings: finite, and the network
    is only ever called inside its own valid time range."""
    for dst in sorted(PROCS):
        base = user_model(src)
        moved = base.to(PROCS[dst])
        lo, hi = moved.t_range
        assert 0 <= lo < hi and PROCS[dst].t_min <= lo and hi <= PROCS[dst].t_max
        for name in DETERMINISTIC:
            base.fn.times.clear()
            # Adaptive at its default rtol = 1e-5 spends ~170 calls a pair; finiteness needs less. Its
            # default steps (one solve from t_start to t_end) too: 6 intervals, each a solve of its
            # own, cost 1.7x the calls (and it was 35% of this file's time)
            adaptive = name == "Adaptive"
            solver = ug.Adaptive(rtol=1e-3, atol=1e-3) if adaptive else name
            x, info = ug.sample(moved, solver, steps=None if adaptive else 6, shape=(8, 2), dtype=F32,
                                generator=torch.Generator().manual_seed(0))
            assert len(info.times) == (2 if adaptive else 7)
            assert x.dtype == F32 and x.shape == (8, 2)
            assert torch.isfinite(x).all(), f"{src} -> {dst}, {name}"
            # network time is what time_input made of the source time: check via the source model
            assert info.times[0] <= hi + 1e-6 and info.times[:-1].min() >= lo - 1e-6, f"{src} -> {dst}, {name}"
        if _time_input(src) is None:
            assert _inside(base, base.fn.times), f"{src} -> {dst}"


@pytest.mark.parametrize("src", sorted(PROCS))
def test_log_likelihood_with_defaults_is_finite_for_every_pair(src):
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(1), dtype=F32)
    for dst in sorted(PROCS):
        base = user_model(src)
        logp = ug.log_likelihood(base.to(PROCS[dst]), x, rtol=1e-2, atol=1e-2)  # default range and t0/T
        assert logp.shape == (2,) and torch.isfinite(logp).all(), f"{src} -> {dst}"
        if _time_input(src) is None:
            assert _inside(base, base.fn.times), f"{src} -> {dst}"


def test_transferred_range_is_the_source_range_at_equal_log_snr():
    """VP.linear's t = 1 has log-SNR -10.05; flow matching reaches it at t = 1/(1 + e^{lam/2})."""
    vp = ug.VP.linear()
    m = ug.Model(UserNet(), vp, "eps").to(ug.FlowMatching(), "velocity")
    lam1 = float(vp.log_snr(torch.tensor(1.0, dtype=torch.float64)))
    lo, hi = m.t_range
    assert lo == 0.0 and math.isclose(hi, 1 / (1 + math.exp(lam1 / 2)), rel_tol=1e-12)
    # a network trained on a narrower range carries it over too
    narrow = ug.Model(UserNet(), vp, "eps", t_range=(0.01, 0.9)).to(ug.FlowMatching())
    lam = vp.log_snr(torch.tensor([0.9, 0.01], dtype=torch.float64))
    expect = (1 / (1 + torch.exp(lam / 2))).tolist()
    assert narrow.t_range[1] == pytest.approx(expect[0], rel=1e-12)
    assert narrow.t_range[0] == pytest.approx(expect[1], rel=1e-12)
    # the default sampling range starts at the top of the valid range, from the prior there
    x, info = ug.sample(narrow, "Euler", steps=4, shape=(3, 2), dtype=F32)
    assert float(info.times[0]) == pytest.approx(narrow.t_range[1], rel=1e-6)
    assert float(info.times[-1]) == pytest.approx(narrow.t_range[0], rel=1e-6)


def test_same_process_models_keep_their_grids():
    """A model on its own process samples on exactly the grid it always had."""
    for name in ("vp_linear", "vp_discrete", "fm", "edm", "ve"):
        p = PROCS[name]
        ref = ug.make_grid(p, ug.schedules.default_schedule(p), 10)
        _, info = ug.sample(user_model(name), "DDIM", steps=10, shape=(2, 2), dtype=F32)
        torch.testing.assert_close(info.times.double(), ref.to(info.times.dtype).double())


def test_grids_outside_the_valid_range_are_refused_clearly():
    vp = ug.VP.linear()
    fm = ug.Model(UserNet(), vp, "eps").to(ug.FlowMatching(), "velocity")
    hi = fm.t_range[1]
    with pytest.raises(ValueError, match=r"valid time range \[0, 0\.9934.*got \[1\.0\]"):
        ug.sample(fm, "Euler", schedule=torch.linspace(1.0, 0.0, 5), shape=(2, 2))
    with pytest.raises(ValueError, match=r"t_start/t_end must lie in this model's valid time range"):
        ug.sample(fm, "Euler", steps=4, shape=(2, 2), t_start=1.0)
    with pytest.raises(ValueError, match=r"t0/T must lie in this model's valid time range"):
        ug.log_likelihood(fm, torch.randn(2, 2), T=1.0)
    with pytest.raises(ValueError, match="valid time range"):
        ug.optimize_schedule(fm, "Euler", 3, event_shape=(2,), t_start=1.0, max_evals=1)
    with pytest.raises(ValueError, match="valid time range"):
        fm(torch.randn(2, 2), torch.tensor(1.0))
    # a DDPM network is trained on timesteps 0..N-1, i.e. t in [1/N, 1]
    vpd = user_model("vp_discrete")
    assert vpd.t_range == (2e-2, 1.0)
    with pytest.raises(ValueError, match=r"\[0\.02, 1\]"):
        ug.sample(vpd, "DDIM", schedule=torch.tensor([1.0, 0.5, 0.005]), shape=(2, 2))
    # ... but a last step onto its clean point t = 0 (sigma = 0) lands without calling it there
    x, _ = ug.sample(vpd, "DDIM", schedule=torch.tensor([1.0, 0.5, 0.0]), shape=(2, 2))
    assert torch.isfinite(x).all()
    x, _ = ug.sample(fm, "Euler", schedule=torch.tensor([hi, 0.5, 0.0]), shape=(2, 2))
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="t_range must be finite with t_lo < t_hi"):
        ug.Model(UserNet(), vp, "eps", t_range=(0.5, 0.1))
    with pytest.raises(ValueError, match="leaves VPLinear's domain"):
        ug.Model(UserNet(), vp, "eps", t_range=(0.0, 2.0))
    with pytest.raises(TypeError, match="t_range must be a pair"):
        ug.Model(UserNet(), vp, "eps", t_range=0.5)


def test_a_source_singular_at_the_start_is_named():
    """An eps network on VP.cosine is undefined at t = 1 (alpha = 0): moved to flow matching,
    the default start avoids it (the source's own start, 0.9946, at equal log-SNR) and an explicit
    start there names the source model."""
    m = user_model("vp_cosine").to(ug.FlowMatching(), "velocity")
    x, info = ug.sample(m, "Heun", steps=6, shape=(4, 2), dtype=F32)
    assert torch.isfinite(x).all() and float(info.times[0]) < 0.995
    with pytest.raises(ug.SingularConversionError, match=r"reads a eps-model of VPCosine at t=1"):
        ug.sample(m, "Heun", schedule=torch.tensor([1.0, 0.5, 0.0]), shape=(4, 2))


# ---------------------------------------------------------------------------------------
# the output contract
# ---------------------------------------------------------------------------------------
def _vp(fn, **kw):
    return ug.Model(fn, ug.VP.linear(), "eps", **kw)


@pytest.mark.parametrize("bad", [lambda z: z[:, :1], lambda z: z[:1], lambda z: z.sum()])
def test_wrong_output_shapes_are_refused_not_broadcast(bad):
    m = _vp(lambda z, t: bad(z))
    with pytest.raises(ValueError, match=r"for z of shape \(4, 2\); it must return z's shape"):
        ug.sample(m, "DPMSolverPP", steps=4, shape=(4, 2))


def test_outputs_are_unwrapped_or_refused():
    class Output:  # a diffusers ModelOutput carries the tensor in .sample
        def __init__(self, sample):
            self.sample = sample

    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    plain, _ = ug.sample(_vp(lambda z, t: 0.5 * z), "DDIM", steps=4, noise=noise)
    for wrap in (lambda o: (o,), lambda o: [o], Output):
        got, _ = ug.sample(_vp(lambda z, t, w=wrap: w(0.5 * z)), "DDIM", steps=4, noise=noise)
        torch.testing.assert_close(got, plain, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"must return a tensor shaped like z \(4, 2\).*got a tuple of length 2"):
        ug.sample(_vp(lambda z, t: (z, z)), "DDIM", steps=4, noise=noise)
    with pytest.raises(TypeError, match="got dict"):
        ug.sample(_vp(lambda z, t: {"out": z}), "DDIM", steps=4, noise=noise)
    with pytest.raises(TypeError, match="floating tensor"):
        ug.sample(_vp(lambda z, t: z.long()), "DDIM", steps=4, noise=noise)


# ---------------------------------------------------------------------------------------
# non-finite values
# ---------------------------------------------------------------------------------------
def test_non_finite_noise_and_data_are_refused_up_front():
    m = user_model("vp_linear")
    noise = torch.randn(4, 2, dtype=F32)
    noise[1, 0] = float("nan")
    with pytest.raises(ValueError, match="noise contains 1 non-finite values"):
        ug.sample(m, "Euler", steps=4, noise=noise)
    x = torch.randn(4, 2, dtype=F32)
    x[0, 1] = float("inf")
    with pytest.raises(ValueError, match="x contains 1 non-finite values"):
        ug.log_likelihood(m, x)


def test_a_network_that_returns_nan_is_reported_with_its_step():
    def fn(z, t):  # NaN once t drops below 0.5
        return torch.where(t < 0.5, torch.full_like(z, float("nan")), 0.1 * z)

    m = _vp(fn)
    grid = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    with pytest.raises(FloatingPointError, match=r"DDIM produced non-finite values at step 3 of 5 \(t=0\.4 -> 0\.2\)"):
        ug.sample(m, "DDIM", schedule=grid, shape=(3, 2))
    x, _ = ug.sample(m, "DDIM", schedule=grid, shape=(3, 2), check_finite=False)  # the opt-out
    assert torch.isnan(x).all()
    late = _vp(lambda z, t: torch.where(t < 0.7, torch.full_like(z, float("nan")), 0.1 * z))
    with pytest.raises(FloatingPointError, match="final denoising call at t=0.6"):
        ug.sample(late, "DDIM", schedule=torch.tensor([1.0, 0.8, 0.6]), shape=(3, 2), denoise_final=True)


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------
def test_float64_noise_drives_a_float32_network_by_the_documented_cast():
    m = user_model("vp_linear")
    assert m.dtype == F32  # read off the module's parameters
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x64, _ = ug.sample(m, "DPMSolverPP", steps=6, noise=noise)
    x32, _ = ug.sample(m, "DPMSolverPP", steps=6, noise=noise.float())
    assert x64.dtype == torch.float64 and x32.dtype == F32
    torch.testing.assert_close(x64.float(), x32, rtol=1e-4, atol=1e-4)


def test_a_dtype_clash_inside_a_plain_function_is_explained():
    net = UserNet()
    m = ug.Model(lambda z, t: net(z, t), ug.VP.linear(), "eps")  # not a Module: dtype unknown
    assert m.dtype is None
    with pytest.raises(TypeError, match=r"failed on input of dtype torch.float64.*Model\(\.\.\., dtype=torch.float32\)"):
        ug.sample(m, "Euler", steps=3, noise=torch.randn(2, 2, dtype=torch.float64))
    ok = ug.Model(lambda z, t: net(z, t), ug.VP.linear(), "eps", dtype=F32)
    x, _ = ug.sample(ok, "Euler", steps=3, noise=torch.randn(2, 2, dtype=torch.float64))
    assert x.dtype == torch.float64 and torch.isfinite(x).all()
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        ug.Model(net, ug.VP.linear(), "eps", dtype=torch.int64)


# ---------------------------------------------------------------------------------------
# conditioning
# ---------------------------------------------------------------------------------------
def test_model_kwargs_reach_the_network_in_sample_likelihood_and_to():
    net = UserNet(classes=3)
    m = ug.Model(net, ug.VP.linear(), "eps")
    y = torch.tensor([0, 1, 2, 1])
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F32)
    x, info = ug.sample(m, "UniPC", steps=5, noise=noise, model_kwargs={"y": y})
    assert len(net.labels) == info.nfe and all(lab is y for lab in net.labels)
    # conditioning matters: other labels, other samples
    x2, _ = ug.sample(m, "UniPC", steps=5, noise=noise, model_kwargs={"y": torch.zeros_like(y)})
    assert not torch.allclose(x, x2)
    net.labels.clear()
    logp = ug.log_likelihood(m.to(ug.FlowMatching(), "velocity"), noise, model_kwargs={"y": y}, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(logp).all() and net.labels and all(lab is y for lab in net.labels)
    pred = m.to(ug.FlowMatching(), "velocity")(noise, 0.5, y=y)  # direct calls take them as keywords
    assert torch.isfinite(pred.out).all() and net.labels[-1] is y
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        ug.sample(m, "Euler", steps=3, noise=noise, model_kwargs=[y])


def test_classifier_free_guidance_with_one_conditional_network():
    net = UserNet(classes=4)
    m = ug.Model(net, ug.VP.linear(), "eps")
    y, null = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])  # label 3 plays "no label"
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F32)
    cond, _ = ug.sample(m, "DPMSolverPP", steps=6, noise=noise, model_kwargs={"y": y})
    uncond, _ = ug.sample(m, "DPMSolverPP", steps=6, noise=noise, model_kwargs={"y": null})
    g1 = ug.guided(m, scale=1.0, cond_kwargs={"y": y}, uncond_kwargs={"y": null})
    g0 = ug.guided(m, scale=0.0, cond_kwargs={"y": y}, uncond_kwargs={"y": null})
    torch.testing.assert_close(ug.sample(g1, "DPMSolverPP", steps=6, noise=noise)[0], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ug.sample(g0, "DPMSolverPP", steps=6, noise=noise)[0], uncond, rtol=1e-5, atol=1e-5)
    # scale 3: uncond + 3 (cond - uncond) at every call, checked on one direct evaluation
    g3 = ug.guided(m, scale=3.0, cond_kwargs={"y": y}, uncond_kwargs={"y": null})
    z, t = noise, torch.tensor(0.4, dtype=F32)
    e_c, e_u = m(z, t, y=y).eps, m(z, t, y=null).eps
    torch.testing.assert_close(g3(z, t).eps, e_u + 3 * (e_c - e_u))
    # sample-level kwargs reach both branches; branch kwargs override them
    g = ug.guided(m, scale=2.0, uncond_kwargs={"y": null})
    torch.testing.assert_close(g(z, t, y=y).eps, e_u + 2 * (e_c - e_u))
    with pytest.raises(TypeError, match="cond_kwargs must be a dict"):
        ug.guided(m, scale=2.0, cond_kwargs=[y])


def test_batch_time_gives_the_network_one_time_per_item():
    net = UserNet(expect_batch_time=True)
    m = ug.Model(net, ug.VP.linear(), "eps", batch_time=True)
    for solver in ("DDIM", "Heun", "DPMSolverPP", "UniPC"):
        x, _ = ug.sample(m, solver, steps=4, shape=(5, 2), dtype=F32)
        assert torch.isfinite(x).all()
    edm = ug.Model(UserNet(expect_batch_time=True), ug.EDM(), "denoiser", time_input=lambda s: s.log() / 4, batch_time=True)
    assert torch.isfinite(ug.sample(edm, "Heun", steps=4, shape=(5, 2), dtype=F32)[0]).all()
    with pytest.raises(AssertionError, match=r"expected time of shape \[batch\]"):
        ug.sample(ug.Model(UserNet(expect_batch_time=True), ug.VP.linear(), "eps"), "DDIM", steps=2, shape=(5, 2), dtype=F32)


# ---------------------------------------------------------------------------------------
# a trained network
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return ug.train.fit("eight_gaussians", ug.VP.linear(), "eps", steps=300, batch_size=256,
                        generator=torch.Generator().manual_seed(0))


def test_trained_network_ddim_is_euler_on_its_flow_matching_view(trained):
    """The headline equivalence on a real float32 network: DDIM on VP == Euler on the model's
    flow-matching view, at float32 rounding, and both near the data."""
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(2), dtype=F32)
    ts = ug.make_grid(trained.process, "logsnr", 20)
    t_fm, c = ug.time_change(trained.process, ug.FlowMatching(), ts)
    fm = trained.to(ug.FlowMatching(), "velocity")
    x_ddim, _ = ug.sample(trained, "DDIM", schedule=ts, noise=noise)
    x_euler, _ = ug.sample(fm, "Euler", schedule=t_fm, noise=noise * float(c[0]))
    torch.testing.assert_close(x_euler / float(c[-1]), x_ddim, rtol=2e-4, atol=2e-4)
    # defaults on the flow-matching view draw the network's own distribution: as close to its
    # native samples (DDIM, 100 steps) as two native draws are to each other, and near the data
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    x, _ = ug.sample(fm, "Heun", steps=10, shape=(512, 2), dtype=F32, generator=g(3))
    native, _ = ug.sample(trained, "DDIM", steps=100, shape=(512, 2), dtype=F32, generator=g(4))
    native2, _ = ug.sample(trained, "DDIM", steps=100, shape=(512, 2), dtype=F32, generator=g(5))
    assert torch.isfinite(x).all()
    floor = sliced_wasserstein2(native, native2)
    assert sliced_wasserstein2(x, native) < 2 * floor, (sliced_wasserstein2(x, native), floor)
    data = ug.train.eight_gaussians(512, generator=g(6), dtype=F32)
    assert abs(float(x.norm(dim=1).median() - data.norm(dim=1).median())) < 0.2
    logp = ug.log_likelihood(fm, x[:8].detach(), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(logp).all()


def test_default_steps_and_list_grids():
    m = user_model("vp_linear")
    x, info = ug.sample(m, "DDIM", shape=(2, 2), dtype=F32)
    from unigen.sample import DEFAULT_STEPS

    assert info.nfe == DEFAULT_STEPS == 20 and info.times.numel() == 21
    x, info = ug.sample(m, ug.Adaptive(rtol=1e-3, atol=1e-3), shape=(2, 2), dtype=F32)
    assert torch.isfinite(x).all() and info.nfe > 6 and info.times.numel() == 2  # one adaptive solve
    x, info = ug.sample(m, "DDIM", schedule=[1.0, 0.5, 0.001], shape=(2, 2), dtype=F32)
    assert info.nfe == 2 and torch.equal(info.times, torch.tensor([1.0, 0.5, 0.001], dtype=F32))
    with pytest.raises(ValueError, match='schedule="optimized" needs steps='):
        ug.sample(m, "DDIM", schedule="optimized", shape=(2, 2), dtype=F32)


def test_guided_refuses_kwargs_given_twice():
    net = UserNet(classes=3)
    cfg = ug.guided(ug.Model(net, ug.VP.linear(), "eps"), scale=2.0, cond_kwargs={"y": torch.tensor([0, 1])},
                    uncond_kwargs={"y": torch.tensor([2, 2])})
    with pytest.raises(ValueError, match=r"model_kwargs \['y'\] are also set by guided\(\)'s cond_kwargs and uncond_kwargs"):
        ug.sample(cfg, "DDIM", steps=2, shape=(2, 2), dtype=F32, model_kwargs={"y": torch.tensor([1, 1])})


def test_adaptive_solver_on_a_nan_network_names_the_interval():
    def bad(z, t):
        return torch.where(t < 0.5, torch.nan, 0.1) * z
    with pytest.raises(FloatingPointError, match=r"Adaptive\('dopri5'\) could not step from t=1 to 0.001.*NaN/inf"):
        ug.sample(ug.Model(bad, ug.VP.linear(), "eps"), "Adaptive", shape=(2, 2))


def test_a_plain_function_on_float64_noise_is_told_to_declare_its_dtype():
    lin = nn.Linear(2, 2).to(F32)
    m = ug.Model(lambda z, t: lin(z), ug.VP.linear(), "eps")  # not an nn.Module: dtype unknown
    with pytest.raises(TypeError, match=r"Model\(\.\.\., dtype=torch.float32\)"):
        ug.sample(m, "DDIM", steps=2, noise=torch.randn(2, 2, dtype=torch.float64))
