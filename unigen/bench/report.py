"""Reporting for NFE-vs-quality sweeps: markdown tables, log-log plots and the JSON run record.

Shared by ``benchmarks/nfe_quality.py`` and ``unigen bench``.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import sys
import time

import torch

from .harness import gmm_problem, sweep


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


def run(dims, kinds, budgets, n, specs, out: pathlib.Path, *, seed: int = 0, quick: bool = False, plots: bool = True) -> dict:
    """Sweep every (dim, process) problem, print a table each, write JSON (and PNGs) next to ``out``."""
    import unigen

    start = time.perf_counter()
    results, plot_paths = [], []
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in dims:
        for kind in kinds:
            problem = gmm_problem(d, kind, seed=seed)
            t0 = time.perf_counter()
            recs = sweep(problem, specs, nfe_budgets=budgets, n_samples=n, seed=seed,
                         log=lambda m: print(m, file=sys.stderr))
            print(table(recs))
            print(f"\n({problem.name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
            results.extend(recs)
            if plots:
                png = out.with_name(f"{out.stem}_{problem.name}.png")
                if plot(recs, png):
                    plot_paths.append(str(png))
                elif not plot_paths and d == dims[0] and kind == kinds[0]:
                    print("matplotlib is not installed: skipping plots (pip install 'unigen[plot]')")
    wall = time.perf_counter() - start
    payload = {
        "benchmark": "nfe_quality",
        "mode": "quick" if quick else "full",
        "settings": {"dims": dims, "processes": kinds, "budgets": budgets, "n_samples": n, "seed": seed,
                     "solvers": [s.label for s in specs], "reference": "dopri5 rtol=atol=1e-10 float64"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "unigen": unigen.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "wall_seconds": wall,
        "plots": plot_paths,
        "records": results,
    }
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {out}" + (f" and {len(plot_paths)} plot(s)" if plot_paths else "") + f" in {wall:.1f} s")
    return payload
