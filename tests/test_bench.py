"""unigen.bench: metric sanity, a tiny NFE sweep, trained problems, the NLL column, callable schedules,
and the nfe_quality script's quick mode."""

import importlib.util
import json
import math
import pathlib
import re
import sys

import pytest
import torch

from unigen.bench import (
    endpoint_rmse,
    gmm_problem,
    rbf_mmd2,
    sliced_wasserstein2,
    sweep,
    trained_problem,
)
from unigen import process as P
from unigen.bench.harness import PROCESS_KINDS, SolverSpec, choose_steps, make_process
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
    # 1-D tensors [N] are scalar samples too (16 projections, as above: in 1-D the default 256 are
    # the same two directions +-1 repeated, at 16x the sorting)
    assert sliced_wasserstein2(a[:, 0], b[:, 0], n_projections=16, generator=_gen(0)) == pytest.approx(m, abs=0.03)


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
    recs = sweep(p, specs, nfe_budgets=(4, 10), n_samples=200, seed=1, nll_samples=0)
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


def test_quick_script_writes_json(tmp_path, capsys):
    """The script's --quick mode end to end (its three problems, the tiny moons model trained and
    cached under its quick step count, tables, JSON, plots) at two budgets, 100 samples and 20 NLL
    points instead of six budgets, 400 and 100: the same code runs, at about half the time."""
    out = tmp_path / "nfe.json"
    # in this process, through main(argv), what the script's command line runs (a fresh interpreter
    # re-paid ~4.5 s of imports; tests/test_calibration.py runs a benchmark script as a file), under
    # a fresh interpreter's float32 default dtype; the thread count it sets is restored
    from benchmarks.nfe_quality import main as nfe_main

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    try:
        assert nfe_main(["--quick", "--out", str(out), "--cache", str(tmp_path / "cache"), "--threads", "1",
                         "--budgets", "4", "10", "--samples", "100", "--nll-samples", "20"]) == 0
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["records"]
    settings = data["settings"]
    assert (settings["budgets"], settings["n_samples"], settings["nll_samples"]) == ([4, 10], 100, 20)
    assert {r["budget"] for r in data["records"]} == {None, 4, 10}
    assert {r["problem"] for r in data["records"]} == {"gmm2-vp", "gmm2-fm", "moons-fm"}  # + a tiny trained model
    assert (tmp_path / "cache" / "moons-fm-velocity-150.pt").exists()
    refs = [r for r in data["records"] if r["budget"] is None]
    assert all(math.isfinite(r["nll"]) for r in refs)
    assert all(abs(r["nll"] - r["nll_exact"]) < 1e-4 for r in refs if not r["trained"])
    assert "| torchdiffeq rk4 |" in stdout and "Legend:" in stdout
    assert all(r["nfe"] <= r["budget"] for r in data["records"] if r["budget"] is not None and r["nfe"] is not None)
    assert "| DDIM |" in stdout
    pngs = sorted(tmp_path.glob("nfe_*.png"))
    if importlib.util.find_spec("matplotlib") is not None:
        assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    else:
        assert not pngs and "matplotlib is not installed" in stdout


# --- trained problems, the NLL column, callable schedules --------------------------------------
def _closed_form_nll(p, x, t):
    """-log p_t(x) / D straight from the mixture (independent of the harness's NLL code)."""
    return float(-p.mixture.marginal_log_prob(x, t, p.process).mean()) / p.dim


def test_nll_column_matches_the_closed_form_for_the_oracle():
    p = gmm_problem(2, "vp")
    recs = sweep(p, [], nfe_budgets=(10, 100), n_samples=64, seed=2, nll_samples=40, nll_methods=("euler", "rk4"))
    ref = recs[0]
    x = p.data_sets(64, 2)[0][:40]
    exact = _closed_form_nll(p, x, 1e-3)  # VP's likelihood starts at t0 = 1e-3
    assert ref["nll_exact"] == pytest.approx(exact, abs=1e-12)
    assert ref["nll"] == pytest.approx(exact, abs=1e-5)  # the accurate dopri5 solve
    rows = {(r["solver"], r["budget"]): r for r in recs[1:]}
    assert set(rows) == {("NLL torchdiffeq euler", 10), ("NLL torchdiffeq euler", 100),
                         ("NLL torchdiffeq rk4", 10), ("NLL torchdiffeq rk4", 100)}
    for r in rows.values():
        assert r["nfe"] <= r["budget"] and r["nll_err"] == pytest.approx(r["nll"] - exact, abs=1e-12)
    rk4 = rows[("NLL torchdiffeq rk4", 100)]
    assert rk4["nfe"] == 100 and abs(rk4["nll_err"]) < 1e-3  # close to the closed form at a large budget
    euler = [rows[("NLL torchdiffeq euler", b)]["nll_err"] for b in (10, 100)]
    assert abs(euler[1]) < 0.3 * abs(euler[0])  # first order: the error falls with the NFE
    assert abs(rk4["nll_err"]) < 0.1 * abs(euler[1])


