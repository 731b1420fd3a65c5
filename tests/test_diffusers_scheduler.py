"""unigen.interop.diffusers_scheduler.UnigenScheduler inside real diffusers pipelines (issue 13).

Tiny pipelines from random configs (tests/diffusers_pipelines.py), float32 as users run them:
swapping the unigen scheduler in with the same settings gives diffusers' own images; every
registered solver runs in every pipeline; the scheduler protocol that diffusers' own scheduler
tests check holds; on the flow-matching pipeline the high-order solvers converge to a
high-accuracy solve at their order.
"""

import json
import math

import numpy as np
import pytest
import torch

import unigen as ug
from helpers import require

D = require("diffusers")
require("transformers")  # the SD / SD3 / DiT pipelines are only importable with it
import diffusers_pipelines as P  # noqa: E402
from unigen.interop.diffusers_scheduler import UnigenScheduler, solver_arguments, source_class_name  # noqa: E402
from unigen.solvers import REGISTRY  # noqa: E402

F32, F64 = torch.float32, torch.float64
SD_TABLE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
            "set_alpha_to_one": False, "clip_sample": False}
IMAGE_TOL = 1e-5


@pytest.fixture(autouse=True)
def float32_default():
    """As users run pipelines: float32 is torch's default (diffusers' UniPC breaks under float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F32)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------
# the same images as diffusers' own scheduler, in every pipeline
# ---------------------------------------------------------------------------------------
SAME = [  # (pipeline, diffusers scheduler, its settings, the unigen solver with the same algorithm, steps)
    ("ddpm", "DDIMScheduler", {"clip_sample": False}, ug.DDIM(), 5),
    ("ddpm", "DPMSolverMultistepScheduler", {"prediction_type": "v_prediction"}, ug.DPMSolverPP(2), 6),
    ("ddpm", "DDIMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": False}, ug.DDIM(), 5),
    ("dit", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}, ug.UniPC(2), 5),
    ("ddpm", "DDIMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "clip_sample": False,
                               "rescale_betas_zero_snr": True}, ug.DDIM(), 5),  # zero terminal SNR: alpha(1) = 0
    ("dit", "DDIMScheduler", {"clip_sample": False}, ug.DDIM(), 4),
    ("dit", "DPMSolverMultistepScheduler", {}, ug.DPMSolverPP(2), 5),
    ("sd", "DDIMScheduler", SD_TABLE, ug.DDIM(), 5),
    ("sd", "DPMSolverMultistepScheduler", SD_TABLE, ug.DPMSolverPP(2), 6),
    ("sd", "UniPCMultistepScheduler", SD_TABLE, ug.UniPC(2), 5),
    # diffusers' UniPC-3 drops its order on the last steps at every step count (test_peers pins it)
    ("sd", "UniPCMultistepScheduler", {**SD_TABLE, "solver_order": 3}, ug.UniPC(3, lower_order_final="always"), 6),
    ("sd", "EulerDiscreteScheduler", SD_TABLE, ug.Euler(clock="sigma"), 5),
    ("sd", "DPMSolverMultistepScheduler", {**SD_TABLE, "use_karras_sigmas": True}, ug.DPMSolverPP(2), 5),
    ("sd3", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, ug.Euler(), 5),
    ("sd3", "FlowMatchEulerDiscreteScheduler", {}, ug.DDIM(), 4),
]


def _scheduler(cls_name, settings):
    """diffusers' scheduler with the settings it has (from_config drops the others, as pipelines do)."""
    return getattr(D, cls_name).from_config(settings)


@pytest.mark.parametrize("case", SAME, ids=lambda c: f"{c[0]}-{c[1]}-{c[3].label()}" if isinstance(c, tuple) else None)
def test_same_images_as_diffusers_own_scheduler(case):
    name, cls_name, settings, solver, steps = case
    pipe = P.build(name, D, _scheduler(cls_name, settings))
    theirs = P.run(name, pipe, steps)
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=solver)
    ours = P.run(name, pipe, steps)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= IMAGE_TOL
    assert len(pipe.scheduler.timesteps) == steps  # one network call per listed timestep, as diffusers


