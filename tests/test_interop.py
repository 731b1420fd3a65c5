"""unigen.interop: diffusers configs / networks and k-diffusion denoisers.

The config and adapter tests need neither peer; tests that call ``require`` compare against real
diffusers schedulers (and k-diffusion's own Euler): they skip only where the peer is not installed
at all, and fail where it is installed but does not import.
"""

import importlib.util
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import unigen as ug
from helpers import peer_installed, require
from unigen.interop import (
    ShiftedFlowMatching,
    diffusers_betas,
    diffusers_grid,
    diffusers_model,
    from_diffusers,
    from_kdiffusion_denoiser,
    to_kdiffusion_denoiser,
)

F64 = torch.float64


def _mixture(d=3, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=F64)
    stds = 0.2 + torch.rand(k, generator=g, dtype=F64)
    return ug.GaussianMixture(means, stds, weights=torch.rand(k, generator=g, dtype=F64) + 0.1)


# ---------------------------------------------------------------------------------------
# import hygiene
# ---------------------------------------------------------------------------------------
def test_import_does_not_load_peers():
    code = (
        "import sys, unigen, unigen.interop, unigen.interop.diffusers, unigen.interop.kdiffusion, unigen.stepwise\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('diffusers', 'k_diffusion', 'transformers')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# diffusers configs (plain dicts: no diffusers needed)
# ---------------------------------------------------------------------------------------
def _reference_betas(schedule, n, b0, b1):
    if schedule == "linear":
        return torch.tensor([b0 + (b1 - b0) * i / (n - 1) for i in range(n)], dtype=F64)
    if schedule == "scaled_linear":
        r0, r1 = math.sqrt(b0), math.sqrt(b1)
        return torch.tensor([(r0 + (r1 - r0) * i / (n - 1)) ** 2 for i in range(n)], dtype=F64)
    if schedule == "sigmoid":
        return torch.tensor([b0 + (b1 - b0) / (1 + math.exp(-(-6 + 12 * i / (n - 1)))) for i in range(n)], dtype=F64)
    ab = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
    return torch.tensor([min(1 - ab[i + 1] / ab[i], 0.999) for i in range(n)], dtype=F64)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
@pytest.mark.parametrize("n", [1000, 50])
def test_betas_and_alphas_cumprod(schedule, n):
    cfg = {"num_train_timesteps": n, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": schedule}
    betas = diffusers_betas(cfg)
    ref = _reference_betas(schedule, n, 0.00085, 0.012)
    torch.testing.assert_close(betas, ref, rtol=1e-12, atol=1e-15)
    spec = from_diffusers(cfg)
    proc = spec.process
    assert isinstance(proc, ug.process.VPDiscrete) and proc.num_timesteps == n == spec.num_train_timesteps
    idx = torch.arange(n)
    ac = proc.alpha(proc.t_from_timestep(idx)) ** 2
    torch.testing.assert_close(ac, torch.cumprod(1 - ref, 0), rtol=1e-12, atol=1e-15)
    # and the inverse: the network's timestep of t_n is n
    torch.testing.assert_close(proc.timestep(proc.t_from_timestep(idx)), idx.to(F64), rtol=0, atol=1e-9)


def test_cosine_clip_bites_only_at_the_end():
    betas = diffusers_betas({"beta_schedule": "squaredcos_cap_v2"})
    assert float(betas[-1]) == 0.999 and float(betas[-2]) < 0.999


def test_trained_betas():
    betas = torch.linspace(1e-4, 0.03, 20, dtype=F64) ** 1.5
    spec = from_diffusers({"trained_betas": betas.tolist(), "num_train_timesteps": 20, "beta_schedule": "nonsense"})
    torch.testing.assert_close(spec.process.betas, betas, rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained_betas has 20 entries"):
        from_diffusers({"trained_betas": betas.tolist(), "num_train_timesteps": 30})


@pytest.mark.parametrize("pred, name", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_types(pred, name):
    assert from_diffusers({"prediction_type": pred}).parametrization == name


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacing(spacing):
    spec = from_diffusers({"timestep_spacing": spacing, "_class_name": "DDIMScheduler"})
    assert spec.schedule == spacing
    ts = ug.make_grid(spec.process, spec.schedule, 10)
    assert ts.numel() == 11 and float(ts[-1]) == 0.0


def test_defaults_are_diffusers_defaults():
    proc, param, schedule, n = from_diffusers({})
    assert (param, schedule, n) == ("eps", "leading", 1000)
    torch.testing.assert_close(proc.betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    assert from_diffusers({"use_karras_sigmas": True}).schedule == "karras"


def test_zero_snr_rescale():
    plain = from_diffusers({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}).process
    spec = from_diffusers(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True,
         "timestep_spacing": "trailing", "prediction_type": "v_prediction"}
    )
    proc = spec.process
    assert proc.rescale_zero_terminal_snr and spec.parametrization == "v" and spec.schedule == "trailing"
    assert float(proc.alpha(torch.tensor(1.0, dtype=F64))) == 0.0
    t0 = proc.t_from_timestep(0)
    torch.testing.assert_close(proc.alpha(t0), plain.alpha(t0), rtol=1e-14, atol=0)
    # diffusers' rescale_zero_terminal_snr, written out: shift then scale sqrt(alpha_bar)
    sab = torch.cumprod(1 - plain.betas, 0).sqrt()
    ref = ((sab - sab[-1]) * sab[0] / (sab[0] - sab[-1])) ** 2
    torch.testing.assert_close(proc.alpha(proc.t_from_timestep(torch.arange(1000))) ** 2, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"beta_schedule": "cubic"}, ["beta_schedule", "linear", "scaled_linear", "squaredcos_cap_v2"]),
        ({"prediction_type": "flow"}, ["prediction_type", "epsilon", "sample", "v_prediction"]),
        ({"timestep_spacing": "karras"}, ["timestep_spacing", "leading", "trailing", "linspace"]),
        ({"_class_name": "ScoreSdeVeScheduler"}, ["not supported", "FlowMatch"]),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, ["shift=exp(mu)"]),
    ],
)
def test_errors_list_valid_names(cfg, words):
    with pytest.raises(ValueError) as err:
        from_diffusers(cfg)
    for w in words:
        assert w in str(err.value)


