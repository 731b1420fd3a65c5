"""Two-time models (unigen.flow_map) and their few-step samplers (unigen.flow_map_samplers).

References: the closed-form flow of Gaussian data (``GaussianMixture.exact_ode_solution``), the
accurate PF-ODE solve of ``unigen.reference``, finite differences and forward-mode autograd,
and the oracle's own one-time model. The identities of the exact map (semigroup, tangent,
MeanFlow, consistency, process change) are ``unigen verify`` claims (unigen/verify.py), which
tests/test_cli.py runs with every other claim.
"""

from __future__ import annotations

import pytest
import torch

import unigen as ug
from unigen.flow_map import FLOW_MAP_PARAMETRIZATIONS, FlowMap, integrated
from unigen.flow_map_samplers import FLOW_MAP_SAMPLERS, ConsistencySampler, GammaSampler

GAUSS = ug.analytic.GaussianMixture(torch.tensor([[1.0, -0.5]]), torch.tensor([0.7]))


def _noise(n=8, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("process", [ug.FlowMatching(), ug.VP.linear(), ug.VE(), ug.EDM()], ids=repr)
def test_integrated_map_is_the_closed_form_gaussian_flow(process):
    model = GAUSS.model(process, "velocity")
    X = integrated(model, 1e-11)
    start, end = model.default_range()
    z = _noise() * float(process.sigma(torch.tensor(start)))
    for t, s in ((start, end), (0.6 * start, 0.3 * start), (0.3 * start, 0.6 * start)):  # backwards too
        assert torch.allclose(X(z, t, s), GAUSS.exact_ode_solution(z, t, s, process), rtol=0, atol=1e-9)
    # per-sample times in one solve: each row its own (t, s)
    t = torch.linspace(0.9, 0.4, 8) * start
    s = torch.linspace(0.1, 0.35, 8) * start
    exact = torch.stack([GAUSS.exact_ode_solution(z[i : i + 1], float(t[i]), float(s[i]), process)[0] for i in range(8)])
    assert torch.allclose(X(z, t, s), exact, rtol=0, atol=1e-9)
    assert X.tangent() is model and X.nfe > 0


def test_integrated_map_lands_on_zero_noise_for_an_x0_model():
    """An x0 output does not give the velocity at sigma = 0: the solve lands on x0_hat (as the reference)."""
    gm = ug.analytic.ring_mixture()
    model = gm.model(ug.FlowMatching(), "x0")
    z = _noise(16, seed=1)
    ref, _ = ug.reference.ode_endpoint(model, z, 1.0, 0.0, tol=1e-10)
    assert torch.allclose(integrated(model, 1e-10)(z, 1.0, 0.0), ref, rtol=0, atol=1e-7)


def _two_time_net(seed=0, dim=2):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 2, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim)).to(torch.float32)

    def fn(z, t, s, label=None):
        b = z.shape[0]
        col = lambda v: (v.expand(b) if v.ndim == 0 else v).reshape(b, 1)  # noqa: E731
        out = net(torch.cat([z, col(t), col(s)], 1))
        return out if label is None else out + label.reshape(b, 1)

    return fn, net


@pytest.mark.parametrize("parametrization", sorted(FLOW_MAP_PARAMETRIZATIONS))
def test_parametrizations_identity_and_tangent_of_a_network(parametrization):
    fn, net = _two_time_net()
    fm = FlowMap(fn, ug.VP.linear(), parametrization, dtype=torch.float32)
    z = _noise(6, seed=2)
    t = torch.tensor(0.6)
    if FLOW_MAP_PARAMETRIZATIONS[parametrization].identity_at_equal_times:
        assert torch.allclose(fm(z, t, t), z, atol=1e-6)
    # the tangent model's velocity against a central difference of the map (float32 network)
    h = 1e-3
    fd = (fm(z, t, t + h) - fm(z, t, t - h)) / (2 * h)
    v = fm.tangent()(z, t).velocity
    assert torch.allclose(v, fd, rtol=1e-3, atol=2e-3), (v - fd).abs().max()


def test_endpoint_tangent_is_forward_mode_derivative_in_float64():
    fn, net = _two_time_net()
    net.double()
    fm = FlowMap(fn, ug.FlowMatching(), "endpoint")
    z, t, h = _noise(5, seed=3), torch.tensor(0.4), 1e-6
    fd = (fm(z, t, t + h) - fm(z, t, t - h)) / (2 * h)
    assert torch.allclose(fm.tangent()(z, t).velocity, fd, rtol=0, atol=1e-8)


