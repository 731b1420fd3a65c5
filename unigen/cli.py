"""The ``unigen`` command line.

  unigen verify   check every claimed equivalence numerically on an exact Gaussian-mixture oracle
  unigen sample   sample a toy data set with any registered solver and draw it
  unigen bench    NFE-vs-quality sweep of the solvers on exact oracles (table, JSON, PNG)

Progress goes to stderr (a tqdm bar when tqdm is installed, a counter line otherwise); results
go to stdout. Run "unigen COMMAND --help" for each command's options and examples.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap

from . import __version__

EPILOG = """examples:
  unigen verify                       # every claim: setting, max error, tolerance, PASS/FAIL
  unigen verify --only tweedie --json
  unigen sample --data gmm --process vp --param eps --solver UniPC --steps 8 --out gmm.png
  unigen bench --quick --out bench.json
"""

VERIFY_EPILOG = """Each claim is measured in float64 against an independent reference (closed forms of the
exact Gaussian-mixture oracle, dopri5 at tight tolerances, ...). Exit status: 0 when every
selected claim holds, 1 when any fails, 2 when --only matches no claim.

examples:
  unigen verify
  unigen verify --only "round trips"      # claims whose name contains the text (any case)
  unigen verify --json > claims.json
"""

SAMPLE_EPILOG = """--data gmm uses the exact oracle (eight Gaussians on a circle), so every difference between
solvers is discretisation error. Any other data set trains a small MLP (TinyConvNet for
digits) once with unigen.train.fit and caches it under --cache; later runs load it.
--solver takes any name registered in unigen.solvers.REGISTRY:
{solvers}.

examples:
  unigen sample --data gmm --process vp --param eps --solver UniPC --steps 8 --out gmm.png
  unigen sample --data moons --process fm --solver Heun --steps 10 --train-steps 500
  unigen sample --data checkerboard --process vp --param eps --solver DDIM --schedule logsnr --steps 25
"""

BENCH_EPILOG = """Every problem is an exact Gaussian-mixture model, so the numbers measure the sampler alone:
endpoint RMSE against a dopri5 solve (rtol 1e-10) from the same noise, sliced W2 and MMD^2
against fresh exact samples next to their exact-vs-exact floor. benchmarks/nfe_quality.py
runs the same harness with more options.

examples:
  unigen bench --quick                     # 2-D problems, five solvers, well under a minute
  unigen bench --quick --samples 100 --no-plot --out /tmp/bench.json
  unigen bench --out results/bench.json    # the full sweep (every solver, 2-D and 16-D)
  unigen bench --quick --optimized         # plus UniPC(3) on grids optimised per problem and NFE
"""

# diffusers' leading/trailing/linspace spacings need a VP.discrete table, which no --process here is
SCHEDULES = ("uniform", "logsnr", "karras", "quadratic")
DATA = ("gmm", "moons", "checkerboard", "swiss_roll", "eight_gaussians", "digits")
PROCESSES = {"fm": "FlowMatching", "vp": "VP.linear", "ve": "VE", "edm": "EDM"}


# ---------------------------------------------------------------------------------------
# progress on stderr
# ---------------------------------------------------------------------------------------
class _Counter:
    """The fallback when tqdm is not installed: one ``desc: i/total`` line, rewritten in place."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.note = total, desc, 0, ""

    def _show(self):
        note = f"  {self.note}" if self.note else ""
        print(f"\r{self.desc}: {self.n}/{self.total}{note}", end="", file=sys.stderr, flush=True)

    def update(self, k: int = 1):
        self.n += k
        self._show()

    def set_postfix_str(self, s: str):
        self.note = s

    def close(self):
        print(file=sys.stderr, flush=True)