def test_callable_schedule_is_used_by_choose_steps_and_sweep():
    p = gmm_problem(2, "fm")
    seen = []

    def linear_grid(problem, solver, steps):  # the "uniform" grid, built by hand
        seen.append((problem.name, type(solver).__name__, steps))
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)

    assert choose_steps(Heun(), p, linear_grid, 9) == choose_steps(Heun(), p, "uniform", 9)
    assert seen == []  # choose_steps reads the NFE off the default grid: a callable may be costly (optimised)
    specs = [SolverSpec("named", DDIM, "uniform"), SolverSpec("callable", DDIM, linear_grid)]
    recs = sweep(p, specs, nfe_budgets=(6,), n_samples=50, seed=0, nll_samples=0)
    named, called = recs[1], recs[2]
    assert called["schedule"] == "linear_grid" and called["steps"] == named["steps"] == 6
    assert called["rmse"] == pytest.approx(named["rmse"], abs=1e-12) and called["rmse"] > 1e-3
    assert ("gmm2-fm", "DDIM", 6) in seen

    def crooked(problem, solver, steps):  # a different grid gives a different answer
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** 2

    other = sweep(p, [SolverSpec("crooked", DDIM, crooked)], nfe_budgets=(6,), n_samples=50, nll_samples=0)[1]
    assert abs(other["rmse"] - named["rmse"]) > 1e-3


def test_trained_problem_is_cached(tmp_path):
    p = trained_problem("moons", "fm", train_steps=30, cache_dir=tmp_path)
    assert (tmp_path / "moons-fm-velocity-30.pt").exists()
    assert p.name == "moons-fm" and p.trained and p.info["train_seconds"] is not None
    again = trained_problem("two_moons", "fm", train_steps=30, cache_dir=tmp_path)
    assert again.info["train_seconds"] is None  # loaded, not retrained
    z = torch.randn(8, 2, generator=_gen(0), dtype=torch.float64)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    assert torch.equal(p.model.predict(z, t).velocity, again.model.predict(z, t).velocity)

    import dataclasses

    cheap = dataclasses.replace(p, ref_tol=1e-6, nll_tol=1e-4)  # a 30-step model's field is rough: keep the smoke test fast
    recs = sweep(cheap, [SolverSpec("DDIM", DDIM)], nfe_budgets=(4,), n_samples=32, seed=0, nll_samples=8,
                 nll_methods=("euler",))
    ref, run, nll_row = recs
    assert ref["trained"] and ref["nll_unit"] == "nats/dim" and "nll_exact" not in ref
    assert math.isfinite(ref["nll"]) and ref["nfe"] > 4
    assert run["nfe"] == 4 and math.isfinite(run["rmse"]) and run["rmse"] > 0 and run["nll"] is None
    assert nll_row["solver"] == "NLL torchdiffeq euler" and nll_row["nll_err"] == pytest.approx(nll_row["nll"] - ref["nll"])
    # the floor is data against data: two independent draws of the toy set
    a, b = p.data_sets(64, 0)
    assert a.shape == b.shape == (64, 2) and not torch.equal(a, b)


def test_trained_digits_problem_reports_bits_per_dim(tmp_path):
    pytest.importorskip("sklearn")
    import dataclasses

    from unigen.bench import nll

    p = trained_problem("digits", "fm", train_steps=2, cache_dir=tmp_path)
    assert (tmp_path / "digits-fm-velocity-2-holdout600.pt").exists()
    assert p.event_shape == (1, 8, 8) and p.nll_unit == "bits/dim"
    a, b = p.data_sets(500, 0)  # two disjoint halves of the 600 held-out images
    assert a.shape == b.shape == (300, 1, 8, 8)
    assert not (a[:, None] == b[None]).flatten(2).all(-1).any()
    x = a[:3]
    bits, nfe = nll(p, x, "euler", 2)
    nats, _ = nll(dataclasses.replace(p, dequant=None), x, "euler", 2)
    assert nfe == 2
    # uniform dequantisation with bins of 1/8: bits/dim = nats/dim / ln 2 + log2(8)
    assert torch.allclose(bits, nats / math.log(2) + 3.0, rtol=0, atol=1e-12)