def test_rejects_non_config():
    with pytest.raises(TypeError, match="scheduler"):
        from_diffusers(42)


# ---------------------------------------------------------------------------------------
# flow matching and its shift
# ---------------------------------------------------------------------------------------
def test_flowmatch_config():
    spec = from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0})
    assert type(spec.process) is ug.FlowMatching and spec.parametrization == "velocity" and spec.schedule == "uniform"
    spec = from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert isinstance(spec.process, ShiftedFlowMatching) and spec.process.shift == 3.0
    dyn = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
    assert from_diffusers(dyn, shift=1.5).process.shift == 1.5


@pytest.mark.parametrize("s", [0.5, 3.0, 7.5])
def test_shifted_flowmatching_is_a_log_snr_shift(s):
    proc, fm = ShiftedFlowMatching(s), ug.FlowMatching()
    t = torch.linspace(1e-4, 1 - 1e-4, 401, dtype=F64)
    torch.testing.assert_close(proc.log_snr(t), fm.log_snr(t) - 2 * math.log(s), rtol=0, atol=1e-12)
    torch.testing.assert_close(proc.sigma(t), s * t / (1 + (s - 1) * t), rtol=1e-14, atol=0)
    torch.testing.assert_close(proc.alpha(t) + proc.sigma(t), torch.ones_like(t), rtol=0, atol=1e-15)
    # the generic log-SNR from alpha, sigma, the closed-form inverse, and the derivatives
    torch.testing.assert_close(ug.Process.log_snr(proc, t), proc.log_snr(t), rtol=0, atol=1e-11)
    torch.testing.assert_close(proc.t_from_log_snr(proc.log_snr(t)), t, rtol=0, atol=1e-13)
    tt = t.clone().requires_grad_(True)
    (da,) = torch.autograd.grad(proc.alpha(tt).sum(), tt)
    (ds,) = torch.autograd.grad(proc.sigma(tt).sum(), tt)
    torch.testing.assert_close(proc.d_alpha(t), da, rtol=1e-13, atol=0)
    torch.testing.assert_close(proc.d_sigma(t), ds, rtol=1e-13, atol=0)
    torch.testing.assert_close(proc.drift(t), ug.Process.drift(proc, t), rtol=1e-12, atol=0)
    # equal log-SNR time in plain FM is diffusers' shifted sigma
    t_fm, scale = ug.time_change(proc, fm, t)
    torch.testing.assert_close(t_fm, proc.sigma(t), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(scale, torch.ones_like(t), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="shift"):
        ShiftedFlowMatching(0.0)


# ---------------------------------------------------------------------------------------
# diffusers networks (a fake with the same call signature)
# ---------------------------------------------------------------------------------------
class _Out:
    def __init__(self, sample):
        self.sample = sample


class _FakeUNet:
    """unet(z, timestep).sample; records the timesteps it was fed."""

    def __init__(self, fn):
        self.fn, self.seen = fn, []

    def __call__(self, z, timestep, **kw):
        self.seen.append((torch.as_tensor(timestep).clone(), kw))
        return _Out(self.fn(z, torch.as_tensor(timestep)))


def test_diffusers_model_vp_discrete_timestep():
    proc = from_diffusers({}).process
    unet = _FakeUNet(lambda z, ts: z * 0.5 + ts.reshape(-1, 1) * 1e-3)
    m = diffusers_model(unet, proc, "eps", encoder_hidden_states="c")
    z = torch.randn(4, 3, dtype=F64)
    n = torch.tensor([0.0, 10.0, 500.0, 999.0], dtype=F64)
    t = proc.t_from_timestep(n)
    out = m(z, t).out
    fed, kw = unet.seen[-1]
    torch.testing.assert_close(fed, n, rtol=0, atol=1e-9)
    assert kw == {"encoder_hidden_states": "c"}
    torch.testing.assert_close(out, z * 0.5 + n.reshape(-1, 1) * 1e-3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [1.0, 3.0])
def test_diffusers_model_flowmatch(s):
    gm = _mixture()
    fm = ug.FlowMatching()
    oracle = gm.model(fm, "velocity")
    unet = _FakeUNet(lambda z, ts: oracle.predict(z, ts / 1000.0).out)  # diffusers: t = sigma * 1000
    spec = from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": s})
    m = diffusers_model(unet, spec.process, spec.parametrization)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64) * 0.98 + 0.01
    pred = m(z, t)
    sig = spec.process.sigma(t)
    torch.testing.assert_close(unet.seen[-1][0], sig * 1000, rtol=1e-13, atol=0)
    u = oracle.predict(z, sig).out  # noise - x at FM time sigma
    torch.testing.assert_close(pred.x0, z - sig[:, None] * u, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(pred.velocity, spec.process.d_sigma(t)[:, None] * u, rtol=1e-11, atol=1e-12)
    # and the oracle's own x0 for the shifted process
    torch.testing.assert_close(pred.x0, gm.model(spec.process, "x0").predict(z, t).out, rtol=1e-10, atol=1e-11)


def test_diffusers_flowmatch_euler_equals_ddim():
    """diffusers' FlowMatchEuler step x += (sigma_next - sigma) out is DDIM on the shifted process."""
    gm, s, steps = _mixture(seed=3), 3.0, 12
    oracle = gm.model(ug.FlowMatching(), "velocity")
    unet = _FakeUNet(lambda z, ts: oracle.predict(z, ts / 1000.0).out)
    proc = ShiftedFlowMatching(s)
    m = diffusers_model(unet, proc, "velocity")
    ts = torch.cat([torch.linspace(1.0, 1.0 / 1000, steps, dtype=F64), torch.zeros(1, dtype=F64)])
    sigmas = s * ts / (1 + (s - 1) * ts)  # diffusers' shifted sigmas, 0 appended
    noise = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = noise.clone()
    for i in range(steps):
        x = x + (sigmas[i + 1] - sigmas[i]) * unet(x, sigmas[i] * 1000).sample
    z, info = ug.sample(m, ug.DDIM(), schedule=ts, noise=noise)
    assert info.nfe == steps
    torch.testing.assert_close(z, x, rtol=0, atol=1e-10)


def test_diffusers_model_needs_time_input_elsewhere():
    with pytest.raises(ValueError, match="time_input"):
        diffusers_model(_FakeUNet(lambda z, t: z), ug.VP.linear())
    m = diffusers_model(_FakeUNet(lambda z, t: z * t.reshape(-1, 1)), ug.VP.linear(), time_input=lambda t: 2 * t)
    z = torch.ones(2, 3, dtype=F64)
    torch.testing.assert_close(m(z, torch.tensor([0.25, 0.5], dtype=F64)).out, z * torch.tensor([[0.5], [1.0]], dtype=F64))


# ---------------------------------------------------------------------------------------
# k-diffusion denoisers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("proc", [ug.VP.linear(), ug.VP.discrete(torch.linspace(1e-4, 0.02, 1000, dtype=F64)),
                                  ug.FlowMatching(), ug.VE()], ids=["vp", "ddpm", "fm", "ve"])
