#!/usr/bin/env python
r"""Sample quality against the number of model evaluations (NFE), on exact oracles.

Each problem is an exact Gaussian-mixture model (``unigen.bench.gmm_problem``: 2-D eight
modes on a circle, seeded random 16-D and 64-D mixtures) under a VP-SDE ("vp"), flow
matching ("fm") or a 1000-step DDPM table ("ddpm"). The model is exact, so what is
measured is the sampler alone. For every solver and NFE budget the run uses the most steps
whose real model-call count fits the budget and reports

* RMSE: endpoint distance to a dopri5 solve at rtol 1e-10 (float64) from the same noise
  (deterministic solvers only);
* SW2 / MMD^2: sliced Wasserstein-2 and unbiased RBF MMD^2 against exact data samples,
  beside their noise floor (two independent exact sets of the same size).

Usage (from the repository root)::

    python benchmarks/nfe_quality.py --quick          # 2-D, a handful of solvers (< 60 s)
    python benchmarks/nfe_quality.py                  # every problem and registered solver
    python benchmarks/nfe_quality.py --dims 2 16 --processes vp --samples 500 --out r.json

Writes JSON to ``benchmarks/results/nfe_quality.json`` (or ``--out``) and one log-log PNG per
problem next to it (``nfe_quality_<problem>.png``) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import unigen  # noqa: E402
from unigen.bench import default_solvers, gmm_problem, quick_solvers, sweep  # noqa: E402
from unigen.bench.harness import DEFAULT_BUDGETS, PROCESS_KINDS  # noqa: E402


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    return f"{v:.3g}"


def table(records: list[dict]) -> str:
    """Markdown: one row per solver, one column per budget; a cell is ``RMSE / SW2`` (real NFE
    appended when below the budget)."""
    ref = next(r for r in records if r["budget"] is None)
    budgets = sorted({r["budget"] for r in records if r["budget"] is not None})
    solvers = list(dict.fromkeys(r["solver"] for r in records if r["budget"] is not None))
    cells = {(r["solver"], r["budget"]): r for r in records if r["budget"] is not None}
    lines = [
        f"### {ref['problem']}  (n = {ref['n_samples']}; cell = endpoint RMSE / SW2; "
        f"noise floor SW2 {ref['sw2_floor']:.3g}, MMD^2 {ref['mmd2_floor']:.2g}; "
        f"reference dopri5: {ref['nfe']} NFE, SW2 {ref['sw2']:.3g})",
        "",
        "| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for s in solvers:
        row = []
        for b in budgets:
            r = cells.get((s, b))
            if r is None:
                row.append("skip")
            elif r.get("error"):
                row.append("error")
            else:
                c = f"{_fmt(r['rmse'])} / {_fmt(r['sw2'])}"
                row.append(c if r["nfe"] == b else f"{c} ({r['nfe']})")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(records: list[dict], path: pathlib.Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ref = next(r for r in records if r["budget"] is None)
    runs = [r for r in records if r["budget"] is not None and not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for s in dict.fromkeys(r["solver"] for r in runs):
        rs = sorted((r for r in runs if r["solver"] == s), key=lambda r: r["nfe"])
        ls = "--" if rs and rs[0]["stochastic"] else "-"
        det = [r for r in rs if r["rmse"] is not None and math.isfinite(r["rmse"]) and r["rmse"] > 0]
        if det:
            axes[0].loglog([r["nfe"] for r in det], [r["rmse"] for r in det], ls, marker="o", ms=3, label=s)
        fin = [r for r in rs if r["sw2"] is not None and math.isfinite(r["sw2"])]
        if fin:
            axes[1].loglog([r["nfe"] for r in fin], [r["sw2"] for r in fin], ls, marker="o", ms=3, label=s)
    axes[1].axhline(ref["sw2_floor"], color="k", lw=1, ls=":", label="exact-vs-exact floor")
    axes[0].set(xlabel="NFE", ylabel="endpoint RMSE vs dopri5 (rtol 1e-10)", title=f"{ref['problem']}: ODE error")
    axes[1].set(xlabel="NFE", ylabel="sliced W2 vs exact samples", title=f"{ref['problem']}: sample quality")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="2-D only, a handful of solvers, budgets 4..20 (< 60 s)")
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--processes", nargs="+", choices=PROCESS_KINDS, default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--solvers", nargs="+", default=None, help="labels of default_solvers() to keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "nfe_quality.json")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        dims, kinds = args.dims or [2], args.processes or ["vp", "fm"]
        budgets, n = args.budgets or [4, 6, 8, 10, 15, 20], args.samples or 400
        specs = quick_solvers()
    else:
        dims, kinds = args.dims or [2, 16, 64], args.processes or list(PROCESS_KINDS)
        budgets, n = args.budgets or list(DEFAULT_BUDGETS), args.samples or 1000
        specs = default_solvers()
    if args.solvers:
        specs = [s for s in specs if s.label in args.solvers]

    start = time.perf_counter()
    results, plots = [], []
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in dims:
        for kind in kinds:
            problem = gmm_problem(d, kind, seed=args.seed)
            t0 = time.perf_counter()
            recs = sweep(problem, specs, nfe_budgets=budgets, n_samples=n, seed=args.seed,
                         log=lambda m: print(m, file=sys.stderr))
            print(table(recs))
            print(f"\n({problem.name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
            results.extend(recs)
            if not args.no_plot:
                png = out.with_name(f"{out.stem}_{problem.name}.png")
                if plot(recs, png):
                    plots.append(str(png))
                elif not plots and d == dims[0] and kind == kinds[0]:
                    print("matplotlib is not installed: skipping plots (pip install 'unigen[plot]')")
    wall = time.perf_counter() - start
    payload = {
        "benchmark": "nfe_quality",
        "mode": "quick" if args.quick else "full",
        "settings": {"dims": dims, "processes": kinds, "budgets": budgets, "n_samples": n, "seed": args.seed,
                     "solvers": [s.label for s in specs], "reference": "dopri5 rtol=atol=1e-10 float64"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "unigen": unigen.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "wall_seconds": wall,
        "plots": plots,
        "records": results,
    }
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {out}" + (f" and {len(plots)} plot(s)" if plots else "") + f" in {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