def test_the_images_are_not_all_alike():
    """The comparison above can fail: another solver, or another step count, changes the images."""
    pipe = P.build("sd", D, _scheduler("DDIMScheduler", SD_TABLE))
    ddim = P.run("sd", pipe, 5)
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=ug.DPMSolverPP(2))
    assert np.abs(P.run("sd", pipe, 5) - ddim).max() > 1e-3
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=ug.DDIM())
    assert np.abs(P.run("sd", pipe, 4) - ddim).max() > 1e-3


def test_flow_matching_user_sigmas_are_shifted_once():
    """SD3 passes unshifted sigmas; both schedulers shift them once (s sigma / (1 + (s - 1) sigma))."""
    sigmas = [1.0, 0.75, 0.5, 0.3, 0.1]
    pipe = P.build("sd3", D, _scheduler("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}))
    theirs = P.run("sd3", pipe, 5, sigmas=sigmas)
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=ug.DDIM())
    ours = P.run("sd3", pipe, 5, sigmas=sigmas)
    assert np.abs(ours - theirs).max() <= IMAGE_TOL
    s = torch.tensor(sigmas, dtype=F64)
    want = 3.0 * s / (1.0 + 2.0 * s) * 1000.0
    torch.testing.assert_close(pipe.scheduler.timesteps.to(F64), want, rtol=1e-6, atol=0)


def test_flow_matching_timesteps_are_used_as_given():
    """Given timesteps are what the network sees: sigma = timestep / N, not shifted again (diffusers
    shifts the sigmas derived from them but not the timesteps, so the two disagree: #14461)."""
    sch = UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="Euler")
    sch.set_timesteps(timesteps=[900.0, 500.0, 100.0])
    assert sch.timesteps.tolist() == pytest.approx([900.0, 500.0, 100.0])
    torch.testing.assert_close(sch._times, torch.tensor([0.9, 0.5, 0.1, 0.0], dtype=F64))
    ref = D.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(timesteps=[900.0, 500.0, 100.0])
    assert not torch.allclose(ref.sigmas[:-1] * 1000, ref.timesteps)  # diffusers' two lists disagree


def test_flow_matching_default_grid_without_a_source_is_shifted_once():
    """diffusers' FlowMatchEuler default grid applies the shift to its already-shifted sigma_min
    again (diffusers #13243); unigen's own grid (schedule "uniform") shifts 1, ..., 1/N once."""
    cfg = D.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    ours = UnigenScheduler.from_config(cfg, solver="Euler", schedule="uniform")
    ours.set_timesteps(4)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=F64)
    torch.testing.assert_close(ours.timesteps.to(F64), 3.0 * u / (1.0 + 2.0 * u) * 1000.0, rtol=1e-6, atol=0)
    parity = UnigenScheduler.from_config(cfg, solver="Euler")
    parity.set_timesteps(4)
    theirs = D.FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs.set_timesteps(4)
    torch.testing.assert_close(parity.timesteps, theirs.timesteps, rtol=1e-6, atol=0)  # the source's grid by default
    assert float(theirs.timesteps[-1]) < 0.5 * float(ours.timesteps[-1])  # the double shift: a much smaller last sigma


def test_dynamic_shifting_uses_mu():
    cfg = dict(D.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    sch = UnigenScheduler.from_config(cfg, solver="Euler", schedule="uniform")
    with pytest.raises(ValueError, match="pass mu"):
        sch.set_timesteps(4)
    sch.set_timesteps(4, mu=math.log(2.0))
    u = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=F64)
    torch.testing.assert_close(sch.timesteps.to(F64), 2.0 * u / (1.0 + u) * 1000.0, rtol=1e-6, atol=0)


