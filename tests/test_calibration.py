"""Optimised step grids (unigen.calibration): the optimiser, the grid parametrisation, the
gain on a held-out batch against the exact PF-ODE endpoint, and schedule="optimized"."""

import math

import pytest
import torch

import unigen as ug
from unigen.calibration import (
    along_grid,
    grid_positions,
    nelder_mead,
    optimize_schedule,
    optimized_grid,
)
from unigen.schedules import make_grid, sample_range


def test_nelder_mead_finds_the_minimum_of_a_rosenbrock_valley():
    f = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2 + (x[2] - 0.5) ** 2
    x, fx, evals = nelder_mead(f, [-1.2, 1.0, 0.0], max_evals=3000, tol=1e-14)
    assert fx < 1e-8 and evals <= 3000
    assert max(abs(a - b) for a, b in zip(x, [1.0, 1.0, 0.5])) < 1e-3


def test_nelder_mead_respects_the_budget_and_survives_infinite_values():
    calls = []
    f = lambda x: math.inf if x[0] < 0 else (x[0] - 2) ** 2 + x[1] ** 2
    x, fx, evals = nelder_mead(lambda x: calls.append(1) or f(x), [1.0, 1.0], max_evals=60)
    assert evals == len(calls) and evals <= 60 + 3  # a shrink may finish its sweep
    assert fx < f([1.0, 1.0]) and x[0] >= 0  # never returned an infeasible point


@pytest.mark.parametrize("kind", ["vp", "fm", "ddpm"])
def test_zero_logits_are_the_default_grid_and_any_logits_give_a_valid_grid(kind):
    from unigen.bench.harness import make_process
    from unigen.schedules import default_schedule

    process, _ = make_process(kind)
    base = default_schedule(process)
    for steps in (1, 3, 10):
        per = -(-4096 // steps)
        dense = make_grid(process, base, per * steps)
        grid = along_grid(dense, grid_positions(torch.zeros(steps, dtype=torch.float64)))
        torch.testing.assert_close(grid, make_grid(process, base, steps), rtol=1e-12, atol=1e-12)
        theta = torch.randn(steps, generator=torch.Generator().manual_seed(steps), dtype=torch.float64) * 3
        g = along_grid(dense, grid_positions(theta))
        assert (g[1:] < g[:-1]).all() and float(g[0]) == float(dense[0]) and abs(float(g[-1]) - float(dense[-1])) < 1e-12


@pytest.fixture(scope="module")
def problem():
    from unigen.bench import gmm_problem

    return gmm_problem(2, "vp")


def test_optimised_grid_beats_the_default_grid_on_held_out_noise(problem):
    """The optimised 10-step UniPC(3) grid is tuned on one batch and evaluated on another,
    against the dopri5 endpoint of the same PF-ODE (the exact mixture model)."""
    solver = ug.UniPC(order=3)
    calib = problem.noise(256, torch.Generator().manual_seed(7))
    # 100 evaluations: held-out error 0.20x the default grid's (0.16x at 200), asserted 0.5x
    res = optimize_schedule(problem.model, solver, 10, noise=calib, max_evals=100)
    assert res.grid.shape == (11,) and (res.grid[1:] < res.grid[:-1]).all()
    assert (float(res.grid[0]), float(res.grid[-1])) == sample_range(problem.process)
    assert res.rmse < res.default_rmse and res.evaluations <= 100 + 3

    z = problem.noise(400, torch.Generator().manual_seed(8))
    ref, _ = problem.reference(z, *sample_range(problem.process))
    err = lambda grid: float(((ug.sample(problem.model, solver, schedule=grid, noise=z)[0] - ref) ** 2).mean().sqrt())
    default, tuned = err(res.default_grid), err(res.grid)
    assert tuned < 0.5 * default, (tuned, default)


def test_schedule_optimized_in_sample_is_computed_once_and_reused(problem, monkeypatch):
    import unigen.calibration as cal

    calls = []
    real = cal.optimize_schedule

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **{**k, "max_evals": 30, "n": 64})

    monkeypatch.setattr(cal, "optimize_schedule", counting)
    z = problem.noise(8, torch.Generator().manual_seed(9))
    x1, info = ug.sample(problem.model, "DPMSolverPP", steps=4, schedule="optimized", noise=z)
    x2, _ = ug.sample(problem.model, "DPMSolverPP", steps=4, schedule="optimized", noise=z)
    assert len(calls) == 1 and torch.equal(x1, x2) and info.nfe == 4
    torch.testing.assert_close(info.times, optimized_grid(problem.model, "DPMSolverPP", 4, (2,)).to(info.times))


