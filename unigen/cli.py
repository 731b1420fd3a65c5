"""The ``unigen`` command: ``unigen verify`` checks every claimed equivalence numerically;
``unigen bench`` draws the NFE-vs-quality picture."""

from __future__ import annotations

import argparse
import sys


def _verify(args) -> int:
    import torch

    from . import verify

    torch.set_default_dtype(torch.float64)
    claims = verify.CLAIMS
    if args.only:
        claims = [c for c in claims if args.only.lower() in c.name.lower()]
        if not claims:
            names = "; ".join(c.name for c in verify.CLAIMS)
            print(f"no claim matches {args.only!r}; claims are: {names}", file=sys.stderr)
            return 2
    results = verify.run_claims(claims)
    print(verify.to_json(results) if args.json else verify.format_table(results))
    failed = sum(not r.passed for r in results)
    if not args.json:
        print(f"\n{len(results) - failed}/{len(results)} claims hold")
    return 1 if failed else 0


def _bench(args) -> int:
    import pathlib

    from .bench import default_solvers, quick_solvers
    from .bench.report import run

    if args.quick:
        dims, kinds, budgets, n, specs = [2], ["vp", "fm"], [4, 6, 8, 10, 15, 20], args.samples or 400, quick_solvers()
    else:
        dims, kinds, budgets, n, specs = [2, 16], ["vp", "fm", "ddpm"], [4, 6, 8, 10, 15, 20, 50, 100], args.samples or 1000, default_solvers()
    run(dims, kinds, budgets, n, specs, pathlib.Path(args.out), seed=args.seed, quick=args.quick, plots=not args.no_plot)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="unigen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every claimed equivalence on the exact oracle")
    v.add_argument("--json", action="store_true", help="print results as JSON")
    v.add_argument("--only", metavar="TEXT", help="run only claims whose name contains TEXT")
    v.set_defaults(func=_verify)
    b = sub.add_parser("bench", help="NFE-vs-quality sweep on exact Gaussian-mixture oracles (table, JSON, PNG)")
    b.add_argument("--quick", action="store_true", help="2-D problems and five solvers (well under a minute)")
    b.add_argument("--out", default="unigen_bench.json", help="JSON path; plots are written next to it")
    b.add_argument("--samples", type=int, default=None, help="samples per run (default 400 quick, 1000 full)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-plot", action="store_true", help="skip the matplotlib plots")
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
