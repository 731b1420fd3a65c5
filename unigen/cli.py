"""The ``unigen`` command: ``unigen verify`` checks every claimed equivalence numerically."""

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="unigen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every claimed equivalence on the exact oracle")
    v.add_argument("--json", action="store_true", help="print results as JSON")
    v.add_argument("--only", metavar="TEXT", help="run only claims whose name contains TEXT")
    v.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