def test_errors(problem):
    z = problem.noise(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="deterministic"):
        optimize_schedule(problem.model, ug.DDPM(), 5, noise=z)
    with pytest.raises(ValueError, match="positive integer"):
        optimize_schedule(problem.model, ug.DDIM(), 0, noise=z)
    with pytest.raises(ValueError, match="noise=|event_shape"):
        optimize_schedule(problem.model, ug.DDIM(), 3)
    with pytest.raises(ValueError, match="steps="):
        ug.sample(problem.model, ug.DDIM(), schedule="optimized", noise=z)


def test_optimized_schedules_benchmark_smoke(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "opt.json"
    cmd = [sys.executable, str(root / "benchmarks" / "optimized_schedules.py"), "--dims", "2", "--processes", "fm",
           "--budgets", "6", "--solvers", "UniPC(2)", "--samples", "50", "--calibration", "64", "--evals", "20",
           "--peers", str(tmp_path / "none.json"), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    (rec,) = data["records"]
    assert rec["nfe"] <= 6 and rec["optimized_rmse"] <= rec["default_rmse"] * 1.5
    assert "| gmm2-fm | 6 |" in res.stdout


@pytest.mark.parametrize("case", ["vp", "vp-to-0", "ddpm-to-0", "fm", "edm"])
def test_ode_endpoint_is_the_exact_flow_map_even_onto_zero_noise(case):
    from unigen.reference import ode_endpoint

    process = {"vp": ug.VP.linear(), "vp-to-0": ug.VP.linear(), "ddpm-to-0": ug.VP.discrete(torch.linspace(1e-4, 0.02, 1000)),
               "fm": ug.FlowMatching(), "edm": ug.EDM()}[case]
    gm = ug.GaussianMixture(torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([0.7]))
    t0, t1 = sample_range(process)
    t1 = 0.0 if case.endswith("-to-0") else t1
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(3)) * float(process.sigma(torch.tensor(t0)))
    x, nfe = ode_endpoint(gm.model(process, "eps" if process.__class__.__name__ != "FlowMatching" else "velocity"), z, t0, t1)
    torch.testing.assert_close(x, gm.exact_ode_solution(z, t0, t1, process), rtol=1e-8, atol=1e-8)
    assert nfe > 10


def test_a_float32_model_is_calibrated_in_float32():
    """The calibration batch's dtype is what the model sees (a float32 network would reject
    float64); the reference solve runs in it with a tolerance the dtype can reach."""
    gm = ug.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float32),
                            torch.tensor([0.4, 0.4], dtype=torch.float32))
    seen = set()
    exact = gm.model(ug.VP.linear(), "eps")

    def net(z, t):
        seen.add(z.dtype)
        return exact.predict(z, t).out

    model = ug.Model(net, ug.VP.linear(), "eps")
    calib = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    res = optimize_schedule(model, ug.DPMSolverPP(2), 5, noise=calib, max_evals=40)
    assert seen == {torch.float32} and math.isfinite(res.rmse) and res.rmse <= res.default_rmse
    x, _ = ug.sample(model, ug.DPMSolverPP(2), steps=5, schedule="optimized", shape=(4, 2), dtype=torch.float32)
    assert x.dtype == torch.float32 and seen == {torch.float32}


@pytest.mark.parametrize("param", ["x0", "denoiser"])
def test_ode_endpoint_lands_on_zero_noise_for_outputs_that_do_not_determine_eps_there(param):
    """x0 / denoiser outputs give the velocity as 0/0 at sigma = 0: the reference stops at the
    flow-matching time 1e-9 and lands on x0_hat; against the exact Gaussian flow (measured 2e-9)."""
    from unigen.reference import ode_endpoint

    g = ug.GaussianMixture(torch.tensor([[0.5, -1.0]], dtype=torch.float64), torch.tensor([[0.6, 1.3]], dtype=torch.float64))
    z = 80.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = ug.EDM()
    x, nfe = ode_endpoint(g.model(p, param), z, 80.0, p.t_min)
    assert float(p.sigma(torch.tensor(p.t_min, dtype=torch.float64))) == 0.0
    assert float((x - g.exact_ode_solution(z, 80.0, p.t_min, p)).abs().max()) < 2e-8