@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_to_kdiffusion_denoiser_is_the_ve_denoiser(proc, param):
    gm = _mixture()
    D = to_kdiffusion_denoiser(gm.model(proc, param))
    g = torch.Generator().manual_seed(4)
    t = proc.t_min + (proc.t_max - proc.t_min) * (0.02 + 0.96 * torch.rand(6, generator=g, dtype=F64))
    s = proc.ve_sigma(t)
    y = torch.randn(6, 3, generator=g, dtype=F64) * (1 + s[:, None])
    ref = gm.posterior(y, torch.ones_like(s), s)[0]
    torch.testing.assert_close(D(y, s), ref, rtol=0, atol=1e-12)
    assert D.sigma_min < D.sigma_max


@pytest.mark.parametrize("proc", [ug.VP.linear(), ug.EDM(), ug.FlowMatching()], ids=["vp", "edm", "fm"])
@pytest.mark.parametrize("param", ["eps", "velocity", "denoiser"])
def test_kdiffusion_round_trip(proc, param):
    gm = _mixture(seed=5)
    m = gm.model(proc, param)
    back = from_kdiffusion_denoiser(to_kdiffusion_denoiser(m), process=proc)
    assert back.parametrization == "denoiser" and back.process is proc
    g = torch.Generator().manual_seed(6)
    t = proc.t_min + (proc.t_max - proc.t_min) * (0.02 + 0.96 * torch.rand(8, generator=g, dtype=F64))
    z = torch.randn(8, 3, generator=g, dtype=F64) * (1 + proc.sigma(t)[:, None])
    torch.testing.assert_close(back(z, t).x0, m(z, t).x0, rtol=0, atol=1e-10)
    # a scalar t reaches the k-diffusion denoiser as a per-batch sigma
    torch.testing.assert_close(back(z, t[0]).x0, m(z, t[0]).x0, rtol=0, atol=1e-10)