def test_ddim_linspace_gap_is_diffusers_step_ratio():
    """diffusers' DDIM steps from timestep t to t - N // n (its step ratio), not to the next timestep
    it lists: with "linspace" spacing at n = 6 it lists 999, 799, ... but moves the state to the level
    of 833, then calls the network at 799 on it. unigen's DDIM steps between the listed timesteps.
    The first step shows it: diffusers lands exactly on the DDIM update to 833, unigen on the one to 799."""
    theirs = D.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    ours = UnigenScheduler.from_config(theirs.config, solver="DDIM")
    for s in (theirs, ours):
        s.set_timesteps(6)
    assert theirs.timesteps.tolist()[:2] == [999, 799] and ours.timesteps.tolist()[:2] == [999, 799]
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    abar = theirs.alphas_cumprod.to(F64)
    x0 = (z - (1 - abar[999]).sqrt() * eps) / abar[999].sqrt()
    ddim = lambda k: (abar[k].sqrt() * x0 + (1 - abar[k]).sqrt() * eps).to(F32)  # noqa: E731
    torch.testing.assert_close(theirs.step(eps, 999, z).prev_sample, ddim(999 - 1000 // 6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.step(eps, 999, z).prev_sample, ddim(799), rtol=1e-5, atol=1e-5)


def test_ddim_clip_sample_difference_is_the_eps_it_keeps():
    """With clip_sample, diffusers' DDIM moves by the clipped x0 but keeps the network's eps; unigen
    hands the solver one consistent prediction (eps re-derived from the clipped x0 at the same z).
    The difference after one step is exactly sigma_next (eps - eps_clipped)."""
    theirs = D.DDIMScheduler(clip_sample=True)
    ours = UnigenScheduler.from_config(theirs.config, solver="DDIM")
    for s in (theirs, ours):
        s.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 3, generator=g), 3.0 * torch.randn(2, 3, generator=g)
    t = theirs.timesteps[0]
    step_theirs = theirs.step(eps, t, z).prev_sample
    step_ours = ours.step(eps, t, z).prev_sample
    abar = theirs.alphas_cumprod.to(F64)
    a, s = abar[int(t)].sqrt(), (1 - abar[int(t)]).sqrt()
    a_next, s_next = abar[int(theirs.timesteps[1])].sqrt(), (1 - abar[int(theirs.timesteps[1])]).sqrt()
    x0c = ((z - s * eps) / a).clamp(-1, 1)
    eps_c = (z - a * x0c) / s
    assert float((((z - s * eps) / a).abs() > 1).float().mean()) > 0.3  # clipping is active
    torch.testing.assert_close(step_ours, (a_next * x0c + s_next * eps_c).to(F32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step_theirs - step_ours, (s_next * (eps - eps_c)).to(F32), rtol=1e-4, atol=1e-4)


def test_dpm_solver_thresholding_matches_diffusers():
    """Dynamic thresholding (Imagen) on the x0 prediction: DPM-Solver++ uses x0 alone, so it agrees."""
    theirs = D.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1.5)
    ours = UnigenScheduler.from_config(theirs.config, solver=ug.DPMSolverPP(2))
    net = lambda z, t: 0.8 * z.flip(1) + 0.002 * float(t)  # noqa: E731
    outs = []
    for s in (theirs, ours):
        s.set_timesteps(6)
        x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1), dtype=F32)
        for t in s.timesteps:
            x = s.step(net(x, t), t, x).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert float(outs[0].abs().max()) <= 1.5 + 1e-5


# ---------------------------------------------------------------------------------------
# every registered solver in every pipeline
# ---------------------------------------------------------------------------------------
REFUSED = {"Adaptive": "chooses its own times", "TorchSDE": "chooses its own times", "MALA": "energy"}


@pytest.mark.parametrize("name", ["ddpm", "dit", "sd", "sd3"])
def test_every_registered_solver_runs_in_every_pipeline(name):
    base = D.FlowMatchEulerDiscreteScheduler(shift=3.0) if name == "sd3" else _scheduler("DDIMScheduler", SD_TABLE)
    pipe = P.build(name, D, base)
    ran = []
    for solver_name, cls in sorted(REGISTRY.items()):
        solver = cls.example() if hasattr(cls, "example") else cls()
        pipe.scheduler = UnigenScheduler.from_config(base.config, solver=solver)
        if solver_name in REFUSED:
            with pytest.raises((ValueError, TypeError), match=REFUSED[solver_name]):
                P.run(name, pipe, 3)
            continue
        images = P.run(name, pipe, 3)
        assert np.isfinite(images).all() and images.shape[0] == 2, solver_name
        assert len(pipe.scheduler.timesteps) == pipe.scheduler.step_index  # every listed call was made
        ran.append(solver_name)
    assert len(ran) == len(REGISTRY) - len(REFUSED)