def test_to_moves_a_network_map_and_its_tangent_between_processes():
    fn, net = _two_time_net()
    net.double()
    fm = FlowMap(fn, ug.FlowMatching(), "average_velocity")
    vp = ug.VP.linear()
    moved = fm.to(vp)
    z, t, s = _noise(5, seed=4), torch.tensor(0.7), torch.tensor(0.2)
    t_fm, c_t = ug.process.time_change(vp, ug.FlowMatching(), t)
    s_fm, c_s = ug.process.time_change(vp, ug.FlowMatching(), s)
    assert torch.allclose(moved(z, t, s), fm(z * c_t, t_fm, s_fm) / c_s, rtol=0, atol=1e-12)
    # its tangent is the source tangent moved by Model.to
    assert torch.allclose(moved.tangent()(z, t).x0, fm.tangent().to(vp)(z, t).x0, rtol=0, atol=1e-12)


# ---- samplers -----------------------------------------------------------------------------
def test_samplers_are_registered_and_sample_dispatches_on_flow_maps():
    assert {"FlowMapJump", "ConsistencySampler", "GammaSampler"} <= set(FLOW_MAP_SAMPLERS)
    model = GAUSS.model(ug.FlowMatching(), "velocity")
    X = integrated(model, 1e-10)
    z = _noise(32, seed=5)
    exact = GAUSS.exact_ode_solution(z, 1.0, 0.0, ug.FlowMatching())
    for steps in (1, 3):
        x, info = ug.sample(X, noise=z, steps=steps)  # default sampler: FlowMapJump
        assert info.nfe == steps and "FlowMapJump" in info.solver
        assert torch.allclose(x, exact, rtol=0, atol=1e-8)
    x, info = ug.sample(X, "ConsistencySampler", steps=1, noise=z)
    assert torch.allclose(x, exact, rtol=0, atol=1e-8)


@pytest.mark.parametrize("sampler", [ConsistencySampler(), GammaSampler(0.5)], ids=repr)
def test_stochastic_samplers_keep_the_marginals_with_the_exact_map(sampler):
    """With the exact map re-noising draws from the forward transition: the samples' mean and
    covariance match the Gaussian data within Monte-Carlo error (4 sigma), 3 steps."""
    process = ug.VP.linear()
    X = integrated(GAUSS.model(process, "eps"), 1e-8)
    n = 4000
    x, info = ug.sample(X, sampler, steps=3, shape=(n, 2), generator=torch.Generator().manual_seed(6))
    assert info.nfe == 3
    mean, std = torch.tensor([1.0, -0.5]), 0.7
    se = std / n**0.5
    assert (x.mean(0) - mean).abs().max() < 4 * se
    var = x.var(0)
    assert (var - std**2).abs().max() < 4 * std**2 * (2 / n) ** 0.5


