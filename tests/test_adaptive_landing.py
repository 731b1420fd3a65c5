"""Adaptive integrates the last interval onto zero noise (sigma = 0) too.

Fixed-step solvers end with ``Solver.final_step``, the first-order jump onto x0_hat (DDIM at
sigma_next = 0). Adaptive used to inherit it, so a one-step run (its default) returned
x0_hat(z_T, t_max), the data mean, and a many-step run carried an O(h) error on its last
interval. ``Adaptive.final_step`` solves that interval in the flow-matching view and lands on
x0_hat just above sigma = 0 where the output does not determine eps there. The samples are
compared, at a tolerance far below the old errors, with

* ``ug.reference.ode_endpoint`` (dopri5 at 1e-10) on a three-component mixture;
* the closed-form flow of a single Gaussian (``GaussianMixture.exact_ode_solution``);

on flow matching, EDM (a grid onto sigma = 0), a DDPM table ending at its clean point, and
VE, whose sigma never reaches 0 (sigma_min > 0): there the grid has no zero-noise end and the
run must be as accurate as before.
"""

import functools

import pytest
import torch

import unigen as ug
from helpers import DDPM_BETAS

TOL = 1e-8  # Adaptive's rtol = atol
BOUND = 30 * TOL  # measured up to ~2 TOL; the old last-step jump erred by 1e-5 (EDM) to 2 (one step)
PARAMS = ["eps", "x0", "velocity", "denoiser"]

# name -> (process, steps=1 grid, steps>1 grid); grids as explicit times, ending at sigma = 0 except VE's
# (the DDPM table's steps>1 grid starts low: every interval before the last is solved in the table's own
# clock, which stops at each of the table's kinks it crosses, ~6 calls each)
CASES = {
    "fm": (ug.FlowMatching(), [0.99, 0.0], [0.99, 0.6, 0.2, 0.0]),
    "edm": (ug.EDM(), [80.0, 0.0], [80.0, 2.5, 0.002, 0.0]),
    "ddpm": (ug.VP.discrete(DDPM_BETAS), [1.0, 0.0], [0.02, 0.01, 0.0]),
    "ve": (ug.VE(), [1.0, 0.0], [1.0, 0.5, 0.2, 0.0]),
}


def mixture(k):
    means = torch.tensor([[-1.5, 0.5], [1.0, 1.25], [0.25, -1.75]])[:k]
    return ug.GaussianMixture(means, torch.tensor([0.3, 0.55, 0.8])[:k], torch.tensor([0.2, 0.5, 0.3])[:k])


def start(process, t0):
    xi = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    return xi * float(process.sigma(torch.tensor(t0))) + 0.3


@functools.lru_cache(maxsize=None)
def reference(case, multi):
    """(z, reference endpoint) of a case's grid: one solve, shared by the parametrizations (the
    mixture's models of every output type are exact conversions of one another)."""
    process, one, many = CASES[case]
    times = many if multi else one
    z = start(process, times[0])
    ref, _ = ug.reference.ode_endpoint(mixture(3).model(process, "eps"), z, times[0], times[-1], tol=1e-10)
    return z, ref


def adaptive_run(model, times, z):
    x, info = ug.sample(model, ug.solvers.Adaptive(rtol=TOL, atol=TOL), schedule=torch.tensor(times), noise=z)
    return x, info


@pytest.mark.parametrize("multi", [False, True], ids=["steps=1", "steps>1"])
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_adaptive_matches_the_reference_solve(case, param, multi):
    process, one, many = CASES[case]
    times = many if multi else one
    z, ref = reference(case, multi)
    x, info = adaptive_run(mixture(3).model(process, param), times, z)
    err = float((x - ref).abs().max())
    assert err < BOUND, f"{case} {param} {times}: max |x - reference| = {err:.3g} (tolerance {TOL:g})"
    assert info.nfe > 10 * (len(times) - 1)  # every interval, the last included, is a real solve