def test_problem_names_and_table_include_nll():
    from unigen.bench import get_problem
    from unigen.bench.report import table

    assert get_problem("gmm16-fm").dim == 16
    with pytest.raises(ValueError, match="unknown data"):
        get_problem("nope-fm")
    recs = sweep(gmm_problem(2, "vp"), [SolverSpec("DDIM", DDIM)], nfe_budgets=(4,), n_samples=50, nll_samples=10,
                 nll_methods=("midpoint",), progress=True)  # a tqdm bar if tqdm is installed, else nothing
    md = table(recs)
    assert "closed form" in md and "| torchdiffeq midpoint |" in md and "| DDIM |" in md


# --- the printed report: every column defined, only shown metrics named, one endpoint, plain ticks ---
METRIC_NAMES = ("RMSE", "SW2", "MMD", "NLL", "FID", "KID", "W1")


def _tables(md: str) -> list[tuple[list, list, dict]]:
    """(header cells, body cells, legend {term: definition}) of each table in ``table``'s output."""
    out = []
    for block in md.split("### ")[1:]:
        lines = block.splitlines()
        rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.startswith("|")]
        header, body = rows[0], [c for row in rows[2:] for c in row[1:]]
        legend = {}
        for ln in lines[lines.index("Legend:") + 1:]:
            if ln.startswith("- "):
                term, _, text = ln[2:].partition(": ")
                legend[term] = text
        out.append((header, body, legend))
    return out


def _table_records():
    p = gmm_problem(2, "vp")
    specs = [SolverSpec("DDIM", DDIM), SolverSpec("Heun", Heun), "DDPM"]
    return p, sweep(p, specs, nfe_budgets=(4, 15), n_samples=100, seed=0, nll_samples=20, nll_methods=("midpoint",),
                    nll_accurate=False)


def test_table_legend_defines_every_column_and_symbol_and_names_only_shown_metrics():
    from unigen.bench.report import table

    _, recs = _table_records()
    md = table(recs)
    tables = _tables(md)
    assert len(tables) == 2  # samplers, likelihood
    for header, body, legend in tables:
        terms = {t.strip() for term in legend for t in term.split(",")}
        assert set(header) <= terms, (header, sorted(terms))  # every column header is a legend term
        assert any(t.startswith("cell = ") for t in legend)
        if any("NFE]" in c for c in body):  # a real NFE below the budget is shown and explained
            assert "[k NFE]" in terms
        else:
            assert "[k NFE]" not in terms
        if any("^" in c for c in body):
            assert "^" in terms
        for word in ("skip", "error"):
            if word in body:
                assert word in terms
    samplers, nll_table = tables[0], tables[1]
    heun = [c for c in samplers[1] if "[14 NFE]" in c]  # Heun (2 calls per step, 1 for its last) at budget 15
    assert len(heun) == 1
    assert any(c.startswith("- / ") for c in samplers[1])  # DDPM has no RMSE ...
    assert "stochastic solver" in samplers[2]["cell = RMSE / SW2"]  # ... and the legend says why
    assert "[14 NFE]" in " ".join(nll_table[1])  # midpoint: 2 calls per step
    # a metric is named only where it is shown: in a table's cell definition
    shown = {m for _, _, legend in tables for term in legend if term.startswith("cell = ")
             for m in METRIC_NAMES if m in term}
    named = {m for m in METRIC_NAMES if re.search(rf"\b{m}", md)}
    assert shown == {"RMSE", "SW2", "NLL"} and named <= shown, named - shown
    assert "MMD" not in md and "^2" not in md


