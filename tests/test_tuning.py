"""Few-NFE calibration (unigen.tuning) and the tunable solver family (unigen.solvers.tuned).

References, each independent of the code under test: numerical quadrature for the moment
integrals, DPM-Solver++'s psi-function formulas for the untuned family, the exact oracle's
accurate ODE solve for orders and endpoint errors, finite differences for gradients, brute
force for the dynamic programme.
"""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unigen as ug
from unigen.bench import gmm_problem
from unigen.reference import ode_endpoint, ode_trajectory
from unigen.solvers.tuned import TunedSolver, exponential_moments, register_tuned
from unigen.tuning import least_cost_path, run_tuned


def _rmse(x, y):
    return float((x - y).pow(2).mean().sqrt())


@settings(max_examples=30, deadline=None)
@given(h=st.floats(1e-3, 60.0), q=st.integers(0, 3))
def test_exponential_moments_match_quadrature(h, q):
    # h int_0^1 e^{-h(1-u)} u^q du by a fine composite Simpson rule in the variable v = h (1 - u)
    m = 20001
    v = torch.linspace(0.0, h, m, dtype=torch.float64)
    f = torch.exp(-v) * (1.0 - v / h) ** q
    w = torch.ones(m, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    ref = float((w * f).sum() * (h / (m - 1)) / 3.0)
    got = float(exponential_moments(torch.tensor(h, dtype=torch.float64), 4)[q])
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_exponential_moments_at_infinity_put_all_weight_at_one():
    assert exponential_moments(torch.tensor(math.inf, dtype=torch.float64), 3).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["vp", "fm", "ddpm"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_untuned_family_is_dpm_solver_pp(kind, order):
    """The Adams weights (order conditions solved) reproduce DPM-Solver++'s psi-function updates."""
    p = gmm_problem(2, kind)
    z = p.noise(32, torch.Generator().manual_seed(0))
    for steps in (5, 16):
        a, ia = ug.sample(p.model, TunedSolver(order), steps=steps, noise=z)
        b, _ = ug.sample(p.model, ug.DPMSolverPP(order, solver_type="taylor", match_reference_3m=False), steps=steps,
                         noise=z)
        assert ia.nfe == steps
        assert (a - b).abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["vp", "fm"])
def test_corrected_family_converges_at_order_plus_one(kind):
    """With the corrector, TunedSolver(k) is of order k + 1 (slope against the exact oracle's solve)."""
    p = gmm_problem(2, kind)
    model = p.model
    t0, t1 = model.default_range()
    if kind == "fm":
        t0, t1 = 0.95, 0.05  # finite log-SNR at both ends: the asymptotic regime at modest step counts
    z = p.noise(64, torch.Generator().manual_seed(1)) * float(p.process.sigma(torch.tensor(t0)))
    ref, _ = ode_endpoint(model, z, t0, t1, tol=1e-12)
    for k in (1, 2):
        errs = [_rmse(ug.sample(model, TunedSolver(k, corrector=True), steps=n, noise=z, t_start=t0, t_end=t1)[0], ref)
                for n in (40, 80, 160)]
        slope = math.log(errs[0] / errs[2]) / math.log(4)
        assert slope > k + 1 - 0.3, (k, errs)


def test_corrector_out_of_zero_snr_keeps_the_order():
    """Flow matching from t = 1 (alpha = 0): the step after the DDIM start is corrected too."""
    p = gmm_problem(2, "fm")
    z = p.noise(64, torch.Generator().manual_seed(1))
    t0, t1 = 1.0, 0.05
    ref, _ = ode_endpoint(p.model, z, t0, t1, tol=1e-12)
    errs = [_rmse(ug.sample(p.model, TunedSolver(2, corrector=True), steps=n, schedule="uniform", noise=z,
                            t_start=t0, t_end=t1)[0], ref) for n in (40, 80, 160)]
    slope = math.log(errs[0] / errs[2]) / math.log(4)
    assert slope > 2.7, errs


def test_refinement_scales_large_corrections_away():
    """O(1) corrections: refined with the (N/n)^(p-1) scaling the order holds; the same corrections
    applied unscaled at every refined step leave a first-order method (the scaling is what works)."""
    p = gmm_problem(2, "vp")
    t0, t1 = p.model.default_range()
    knots = ug.make_grid(p.process, "logsnr", 4, t_start=t0, t_end=t1)
    corr = torch.tensor([[0.0, 0.0], [0.4, -0.4], [-0.3, 0.3], [0.5, -0.5]], dtype=torch.float64)
    tuned = TunedSolver(2, knots, corr)
    z = p.noise(64, torch.Generator().manual_seed(2))
    ref, _ = ode_endpoint(p.model, z, t0, t1, tol=1e-12)
    scaled, unscaled = [], []
    for m in (8, 16, 32):
        grid = tuned.grid_times(4 * m)
        scaled.append(_rmse(ug.sample(p.model, tuned, steps=4 * m, noise=z)[0], ref))
        same = TunedSolver(2, grid, corr.repeat_interleave(m, 0))  # the corrections, unscaled, on the fine grid
        unscaled.append(_rmse(ug.sample(p.model, same, noise=z)[0], ref))
    slope = lambda e: math.log(e[0] / e[2]) / math.log(4)  # noqa: E731
    assert slope(scaled) > 1.8, scaled
    assert slope(unscaled) < 1.3, unscaled


def test_tuned_solver_still_converges_at_its_order_when_refined():
    """The corrections of a tuned solver are scaled by (N/n)^(p-1) on a refined grid: order p holds."""
    p = gmm_problem(2, "vp")
    tuned = ug.tune_solver(p.model, 4, order=2, corrector=False, event_shape=(2,), n=64, rounds=1, max_iter=8).solver
    assert tuned.order == 2 and any(abs(c) > 1e-6 for row in tuned.corrections for c in row)
    z = p.noise(64, torch.Generator().manual_seed(2))
    t0, t1 = tuned.times[0], tuned.times[-1]
    ref, _ = ode_endpoint(p.model, z, t0, t1, tol=1e-12)
    errs = []
    for n in (32, 64, 128):
        x, info = ug.sample(p.model, tuned, steps=n, noise=z)
        assert info.nfe == n and float(info.times[0]) == t0 and float(info.times[-1]) == t1
        errs.append(_rmse(x, ref))
    slope = math.log(errs[0] / errs[2]) / math.log(4)
    assert slope > 1.7, errs


def test_grid_refinement_keeps_the_tuned_knots():
    s = TunedSolver(3, times=[1.0, 0.5, 0.2, 0.001])
    assert s.grid_times().tolist() == [1.0, 0.5, 0.2, 0.001]
    fine = s.grid_times(6)
    assert fine[::2].tolist() == pytest.approx([1.0, 0.5, 0.2, 0.001], abs=1e-15)
    assert fine[1].item() == pytest.approx(0.75)


@pytest.mark.parametrize("kind,corrector", [("vp", True), ("fm", True), ("ddpm", False)])
def test_differentiable_run_is_the_solver_program(kind, corrector):
    """run_tuned (what calibration differentiates) and ug.sample (the executor) give the same sample."""
    p = gmm_problem(2, kind)
    gen = torch.Generator().manual_seed(3)
    t0, t1 = p.model.default_range()
    grid = ug.make_grid(p.process, "uniform", 6, t_start=t0, t_end=t1)
    corr = 0.1 * torch.randn(6, 4, generator=gen, dtype=torch.float64)
    solver = TunedSolver(3, grid, corr, corrector=corrector)
    z = p.noise(16, gen)
    x, _ = ug.sample(p.model, solver, noise=z)
    y = run_tuned(p.model, z, grid, 3, corr, corrector=corrector)
    assert (x - y).abs().max() < 1e-12


def test_run_tuned_gradients_match_finite_differences():
    p = gmm_problem(2, "vp")
    z = p.noise(8, torch.Generator().manual_seed(4))
    ts = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.001], dtype=torch.float64)
    corr = torch.full((4, 3), 0.05, dtype=torch.float64)

    def f(ts, corr):
        return run_tuned(p.model, z, ts, 3, corr, corrector=True).pow(2).sum()

    ts_v, c_v = ts.clone().requires_grad_(True), corr.clone().requires_grad_(True)
    f(ts_v, c_v).backward()
    eps = 1e-6
    for i in (1, 2, 3):
        d = torch.zeros_like(ts)
        d[i] = eps
        fd = (f(ts + d, corr) - f(ts - d, corr)) / (2 * eps)
        assert float(ts_v.grad[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)
    d = torch.zeros_like(corr)
    d[2, 1] = eps
    fd = (f(ts, corr + d) - f(ts, corr - d)) / (2 * eps)
    assert float(c_v.grad[2, 1]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_least_cost_path_is_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(5)
    m = 10
    cost = torch.rand(m, m, generator=gen, dtype=torch.float64)
    cost = torch.where(torch.arange(m)[:, None] < torch.arange(m)[None, :], cost, torch.full_like(cost, math.inf))
    for steps in (1, 3, 5):
        path, total = least_cost_path(cost, steps)
        brute = min(
            sum(float(cost[a, b]) for a, b in zip((0, *mid), (*mid, m - 1)))
            for mid in itertools.combinations(range(1, m - 1), steps - 1)
        )
        assert total == pytest.approx(brute, rel=1e-12)
        assert path[0] == 0 and path[-1] == m - 1 and len(path) == steps + 1
        assert sum(float(cost[a, b]) for a, b in zip(path[:-1], path[1:])) == pytest.approx(total)


def test_teacher_trajectory_interpolates_to_its_tolerance():
    p = gmm_problem(2, "fm")
    z = p.noise(32, torch.Generator().manual_seed(6))
    times = torch.linspace(1.0, 0.0, 17, dtype=torch.float64)
    exact, _ = ode_trajectory(p.model, z, times, tol=1e-11)
    fast, _ = ode_trajectory(p.model, z, times, tol=1e-9, interpolate=True)
    assert (fast - exact).abs().max() < 1e-6
    assert (fast[-1] - exact[-1]).abs().max() < 1e-7  # the last time is stepped onto, not interpolated


@pytest.fixture(scope="module")
def tuned_vp5():
    p = gmm_problem(2, "vp")
    return p, ug.tune_solver(p.model, 5, event_shape=(2,), n=256, rounds=2, max_iter=10)


def test_tiny_end_to_end_tuning_beats_the_default_solver_on_held_out_noise(tuned_vp5):
    """A held-out batch (not the calibration noise), endpoint RMSE against the accurate solve."""
    p, r = tuned_vp5
    assert r.rmse <= r.start_rmse
    z = p.noise(512, torch.Generator().manual_seed(7))
    t0, t1 = p.model.default_range()
    ref, _ = ode_endpoint(p.model, z, t0, t1, tol=1e-10)
    x, info = ug.sample(p.model, r.solver, noise=z)
    assert info.nfe == 5
    tuned = _rmse(x, ref)
    default = _rmse(ug.sample(p.model, "DPMSolverPP", steps=5, noise=z)[0], ref)
    unipc = _rmse(ug.sample(p.model, ug.UniPC(3), steps=5, noise=z)[0], ref)
    assert tuned < min(default, unipc) / 5, (tuned, default, unipc)


@pytest.mark.parametrize("fit", ["ld3", "tune_times", "tune"])
def test_calibration_never_ends_worse_than_its_start(fit):
    p = gmm_problem(2, "fm")
    kw = dict(event_shape=(2,), n=64, rounds=1, max_iter=6)
    if fit == "ld3":
        r = ug.ld3_grid(p.model, 4, **kw)
    else:
        r = ug.tune_solver(p.model, 4, coefficients=fit == "tune", init="default", **kw)
    assert r.rmse <= r.start_rmse + 1e-15
    assert r.rmse < 0.9 * r.start_rmse  # and it moved: the gradients reach the parameters
    assert r.grid[0] == p.model.default_range()[0] and r.grid[-1] == p.model.default_range()[1]
    assert bool((r.grid[1:] < r.grid[:-1]).all())


def test_gits_grid_has_less_summed_jump_cost_than_the_uniform_one():
    p = gmm_problem(2, "vp")
    r = ug.gits_grid(p.model, 6, event_shape=(2,), n=64)
    assert r.rmse <= r.start_rmse and r.grid.numel() == 7


def test_save_load_and_pick_by_name(tuned_vp5, tmp_path):
    p, r = tuned_vp5
    path = tmp_path / "vp5.pt"
    r.solver.save(path)
    back = TunedSolver.load(path)
    assert back.cache_key() == r.solver.cache_key() and back.info == r.solver.info
    z = p.noise(16, torch.Generator().manual_seed(8))
    x, _ = ug.sample(p.model, r.solver, noise=z)
    assert torch.equal(ug.sample(p.model, back, noise=z)[0], x)
    register_tuned("gmm2-vp-nfe5-test", back)
    try:
        assert torch.equal(ug.sample(p.model, "gmm2-vp-nfe5-test", noise=z)[0], x)
        with pytest.raises(ValueError, match="replace=True"):
            register_tuned("gmm2-vp-nfe5-test", r.solver)
        register_tuned("gmm2-vp-nfe5-test", r.solver, replace=True)
    finally:
        ug.solvers.NAMED.pop("gmm2-vp-nfe5-test", None)
    assert torch.equal(ug.sample(p.model, back, schedule="tuned", noise=z)[0], x)
    with pytest.raises(ValueError, match="new name"):
        register_tuned("DDIM", back)
    # the coefficients belong to the tuned grid: another grid, or fewer steps, is refused
    with pytest.raises(ValueError, match="belong to its own grid"):
        ug.sample(p.model, back, steps=5, schedule="logsnr", noise=z)
    with pytest.raises(ValueError, match="tuned count"):
        ug.sample(p.model, back, steps=3, noise=z)
    with pytest.raises(ValueError, match="saved TunedSolver"):
        TunedSolver.from_state_dict({"format": "something else"})


class _LabelledMLP(torch.nn.Module):
    """A small float32 velocity network with a class embedding (random weights)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(3, 16)
        self.body = torch.nn.Sequential(torch.nn.Linear(2 + 16 + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def forward(self, z, t, y):
        t = t.reshape(-1, 1).expand(z.shape[0], 1)
        return self.body(torch.cat([z, self.embed(y), t], 1))


def test_tuning_a_float32_network_with_conditioning():
    """Tuning through a float32 class-conditional MLP: labels split with the draws, the result no
    worse than its start, and the tuned solver samples in float32 with the same labels."""
    torch.manual_seed(0)
    net = _LabelledMLP()
    model = ug.Model(net, ug.FlowMatching(), "velocity", dtype=torch.float32)
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    labels = torch.arange(64) % 3
    r = ug.tune_solver(model, 4, noise=z, rounds=1, max_iter=5, model_kwargs={"y": labels})
    assert r.rmse <= r.start_rmse
    x, info = ug.sample(model, r.solver, noise=z.float(), model_kwargs={"y": labels})
    assert x.dtype == torch.float32 and info.nfe == 4 and bool(torch.isfinite(x).all())
    y = run_tuned(model, z, r.grid, 3, torch.tensor(r.solver.corrections), corrector=True, model_kwargs={"y": labels})
    assert (x.double() - y).abs().max() < 1e-4  # float32 network, float32 state


def test_bad_input_is_refused_clearly():
    p = gmm_problem(2, "vp")
    with pytest.raises(ValueError, match="steps"):
        ug.tune_solver(p.model, 0, event_shape=(2,))
    with pytest.raises(ValueError, match="history"):
        ug.tune_solver(p.model, 3, event_shape=(2,), history=0)
    with pytest.raises(ValueError, match="unknown loss"):
        ug.tune_solver(p.model, 3, event_shape=(2,), n=8, init="default", losses=("lpips",))
    with pytest.raises(ValueError, match="init times"):
        ug.tune_solver(p.model, 3, event_shape=(2,), n=8, init=torch.tensor([1.0, 0.5, 0.001]))
    with pytest.raises(ValueError, match="order"):
        ug.tune_solver(p.model, 3, event_shape=(2,), order=7)
    with pytest.raises(ValueError, match="init must be"):
        ug.tune_solver(p.model, 3, event_shape=(2,), n=8, init="best")
    with pytest.raises(ValueError, match="event_shape"):
        ug.tune_solver(p.model, 3)
    with pytest.raises(ValueError, match="at least 4"):
        ug.tune_solver(p.model, 3, noise=torch.randn(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        TunedSolver(3, times=[0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="rows"):
        TunedSolver(3, times=[1.0, 0.5, 0.001], corrections=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="finite"):
        TunedSolver(3, times=[1.0, 0.5, 0.001], corrections=[[0.0, math.nan], [0.0, 0.0]])
    with pytest.raises(ValueError, match="times= as well"):
        TunedSolver(3, corrections=[[0.0]])
    with pytest.raises(ValueError, match="order"):
        TunedSolver(5)
    with pytest.raises(ValueError, match='schedule="tuned"'):
        ug.sample(p.model, "DDIM", steps=4, schedule="tuned", shape=(4, 2))
    tuned = TunedSolver(3, times=[1.0, 0.5, 0.2, 0.001])
    with pytest.raises(ValueError, match="tuned from"):
        ug.sample(p.model, tuned, shape=(4, 2), t_end=0.01)
    with pytest.raises(ValueError, match="no tuned grid"):
        TunedSolver(3).grid_times()
    with pytest.raises(ValueError, match="square"):
        least_cost_path(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="steps"):
        least_cost_path(torch.zeros(3, 3), 3)


def test_compiled_sampler_runs_a_tuned_solver_on_its_own_grid(tuned_vp5):
    """unigen.compile resolves the solver's own grid as ug.sample does (eager mode: the same loop)."""
    p, r = tuned_vp5
    z = p.noise(16, torch.Generator().manual_seed(10))
    run = ug.compiled_sampler(p.model, r.solver, shape=(16, 2), dtype=torch.float64, mode="eager")
    assert torch.equal(run(z), ug.sample(p.model, r.solver, noise=z)[0])