def test_multi_stage_solvers_list_a_timestep_per_stage():
    sch = UnigenScheduler.from_config(D.DDIMScheduler().config, solver="Heun")
    sch.set_timesteps(4)
    assert sch.order == 2 and len(sch.timesteps) == 7  # two calls per step, none at the clean point
    sch = UnigenScheduler.from_config(D.DDIMScheduler(**SD_TABLE).config, solver="Heun")
    sch.set_timesteps(4)
    assert len(sch.timesteps) == 8  # set_alpha_to_one=False: the grid ends at alpha-bar[0], a call there too
    rk4 = UnigenScheduler.from_config(D.DDIMScheduler().config, solver="RK4")
    rk4.set_timesteps(3)
    assert rk4.order == 4 and len(rk4.timesteps) == 4 * 2 + 1 and rk4.timesteps.dtype == torch.float32


def test_stochastic_solver_follows_the_pipeline_generator():
    pipe = P.build("ddpm", D, _scheduler("DDIMScheduler", {"clip_sample": False}))
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=ug.DDPM())
    a, b = P.run("ddpm", pipe, 4, seed=3), P.run("ddpm", pipe, 4, seed=3)
    assert np.array_equal(a, b)
    assert np.abs(P.run("ddpm", pipe, 4, seed=4) - a).max() > 1e-3


# ---------------------------------------------------------------------------------------
# the scheduler protocol (the checks diffusers' own scheduler tests apply to every scheduler)
# ---------------------------------------------------------------------------------------
def test_config_round_trip_through_save_pretrained(tmp_path):
    sch = UnigenScheduler.from_config(_scheduler("DPMSolverMultistepScheduler", SD_TABLE).config,
                                      solver=ug.UniPC(3, lower_order_final=False), schedule="logsnr")
    sch.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "UnigenScheduler" and saved["solver"] == "UniPC"
    assert saved["solver_options"] == {"order": 3, "lower_order_final": False}
    back = UnigenScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(sch.config)
    assert back.solver.cache_key() == sch.solver.cache_key()
    for s in (sch, back):
        s.set_timesteps(5)
    torch.testing.assert_close(back.timesteps, sch.timesteps)
    assert solver_arguments(ug.DPMSolverPP()) == {}


@pytest.mark.parametrize("other", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"])
def test_from_config_switches_both_ways(other):
    theirs = _scheduler(other, SD_TABLE)
    ours = UnigenScheduler.from_config(theirs.config, solver="DEIS")
    assert source_class_name(theirs.config) == other
    for key in ("beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing", "num_train_timesteps"):
        assert ours.config[key] == theirs.config[key]
    back = getattr(D, other).from_config(ours.config)
    for key in ("beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing"):
        assert back.config[key] == theirs.config[key]
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    torch.testing.assert_close(ours.timesteps.to(F64), theirs.timesteps.to(F64))  # the source's grid
    flow = UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler(shift=2.0).config)
    assert flow.config.flow_matching and flow.config.shift == 2.0
    assert D.FlowMatchEulerDiscreteScheduler.from_config(flow.config).config.shift == 2.0