def test_from_kdiffusion_default_process():
    D = lambda x, sigma: x / (1 + sigma[:, None] ** 2)
    D.sigma_min, D.sigma_max = 0.03, 14.6
    m = from_kdiffusion_denoiser(D)
    assert isinstance(m.process, ug.EDM) and (m.process.sigma_min, m.process.sigma_max) == (0.03, 14.6)


def _kdiffusion_euler(D, x, sigmas):
    """k-diffusion's sample_euler (no churn), written out: x += (s_next - s) (x - D(x, s)) / s."""
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        d = (x - D(x, sigmas[i] * ones)) / sigmas[i]
        x = x + (sigmas[i + 1] - sigmas[i]) * d
    return x


@pytest.mark.parametrize("proc", [ug.VP.linear(), ug.FlowMatching()], ids=["vp", "fm"])
def test_kdiffusion_euler_equals_unigen_euler_sigma_clock(proc):
    gm = _mixture(seed=7)
    m = gm.model(proc, "eps")
    D = to_kdiffusion_denoiser(m)
    ts = torch.cat([ug.make_grid(proc, "logsnr", 10, t_start=0.98, t_end=1e-3), torch.zeros(1, dtype=F64)])
    sigmas = proc.ve_sigma(ts)
    assert float(sigmas[-1]) == 0.0
    z_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(8), dtype=F64) * proc.sigma(ts[0])
    x = _kdiffusion_euler(D, z_T / proc.alpha(ts[0]), sigmas)
    z, _ = ug.sample(m, ug.Euler(clock="sigma"), schedule=ts, noise=z_T)
    torch.testing.assert_close(z, x * proc.alpha(ts[-1]), rtol=0, atol=1e-10)


