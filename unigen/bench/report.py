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

from .harness import get_problem, sweep


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    return f"{v:.3g}"


def _is_nll(r: dict) -> bool:
    return r["solver"].startswith("NLL ")


def table(records: list[dict]) -> str:
    """Markdown: one row per solver, one column per budget; a sampler's cell is ``RMSE / SW2``,
    an NLL row's cell ``NLL (error)``; the real NFE is appended when below the budget."""
    ref = next(r for r in records if r["budget"] is None)
    budgets = sorted({r["budget"] for r in records if r["budget"] is not None})
    solvers = list(dict.fromkeys(r["solver"] for r in records if r["budget"] is not None))
    cells = {(r["solver"], r["budget"]): r for r in records if r["budget"] is not None}
    floor = "data-vs-data" if ref.get("trained") else "exact-vs-exact"
    head = (f"### {ref['problem']}  (n = {ref['n_samples']}; cell = endpoint RMSE / SW2; "
            f"{floor} floor SW2 {ref['sw2_floor']:.3g}, MMD^2 {ref['mmd2_floor']:.2g}; "
            f"reference dopri5: {ref['nfe']} NFE, SW2 {ref['sw2']:.3g}")
    if ref.get("nll_samples"):
        unit = ref.get("nll_unit", "nats/dim")
        head += f"; NLL rows: {unit} (error vs {'closed form' if ref.get('nll_exact') is not None else 'dopri5'})"
        if ref.get("nll") is not None:
            head += f", dopri5 NLL {ref['nll']:.4f} in {ref['nll_nfe']} NFE"
        if ref.get("nll_exact") is not None:
            head += f", closed form {ref['nll_exact']:.4f}"
    lines = [head + ")", "", "| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for s in solvers:
        row = []
        for b in budgets:
            r = cells.get((s, b))
            if r is None:
                row.append("skip")
            elif r.get("error"):
                row.append("error")
            else:
                c = f"{_fmt(r['nll'])} ({_fmt(r['nll_err'])})" if _is_nll(r) else f"{_fmt(r['rmse'])} / {_fmt(r['sw2'])}"
                row.append(c if r["nfe"] == b else f"{c} ({r['nfe']})")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _curve(ax, runs, key, ls, label):
    pts = [(r["nfe"], abs(r[key])) for r in runs if r.get(key) is not None and math.isfinite(r[key]) and r[key] != 0]
    if pts:
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=3, label=label)