@pytest.mark.parametrize("flow", [False, True])
def test_step_output_shapes_dtypes_and_pred_original_sample(flow):
    cfg = D.FlowMatchEulerDiscreteScheduler().config if flow else D.DDIMScheduler(prediction_type="v_prediction", clip_sample=False).config
    sch = UnigenScheduler.from_config(cfg, solver="DPMSolverPP")
    sch.set_timesteps(4)
    for dtype in (F32, F64, torch.bfloat16):
        sch.set_timesteps(4)
        x = torch.randn(2, 3, 4, 4).to(dtype)
        for i, t in enumerate(sch.timesteps):
            out = torch.randn(2, 3, 4, 4).to(dtype)
            res = sch.step(out, t, x)
            assert res.prev_sample.shape == x.shape and res.prev_sample.dtype == dtype
            assert res.pred_original_sample.shape == x.shape and res.pred_original_sample.dtype == dtype
            tup = (res.prev_sample, res.pred_original_sample)
            x = res.prev_sample
        assert len(tup) == 2
    # pred_original_sample is the x0 that the output predicts at the point: for flow matching z - sigma v
    sch.set_timesteps(3)
    z, v = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    res = sch.step(v, sch.timesteps[0], z, return_dict=False)
    if flow:
        torch.testing.assert_close(res[1], z - float(sch.timesteps[0]) / 1000.0 * v)
    else:
        abar = D.DDIMScheduler().alphas_cumprod.to(F64)[int(sch.timesteps[0])]
        torch.testing.assert_close(res[1], abar.sqrt() * z - (1 - abar).sqrt() * v, rtol=1e-6, atol=1e-6)


def test_add_noise_is_the_forward_marginal():
    theirs = D.DDIMScheduler(**SD_TABLE)
    ours = UnigenScheduler.from_config(theirs.config)
    x, eps = torch.randn(3, 2, 4, dtype=F32), torch.randn(3, 2, 4, dtype=F32)
    ts = torch.tensor([10, 500, 999])
    torch.testing.assert_close(ours.add_noise(x, eps, ts), theirs.add_noise(x, eps, ts), rtol=1e-5, atol=1e-5)
    fm = UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler().config)
    s = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(fm.add_noise(x, eps, s * 1000), (1 - s)[:, None, None] * x + s[:, None, None] * eps)


def test_timesteps_on_the_requested_device_and_protocol_attributes():
    sch = UnigenScheduler.from_config(D.DDIMScheduler(**SD_TABLE).config, solver="UniPC")
    sch.set_timesteps(5, device="cpu")
    assert sch.timesteps.device.type == "cpu" and sch.timesteps.dtype == torch.int64
    assert sch.init_noise_sigma == 1.0 and sch.order == 1 and sch.config.num_train_timesteps == 1000
    x = torch.randn(2, 3)
    assert sch.scale_model_input(x, sch.timesteps[0]) is x
    if torch.cuda.is_available():
        sch.set_timesteps(5, device="cuda")
        assert sch.timesteps.device.type == "cuda"


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_clear_errors():
    cfg = D.DDIMScheduler(**SD_TABLE).config
    with pytest.raises(ValueError, match="unknown solver 'Nope'"):
        UnigenScheduler.from_config(cfg, solver="Nope")
    with pytest.raises(TypeError, match="solver_options do not fit DDIM"):
        UnigenScheduler.from_config(cfg, solver="DDIM", solver_options={"order": 3})
    with pytest.raises(ValueError, match="unknown schedule"):
        UnigenScheduler.from_config(cfg, schedule="nope")
    sch = UnigenScheduler.from_config(cfg, solver="DDIM")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sch.step(torch.zeros(2), 1, torch.zeros(2))
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int"):
        sch.set_timesteps(0)
    with pytest.raises(ValueError, match="at most one of timesteps and sigmas"):
        sch.set_timesteps(timesteps=[900, 100], sigmas=[3.0, 1.0])
    sch.set_timesteps(3)
    with pytest.raises(ValueError, match="call 0 of 3 is at timestep"):
        sch.step(torch.zeros(2), 5, torch.zeros(2))
    x = torch.randn(2)
    x = sch.step(torch.zeros(2), sch.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match=r"sample has shape \(3,\), but this run's latents have shape \(2,\)"):
        sch.step(torch.zeros(3), sch.timesteps[1], torch.zeros(3))
    with pytest.raises(ValueError, match=r"model_output has shape \(4,\) but sample has \(2,\)"):
        sch.step(torch.zeros(4), sch.timesteps[1], x)
    with pytest.raises(ValueError, match="invert_sigmas=True"):
        UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler(invert_sigmas=True).config)
    with pytest.raises(ValueError, match="stochastic_sampling=True"):
        UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config)
    with pytest.raises(ValueError, match="fewer|must be finite"):
        sch.set_timesteps(sigmas=[float("nan"), 1.0])
    fm = UnigenScheduler.from_config(D.FlowMatchEulerDiscreteScheduler().config)
    with pytest.raises(ValueError, match=r"flow-matching sigmas must lie in \(0, 1\]"):
        fm.set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="chooses its own times"):
        UnigenScheduler.from_config(cfg, solver="Adaptive").set_timesteps(3)