def _load_kdiffusion_sampling():
    if not peer_installed("k_diffusion"):
        require("k_diffusion")  # skips (or fails under UNIGEN_REQUIRE_PEERS=1)
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None and spec.submodule_search_locations, "k-diffusion is installed but not importable"
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    for dep in ("scipy", "torchdiffeq", "torchsde", "tqdm"):
        require(dep)
    name = "_unigen_test_kdiffusion"
    pkg, utils = types.ModuleType(name), types.ModuleType(name + ".utils")
    pkg.__path__ = [str(path.parent)]
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules[name], sys.modules[name + ".utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location(name + ".sampling", path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mspec.name] = module
    mspec.loader.exec_module(module)
    return module


def test_real_kdiffusion_euler_on_adapter():
    K = _load_kdiffusion_sampling()
    proc = ug.VP.discrete(torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    m = _mixture(seed=9).model(proc, "eps")
    D = to_kdiffusion_denoiser(m)
    ts = torch.cat([ug.make_grid(proc, "karras", 12), torch.zeros(1, dtype=F64)])
    ts = torch.unique_consecutive(ts)
    sigmas = proc.ve_sigma(ts)
    z_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(10), dtype=F64) * proc.sigma(ts[0])
    x = K.sample_euler(D, z_T / proc.alpha(ts[0]), sigmas, disable=True)
    z, _ = ug.sample(m, ug.Euler(clock="sigma"), schedule=ts, noise=z_T)
    torch.testing.assert_close(z, x, rtol=0, atol=1e-10)
    back = from_kdiffusion_denoiser(D, process=ug.EDM(D.sigma_min, D.sigma_max))
    x2 = K.sample_heun(D, z_T / proc.alpha(ts[0]), sigmas, disable=True)
    y2, _ = ug.sample(back, ug.Heun(clock="sigma"), schedule=sigmas, noise=z_T / proc.alpha(ts[0]))
    torch.testing.assert_close(y2, x2, rtol=0, atol=1e-10)


# ---- any unigen solver as a k-diffusion sampler function ---------------------------------------
@pytest.mark.parametrize("name, solver", [
    ("sample_euler", ug.Euler(clock="sigma")),
    ("sample_heun", ug.Heun(clock="sigma")),
    ("sample_dpmpp_2m", ug.DPMSolverPP(2, lower_order_final=False)),
])
def test_kdiffusion_sampler_is_kdiffusions_own_sampler(name, solver):
    """Called exactly as k-diffusion's function (model, x, sigmas, extra_args, callback, disable), the
    unigen solver reproduces k-diffusion's sampler on its Karras sigmas ending at 0, and passes the
    same callback dicts (x at the step's start, denoised there)."""
    K = _load_kdiffusion_sampling()
    from unigen.interop import kdiffusion_sampler

    gm = _mixture(seed=11)
    net = gm.model(ug.EDM(), "denoiser")
    D = lambda x, sigma, scale=1.0: scale * to_kdiffusion_denoiser(net)(x, sigma)  # noqa: E731 - with an extra arg
    sigmas = K.get_sigmas_karras(10, 0.002, 80.0, device="cpu").to(F64)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(12), dtype=F64) * sigmas[0]
    ours, theirs = [], []
    got = kdiffusion_sampler(solver)(D, x, sigmas, extra_args={"scale": 1.0}, callback=ours.append, disable=True)
    ref = getattr(K, name)(D, x, sigmas, extra_args={"scale": 1.0}, callback=theirs.append, disable=True)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert len(ours) == len(theirs) == 10 and all(set(a) == {"x", "i", "sigma", "sigma_hat", "denoised"} for a in ours)
    for a, b in zip(ours, theirs):
        assert a["i"] == b["i"] and float(a["sigma"]) == float(b["sigma"])
        torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=1e-12)
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=0, atol=1e-12)


