#!/usr/bin/env python
r"""The few-NFE regime: tuned solvers against standard grids, GITS, LD3 and the peers, NFE 4-10.

For every problem and NFE budget, each method samples the SAME held-out noise and is scored by
endpoint RMSE against the teacher (``problem.reference``: dopri5 at rtol = atol = 1e-10 of the
same probability-flow ODE). Methods that calibrate use one separate calibration batch
(seeded apart from the held-out one) and the teacher of that batch; their wall time is
recorded (one thread).

* ``grid``: DPM-Solver++(3M) (corrected and published coefficient), DPM-Solver++(2M),
  UniPC(2) and UniPC(3) on the standard grids: time-uniform, log-SNR-uniform, EDM (rho = 7).
* ``gits``: the same solvers on the GITS grid (``unigen.gits_grid``: DP over the one-jump
  cost matrix of the teacher trajectory at 129 dense times).
* ``ld3``: LD3-style grids (``unigen.ld3_grid``, backpropagation, L2) for DPM-Solver++(3M)
  ("taylor" form, ``TunedSolver(3)``) and its UniPC-style corrected version
  (``TunedSolver(3, corrector=True)``), from the default grid.
* ``tuned``: ``unigen.tune_solver`` (grid and per-step coefficients) with its defaults.
* ``nelder-mead``: yesterday's ``unigen.optimize_schedule`` for UniPC(2) at NFE 10 on the 2-D
  and 16-D oracles (its wall time is the baseline of the "10x faster" claim).
* ``peer``: every deterministic peer configuration of ``benchmarks.peers`` (diffusers,
  k-diffusion, flow_matching on their own grids) at NFE 5 and 10 on the oracle problems.

Problems: the exact Gaussian-mixture oracles (2-, 16-, 64-D x VP, flow matching, 1000-step DDPM
table) and trained networks (moons/FM, checkerboard/VP, 8x8 digits/FM; the teacher is the
accurate solve of the same network).

Usage (repository root)::

    python -m benchmarks.few_nfe --quick     # gmm2-vp, NFE 5, small batches (~1 min)
    python -m benchmarks.few_nfe             # everything (results/few_nfe.json, few_nfe.png)
    python -m benchmarks.few_nfe --problems gmm2-vp gmm16-fm --nfe 4 5
    python -m benchmarks.few_nfe --speed     # calibration wall time at NFE 10 against Nelder-Mead
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import sys
import time

import torch

import unigen as ug
from unigen.bench import endpoint_rmse, get_problem, gmm_problem
from unigen.calibration import optimize_schedule
from unigen.reference import ode_trajectory
from unigen.schedules import default_schedule, make_grid

ROOT = pathlib.Path(__file__).resolve().parents[1]
ORACLES = [f"gmm{d}-{k}" for d in (2, 16, 64) for k in ("vp", "fm", "ddpm")]
TRAINED = ["moons-fm", "checkerboard-vp", "digits-fm"]
NFES = (4, 5, 6, 8, 10)
GRIDS = {"time-uniform": "uniform", "logsnr": "logsnr", "edm-rho7": "karras"}


def solvers() -> dict:
    return {
        "DPMSolverPP(3M)": ug.DPMSolverPP(3, match_reference_3m=False),
        "DPMSolverPP(3M, published)": ug.DPMSolverPP(3, match_reference_3m=True),
        "DPMSolverPP(2M)": ug.DPMSolverPP(2),
        "UniPC(2)": ug.UniPC(2),
        "UniPC(3)": ug.UniPC(3),
    }


def load(name: str, log):
    if name.startswith("gmm"):
        dim, kind = name[3:].split("-")
        return gmm_problem(int(dim), kind)
    return get_problem(name, log=log)


def _rmse_parts(x, ref):
    err = (x.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1).sqrt()
    return endpoint_rmse(x.to(torch.float64), ref.to(torch.float64)), float(err.median())


def peer_runs(problem, z, budgets, log) -> list[dict]:
    """Every deterministic peer configuration (benchmarks.peers) at each budget on ``z``."""
    from benchmarks import peers as P
    from benchmarks.peer_samplers import load_diffusers, load_flow_matching, load_kdiffusion

    K, _ = load_kdiffusion()
    D, _ = load_diffusers()
    S, _ = load_flow_matching()
    out = []
    for peer in P.peers(False, K, D, S):
        if peer.stochastic or not peer.applies(problem) or peer.budgets == ():
            continue
        for budget in budgets:
            steps = P.steps_for(peer, budget)
            if steps is None:
                continue
            try:
                run = peer.run(problem, z, steps, 5)
                while run.nfe > budget and steps > 2:
                    steps -= 1
                    run = peer.run(problem, z, steps, 5)
                if run.nfe > budget or not bool(torch.isfinite(run.x).all()):
                    continue
                ref = problem.reference(z, float(run.ts[0]), float(run.ts[-1]))[0]
                rmse, med = _rmse_parts(run.x, ref)
            except Exception as e:  # noqa: BLE001 - a configuration that cannot run is skipped, and said
                log(f"  peer {peer.library} {peer.sampler}: {type(e).__name__}: {e}")
                continue
            out.append({"method": "peer", "solver": f"{peer.library} {peer.sampler} / {peer.grid}", "nfe": run.nfe,
                        "budget": budget, "rmse": rmse, "median": med, "seconds": 0.0})
    return out


def run_problem(name: str, nfes, n_test: int, n_cal: int, nelder_mead: bool, peers: bool, log) -> dict:
    problem = load(name, log)
    model = problem.model
    t0, t1 = model.default_range()
    g = lambda k: torch.Generator().manual_seed(k)  # noqa: E731
    z = problem.noise(n_test, g(1))
    ref = problem.reference(z, t0, t1)[0]
    cal = problem.noise(n_cal, g(777))
    rec = []

    def score(method, label, solver, schedule, nfe, seconds, **extra):
        try:
            x, info = ug.sample(model, solver, steps=None if isinstance(schedule, torch.Tensor) else nfe,
                                schedule=schedule, noise=z)
        except (ValueError, RuntimeError, FloatingPointError) as e:
            if method != "grid":  # a standard grid a process cannot take (log-SNR spacing from t = 1 on FM)
                log(f"  {method} {label} at NFE {nfe}: {type(e).__name__}: {e}")
            return
        if info.nfe != nfe:
            raise AssertionError(f"{label} made {info.nfe} calls at budget {nfe}")
        rmse, med = _rmse_parts(x, ref)
        rec.append({"method": method, "solver": label, "nfe": nfe, "rmse": rmse, "median": med, "seconds": seconds,
                    **extra})

    # the teacher trajectory GITS reads, shared by every NFE (its time is charged to each GITS grid)
    t_begin = time.perf_counter()
    base = default_schedule(problem.process, t0)
    dense = make_grid(problem.process, base, 128, t_start=t0, t_end=t1)
    traj = ode_trajectory(model, cal, dense, 1e-9, interpolate=True)[0]
    teacher_seconds = time.perf_counter() - t_begin
    for nfe in nfes:
        tn = time.perf_counter()
        for gname, sched in GRIDS.items():
            for label, solver in solvers().items():
                score("grid", f"{label} / {gname}", solver, sched, nfe, 0.0, grid=gname)
        t_begin = time.perf_counter()
        gits = ug.gits_grid(model, nfe, noise=cal, trajectory=traj)
        gits_seconds = teacher_seconds + time.perf_counter() - t_begin
        for label, solver in solvers().items():
            score("gits", f"{label} / GITS", solver, gits.grid, nfe, gits_seconds, times=gits.grid.tolist())
        for corrector in (False, True):
            r = ug.ld3_grid(model, nfe, noise=cal, corrector=corrector)
            score("ld3", f"{r.solver.label()} / LD3", r.solver, r.grid, nfe, r.seconds, times=r.grid.tolist(),
                  calibration_rmse=r.rmse)
        r = ug.tune_solver(model, nfe, noise=cal)
        score("tuned", r.solver.label(), r.solver, r.grid, nfe, r.seconds, times=r.grid.tolist(),
              corrections=[list(c) for c in r.solver.corrections], calibration_rmse=r.rmse,
              start_rmse=r.start_rmse, evaluations=r.iterations)
        log(f"[{name}] NFE {nfe}: {time.perf_counter() - tn:.1f} s; " + summary_line(rec, nfe))
    if nelder_mead and 10 in nfes:
        t_begin = time.perf_counter()
        nm = optimize_schedule(model, ug.UniPC(2), 10, noise=cal)
        score("nelder-mead", "UniPC(2) / Nelder-Mead", ug.UniPC(2), nm.grid, 10, time.perf_counter() - t_begin,
              times=nm.grid.tolist(), evaluations=nm.evaluations)
        log(f"[{name}] Nelder-Mead UniPC(2) NFE 10: {rec[-1]['rmse']:.4g} in {rec[-1]['seconds']:.1f} s")
    if peers:
        rec += peer_runs(problem, z, sorted({5, 10} & set(nfes)) or [10], log)
    return {"problem": name, "dim": problem.dim, "n_test": n_test, "n_calibration": n_cal,
            "teacher_seconds": teacher_seconds, "records": rec}


FAST = {"n": 256, "losses": ("mse",), "rounds": 1, "max_iter": 15}  # tune_solver's budget in the speed race


def speed_race(names, log) -> list[dict]:
    """Calibration at NFE 10: Nelder-Mead (``optimize_schedule``, UniPC(2), its defaults) against
    ``tune_solver`` with the small budget ``FAST`` and with its defaults, in one process on one
    thread; held-out RMSE on 2048 draws against the teacher."""
    out = []
    for name in names:
        problem = load(name, log)
        model = problem.model
        t0, t1 = model.default_range()
        z = problem.noise(2048, torch.Generator().manual_seed(1))
        ref = problem.reference(z, t0, t1)[0]
        row = {"problem": name}
        for key, fit in (("nelder_mead", lambda: optimize_schedule(model, ug.UniPC(2), 10, event_shape=problem.event_shape)),
                         ("tuned_fast", lambda: ug.tune_solver(model, 10, event_shape=problem.event_shape, **FAST)),
                         ("tuned", lambda: ug.tune_solver(model, 10, event_shape=problem.event_shape))):
            t_begin = time.perf_counter()
            r = fit()
            seconds = time.perf_counter() - t_begin
            solver = ug.UniPC(2) if key == "nelder_mead" else r.solver
            x, _ = ug.sample(model, solver, schedule=r.grid, noise=z)
            row[key] = {"seconds": seconds, "rmse": _rmse_parts(x, ref)[0]}
        row["speedup_fast"] = row["nelder_mead"]["seconds"] / row["tuned_fast"]["seconds"]
        row["speedup"] = row["nelder_mead"]["seconds"] / row["tuned"]["seconds"]
        log(f"[{name}] NM {row['nelder_mead']['rmse']:.4g} in {row['nelder_mead']['seconds']:.1f} s; tuned (fast) "
            f"{row['tuned_fast']['rmse']:.4g} in {row['tuned_fast']['seconds']:.2f} s; tuned {row['tuned']['rmse']:.4g} "
            f"in {row['tuned']['seconds']:.1f} s")
        out.append(row)
    return out


def race_table(rows) -> str:
    lines = ["| problem | Nelder-Mead UniPC(2): RMSE, s | tuned, small budget: RMSE, s | speed-up | tuned, defaults: RMSE, s | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        nm, fa, tu = r["nelder_mead"], r["tuned_fast"], r["tuned"]
        lines.append(f"| {r['problem']} | {nm['rmse']:.3g}, {nm['seconds']:.1f} | {fa['rmse']:.3g}, {fa['seconds']:.2f} | "
                     f"{r['speedup_fast']:.1f}x | {tu['rmse']:.3g}, {tu['seconds']:.1f} | {r['speedup']:.1f}x |")
    return "\n".join(lines)


def best(records, method, nfe):
    rs = [r for r in records if r["method"] == method and r["nfe"] <= nfe and (r.get("budget", r["nfe"]) == nfe)
          and math.isfinite(r["rmse"])]
    return min(rs, key=lambda r: r["rmse"]) if rs else None


def summary_line(records, nfe) -> str:
    parts = []
    for m in ("grid", "gits", "ld3", "tuned"):
        b = best(records, m, nfe)
        if b:
            parts.append(f"{m} {b['rmse']:.3g}")
    return ", ".join(parts)


def summarise(results: list[dict], nfes) -> dict:
    """Per problem and NFE: the best of each method, the tuned / best(GITS, LD3) ratio, and the
    half-the-NFE check (tuned or any unigen method at NFE 5 against the best peer at NFE 10)."""
    out = {}
    for res in results:
        recs = res["records"]
        rows = {}
        for nfe in nfes:
            row = {m: (best(recs, m, nfe) or {}).get("rmse") for m in ("grid", "gits", "ld3", "tuned", "nelder-mead", "peer")}
            row["tuned_seconds"] = (best(recs, "tuned", nfe) or {}).get("seconds")
            row["ld3_seconds"] = max([r["seconds"] for r in recs if r["method"] == "ld3" and r["nfe"] == nfe], default=None)
            base = [v for v in (row["gits"], row["ld3"]) if v is not None]
            row["tuned_vs_gits_ld3"] = row["tuned"] / min(base) if base and row["tuned"] else None
            nm = best(recs, "nelder-mead", nfe)
            row["nelder_mead_seconds"] = nm["seconds"] if nm else None
            rows[str(nfe)] = row
        unigen5 = min([r["rmse"] for r in recs if r["nfe"] == 5 and r["method"] not in ("peer",)], default=None)
        peer10 = best(recs, "peer", 10)
        out[res["problem"]] = {"by_nfe": rows, "unigen_best_nfe5": unigen5,
                               "best_peer_nfe10": peer10["rmse"] if peer10 else None,
                               "best_peer_nfe10_solver": peer10["solver"] if peer10 else None}
    return out


def table(summary: dict, nfes) -> str:
    lines = ["| problem | NFE | best standard grid | best GITS | best LD3 | tuned | tuned / best(GITS, LD3) | tuned s | LD3 s |",
             "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt=".3g": "-" if v is None else format(v, fmt)  # noqa: E731
    for prob, s in summary.items():
        for nfe in nfes:
            r = s["by_nfe"][str(nfe)]
            lines.append(f"| {prob} | {nfe} | {f(r['grid'])} | {f(r['gits'])} | {f(r['ld3'])} | {f(r['tuned'])} | "
                         f"{f(r['tuned_vs_gits_ld3'], '.2f')} | {f(r['tuned_seconds'], '.1f')} | {f(r['ld3_seconds'], '.1f')} |")
    lines += ["", "| problem | unigen best at NFE 5 | best peer at NFE 10 | peer | ratio |", "|---|---|---|---|---|"]
    for prob, s in summary.items():
        if s["best_peer_nfe10"] is None:
            continue
        lines.append(f"| {prob} | {f(s['unigen_best_nfe5'])} | {f(s['best_peer_nfe10'])} | {s['best_peer_nfe10_solver']} | "
                     f"{f(s['unigen_best_nfe5'] / s['best_peer_nfe10'], '.2f')} |")
    lines += ["", "| problem | Nelder-Mead UniPC(2) NFE 10 | its seconds | tuned NFE 10 | tuned seconds | time ratio |",
              "|---|---|---|---|---|---|"]
    for prob, s in summary.items():
        r = s["by_nfe"].get("10")
        if not r or r["nelder-mead"] is None:
            continue
        lines.append(f"| {prob} | {f(r['nelder-mead'])} | {f(r['nelder_mead_seconds'], '.1f')} | {f(r['tuned'])} | "
                     f"{f(r['tuned_seconds'], '.1f')} | {f(r['nelder_mead_seconds'] / r['tuned_seconds'], '.1f')}x |")
    return "\n".join(lines)


def plot(results: list[dict], nfes, path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    cols = 3
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        for m, style in (("grid", "s:"), ("gits", "^--"), ("ld3", "v--"), ("tuned", "o-"), ("peer", "x:")):
            pts = [(n, best(res["records"], m, n)) for n in nfes]
            pts = [(n, b["rmse"]) for n, b in pts if b]
            if pts:
                ax.semilogy(*zip(*pts), style, label=m)
        ax.set_title(res["problem"])
        ax.set_xlabel("NFE")
        ax.set_ylabel("endpoint RMSE")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="gmm2-vp at NFE 5, small batches")
    ap.add_argument("--problems", nargs="+", default=None)
    ap.add_argument("--nfe", type=int, nargs="+", default=None)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--n-cal", type=int, default=None, help="calibration draws (default 1024; digits 512)")
    ap.add_argument("--n-test", type=int, default=None, help="held-out draws (default 2048 oracles, 1024 trained)")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    ap.add_argument("--speed", action="store_true", help="only the calibration speed race at NFE 10 (2-D and 16-D oracles)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    if args.speed:
        names = args.problems or [f"gmm{d}-{k}" for d in (2, 16) for k in ("vp", "fm", "ddpm")]
        rows = speed_race(names, lambda m: print(m, flush=True))
        out = args.out or ROOT / "benchmarks" / "results" / "few_nfe_speed.json"
        meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
                "fast_budget": {k: list(v) if isinstance(v, tuple) else v for k, v in FAST.items()}, "device": "cpu"}
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(race_table(rows))
        print(f"wrote {out}")
        return 0
    problems = args.problems or (["gmm2-vp"] if args.quick else ORACLES + TRAINED)
    nfes = tuple(args.nfe or ((5,) if args.quick else NFES))
    out = args.out or ROOT / "benchmarks" / "results" / ("few_nfe_quick.json" if args.quick else "few_nfe.json")
    t_all = time.perf_counter()
    results = []
    for name in problems:
        oracle = name.startswith("gmm")
        n_test = 256 if args.quick else (2048 if oracle else 1024)
        n_cal = 256 if args.quick else 1024
        if name.startswith("digits"):  # a convolutional network: smaller batches keep it to minutes
            n_test, n_cal = 512, 512
        n_test, n_cal = args.n_test or n_test, args.n_cal or n_cal
        t_p = time.perf_counter()
        results.append(run_problem(name, nfes, n_test, n_cal, nelder_mead=oracle and not args.quick and not name.startswith("gmm64"),
                                   peers=oracle and not args.no_peers, log=lambda m: print(m, flush=True)))
        print(f"[{name}] done in {time.perf_counter() - t_p:.0f} s", flush=True)
        summary = summarise(results, nfes)
        meta = {"nfes": list(nfes), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "platform": platform.platform(), "python": platform.python_version(), "quick": args.quick,
                "seconds": time.perf_counter() - t_all, "device": "cpu"}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    print(table(summary, nfes))
    if not args.quick:
        plot(results, nfes, out.with_suffix(".png"))
    print(f"wrote {out} in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