# ---------------------------------------------------------------------------------------
# convergence on the flow-matching pipeline's network
# ---------------------------------------------------------------------------------------
def _smooth_in_time(transformer):
    """An untrained network's timestep embedding oscillates on the scale of one timestep
    (sinusoids up to frequency 1 in t * 1000), far rougher in t than a trained model: keep the
    embedding's slow frequencies only (below 2e-3 per timestep, less than a turn over [0, 1000])."""
    lin = transformer.time_text_embed.timestep_embedder.linear_1
    half = lin.in_features // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=F64) / half)
    with torch.no_grad():
        lin.weight[:, torch.cat([freq, freq]) > 2e-3] = 0.0


@pytest.mark.parametrize("solver", [ug.UniPC(2, lower_order_final=False), ug.DPMSolverPP(2, lower_order_final=False),
                                    ug.DEIS(2, lower_order_final=False)], ids=lambda s: s.label())
def test_flow_matching_solvers_converge_at_their_order(solver):
    """The SD3 pipeline's transformer (float64, shift 3, user sigmas shifted once) driven through
    the scheduler converges to a dopri5 solve of its flow-matching ODE (torchdiffeq, rtol 1e-10)
    at the solver's declared order: least-squares slope of log error against log NFE."""
    torchdiffeq = require("torchdiffeq")
    pipe = P.build("sd3", D, D.FlowMatchEulerDiscreteScheduler(shift=3.0), dtype=F64)
    _smooth_in_time(pipe.transformer)
    emb = P.prompt(batch=1, dtype=F64, pooled=True)

    def net(z, tau):
        return pipe.transformer(hidden_states=z, timestep=tau.reshape(-1).to(F64).expand(z.shape[0]),
                                encoder_hidden_states=emb["prompt_embeds"], pooled_projections=emb["pooled_prompt_embeds"]).sample

    z0 = torch.randn(1, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = torchdiffeq.odeint(lambda t, z: net(z, t * 1000.0), z0, torch.tensor([1.0, 0.0], dtype=F64),
                                 rtol=1e-10, atol=1e-10, method="dopri5")[-1]
    sch = UnigenScheduler.from_config(pipe.scheduler.config, solver=solver)
    nfes, errs = [], []
    for n in (5, 10, 20, 40):
        sigmas = torch.linspace(1.0, 1.0 / n, n, dtype=F64)
        sch.set_timesteps(sigmas=sigmas.tolist())
        torch.testing.assert_close(sch.timesteps.to(F64), (3.0 * sigmas / (1.0 + 2.0 * sigmas) * 1000.0), rtol=1e-6, atol=0)
        x = z0
        with torch.no_grad():
            for tau in sch.timesteps:
                x = sch.step(net(x, tau), tau, x).prev_sample
        nfes.append(len(sch.timesteps))
        errs.append(float((x - ref).abs().max()))
    lx, ly = torch.tensor(nfes, dtype=F64).log(), torch.tensor(errs, dtype=F64).log()
    slope = -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())
    assert errs[-1] < 5e-3 and abs(slope - solver.order) <= 0.5, (errs, slope)