def test_gamma_sampler_ends_are_the_other_samplers():
    fn, net = _two_time_net()
    fm = FlowMap(fn, ug.EDM(), "x0", dtype=torch.float32)
    z = _noise(8, seed=7) * 80
    jump, _ = ug.sample(fm, "FlowMapJump", steps=3, noise=z)
    g0, _ = ug.sample(fm, GammaSampler(0.0), steps=3, noise=z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(jump, g0)
    c, _ = ug.sample(fm, "ConsistencySampler", steps=3, noise=z, generator=torch.Generator().manual_seed(1))
    g1, _ = ug.sample(fm, GammaSampler(1.0), steps=3, noise=z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, g1)


def test_conditioning_float32_network_trajectory_and_callback():
    fn, net = _two_time_net()
    fm = FlowMap(fn, ug.FlowMatching(), "average_velocity", dtype=torch.float32)
    label = torch.arange(4, dtype=torch.float32)
    seen = []
    x, info = ug.sample(fm, "FlowMapJump", steps=2, shape=(4, 2), dtype=torch.float32, model_kwargs={"label": label},
                        return_trajectory=True, callback=lambda i, t, z: seen.append(i), generator=torch.Generator().manual_seed(0))
    x0, _ = ug.sample(fm, "FlowMapJump", steps=2, shape=(4, 2), dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and info.nfe == 2 and seen == [0, 1] and len(info.trajectory) == 3
    assert not torch.allclose(x, x0)  # the label reached the network
    x64, _ = ug.sample(fm, steps=2, noise=torch.randn(4, 2, dtype=torch.float64))  # float64 noise, float32 net
    assert x64.dtype == torch.float64 and torch.isfinite(x64).all()
    undeclared = FlowMap(fn, ug.FlowMatching(), "average_velocity")  # a closure: no parameters to read the dtype from
    with pytest.raises(TypeError, match=r"declare the dtype it computes in, FlowMap\(\.\.\., dtype=torch.float32\)"):
        ug.sample(undeclared, noise=torch.randn(4, 2, dtype=torch.float64))


# ---- bad input ----------------------------------------------------------------------------
def test_bad_input_is_refused_clearly():
    fn, _ = _two_time_net()
    fm = FlowMap(fn, ug.FlowMatching(), dtype=torch.float32)
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="unknown flow-map parametrization 'velocity'"):
        FlowMap(fn, ug.FlowMatching(), "velocity")
    with pytest.raises(TypeError, match="fn must be callable"):
        FlowMap(3, ug.FlowMatching())
    with pytest.raises(TypeError, match="process must be a unigen Process"):
        FlowMap(fn, "fm")
    with pytest.raises(ValueError, match="t must lie in"):
        fm(z, 1.5, 0.0)
    with pytest.raises(ValueError, match=r"s must have shape \[\] or \[batch\]"):
        fm(z, 0.5, torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        fm(torch.full((3, 2), float("nan")), 0.5, 0.0)
    with pytest.raises(ValueError, match="unknown flow-map sampler 'DDIM'"):
        ug.sample(fm, "DDIM", shape=(3, 2))
    with pytest.raises(ValueError, match="denoise_final"):
        ug.sample(fm, shape=(3, 2), denoise_final=True)
    with pytest.raises(ValueError, match="tuned to a one-time model"):
        ug.sample(fm, schedule="optimized", shape=(3, 2))
    with pytest.raises(ValueError, match="gamma must be a number in"):
        GammaSampler(1.5)
    with pytest.raises(TypeError, match="model must be a unigen Model"):
        integrated(fm)
    with pytest.raises(ValueError, match="tol must be"):
        integrated(GAUSS.model(ug.FlowMatching(), "eps"), 0)
    with pytest.raises(TypeError, match="model must be a unigen Model or FlowMap"):
        ug.sample(lambda z, t: z, shape=(3, 2))
    nan_map = FlowMap(lambda z, t, s: z * float("nan"), ug.FlowMatching(), "endpoint")
    with pytest.raises(FloatingPointError, match="FlowMapJump produced non-finite values at step 0"):
        ug.sample(nan_map, shape=(3, 2))


# ---- the consistency boundary condition and the objectives' input checks -----------------------
def test_consistency_objectives_are_anchored_at_the_end_of_sampling():
    """f(z, t_end) = z must enter the loss (Song et al. 2023's boundary condition): a map that sends
    every noisy z to one point has zero loss without it. On flow matching the level-0.002 grid
    starts above t_end = 0, so the grid is extended down to t_end, and the collapsed map pays."""
    from unigen import flow_map_losses as fml

    process = ug.FlowMatching()
    teacher = GAUSS.model(process, "velocity")
    c = torch.tensor([1.0, -0.5])

    def collapsed(z, t, s):  # X_{t->s}(z) = c for s < t: a constant consistency function
        gap = (t - s).reshape(-1, 1) if torch.as_tensor(t - s).ndim else t - s
        return torch.where(torch.as_tensor(gap) > 0, (z - c) / torch.as_tensor(gap).clamp_min(1e-12), torch.zeros_like(z))

    fm = FlowMap(collapsed, process, "average_velocity")
    x = GAUSS.sample(512, generator=torch.Generator().manual_seed(0))
    grid = fml.karras_times(fm, 18, include_end=True)
    assert float(grid[0]) == 0.0 and float(grid[1]) > 0.0
    cd = fml.consistency_distillation_loss(fm, x, teacher=teacher, generator=torch.Generator().manual_seed(1), n_steps=4)
    ct = fml.consistency_training_loss(fm, x, generator=torch.Generator().manual_seed(1), step=0, steps=1000)
    assert float(cd) > 1e-3 and float(ct) > 1e-3
    exact = integrated(teacher, 1e-10)
    exact_av = FlowMap(lambda z, t, s: torch.where(torch.as_tensor(t - s).reshape(-1, 1) > 0,
                                                   (exact.jump(z, t, s) - z) / torch.as_tensor(s - t).reshape(-1, 1),
                                                   teacher.predict(z, t).velocity), process, "average_velocity")
    cd_exact = fml.consistency_distillation_loss(exact_av, x[:64], teacher=teacher, generator=torch.Generator().manual_seed(1),
                                                 n_steps=4, solver="exact")
    assert float(cd_exact) < 1e-12


def test_objectives_refuse_what_they_cannot_train():
    from unigen import flow_map_losses as fml

    process = ug.FlowMatching()
    teacher = GAUSS.model(process, "velocity")
    x = GAUSS.sample(8)
    fn = lambda z, t, s: z  # noqa: E731
    for par in ("endpoint", "x0"):
        with pytest.raises(ValueError, match="the meanflow objective trains average_velocity flow maps only"):
            fml.meanflow_loss(FlowMap(fn, process, par), x)
        with pytest.raises(ValueError, match="the consistency_distillation objective trains average_velocity"):
            fml.consistency_distillation_loss(FlowMap(fn, process, par), x, teacher=teacher)
    fm = FlowMap(fn, process)
    with pytest.raises(ValueError, match="equal_fraction must be a fraction in"):
        fml.meanflow_loss(fm, x, equal_fraction=3.0)
    with pytest.raises(ValueError, match="adaptive_p must be a non-negative number"):
        fml.meanflow_loss(fm, x, adaptive_p=-1)
    with pytest.raises(ValueError, match="tangent_c must be a positive number"):
        fml.continuous_consistency_loss(fm, x, tangent_c=-1)
    with pytest.raises(ValueError, match="self_consistency_fraction must be a fraction"):
        fml.shortcut_loss(fm, x, self_consistency_fraction=1.5)
    narrow = ug.Model(teacher.fn, process, "velocity", t_range=(0.2, 0.8))
    with pytest.raises(ValueError, match=r"the teacher is defined on t in \[0.2, 0.8\]"):
        fml.flow_map_matching_loss(fm, x, teacher=narrow)
    with pytest.raises(ValueError, match="the teacher cannot give x0_hat at the generator's start time t=1"):
        ug.fit_dmd(GAUSS.model(process, "eps"), (2,), steps=1)


def test_a_flow_map_is_never_called_below_its_range():
    """A one-time solver lands on sigma = 0 without calling the network; a flow map calls it at s."""
    calls = []
    fm = FlowMap(lambda z, t, s: calls.append(float(s)) or z, ug.VP.linear(), "endpoint", t_range=(1e-3, 1.0))
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="s must lie in"):
        fm(z, 0.5, torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="the sampling grid must lie in"):
        ug.sample(fm, noise=z, steps=2, t_end=0.0)
    assert calls == []


def test_few_step_benchmark_summary_applies_the_issue_target():
    """benchmarks/few_step.py's summary: the best few-step SW2 at NFE 2 against the teacher's
    default-grid SW2 at NFE 10, and NFE 1 against twice that (the full runs are committed results)."""
    from benchmarks.few_step import summary, table

    def row(method, nfe, sw2, **kw):
        return {"method": method, "sampler": kw.pop("sampler", "jump"), "nfe": nfe, "sw2": sw2, "mmd": 0.0, **kw}

    rows = [row("teacher", 10, 0.05, sampler="DPMSolverPP(2M)", grid="default"),
            row("teacher", 2, 0.5, sampler="DPMSolverPP(2M)", grid="default"),
            row("a", 1, 0.11), row("a", 2, 0.049), row("b", 1, 0.09, sampler="consistency"), row("b", 2, float("nan"))]
    res = {"p": {"rows": rows, "floor": {"sw2_mean": 0.04, "sw2_std": 0.01}, "methods": {}}}
    s = summary(res)["p"]
    assert s["nfe2_at_or_below_teacher10"] and s["nfe1_within_2x_teacher10"]
    assert s["best"][1] == {"sw2": 0.09, "method": "b", "sampler": "consistency"} and s["best"][2]["method"] == "a"
    rows[3]["sw2"] = 0.051
    rows[4]["sw2"] = 0.101
    s = summary(res)["p"]
    assert not s["nfe2_at_or_below_teacher10"] and not s["nfe1_within_2x_teacher10"]
    assert "| a | jump |" in table(res)
