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


PROCESSES = {"fm": "FlowMatching", "vp": "VP.linear", "ve": "VE", "edm": "EDM"}


def _make_process(name: str):
    from . import process as P

    return {"fm": P.FlowMatching, "vp": P.VP.linear, "ve": P.VE, "edm": P.EDM}[name]()


def _sample(args) -> int:
    """Sample a 2-D toy set (or digits) with any solver and draw it."""
    import pathlib

    import torch

    from . import solvers, train
    from .analytic import GaussianMixture
    from .sample import sample

    if args.solver not in solvers.REGISTRY:
        print(f"unknown solver {args.solver!r}; valid names are {', '.join(sorted(solvers.REGISTRY))}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    process = _make_process(args.process)
    gen = torch.Generator().manual_seed(args.seed)
    if args.data == "gmm":  # the exact oracle: eight modes on a circle
        ang = torch.arange(8, dtype=torch.float32) * (2 * torch.pi / 8)
        gm = GaussianMixture(2.0 * torch.stack([ang.cos(), ang.sin()], 1), torch.full((8,), 0.3))
        model, shape = gm.model(process, args.param), (args.n, 2)
    else:
        cache = pathlib.Path(args.cache).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        ckpt = cache / f"{args.data}-{args.process}-{args.param}-{args.train_steps}.pt"
        if ckpt.exists():
            model = train.load(ckpt)
            print(f"loaded {ckpt}")
        else:
            print(f"training a small {args.param} model on {args.data} ({args.process}, {args.train_steps} steps) ...")
            data = "two_moons" if args.data == "moons" else args.data
            model = train.fit(data, process, args.param, steps=args.train_steps, generator=gen, log_every=max(args.train_steps // 5, 1))
            train.save(model, ckpt)
            print(f"saved {ckpt}")
        event = (1, 8, 8) if args.data == "digits" else (2,)
        shape = (args.n,) + event
    x, info = sample(model, args.solver, steps=args.steps, shape=shape, generator=gen, dtype=torch.float32, progress=args.progress)
    print(f"{args.solver}: {args.steps} steps, {info.nfe} model calls, {x.shape[0]} samples")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        torch.save(x, pathlib.Path(args.out).with_suffix(".pt"))
        print("matplotlib is not installed (pip install 'unigen[plot]'): saved the samples as .pt instead")
        return 0
    x = x.detach().cpu()
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        k = min(int(x.shape[0] ** 0.5), 8)
        fig, axes = plt.subplots(k, k, figsize=(k, k))
        for ax, img in zip(axes.flat, x[: k * k]):
            ax.imshow(img[0], cmap="gray")
            ax.axis("off")
    fig.suptitle(f"{args.data}, {args.process}/{args.param}, {args.solver}, NFE {info.nfe}")
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
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
    sp = sub.add_parser("sample", help="sample a toy data set (exact oracle for gmm, a small trained model otherwise) and draw it")
    sp.add_argument("--data", choices=["gmm", "moons", "checkerboard", "swiss_roll", "eight_gaussians", "digits"], default="gmm")
    sp.add_argument("--process", choices=sorted(PROCESSES), default="fm")
    sp.add_argument("--param", choices=["eps", "x0", "v", "velocity", "score", "denoiser"], default="velocity")
    sp.add_argument("--solver", default="DPMSolverPP", help="a registered solver name")
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--n", type=int, default=2000, help="number of samples")
    sp.add_argument("--out", default="samples.png")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--train-steps", type=int, default=1500, help="training budget when no cached model exists")
    sp.add_argument("--cache", default="~/.cache/unigen", help="directory of trained models")
    sp.add_argument("--progress", action="store_true", help="progress bar (needs tqdm)")
    sp.set_defaults(func=_sample)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
