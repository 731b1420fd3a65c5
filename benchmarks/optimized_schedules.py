#!/usr/bin/env python
r"""Optimised step grids against the default grids and against the best peer, at small NFE.

For each exact-oracle problem (``unigen.bench.gmm_problem``: 2-D and 16-D mixtures under
VP, flow matching and a 1000-step DDPM table) and NFE budget, every deterministic solver in
the list runs twice on the same held-out noise: on the process's default grid and on a grid
optimised for that solver and model by ``unigen.optimize_schedule`` (tuned on a separate
calibration batch against the dopri5 endpoint of the same PF-ODE). Metric: endpoint RMSE
against the dopri5 (rtol 1e-10) solve from the held-out noise, as in ``nfe_quality.py``.

When ``benchmarks/results/peers.json`` exists (``python -m benchmarks.peers``), the best peer's
RMSE at the same NFE is printed beside unigen's best, with the ratio (the issue's target at
NFE 10: <= 0.5).

Usage (from the repository root)::

    python -m benchmarks.optimized_schedules --quick      # 2-D VP, NFE 10, two solvers (< 1 min)
    python -m benchmarks.optimized_schedules              # 2-D and 16-D x vp/fm/ddpm, NFE 6/10/20
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from unigen import optimize_schedule, sample
from unigen.bench import choose_steps, endpoint_rmse, gmm_problem
from unigen.schedules import sample_range
from unigen.solvers import REGISTRY

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLVERS = {
    "UniPC(3)": lambda: REGISTRY["UniPC"](order=3),
    "UniPC(2)": lambda: REGISTRY["UniPC"](order=2),
    "DPMSolverPP(3M)": lambda: REGISTRY["DPMSolverPP"](order=3),
    "DPMSolverPP(2M)": lambda: REGISTRY["DPMSolverPP"](order=2),
    "Heun": lambda: REGISTRY["Heun"](),
}


def best_peers(path: pathlib.Path) -> dict:
    """{problem: {nfe (str): {"sampler", "rmse", ...}}} from peers.json, or {} when absent."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("best_peer", {})


def run_problem(problem, budgets, labels, n_test, n_calib, max_evals, seed, say) -> list[dict]:
    t_start, t_end = sample_range(problem.process)
    z = problem.noise(n_test, torch.Generator().manual_seed(seed * 1000 + 1))  # the sweep's noise
    calib = problem.noise(n_calib, torch.Generator().manual_seed(seed * 1000 + 777))
    ref, _ = problem.reference(z, t_start, t_end)
    records = []
    for label in labels:
        for budget in budgets:
            solver = SOLVERS[label]()
            steps = choose_steps(solver, problem, problem.schedule, budget)
            if steps is None:
                continue
            t0 = time.perf_counter()
            try:
                res = optimize_schedule(problem.model, solver, steps, noise=calib, max_evals=max_evals)
            except ValueError as e:
                say(f"[{problem.name}] {label} @ {budget}: {e}")
                continue
            secs = time.perf_counter() - t0
            rec = {"problem": problem.name, "solver": label, "budget": budget, "steps": steps,
                   "calibration_seconds": secs, "evaluations": res.evaluations, "grid": res.grid.tolist()}
            for kind, grid in (("default", res.default_grid), ("optimized", res.grid)):
                try:
                    x, info = sample(problem.model, solver, schedule=grid, noise=z)
                    rec[f"{kind}_rmse"], rec["nfe"] = endpoint_rmse(x, ref), int(info.nfe)
                except ValueError as e:  # e.g. a noise-form solver at alpha = 0 on the default grid
                    rec[f"{kind}_rmse"] = None
                    say(f"[{problem.name}] {label} {kind} grid: {e}")
            say(f"[{problem.name}] {label:16s} NFE {rec.get('nfe', budget):3d}: default {_f(rec['default_rmse'])}"
                f" -> optimized {_f(rec['optimized_rmse'])}  ({secs:.0f} s calibration)")
            records.append(rec)
    return records


def _f(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _best(records: list[dict], key: str):
    return min((r for r in records if r[key] is not None), key=lambda r: r[key], default=None)


def summary(records: list[dict], peers: dict) -> list[dict]:
    """Per (problem, budget): unigen's best default-grid and optimised-grid runs, the best peer."""
    rows = []
    for prob in dict.fromkeys(r["problem"] for r in records):
        for budget in sorted({r["budget"] for r in records if r["problem"] == prob}):
            rs = [r for r in records if r["problem"] == prob and r["budget"] == budget]
            d, o = _best(rs, "default_rmse"), _best(rs, "optimized_rmse")
            peer = peers.get(prob, {}).get(str(budget))
            row = {"problem": prob, "budget": budget,
                   "default": d and {"solver": d["solver"], "rmse": d["default_rmse"]},
                   "optimized": o and {"solver": o["solver"], "rmse": o["optimized_rmse"]},
                   "peer": peer}
            if peer and o and peer.get("rmse"):
                row["ratio_to_peer"] = o["optimized_rmse"] / peer["rmse"]
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| problem | NFE | unigen best, default grid | unigen best, optimized grid | best peer | optimized / peer |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        d, o, p = r["default"], r["optimized"], r["peer"]
        cell = lambda x, key="solver": f"{x[key]} {_f(x['rmse'])}" if x else "-"  # noqa: E731
        ratio = f"{r['ratio_to_peer']:.2f}" if "ratio_to_peer" in r else "-"
        out.append(f"| {r['problem']} | {r['budget']} | {cell(d)} | {cell(o)} | {cell(p, 'sampler') if p else '-'} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="2-D VP, NFE 10, UniPC(3) and DPMSolverPP(2M), small batches")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--processes", nargs="+", default=["vp", "fm", "ddpm"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[6, 10, 20])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--samples", type=int, default=1000, help="held-out samples per run")
    ap.add_argument("--calibration", type=int, default=None, help="calibration batch (default 2048; 4096 for dim >= 16)")
    ap.add_argument("--evals", type=int, default=None, help="objective evaluations per optimisation (default 75 per step)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "optimized_schedules.json")
    ap.add_argument("--resummarize", type=pathlib.Path, default=None,
                    help="no runs: read the records of an earlier output and rebuild the peer comparison")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.dims, args.processes, args.budgets = [2], ["vp"], [10]
        args.solvers, args.samples, args.calibration, args.evals = ["UniPC(3)", "DPMSolverPP(2M)"], 300, 512, 200

    peers = best_peers(args.peers)
    records = json.loads(args.resummarize.read_text())["records"] if args.resummarize else []
    for dim in [] if args.resummarize else args.dims:
        for kind in args.processes:
            n_calib = args.calibration or (4096 if dim >= 16 else 2048)
            records += run_problem(gmm_problem(dim, kind), args.budgets, args.solvers, args.samples, n_calib,
                                   args.evals, args.seed, lambda m: print(m, flush=True))
    rows = summary(records, peers)
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"records": records, "summary": rows, "peers_source": str(args.peers)}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
