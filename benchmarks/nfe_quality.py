#!/usr/bin/env python
r"""Sample quality against the number of model evaluations (NFE), on exact oracles and small trained models.

Oracle problems are exact Gaussian-mixture models (``unigen.bench.gmm_problem``: 2-D eight
modes on a circle, seeded random 16-D and 64-D mixtures) under a VP-SDE ("vp"), flow
matching ("fm") or a 1000-step DDPM table ("ddpm"): what is measured is the sampler alone.
Trained problems (``unigen.bench.trained_problem``: ``moons-fm``, ``checkerboard-vp``,
``digits-fm``, ...) are small networks trained with ``unigen.train.fit`` and cached in
``~/.cache/unigen`` (shared with ``unigen sample``). For every solver and NFE budget the run
uses the most steps whose real model-call count fits the budget and reports

* RMSE: endpoint distance to a dopri5 solve at rtol 1e-10 (float64) of the problem's own
  PF-ODE from the same noise (deterministic solvers only);
* SW2 / MMD^2: sliced Wasserstein-2 and unbiased RBF MMD^2 against exact (oracle) or held-out
  (trained) data, beside their noise floor (two independent data sets);
* NLL: held-out negative log-likelihood (nats/dim; bits/dim for digits) through the PF-ODE,
  accurate (dopri5) and against NFE with torchdiffeq's euler / midpoint / rk4 (the methods
  ``unigen.log_likelihood`` integrates with); its error is against the closed form for oracles.

Usage (from the repository root)::

    python -m benchmarks.nfe_quality --quick          # 2-D oracles + a tiny moons model, 5 solvers
    python -m benchmarks.nfe_quality                  # every problem and registered solver
    python -m benchmarks.nfe_quality --problems gmm2-vp gmm16-fm moons-fm digits-fm --samples 500
    torchrun --nproc_per_node=2 -m benchmarks.nfe_quality --distributed --quick   # sharded sampling

Writes JSON to ``benchmarks/results/nfe_quality.json`` (or ``--out``) and one log-log PNG per
problem next to it (``nfe_quality_<problem>.png``) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from unigen.bench import default_solvers, optimized, quick_solvers
from unigen.bench.harness import DEFAULT_BUDGETS, PROCESS_KINDS
from unigen.bench.report import run

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINED = ["moons-fm", "checkerboard-vp", "digits-fm"]
QUICK_TRAINED = {"moons-fm": 150}  # a tiny model (a couple of seconds of training)
# 64-D and digits: the cheaper half of the solver list (every family kept), to bound the full run's time
DIGITS = ["DDIM", "Heun", "DPMSolverPP(2M)", "DPMSolverPP(3M)", "UniPC(3)", "DDPM"]  # digits: a float64 conv net is slow
REDUCED = ["DDIM", "Euler", "Heun", "Heun(sigma, karras)", "DPMSolver(2M)", "DPMSolverPP(2M)", "DPMSolverPP(3M)",
           "DPMSolverPP(2S)", "UniPC(2)", "UniPC(3)", "DEIS(3)", "DDPM", "DDIM(eta=1)", "EDMStochastic(churn=10)",
           "SDEDPMSolverPP(2)", "PredictorCorrector"]

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="2-D oracles and a tiny moons model, five solvers, budgets 4..20")
    ap.add_argument("--problems", nargs="+", default=None,
                    help="problem names, e.g. gmm2-vp gmm16-fm moons-fm checkerboard-vp digits-fm (overrides --dims/--processes)")
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--processes", nargs="+", choices=PROCESS_KINDS, default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--nll-samples", type=int, default=None, help="held-out points for the NLL column (0: none)")
    ap.add_argument("--solvers", nargs="+", default=None, help="labels of default_solvers() to keep")
    ap.add_argument("--all-solvers", action="store_true", help="no reduced solver list for 64-D and digits")
    ap.add_argument("--optimized", nargs="*", default=None, metavar="LABEL",
                    help="also run these solvers (labels; default UniPC(3)) on grids optimised per problem and "
                         "NFE by unigen.optimize_schedule (seconds to minutes per grid)")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps of the trained problems")
    ap.add_argument("--cache", default="~/.cache/unigen", help="directory of trained models (shared with unigen sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "nfe_quality.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--progress", action="store_true", help="a progress bar per problem (needs tqdm)")
    ap.add_argument("--distributed", action="store_true",
                    help="shard sampling over torch.distributed ranks (launch with torchrun); rank 0 writes")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        dims, kinds = args.dims or [2], args.processes or ["vp", "fm"]
        budgets, n = args.budgets or [4, 6, 8, 10, 15, 20], args.samples or 400
        specs, nll_n = quick_solvers(), 100 if args.nll_samples is None else args.nll_samples
        extra, train_steps = list(QUICK_TRAINED), args.train_steps or dict(QUICK_TRAINED)
    else:
        dims, kinds = args.dims or [2, 16, 64], args.processes or list(PROCESS_KINDS)
        budgets, n = args.budgets or list(DEFAULT_BUDGETS), args.samples or 1000
        specs, nll_n = default_solvers(), 100 if args.nll_samples is None else args.nll_samples
        extra, train_steps = TRAINED, args.train_steps
    if args.optimized is not None:
        wanted = args.optimized or ["UniPC(3)"]
        pool = {s.label: s for s in default_solvers()}
        unknown = [w for w in wanted if w not in pool]
        if unknown:
            ap.error(f"unknown solver labels {unknown}; valid: {', '.join(pool)}")
    if args.solvers:
        specs = [s for s in specs if s.label in args.solvers]
    if args.optimized is not None:
        specs = specs + [optimized(pool[w]) for w in wanted]
    problems = args.problems
    if problems is None:
        problems = [f"gmm{d}-{k}" for d in dims for k in kinds] + (extra if args.dims is None and args.processes is None else [])

    def tune(problem):
        """Bound the full run's time: in 64-D the reduced solver list and NLL with rk4 on 32 points
        (the exact divergence costs D vector-Jacobian products per call); digits (a float64 conv
        net) six solvers, 200 samples and NLL on 16 points; no accurate NLL solve for the ddpm
        oracles above 2-D (errors are against the closed form anyway)."""
        kw = {}
        if problem.kind == "ddpm" and problem.dim > 2:  # 1000 kinks: the adaptive NLL solve takes ~7000 NFE
            kw["nll_accurate"] = False
        if args.quick or problem.dim < 64:
            return kw
        kw.update({} if args.nll_samples is not None else {"nll_samples": min(nll_n, 32), "nll_methods": ("rk4",)})
        if not (args.all_solvers or args.solvers):
            kw["solvers"] = [s for s in specs if s.label in (DIGITS if problem.name.startswith("digits") else REDUCED)]
        if problem.name.startswith("digits"):
            kw["n_samples"] = 200 if args.samples is None else args.samples
            kw["nll_samples"] = min(kw.get("nll_samples", nll_n), 16)
        return kw

    runner = None
    if args.distributed:
        from unigen.bench import distributed

        runner = distributed.init()
    try:
        run(dims, kinds, budgets, n, specs, args.out, seed=args.seed, quick=args.quick, plots=not args.no_plot,
            problems=problems, tune=tune, progress=args.progress, runner=runner, nll_samples=nll_n or None,
            train_steps=train_steps, cache_dir=args.cache)
    finally:
        if runner is not None:
            distributed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