def test_table_marks_and_explains_error_rising_with_nfe():
    from unigen.bench.report import table

    ref = {"problem": "toy", "dim": 2, "process": "vp", "n_samples": 10, "trained": False, "budget": None, "nfe": 50,
           "solver": "reference dopri5 (rtol 1e-10)", "sw2": 0.2, "sw2_floor": 0.2, "sw2_floor_sd": 0.01,
           "floor_draws": 16, "t_end": 0.001, "sigma_end": 0.01, "stochastic": False, "rmse": 0.0}
    runs = [dict(ref, solver="S", budget=b, nfe=b, rmse=e, sw2=0.3) for b, e in ((4, 0.2), (6, 0.4), (8, 0.1), (10, 0.1))]
    header, body, legend = _tables(table([ref, *runs]))[0]
    assert body == ["0.2 / 0.3", "0.4^ / 0.3", "0.1 / 0.3", "0.1 / 0.3"]  # equal is not a rise
    assert "pre-asymptotic" in legend["^"] and "(S at NFE 6)" in legend["^"]
    assert "multistep" not in legend["^"]  # S is not a multistep method: no word about multistep start-up
    _, body, legend = _tables(table([ref, *(dict(r, rmse=0.5 / r["nfe"]) for r in runs)]))[0]
    assert "^" not in legend and not any("^" in c for c in body)  # no rise, no mark, no footnote
    # every rise is listed, per row; a multistep row brings the multistep explanation
    uni = [dict(r, solver="UniPC(3)", rmse=e) for r, e in zip(runs, (0.21, 0.36, 0.1, 0.2))]
    _, body, legend = _tables(table([ref, *runs, *uni]))[0]
    assert sum("^" in c for c in body) == 3
    assert "(S at NFE 6; UniPC(3) at NFE 6 and 10)" in legend["^"] and "multistep" in legend["^"]
    # a budget whose real NFE equals the previous one's (rk4 at 6 runs as at 4) is no rise
    flat = [dict(r, nfe=4 if r["budget"] == 6 else r["nfe"]) for r in runs]
    _, body, legend = _tables(table([ref, *flat]))[0]
    assert "^" not in legend and body[1] == "0.4 / 0.3 [4 NFE]" and "[k NFE]" in legend


@pytest.mark.parametrize("kind,where", [("vp", "stops at t = 0.001 (sigma = 0.0105)"), ("fm", "ends at sigma = 0")])
def test_every_sampler_and_the_reference_end_at_the_same_endpoint(kind, where):
    """All rows, the reference and the data the samples meet are at one time (VP: t_end = 1e-3, where
    the exact marginal is data plus sigma noise; FM: sigma = 0, clean data); the legend says which."""
    from unigen.bench.report import table

    p = gmm_problem(2, kind)
    recs = sweep(p, [SolverSpec("DDIM", DDIM), "DDPM"], nfe_budgets=(5,), n_samples=64, seed=3, nll_samples=0)
    ref = recs[0]
    assert {(r["t_end"], r["sigma_end"]) for r in recs} == {(ref["t_end"], ref["sigma_end"])}
    assert where in _tables(table(recs))[0][2]["endpoint"]
    x = torch.randn(5, 2, generator=_gen(0), dtype=torch.float64)
    e = torch.randn(5, 2, generator=_gen(1), dtype=torch.float64)
    t = torch.tensor([ref["t_end"]], dtype=torch.float64)
    want = p.process.alpha(t) * x + p.process.sigma(t) * e
    assert torch.allclose(p.at_time(x, ref["t_end"], e), want, rtol=0, atol=1e-15)
    assert (ref["sigma_end"] == 0.0) == (kind == "fm")


def test_reference_is_never_beaten_by_more_than_sampling_noise():
    """A stochastic sampler draws its own noise, so on one small draw its SW2 can fall below the exact
    reference's (the quick table once showed DDPM 0.138 under dopri5 0.188 at n = 400: the spread of
    SW2 between independent exact sets of 400 is ~0.05). At a common endpoint nothing beats the
    reference by more than that noise, and the reference itself sits within the floor's spread."""
    p = gmm_problem(2, "vp")
    recs = sweep(p, ["DDPM", SolverSpec("DDIM", DDIM), SolverSpec("DPMSolverPP(2M)", lambda: DPMSolverPP(order=2))],
                 nfe_budgets=(10, 40), n_samples=300, seed=0, nll_samples=0)
    ref, runs = recs[0], recs[1:]
    sd = ref["sw2_floor_sd"]
    assert ref["floor_draws"] >= 8 and 0 < sd < 0.5 * ref["sw2_floor"]
    assert abs(ref["sw2"] - ref["sw2_floor"]) < 3 * sd  # the ODE's samples are exact samples
    for r in runs:
        assert r["sw2"] > ref["sw2"] - 3 * math.sqrt(2) * sd, (r["solver"], r["budget"], r["sw2"], ref["sw2"], sd)
        assert (r["t_end"], r["sigma_end"]) == (ref["t_end"], ref["sigma_end"])
    ddim = {r["budget"]: r["sw2"] for r in runs if r["solver"] == "DDIM"}
    assert ddim[40] < ddim[10]  # a deterministic row approaches the reference's value