def plot(records: list[dict], path: pathlib.Path) -> bool:
    """Log-log panels against NFE: endpoint RMSE, SW2 (with its floor) and, when measured, |NLL error|."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ref = next(r for r in records if r["budget"] is None)
    runs = [r for r in records if r["budget"] is not None and not r.get("error")]
    has_nll = any(_is_nll(r) for r in runs)
    fig, axes = plt.subplots(1, 3 if has_nll else 2, figsize=(19 if has_nll else 13, 5))
    for s in dict.fromkeys(r["solver"] for r in runs):
        rs = sorted((r for r in runs if r["solver"] == s), key=lambda r: r["nfe"])
        if _is_nll(rs[0]):
            _curve(axes[2], rs, "nll_err", "-", s.removeprefix("NLL "))
            continue
        ls = "--" if rs[0]["stochastic"] else "-"
        _curve(axes[0], rs, "rmse", ls, s)
        _curve(axes[1], rs, "sw2", ls, s)
    floor = "data-vs-data" if ref.get("trained") else "exact-vs-exact"
    axes[1].axhline(ref["sw2_floor"], color="k", lw=1, ls=":", label=f"{floor} floor")
    axes[0].set(xlabel="NFE", ylabel="endpoint RMSE vs dopri5 (rtol 1e-10)", title=f"{ref['problem']}: ODE error")
    axes[1].set(xlabel="NFE", ylabel="sliced W2 vs " + ("held-out data" if ref.get("trained") else "exact samples"),
                title=f"{ref['problem']}: sample quality")
    if has_nll:
        what = "closed form" if ref.get("nll_exact") is not None else "dopri5 rtol 1e-7"
        axes[2].set(xlabel="NFE", ylabel=f"|NLL error| ({ref.get('nll_unit', 'nats/dim')}) vs {what}",
                    title=f"{ref['problem']}: likelihood (torchdiffeq fixed step)")
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(dims, kinds, budgets, n, specs, out: pathlib.Path, *, seed: int = 0, quick: bool = False, plots: bool = True,
        problems=None, tune=None, progress: bool = False, runner=None, nll_samples: int | None = 200,
        train_steps=None, cache_dir="~/.cache/unigen") -> dict:
    """Sweep every problem, print a table each, write JSON (and PNGs) next to ``out``.

    ``problems``: names for :func:`~unigen.bench.harness.get_problem` (oracles ``gmm{d}-{kind}``
    and trained ``moons-fm``, ``digits-fm``, ...); default every ``gmm{d}-{kind}`` of dims x kinds.
    ``tune(problem)``: a dict of :func:`~unigen.bench.harness.sweep` arguments for one problem
    (e.g. ``solvers``, ``n_samples``, ``nll_samples``, ``nll_methods``) overriding the common ones. ``train_steps``: an
    int, or a dict problem name -> steps. ``runner``: a sharding runner
    (:mod:`unigen.bench.distributed`); only its main rank prints and writes.
    """
    import unigen

    main = runner is None or runner.is_main
    echo = (lambda *a, **k: print(*a, **k)) if main else (lambda *a, **k: None)  # noqa: E731
    names = list(problems) if problems is not None else [f"gmm{d}-{k}" for d in dims for k in kinds]
    start = time.perf_counter()
    results, plot_paths, skipped = [], [], []
    if main:
        out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        steps = train_steps.get(name) if isinstance(train_steps, dict) else train_steps
        shared = runner is not None and getattr(runner, "world_size", 1) > 1
        if shared and not main:
            runner.barrier()  # rank 0 trains and saves a missing checkpoint first; the others load it
        try:
            problem = get_problem(name, seed=seed, train_steps=steps, cache_dir=cache_dir,
                                  log=lambda m: echo(m, file=sys.stderr))
        except ImportError as e:  # digits without scikit-learn
            echo(f"[{name}] skipped: {e}", file=sys.stderr)
            skipped.append(name)
            continue
        finally:
            if shared and main:
                runner.barrier()
        t0 = time.perf_counter()
        kw = {"solvers": specs, "nfe_budgets": budgets, "n_samples": n, "seed": seed, "nll_samples": nll_samples,
              "log": lambda m: print(m, file=sys.stderr), "progress": progress, "runner": runner}
        kw.update(tune(problem) if tune is not None else {})
        recs = sweep(problem, **kw)
        if not main:
            continue
        echo(table(recs))
        echo(f"\n({problem.name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
        results.extend(recs)
        if plots:
            png = out.with_name(f"{out.stem}_{problem.name}.png")
            if plot(recs, png):
                plot_paths.append(str(png))
            elif not plot_paths and name == names[0]:
                echo("matplotlib is not installed: skipping plots (pip install 'unigen[plot]')")
    wall = time.perf_counter() - start
    if not main:
        return {}
    payload = {
        "benchmark": "nfe_quality",
        "mode": "quick" if quick else "full",
        "settings": {"problems": names, "dims": dims, "processes": kinds, "budgets": budgets, "n_samples": n,
                     "seed": seed, "nll_samples": nll_samples, "solvers": [s.label for s in specs],
                     "reference": "dopri5 rtol=atol=1e-10 float64",
                     "nll": "PF-ODE exact divergence; accurate: dopri5 rtol=atol=1e-7; per budget: torchdiffeq "
                            "euler/midpoint/rk4 on the problem's default grid",
                     "world_size": getattr(runner, "world_size", 1), "skipped": skipped},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "unigen": unigen.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "wall_seconds": wall,
        "plots": plot_paths,
        "records": results,
    }
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {out}" + (f" and {len(plot_paths)} plot(s)" if plot_paths else "") + f" in {wall:.1f} s")
    return payload