def test_kdiffusion_sampler_runs_every_registered_solver_and_refuses_bad_sigmas():
    from unigen.interop import kdiffusion_sampler

    D = to_kdiffusion_denoiser(_mixture(seed=13).model(ug.EDM(), "denoiser"))
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.2, 0.0], dtype=F64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(14), dtype=F64) * 20.0
    for s in ("DPMSolverPP", "UniPC", "DEIS", "DDIM", "DDPM", ug.EDMStochastic(churn=5.0), "SDEDPMSolverPP"):
        calls = []
        assert torch.isfinite(kdiffusion_sampler(s)(D, x, sigmas, callback=calls.append, disable=True)).all(), s
        assert len(calls) == 4 and all(c["denoised"] is not None for c in calls), s  # UniPC: reused corrector calls
        assert all(float(c["sigma_hat"]) >= float(c["sigma"]) for c in calls), s
    fn = kdiffusion_sampler("Euler")
    with pytest.raises(ValueError, match="strictly decreasing"):
        fn(D, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="only the last of the sigmas may be 0"):
        fn(D, x, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        fn(D, x, torch.tensor([float("nan"), 0.0]))
    with pytest.raises(TypeError, match="denoiser model"):
        fn(None, x, sigmas)
    with pytest.raises(ValueError, match="unknown solver"):
        kdiffusion_sampler("NoSuchSolver")


# ---------------------------------------------------------------------------------------
# real diffusers objects (only where diffusers is installed)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls_name, cfg",
    [
        ("DDPMScheduler", {}),
        ("DDIMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
        ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}),
        ("DDPMScheduler", {"beta_schedule": "sigmoid", "prediction_type": "sample"}),
        ("DDIMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                           "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
        ("EulerDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    ],
)
def test_real_diffusers_alphas_cumprod(cls_name, cfg):
    diffusers = require("diffusers")
    sched = getattr(diffusers, cls_name)(**cfg)
    spec = from_diffusers(sched)
    via_dict = from_diffusers(dict(sched.config, _class_name=cls_name))  # the scheduler_config.json route
    assert via_dict[1:] == spec[1:]
    torch.testing.assert_close(via_dict.process.alphas_cumprod, spec.process.alphas_cumprod, rtol=0, atol=0)
    proc = spec.process
    assert spec.parametrization == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[sched.config.prediction_type]
    assert spec.schedule == sched.config.timestep_spacing
    ac = proc.alpha(proc.t_from_timestep(torch.arange(sched.config.num_train_timesteps))) ** 2
    ref = sched.alphas_cumprod.to(F64)  # diffusers builds its table in float32
    torch.testing.assert_close(ac, ref, rtol=2e-5, atol=1e-6)
    if cls_name == "DDIMScheduler" and not cfg.get("rescale_betas_zero_snr"):
        for spacing in ("leading", "trailing", "linspace"):
            s = diffusers.DDIMScheduler(**dict(cfg, timestep_spacing=spacing))
            s.set_timesteps(10)
            grid = ug.make_grid(proc, spacing, 10)
            torch.testing.assert_close(proc.timestep(grid[:-1]), s.timesteps.to(F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("s", [1.0, 3.0])
def test_real_diffusers_flowmatch_sigmas(s):
    diffusers = require("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=s)
    spec = from_diffusers(sched)
    assert spec.parametrization == "velocity" and spec.num_train_timesteps == 1000
    t = torch.arange(1000, 0, -1, dtype=F64) / 1000  # diffusers' unshifted training sigmas
    torch.testing.assert_close(spec.process.sigma(t), sched.sigmas.to(F64), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(spec.process.sigma(t) * 1000, sched.timesteps.to(F64), rtol=1e-6, atol=1e-4)


def test_real_diffusers_tiny_unet():
    diffusers = require("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).double().eval()
    sched = diffusers.DDIMScheduler(clip_sample=False)  # diffusers' DDIM clips x0 to [-1, 1] by default
    proc, param, _, _ = from_diffusers(sched)
    m = diffusers_model(unet, proc, param)
    z = torch.randn(2, 2, 8, 8, dtype=F64)
    n = torch.tensor([17, 640])
    with torch.no_grad():
        got = m(z, proc.t_from_timestep(n)).out
        ref = unet(z, n).sample
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # diffusers' DDIM loop equals unigen's DDIM on the same grid
    sched.set_timesteps(5)
    with torch.no_grad():
        x = z.clone()
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x).prev_sample
        ts = torch.cat([proc.t_from_timestep(sched.timesteps.to(F64)), torch.zeros(1, dtype=F64)])
        y, _ = ug.sample(m, ug.DDIM(), schedule=ts, noise=z)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


def _ddim_pair(cfg, steps=8):
    """A real DDIMScheduler whose alpha-bar table is recomputed in float64 from its own betas
    (diffusers keeps it in float32), its from_diffusers spec and the exact model on it."""
    diffusers = require("diffusers")
    sched = diffusers.DDIMScheduler(clip_sample=False, **cfg)
    sched.alphas_cumprod = torch.cumprod(1.0 - sched.betas.to(F64), 0)
    if cfg.get("rescale_betas_zero_snr"):
        sched.alphas_cumprod[-1] = 0.0  # diffusers' rescale makes the last alpha-bar (numerically) zero
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64) if sched.config.set_alpha_to_one else sched.alphas_cumprod[0]
    sched.set_timesteps(steps)
    spec = from_diffusers(sched)
    return sched, spec, _mixture(d=3, seed=5).model(spec.process, spec.parametrization)


@pytest.mark.parametrize(
    "cfg",
    [
        {},  # linear betas, epsilon, leading
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
        {"trained_betas": [float(b) for b in torch.linspace(2e-4, 0.03, 500)], "num_train_timesteps": 500,
         "prediction_type": "sample", "timestep_spacing": "trailing"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True,
         "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"set_alpha_to_one": False, "steps_offset": 1},
        {"set_alpha_to_one": False},
    ],
    ids=["linear-eps", "scaled_linear-trailing", "cosine-v", "trained-x0", "zero_snr-v", "no_alpha_one-offset",
         "no_alpha_one"],
)
def test_real_diffusers_ddim_loop_equals_unigen_ddim_on_from_diffusers(cfg):
    """from_diffusers round trip: diffusers' own DDIMScheduler loop and unigen's DDIM on the
    returned process and parametrization, same exact model, timesteps and noise, agree to 1e-6
    (float64). The grid is the spec's schedule name where diffusers' grid has one
    (``steps_offset`` and ``set_alpha_to_one=False`` have none: a tensor of times instead)."""
    sched, spec, model = _ddim_pair(cfg, steps=10)  # 10 divides N: diffusers' DDIM steps by N // steps
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = noise.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            out = model.predict(x, spec.process.t_from_timestep(k.to(F64))).out
            x = sched.step(out, k, x).prev_sample
    end = 0.0 if sched.config.set_alpha_to_one else float(spec.process.t_from_timestep(torch.tensor(0.0, dtype=F64)))
    grid = torch.cat([spec.process.t_from_timestep(sched.timesteps.to(F64)), torch.tensor([end], dtype=F64)])
    if grid[-2] != grid[-1]:  # else diffusers' last step is zero-length and diffusers_grid drops it
        torch.testing.assert_close(diffusers_grid(sched, 10), grid, rtol=0, atol=1e-12)
    if sched.config.set_alpha_to_one and not sched.config.steps_offset:
        torch.testing.assert_close(ug.make_grid(spec.process, spec.schedule, 10), grid, rtol=0, atol=1e-12)
    y, info = ug.sample(model, ug.DDIM(), schedule=diffusers_grid(sched, 10), noise=noise)
    assert info.nfe == (10 if grid[-2] != grid[-1] else 9)
    assert float((y - x).abs().max() / x.abs().max()) <= 1e-6


def test_real_diffusers_ddim_linspace_steps_to_t_minus_n_over_steps():
    """Pinned peer quirk: with timestep_spacing="linspace" diffusers' DDIM steps from timestep k
    to k - N // steps, not to the next timestep of its own list (so the loop is not DDIM on
    one grid); each of its steps is unigen's one-step DDIM over [t(k), t(k - N // steps)]."""
    sched, spec, model = _ddim_pair({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                                     "timestep_spacing": "linspace"})
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    jump = sched.config.num_train_timesteps // 8
    assert any(int(a) - int(b) != jump for a, b in zip(sched.timesteps[:-1], sched.timesteps[1:]))
    with torch.no_grad():
        for k in sched.timesteps[:-1]:
            t = spec.process.t_from_timestep(k.to(F64) - torch.tensor([0.0, jump], dtype=F64))
            out = model.predict(x, t[0]).out
            ref = sched.step(out, k, x).prev_sample
            got, _ = ug.sample(model, ug.DDIM(), schedule=t, noise=x)
            assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-9
            x = ref


def test_diffusers_grid_without_alpha_one_ending_at_timestep_zero_drops_the_zero_length_step():
    """set_alpha_to_one=False with leading timesteps ending at 0: diffusers' last DDIM step goes
    from alpha-bar[0] to alpha-bar[0] (the identity); the grid ends at t = 1/N instead."""
    cfg = {"set_alpha_to_one": False, "_class_name": "DDIMScheduler"}
    proc = from_diffusers(cfg).process
    ts = diffusers_grid(cfg, 10)
    assert ts.numel() == 10 and float(ts[-1]) == float(proc.t_from_timestep(torch.tensor(0.0, dtype=F64)))
    torch.testing.assert_close(proc.timestep(ts), torch.arange(900, -1, -100, dtype=F64))
    with pytest.raises(ValueError, match="beta-table"):
        diffusers_grid({"_class_name": "FlowMatchEulerDiscreteScheduler"}, 10)