@pytest.mark.parametrize("multi", [False, True], ids=["steps=1", "steps>1"])
@pytest.mark.parametrize("param", ["x0", "velocity"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_adaptive_matches_the_exact_gaussian_flow(case, param, multi):
    process, one, many = CASES[case]
    times = many if multi else one
    gm = mixture(1)
    z = start(process, times[0])
    x, _ = adaptive_run(gm.model(process, param), times, z)
    exact = gm.exact_ode_solution(z, times[0], times[-1], process)
    err = float((x - exact).abs().max())
    assert err < BOUND, f"{case} {param} {times}: max |x - exact flow| = {err:.3g} (tolerance {TOL:g})"


def test_grids_end_at_zero_noise_except_ve():
    """The cases above test the landing: every grid but VE's ends at sigma = 0 (VE's sigma_min > 0)."""
    for name, (process, one, many) in CASES.items():
        for times in (one, many):
            sigma_end = float(process.sigma(torch.tensor(times[-1])))
            assert (sigma_end == 0.0) == (name != "ve"), (name, times, sigma_end)


def test_default_one_step_run_is_the_ode_solution_not_the_data_mean():
    """The report's reproduction: ug.sample(model, "Adaptive") from flow matching's t = 1 (default
    steps=1, tolerance 1e-5) returned x0_hat(z_1, 1), the mixture mean, in every row."""
    gm = ug.analytic.ring_mixture()
    model = gm.model(ug.FlowMatching(), "x0")
    z = ug.FlowMatching().prior_sample((4, 2), generator=torch.Generator().manual_seed(1))
    x, info = ug.sample(model, "Adaptive", noise=z)
    ref, _ = ug.reference.ode_endpoint(model, z, 1.0, 0.0)
    assert float((x - ref).abs().max()) < 1e-3  # rtol = atol = 1e-5 (the old result was off by ~2)
    assert float((x - x[0]).abs().max()) > 1.0  # not one point for every row
    assert info.nfe > 20


def test_nfe_counts_every_call_and_the_landing_call():
    """info.nfe counts each model evaluation of the last interval's solve and, where it lands on
    x0_hat above sigma = 0 (an x0 output), the one extra call there; a velocity output of flow
    matching determines eps at t = 0 and runs onto it with no extra call."""
    gm = mixture(3)
    calls = {"n": 0}
    for param, landing in (("x0", 1), ("velocity", 0)):
        inner = gm.model(ug.FlowMatching(), param)

        def fn(z, t, inner=inner):
            calls["n"] += 1
            return inner.fn(z, t)

        counted = ug.Model(fn, ug.FlowMatching(), param)
        calls["n"] = 0
        _, info = adaptive_run(counted, [0.99, 0.0], start(ug.FlowMatching(), 0.99))
        assert info.nfe == calls["n"]
        # dopri5: f(t0) and the initial step selection's call, 6 per step (accepted or rejected), then the landing call
        assert (info.nfe - landing - 2) % 6 == 0, (param, info.nfe)


def test_a_network_defined_above_zero_noise_is_not_called_below_its_range():
    """A DDPM network is defined on t >= 1/N (``model_range``): the last interval is solved down
    to 1/N and lands on x0_hat there, as a fixed-step solver's last step lands from its last
    time; the network is never called below 1/N."""
    process = ug.VP.discrete(DDPM_BETAS)
    exact = mixture(3).model(process, "eps")
    seen = []

    def fn(z, t):
        seen.append(float(t))
        return exact.fn(z, t)

    model = ug.Model(fn, process, "eps")
    lo = model.t_range[0]
    assert lo == 1 / 1000
    z = start(process, 1.0)
    x, info = adaptive_run(model, [1.0, 0.0], z)
    assert min(seen) >= lo * (1 - 1e-12) and info.nfe == len(seen) > 20
    at_lo, _ = ug.reference.ode_endpoint(exact, z, 1.0, lo, tol=1e-10)
    err = float((x - exact(at_lo, lo).x0).abs().max())
    assert err < BOUND, f"max |x - x0_hat(ODE solution at t = 1/N)| = {err:.3g}"