class _Silent:
    def update(self, k: int = 1):
        pass

    def set_postfix_str(self, s: str):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A bar with ``update``, ``set_postfix_str`` and ``close`` on stderr (tqdm when installed)."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Counter(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def _show_progress(args) -> bool:
    """--progress / --no-progress, else on when stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress


# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------
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
    bar = progress_bar(len(claims), "verify", _show_progress(args))
    results = []
    for c in claims:
        bar.set_postfix_str(c.name[:40])
        results += verify.run_claims([c])
        bar.update(1)
    bar.close()
    print(verify.to_json(results) if args.json else verify.format_table(results))
    failed = sum(not r.passed for r in results)
    if not args.json:
        print(f"\n{len(results) - failed}/{len(results)} claims hold")
    return 1 if failed else 0


def _bench(args) -> int:
    import pathlib

    from .bench import default_solvers, optimized, quick_solvers
    from .bench.report import run

    if args.quick:
        dims, kinds, budgets, n, specs = [2], ["vp", "fm"], [4, 6, 8, 10, 15, 20], args.samples or 400, quick_solvers()
    else:
        dims, kinds, budgets = [2, 16], ["vp", "fm", "ddpm"], [4, 6, 8, 10, 15, 20, 50, 100]
        n, specs = args.samples or 1000, default_solvers()
    if args.optimized:  # UniPC(3) on grids optimised per problem and NFE (calibration batch of 512)
        unipc = next(s for s in default_solvers() if s.label == "UniPC(3)")
        specs = specs + [optimized(unipc, n_calibration=512, max_evals=40 if args.quick else None)]
    kw = {}
    if "progress" in inspect.signature(run).parameters:  # the harness reports progress itself
        kw["progress"] = _show_progress(args)
    run(dims, kinds, budgets, n, specs, pathlib.Path(args.out), seed=args.seed, quick=args.quick, plots=not args.no_plot, **kw)
    return 0


def _make_process(name: str):
    from . import process as P

    return {"fm": P.FlowMatching, "vp": P.VP.linear, "ve": P.VE, "edm": P.EDM}[name]()


def _train(args, process, gen, show: bool):
    """Load the cached model for these settings, or train one with a progress bar and cache it."""
    import pathlib

    from . import train

    ckpt = pathlib.Path(args.cache).expanduser() / f"{args.data}-{args.process}-{args.param}-{args.train_steps}.pt"
    data = "two_moons" if args.data == "moons" else args.data
    bar = progress_bar(args.train_steps, "train", show and not ckpt.exists())

    def tick(step, loss):
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix_str(f"loss {loss:.4f}")

    log_every = None if show else max(args.train_steps // 5, 1)
    try:
        model = train.fit_cached(ckpt, data, process, args.param, log=print, steps=args.train_steps, generator=gen,
                                 log_every=log_every, callback=tick)
    finally:
        bar.close()
    return model


def _sample(args) -> int:
    """Sample a 2-D toy set (or digits) with any solver and draw it."""
    import pathlib

    import torch

    from . import solvers
    from ._utils import IncompatibleSolverError, SingularConversionError
    from .analytic import GaussianMixture
    from .sample import sample
    from .schedules import make_grid

    if args.solver not in solvers.REGISTRY:
        print(f"unknown solver {args.solver!r}; valid names are {', '.join(sorted(solvers.REGISTRY))}", file=sys.stderr)
        return 2
    show = _show_progress(args)
    torch.manual_seed(args.seed)
    process = _make_process(args.process)
    if args.schedule is not None:  # a schedule that cannot span this process's range (e.g. log-SNR at SNR 0)
        try:
            make_grid(process, args.schedule, args.steps)
        except ValueError as e:
            print(f"unigen sample: error: {e}", file=sys.stderr)
            return 2
    gen = torch.Generator().manual_seed(args.seed)
    if args.data == "gmm":  # the exact oracle: eight modes on a circle
        ang = torch.arange(8, dtype=torch.float32) * (2 * torch.pi / 8)
        gm = GaussianMixture(2.0 * torch.stack([ang.cos(), ang.sin()], 1), torch.full((8,), 0.3))
        model, shape = gm.model(process, args.param), (args.n, 2)
    else:
        model = _train(args, process, gen, show)
        shape = (args.n,) + ((1, 8, 8) if args.data == "digits" else (2,))
    bar = progress_bar(args.steps, f"sample ({args.solver})", show)
    try:
        x, info = sample(model, args.solver, steps=args.steps, schedule=args.schedule, shape=shape, generator=gen,
                         dtype=torch.float32, callback=lambda i, t, z: bar.update(1))
    except (SingularConversionError, IncompatibleSolverError) as e:  # a combination that cannot work
        print(f"unigen sample: error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
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
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------
def _wrap(text: str) -> str:
    return textwrap.fill(text, 90, break_on_hyphens=False)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The ``unigen`` parser: subcommands verify, sample and bench, each with --help and examples."""
    from .parametrization import PARAMETRIZATIONS
    from .solvers import REGISTRY

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="unigen", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"unigen {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress on stderr (default: on when stderr is a terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("verify", parents=[common], formatter_class=fmt, epilog=VERIFY_EPILOG,
                       help="check every claimed equivalence on the exact oracle (claim table, exit 1 on FAIL)",
                       description=_wrap("Check every equivalence unigen claims and print claim, setting, "
                                         "measured max error, tolerance and PASS/FAIL."))
    v.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    v.add_argument("--only", metavar="TEXT", help="run only the claims whose name contains TEXT (case-insensitive)")
    v.set_defaults(func=_verify)

    sp = sub.add_parser("sample", parents=[common], formatter_class=fmt, epilog=SAMPLE_EPILOG.format(solvers=_wrap(", ".join(sorted(REGISTRY)))),
                        help="sample a toy data set with any solver and draw it (exact oracle for gmm)",
                        description=_wrap("Sample a toy data set with any registered solver and save a scatter "
                                          "plot (an image grid for digits)."))
    sp.add_argument("--data", choices=DATA, default="gmm", help="data set (default: gmm, the exact oracle)")
    sp.add_argument("--process", choices=sorted(PROCESSES), default="fm",
                    help="forward process: " + ", ".join(f"{k} = {v}" for k, v in PROCESSES.items()) + " (default: fm)")
    sp.add_argument("--param", choices=PARAMETRIZATIONS, default="velocity",
                    help="what the model predicts (default: velocity)")
    sp.add_argument("--solver", default="DPMSolverPP", metavar="NAME",
                    help="a registered solver name (default: DPMSolverPP; see the list below)")
    sp.add_argument("--schedule", choices=SCHEDULES, default=None,
                    help="time grid (default: the process's own, logsnr for diffusion, uniform for flow matching)")
    sp.add_argument("--steps", type=_positive_int, default=20, help="solver steps (default: 20)")
    sp.add_argument("--n", type=_positive_int, default=2000, help="number of samples (default: 2000)")
    sp.add_argument("--out", default="samples.png", help="output image (default: samples.png)")
    sp.add_argument("--seed", type=int, default=0, help="seed for training, prior draw and stochastic steps")
    sp.add_argument("--train-steps", type=_positive_int, default=1500,
                    help="training budget when no cached model exists (default: 1500)")
    sp.add_argument("--cache", default="~/.cache/unigen", help="directory of trained models (default: ~/.cache/unigen)")
    sp.set_defaults(func=_sample)

    b = sub.add_parser("bench", parents=[common], formatter_class=fmt, epilog=BENCH_EPILOG,
                       help="NFE-vs-quality sweep on exact Gaussian-mixture oracles (table, JSON, PNG)",
                       description=_wrap("Run every solver at a range of NFE budgets on exact Gaussian-mixture "
                                         "models; print a markdown table per problem, write JSON and log-log plots."))
    b.add_argument("--quick", action="store_true", help="2-D problems and five solvers (well under a minute)")
    b.add_argument("--out", default="unigen_bench.json", help="JSON path; plots are written next to it")
    b.add_argument("--samples", type=_positive_int, default=None, help="samples per run (default 400 quick, 1000 full)")
    b.add_argument("--seed", type=int, default=0, help="seed of the noise, the exact sets and stochastic solvers")
    b.add_argument("--no-plot", action="store_true", help="skip the matplotlib plots")
    b.add_argument("--optimized", action="store_true",
                   help="add UniPC(3) on grids optimised per problem and NFE (unigen.optimize_schedule); "
                        "with --quick a short optimisation (40 evaluations), else minutes per problem")
    b.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``unigen`` command; returns the exit status (argparse errors exit 2)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
