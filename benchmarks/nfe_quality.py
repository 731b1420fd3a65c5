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
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from unigen.bench import default_solvers, quick_solvers  # noqa: E402
from unigen.bench.report import run  # noqa: E402
from unigen.bench.harness import DEFAULT_BUDGETS, PROCESS_KINDS  # noqa: E402


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

    run(dims, kinds, budgets, n, specs, args.out, seed=args.seed, quick=args.quick, plots=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