def test_log_tick_formatter_writes_plain_numbers():
    from unigen.bench.report import _log_ticks, _plain

    assert [_plain(v) for v in (4.0, 6.0, 10.0, 20.0, 100.0, 0.02, 0.005)] == ["4", "6", "10", "20", "100", "0.02", "0.005"]
    ticks = _log_ticks(0.004, 0.6)
    assert 2 <= len(ticks) <= 8 and all(0.004 <= t <= 0.6 for t in ticks)
    assert all(re.fullmatch(r"[0-9.]+", _plain(t)) for t in ticks), ticks  # 0.005, 0.01, ... not 5x10^-3
    assert len(_log_ticks(0.15, 0.5)) >= 2  # a narrow range still gets labelled ticks
    assert _log_ticks(0.0, 1.0) == [] and _log_ticks(1.0, 1.0) == []
    assert 2 <= len(_log_ticks(1e-9, 1.0)) <= 8  # many decades are thinned too


def test_plot_ticks_are_plain_numbers():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from unigen.bench.report import figure

    ref = {"problem": "toy", "dim": 2, "process": "vp", "n_samples": 10, "trained": False, "budget": None, "nfe": 300,
           "solver": "reference dopri5 (rtol 1e-10)", "sw2": 0.19, "sw2_floor": 0.17, "sw2_floor_sd": 0.03,
           "floor_draws": 16, "t_end": 0.001, "sigma_end": 0.01, "stochastic": False, "rmse": 0.0, "nll_unit": "nats/dim",
           "nll_exact": 1.28}
    runs = [dict(ref, solver=s, budget=b, nfe=b - (s == "Heun"), rmse=c / b ** k, sw2=0.19 + 1 / b, stochastic=False)
            for s, c, k in (("DDIM", 2.0, 1), ("Heun", 3.0, 2)) for b in (4, 6, 8, 10, 15, 20)]
    runs += [dict(ref, solver="NLL torchdiffeq rk4", budget=b, nfe=b, nll=1.3, nll_err=1.0 / b ** 4, rmse=None, sw2=None)
             for b in (4, 8, 20)]
    fig = figure([ref, *runs])
    fig.canvas.draw()
    labels = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels += [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    plt.close(fig)
    assert labels and "4" in labels and "20" in labels
    bad = [s for s in labels if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?", s)]
    assert not bad, bad  # no "4x10^0", no mathtext


def test_make_process_reads_the_registry():
    for kind in PROCESS_KINDS:
        make_process(kind)
    vp, param = make_process("vp")
    assert type(vp) is P.VPLinear and param == "eps"
    fm, param = make_process("fm")
    assert type(fm) is P.REGISTRY["FlowMatching"] and param == "velocity"
    ddpm, param = make_process("ddpm")
    assert ddpm.to_config() == P.process_examples()["vp_discrete"].to_config() and param == "eps"
    assert make_process("vp_discrete_zsnr")[1] == "velocity"  # zero terminal SNR: alpha = 0 at the start
    assert make_process("VPCosine")[1] == "eps"  # sampling starts at 0.9946, where alpha > 0
    assert make_process("cosine")[1] == "velocity"
    with pytest.raises(ValueError, match=r"unknown process kind 'vpp'; valid kinds are .*ddpm.*vp_discrete_zsnr"):
        make_process("vpp")
    assert gmm_problem(2, "ve").name == "gmm2-ve"


def test_bench_progress_falls_back_to_the_counter_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    sweep(gmm_problem(2, "vp"), [SolverSpec("DDIM", DDIM)], nfe_budgets=[4], n_samples=64, seed=0, progress=True)
    assert re.search(r"\rgmm2-vp: (\d+)/\1\n$", capsys.readouterr().err)