# ---------------------------------------------------------------------------------------
# one loop: the pipeline drives ug.sample's own loop
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [ug.DPMSolverPP(2), ug.Heun(), ug.DDPM()], ids=lambda s: s.label())
def test_pipeline_loop_is_ug_sample(solver):
    """A pipeline-style loop through the scheduler gives exactly what ug.sample gives on the same
    network (diffusers_model), grid (a list of times in the config: e.g. an optimised grid), noise
    and generator: the scheduler feeds ug.sample's loop, it does not re-implement the solver."""
    from unigen.interop import diffusers_model, from_diffusers

    with P.float32_defaults():
        unet = P.unet2d(D)
    cfg = D.DDIMScheduler(clip_sample=False).config
    times = [1.0, 0.8, 0.5, 0.3, 0.1, 0.02, 0.0]
    sch = UnigenScheduler.from_config(cfg, solver=solver, schedule=times)
    sch.set_timesteps()
    assert len(sch.timesteps) == (len(times) - 1) * solver.nfe_per_step - (solver.nfe_per_step - 1)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x, g = z, torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(x, t).sample, t, x, generator=g).prev_sample
    spec = from_diffusers(cfg)
    with torch.no_grad():
        ref, info = ug.sample(diffusers_model(unet, spec.process, spec.parametrization), solver, schedule=times, noise=z,
                              generator=torch.Generator().manual_seed(5))
    assert info.nfe == len(sch.timesteps)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="disagrees with the config's 7 schedule times"):
        sch.set_timesteps(4)


# ---------------------------------------------------------------------------------------
# what pipelines beyond text-to-image do (img2img, learned variance, other scheduler configs)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls_name, solver", [("DDIMScheduler", ug.DDIM()), ("DPMSolverMultistepScheduler", ug.DPMSolverPP(2))],
                         ids=["DDIM", "DPM++2M"])
def test_img2img_starts_where_the_pipeline_begins(cls_name, solver):
    """Img2img slices the timesteps and calls set_begin_index: the run starts at that call from the
    noised image (add_noise), giving diffusers' own images."""
    base = P.build("sd", D, _scheduler(cls_name, SD_TABLE))
    pipe = D.StableDiffusionImg2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def run():
        return pipe(image=image, strength=0.6, guidance_scale=5.0, num_inference_steps=6, output_type="np",
                    generator=torch.Generator().manual_seed(0), **P.prompt()).images

    theirs = run()
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=solver)
    ours = run()
    assert pipe.scheduler.begin_index == 3 and np.abs(ours - theirs).max() <= IMAGE_TOL


