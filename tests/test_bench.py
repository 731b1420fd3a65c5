"""unigen.bench: metric sanity, a tiny NFE sweep, and the nfe_quality script's quick mode."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

from unigen.bench import endpoint_rmse, gmm_problem, rbf_mmd2, sliced_wasserstein2, sweep
from unigen.bench.harness import SolverSpec, choose_steps
from unigen.solvers import DDIM, DPMSolverPP, Heun

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_mmd_identical_distributions_is_near_zero_and_shift_is_positive():
    a = torch.randn(600, 3, generator=_gen(0), dtype=torch.float64)
    b = torch.randn(600, 3, generator=_gen(1), dtype=torch.float64)
    same = rbf_mmd2(a, b, bandwidths=(0.5, 1.0, 2.0))
    shifted = rbf_mmd2(a, b + 1.0, bandwidths=(0.5, 1.0, 2.0))
    assert abs(same) < 5e-3  # unbiased: may be slightly negative
    assert shifted > 0.1
    assert shifted > 20 * abs(same)
    # the median-heuristic default behaves the same way
    assert abs(rbf_mmd2(a, b)) < 5e-3 < rbf_mmd2(a, b + 1.0)


def test_mmd_unbiased_has_zero_mean_under_the_null():
    vals = [rbf_mmd2(torch.randn(100, 2, generator=_gen(2 * i)), torch.randn(100, 2, generator=_gen(2 * i + 1)),
                     bandwidths=1.0) for i in range(40)]
    mean = sum(vals) / len(vals)
    sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    assert abs(mean) < 3 * sd / len(vals) ** 0.5 + 1e-6
    assert min(vals) < 0  # the unbiased estimator crosses zero


def test_sw2_of_a_sample_with_itself_is_zero():
    a = torch.randn(500, 4, generator=_gen(3), dtype=torch.float64)
    assert sliced_wasserstein2(a, a, generator=_gen(0)) == 0.0
    assert sliced_wasserstein2(a, a[torch.randperm(500, generator=_gen(4))], generator=_gen(0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("m", [0.5, 1.0, 3.0])
def test_sw2_between_shifted_gaussians_in_1d_is_the_shift(m):
    # 1-D W2(N(0,1), N(m,1)) = |m|; in 1-D every projection is +-1, so SW2 = W2 of the samples
    a = torch.randn(20000, 1, generator=_gen(5), dtype=torch.float64)
    b = torch.randn(20000, 1, generator=_gen(6), dtype=torch.float64) + m
    assert sliced_wasserstein2(a, b, n_projections=16, generator=_gen(0)) == pytest.approx(m, abs=0.03)
    # 1-D tensors [N] are scalar samples too
    assert sliced_wasserstein2(a[:, 0], b[:, 0], generator=_gen(0)) == pytest.approx(m, abs=0.03)


def test_endpoint_rmse():
    x = torch.zeros(10, 3)
    assert endpoint_rmse(x, x) == 0.0
    assert endpoint_rmse(x + 2.0, x) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        endpoint_rmse(x, torch.zeros(10, 2))


def test_metric_errors():
    with pytest.raises(ValueError, match="bandwidths"):
        rbf_mmd2(torch.randn(5, 2), torch.randn(5, 2), bandwidths=(-1.0,))
    with pytest.raises(ValueError, match="at least 2"):
        rbf_mmd2(torch.randn(1, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="process"):
        gmm_problem(2, "nope")


def test_choose_steps_respects_budget():
    p = gmm_problem(2, "vp")
    assert choose_steps(Heun(), p, "logsnr", 4) == 2  # 2 calls per step
    assert choose_steps(Heun(), p, "logsnr", 1) is None  # Heun cannot run on one call here
    assert choose_steps(DDIM(), p, "logsnr", 7) == 7


def test_tiny_sweep():
    p = gmm_problem(2, "vp")
    specs = [SolverSpec("DDIM", DDIM), SolverSpec("DPMSolverPP(2)", lambda: DPMSolverPP(order=2))]
    recs = sweep(p, specs, nfe_budgets=(4, 10), n_samples=200, seed=1)
    ref = [r for r in recs if r["budget"] is None]
    runs = [r for r in recs if r["budget"] is not None]
    assert len(ref) == 1 and ref[0]["nfe"] > 20
    assert len(runs) == 4 and not any(r.get("error") for r in runs)
    for r in runs:
        assert r["nfe"] <= r["budget"]
        assert all(math.isfinite(r[k]) for k in ("rmse", "sw2", "mmd2", "sw2_floor", "mmd2_floor"))
    dpm = {r["budget"]: r for r in runs if r["solver"] == "DPMSolverPP(2)"}
    assert dpm[10]["rmse"] < dpm[4]["rmse"]
    assert dpm[10]["rmse"] < 0.5 * dpm[4]["rmse"]


def test_reference_reaches_zero_noise_for_flow_matching():
    p = gmm_problem(2, "fm")
    z = p.noise(50, _gen(0))
    x, nfe = p.reference(z, 1.0, 0.0)
    assert nfe > 20  # integrated, not the one-call jump to x0_hat
    # a fine DPM-Solver++ run agrees with it
    from unigen import sample

    y, _ = sample(p.model, DPMSolverPP(order=2), steps=200, noise=z)
    assert endpoint_rmse(y, x) < 1e-3


def test_quick_script_writes_json(tmp_path):
    out = tmp_path / "nfe.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "nfe_quality.py"), "--quick", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["records"]
    assert all(r["nfe"] <= r["budget"] for r in data["records"] if r["budget"] is not None and r["nfe"] is not None)
    assert "| DDIM |" in res.stdout
    pngs = sorted(tmp_path.glob("nfe_*.png"))
    if importlib.util.find_spec("matplotlib") is not None:
        assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    else:
        assert not pngs and "matplotlib is not installed" in res.stdout