def test_img2img_flow_matching_uses_scale_noise():
    base = P.build("sd3", D, D.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe = D.StableDiffusion3Img2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def run():
        return pipe(image=image, strength=0.6, guidance_scale=4.0, num_inference_steps=5, output_type="np",
                    generator=torch.Generator().manual_seed(0), **P.prompt(pooled=True)).images

    theirs = run()
    pipe.scheduler = UnigenScheduler.from_config(pipe.scheduler.config, solver=ug.Euler())
    ours = run()
    assert np.abs(ours - theirs).max() <= IMAGE_TOL


def test_a_run_begins_only_at_a_step():
    sch = UnigenScheduler.from_config(D.DDIMScheduler().config, solver="Heun")
    sch.set_timesteps(4)
    sch.set_begin_index(2)  # Heun's calls: 0, 1 | 2, 3 | 4, 5 | 6 (the last step lands without a second call)
    with pytest.raises(ValueError, match="not the first call of a step of Heun"):
        sch.set_begin_index(1)


@pytest.mark.parametrize("cls_name", ["KDPM2DiscreteScheduler", "DPMSolverSDEScheduler", "HeunDiscreteScheduler"])
def test_two_stage_sources_give_each_level_its_own_timestep(cls_name):
    """KDPM2 and DPMSolverSDE list step and midpoint timesteps interleaved; the grid takes the steps'
    levels and each level's own timestep (diffusers' log-sigma interpolation)."""
    ref = getattr(D, cls_name)()
    ours = UnigenScheduler.from_config(ref.config, solver="DDIM")
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    main = torch.unique_consecutive(ref.timesteps.to(F64))[:: (1 if cls_name == "HeunDiscreteScheduler" else 2)]
    torch.testing.assert_close(ours.timesteps.to(F64), main[: len(ours.timesteps)], rtol=1e-4, atol=1e-3)


def test_flow_sigma_configs_of_beta_schedulers_are_flow_matching():
    """Wan-style configs (UniPC with prediction_type='flow_prediction', use_flow_sigmas, flow_shift)
    are flow matching with that shift, on the source's own grid: the same result as diffusers' UniPC."""
    ref = D.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    ours = UnigenScheduler.from_config(ref.config, solver=ug.UniPC(2))
    assert ours.config.flow_matching and ours.config.shift == 5.0
    net = lambda z, t: 0.7 * z.flip(-1) - 0.3  # noqa: E731
    outs = []
    for s in (ref, ours):
        s.set_timesteps(5)
        x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
        for t in s.timesteps:
            x = s.step(net(x, t), t, x).prev_sample
        outs.append(x)
    torch.testing.assert_close(ours.timesteps.to(F64), ref.timesteps.to(F64))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", [{"shift_terminal": 0.1}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}])
def test_flow_match_sigma_options_apply_to_user_sigmas(option):
    ref = D.FlowMatchEulerDiscreteScheduler(shift=3.0, **option)
    ours = UnigenScheduler.from_config(ref.config, solver="Euler")
    sigmas = torch.linspace(1.0, 0.2, 5).tolist()
    ref.set_timesteps(sigmas=sigmas)
    ours.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(ours.timesteps.to(F64), ref.timesteps.to(F64), rtol=1e-5, atol=1e-3)


def test_beta_table_user_sigmas_end_at_their_last_level():
    """As diffusers' Euler: len(sigmas) - 1 calls, the last level is where sampling ends."""
    ref = D.EulerDiscreteScheduler()
    ours = UnigenScheduler.from_config(ref.config, solver=ug.Euler(clock="sigma"))
    levels = [14.6, 8.0, 4.0, 2.0, 1.0, 0.5, 0.1]
    ref.set_timesteps(sigmas=levels)
    ours.set_timesteps(sigmas=levels)
    torch.testing.assert_close(ours.timesteps.to(F64), ref.timesteps.to(F64), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(float(ours.process.ve_sigma(ours._times[-1:])), 0.1)
    ours.set_timesteps(timesteps=[999, 850, 24])
    assert ours.timesteps.tolist() == [999, 850, 24] and ours.timesteps.dtype == torch.int64


def test_learned_variance_output_uses_its_prediction_half():
    cfg = D.DDPMScheduler(variance_type="learned_range", clip_sample=False).config
    with P.float32_defaults():
        unet = P.unet2d(D, out_channels=6)
    pipe = D.DDPMPipeline(unet=unet, scheduler=UnigenScheduler.from_config(cfg, solver="DPMSolverPP"))
    pipe.set_progress_bar_config(disable=True)
    images = P.run("ddpm", pipe, 4)
    assert np.isfinite(images).all()
    pipe.scheduler = UnigenScheduler.from_config(D.DDPMScheduler(clip_sample=False).config, solver="DPMSolverPP")
    with pytest.raises(ValueError, match="learned-variance output needs variance_type"):
        P.run("ddpm", pipe, 4)


def test_abandoned_runs_stop_their_threads():
    import gc
    import threading

    before = threading.active_count()
    for _ in range(4):
        sch = UnigenScheduler.from_config(D.DDIMScheduler().config, solver="UniPC")
        sch.set_timesteps(5)
        x = torch.randn(2, 3)
        sch.step(torch.zeros(2, 3), sch.timesteps[0], x)  # one call, then dropped mid-run
        del sch
    gc.collect()
    assert threading.active_count() <= before


def test_nested_solver_options_round_trip(tmp_path):
    solver = ug.PredictorCorrector("DDIM", corrector=ug.Langevin())
    sch = UnigenScheduler(solver=solver)
    sch.save_pretrained(tmp_path)
    back = UnigenScheduler.from_pretrained(tmp_path)
    assert repr(back.solver) == repr(solver)
    assert repr(UnigenScheduler(solver=ug.PredictorCorrector(ug.UniPC)).solver) == repr(ug.PredictorCorrector(ug.UniPC()))
