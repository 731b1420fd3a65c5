"""The ``unigen`` command line.

  unigen verify   check every claimed equivalence numerically on an exact Gaussian-mixture oracle
  unigen sample   sample a toy data set with any registered solver and draw it
  unigen bench    NFE-vs-quality sweep of the solvers on exact oracles (table, JSON, PNG)

Progress goes to stderr (a tqdm bar when tqdm is installed, a counter line otherwise); results
go to stdout. Run "unigen COMMAND --help" for each command's options and examples.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import pathlib
import sys
import textwrap

import torch

from . import __version__, solvers, train, verify
from ._utils import IncompatibleSolverError, SingularConversionError
from .analytic import ring_mixture
from .bench import default_solvers, optimized, quick_solvers, report
from .parametrization import PARAMETRIZATIONS, undetermined_reason
from .process import REGISTRY as PROCESS_REGISTRY
from .process import get_process
from .progress import progress_bar
from .sample import sample
from .schedules import default_schedule, make_grid, sample_range

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
digits) once with unigen.train.fit (--train-steps, about a minute or two on one CPU core)
and caches it under --cache; later runs load it. The plot shows the samples over a faint
reference: exact samples for gmm, training data otherwise. A first-order solver such as DDIM
needs many more steps than DPMSolverPP or UniPC for sharp data (checkerboard: DDIM at 25
steps is about twice as far from the data as DPMSolverPP).
--solver takes any name registered in unigen.solvers.REGISTRY:
{solvers}.

examples:
  unigen sample --data gmm --process vp --param eps --solver UniPC --steps 8 --out gmm.png
  unigen sample --data moons --process fm --solver Heun --steps 10
  unigen sample --data checkerboard --process vp --param eps --solver DPMSolverPP --schedule logsnr --steps 25
"""

BENCH_EPILOG = """Samplers on exact Gaussian-mixture models (the numbers measure the sampler alone) and, with
--quick, a small trained model: endpoint RMSE against a dopri5 solve (rtol 1e-10) from the
same noise, and sliced W2 against fresh samples next to the samples-vs-samples floor; the
table's legend defines every column (the JSON also holds MMD^2). benchmarks/nfe_quality.py
runs the same harness with more options.

examples:
  unigen bench --quick                     # 2-D problems, five solvers, about a minute
  unigen bench --quick --samples 100 --no-plot --out /tmp/bench.json
  unigen bench --out bench-full.json      # the full sweep (every solver, 2-D and 16-D)
  unigen bench --quick --optimized         # plus UniPC(3) on grids optimised per problem and NFE
"""

def help_examples(command: str | None = None) -> list:
    """Every example command line shown by ``unigen --help`` and ``unigen COMMAND --help`` (in
    that order, without repeats or trailing comments); only those of ``command`` if given."""
    lines = []
    for text in (EPILOG, VERIFY_EPILOG, SAMPLE_EPILOG, BENCH_EPILOG):
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("unigen ") and line not in lines:
                lines.append(line)
    return [ln for ln in lines if command is None or ln.split()[1] == command]


# diffusers' leading/trailing/linspace spacings need a VP.discrete table, which no --process here is
SCHEDULES = ("uniform", "logsnr", "karras", "quadratic")
DATA = ("gmm", "moons", "checkerboard", "swiss_roll", "eight_gaussians", "digits")


def process_choices() -> dict:
    """The --process names, read from ``unigen.process.REGISTRY``: the first alias of every
    registered process class that builds from its defaults, mapped to its class name (a DDPM
    table or an Affine path needs arguments the command line does not take)."""
    out = {}
    for name, cls in PROCESS_REGISTRY.items():
        params = inspect.signature(cls).parameters.values()
        if cls.aliases and all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            out[cls.aliases[0]] = name
    return out


PROCESSES = process_choices()


def _show_progress(args) -> bool:
    """--progress / --no-progress, else on when stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress


# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------
def _verify(args) -> int:
    torch.set_default_dtype(torch.float64)
    every = verify.all_claims()
    claims = every
    if args.only:
        claims = [c for c in every if args.only.lower() in c.name.lower()]
        if not claims:
            names = "; ".join(c.name for c in every)
            return _fail("verify", f"--only {args.only!r} matches no claim; claims are: {names}")
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
    try:  # the JSON (and the plots next to it) must be writable before minutes of sweeping
        check_output(args.out, "--out")
    except CLIError as e:
        return _fail("bench", str(e))

    if args.quick:
        dims, kinds, budgets, n, specs = [2], ["vp", "fm"], [4, 6, 8, 10, 15, 20], args.samples or 400, quick_solvers()
    else:
        dims, kinds, budgets = [2, 16], ["vp", "fm", "ddpm"], [4, 6, 8, 10, 15, 20, 50, 100]
        n, specs = args.samples or 1000, default_solvers()
    if args.optimized:  # UniPC(3) on grids optimised per problem and NFE (calibration batch of 512)
        unipc = next(s for s in default_solvers() if s.label == "UniPC(3)")
        specs = specs + [optimized(unipc, n_calibration=512, max_evals=40 if args.quick else None)]
    kw = {}
    if "progress" in inspect.signature(report.run).parameters:  # the harness reports progress itself
        kw["progress"] = _show_progress(args)
    report.run(dims, kinds, budgets, n, specs, pathlib.Path(args.out), seed=args.seed, quick=args.quick, plots=not args.no_plot, **kw)
    return 0


def make_process(name: str):
    """The process a --process name stands for, built with its defaults (see :func:`process_choices`)."""
    if name not in PROCESSES:
        raise CLIError(f"unknown --process {name!r}; valid names are {', '.join(sorted(PROCESSES))}")
    return get_process(name)


def _fail(command: str, message: str) -> int:
    """One line ``unigen COMMAND: error: MESSAGE`` on stderr; returns argparse's exit status 2."""
    print(f"unigen {command}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class CLIError(Exception):
    """A message for the user (one line, naming the options involved); the command exits 2."""


# what the CLI trains for a 2-D toy set: a wider MLP than unigen.train's default (256 instead of
# 128 units) for 3000 Adam steps with a cosine learning rate, on one CPU thread: its samples are
# within 2x the data-vs-data sliced-W2 floor (benchmarks/cli_examples.py), where 500 steps of
# the 128-unit MLP gave a blob (3.3x the floor on moons)
TOY_NET = {"hidden": 256, "depth": 3}
TOY_FIT = {"batch_size": 256, "lr": 2e-3}
TRAIN_STEPS = 3000


def valid_params(process_name: str) -> list:
    """The --param values a --process can be sampled with from its default start: those whose
    output determines (x0, eps) there (the parametrization table's row (a, b) with
    alpha b - sigma a != 0, and defined inputs). Where the start is pure noise (alpha = 0, flow
    matching) an eps, score or denoiser output says nothing about the data; x0, v, v_n and
    velocity remain."""
    process = make_process(process_name)
    start = sample_range(process)[0]
    return [name for name in PARAMETRIZATIONS if undetermined_reason(name, process, start) is None]


def valid_schedules(process_name: str) -> list:
    """The --schedule values that can span a --process's sampling range."""
    ok = []
    for name in SCHEDULES:
        try:
            make_grid(make_process(process_name), name, 4)
        except ValueError:
            continue
        ok.append(name)
    return ok


def check_output(path: str, option: str = "--out", suffixes=None) -> "pathlib.Path":
    """Refuse an output path that cannot be written, before any work is done."""
    p = pathlib.Path(path).expanduser()
    parent = p.parent if str(p.parent) else pathlib.Path(".")
    if p.is_dir():
        raise CLIError(f"{option} {path} is a folder; give a file name such as {p / 'out.png'}")
    if not parent.exists():
        raise CLIError(f"{option} {path}: the folder {parent} does not exist; create it first or choose another {option}")
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: {parent} is not a folder; choose another {option}")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{option} {path}: the folder {parent} is not writable; choose another {option}")
    if suffixes is not None and p.suffix and p.suffix[1:].lower() not in suffixes:
        raise CLIError(f"{option} {path}: cannot write {p.suffix} files; use one of "
                       f"{_and('.' + s for s in suffixes)}")
    return p


def check_cache(path: str) -> "pathlib.Path":
    """--cache must be a folder that exists and is writable, or one that can be created."""
    p = pathlib.Path(path).expanduser()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"--cache {path}: {probe} is a file, not a folder; choose another --cache")
    if not os.access(probe, os.W_OK):
        raise CLIError(f"--cache {path}: the folder {probe} is not writable; choose another --cache")
    return p


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


_IMAGE_TYPES = ("png", "jpg", "jpeg", "pdf", "svg", "webp", "tif", "tiff", "eps", "ps")


def _image_types(plt) -> list:
    from matplotlib.figure import Figure

    supported = set(Figure().canvas.get_supported_filetypes())
    return [s for s in _IMAGE_TYPES if s in supported]


class _OneThread:
    """Tiny MLPs train and sample fastest on one CPU thread (and do not slow down on a busy
    machine); the previous thread count is restored afterwards."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def cache_path(args) -> "pathlib.Path":
    """Where the trained model of these settings is cached (the training setup is in the name,
    so a change of the defaults never loads an old model)."""
    arch = "conv" if args.data == "digits" else f"mlp{TOY_NET['hidden']}x{TOY_NET['depth']}-b{TOY_FIT['batch_size']}"
    name = f"{args.data}-{args.process}-{args.param}-{args.train_steps}-{arch}-seed{args.seed}.pt"
    return pathlib.Path(args.cache).expanduser() / name


def _train(args, process, gen, show: bool):
    """Load the cached model for these settings, or train one with a progress bar and cache it."""
    ckpt = cache_path(args)
    data = "two_moons" if args.data == "moons" else args.data
    bar = progress_bar(args.train_steps, "train", show and not ckpt.exists())

    def tick(step, loss):
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix_str(f"loss {loss:.4f}")

    kw = {}
    if args.data != "digits":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            kw = dict(TOY_FIT, net=train.MLP(2, **TOY_NET))
    log_every = None if show else max(args.train_steps // 5, 1)
    try:
        model = train.fit_cached(ckpt, data, process, args.param, log=print, steps=args.train_steps, generator=gen,
                                 log_every=log_every, callback=tick, **kw)
    finally:
        bar.close()
    return model


def reference_samples(args, n: int):
    """What the samples should look like: exact oracle samples for gmm, fresh draws of the
    training distribution otherwise (a generator of their own, not the one of the samples)."""
    gen = torch.Generator().manual_seed(args.seed + 1_000_003)
    if args.data == "gmm":
        return ring_mixture(dtype=torch.float32).sample(n, generator=gen).to(torch.float32)
    data = "two_moons" if args.data == "moons" else args.data
    return train.DATASETS[data](n, gen, dtype=torch.float32)


def _gmm():
    """The --data gmm oracle in float32 (kept for benchmarks/cli_examples.py: use
    ``unigen.analytic.ring_mixture(dtype=torch.float32)``)."""
    return ring_mixture(dtype=torch.float32)


_ARTICLE = {"eps": "an", "x0": "an", "v": "a", "score": "a", "velocity": "a", "denoiser": "a"}


def check_sample_args(args) -> None:
    """Every check that needs no model: solver name, --process/--param, --schedule, --out,
    --cache. Raises CLIError with a one-line message."""
    if args.solver not in solvers.REGISTRY:
        names = sorted(solvers.REGISTRY)
        # compare spellings as people write them: case, "++" for "PP", with or without "Solver"
        def key(name: str) -> str:
            return "".join(c for c in name.lower().replace("++", "pp").replace("solver", "") if c.isalnum())

        by_key = {key(n): n for n in names}
        close = [by_key[k] for k in difflib.get_close_matches(key(args.solver), list(by_key), n=1)]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CLIError(f"unknown solver {args.solver!r} for --solver{hint}; valid names are {', '.join(names)}")
    params = valid_params(args.process)
    if args.param not in params:
        raise CLIError(
            f"--param {args.param} cannot be sampled with --process {args.process}: {PROCESSES[args.process]} starts "
            f"from pure noise (alpha = 0), where {_ARTICLE.get(args.param, 'a')} {args.param} output does not determine the data; valid --param "
            f"values for --process {args.process} are {_and(params)}")
    if args.schedule is not None and args.schedule not in valid_schedules(args.process):
        ok = valid_schedules(args.process)
        raise CLIError(
            f"--schedule {args.schedule} cannot span --process {args.process}: it spaces times by log-SNR, which is "
            f"infinite where {PROCESSES[args.process]} starts; valid --schedule values for --process {args.process} "
            f"are {_and(ok)} (or leave --schedule out)")
    plt = _matplotlib()
    check_output(args.out, "--out", _image_types(plt) if plt is not None else None)
    if args.data != "gmm":
        check_cache(args.cache)


def draw_samples(args, show: bool = False):
    """The samples ``unigen sample`` draws for these parsed arguments: (x, info, schedule name).
    Trains (or loads from --cache) the model for a data set other than gmm."""
    torch.manual_seed(args.seed)
    process = make_process(args.process)
    gen = torch.Generator().manual_seed(args.seed)
    small = args.data != "digits"
    with _OneThread() if small else _NoOp():
        if args.data == "gmm":  # the exact oracle: eight modes on a circle
            model, shape = ring_mixture(dtype=torch.float32).model(process, args.param), (args.n, 2)
        else:
            try:
                model = _train(args, process, gen, show)
            except ImportError as e:  # digits without scikit-learn
                raise CLIError(f"--data {args.data} needs a package that is not installed: {e}") from None
            except FloatingPointError as e:
                raise CLIError(f"training for --data {args.data} --process {args.process} --param {args.param} "
                               f"failed: {e}") from None
            shape = (args.n,) + ((1, 8, 8) if args.data == "digits" else (2,))
        bar = progress_bar(args.steps, f"sample ({args.solver})", show)
        try:
            x, info = sample(model, args.solver, steps=args.steps, schedule=args.schedule, shape=shape, generator=gen,
                             dtype=torch.float32, callback=lambda i, t, z: bar.update(1))
        except (SingularConversionError, IncompatibleSolverError, ValueError, FloatingPointError) as e:
            raise CLIError(f"--solver {args.solver} with --process {args.process} --param {args.param} "
                           f"--steps {args.steps} failed: {e}") from None
        finally:
            bar.close()
    schedule = args.schedule or default_schedule(process)
    return x, info, schedule


class _NoOp:
    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


def _plot(plt, args, x, info, schedule, ref):
    """Scatter of the samples over a faint reference (image grids side by side for digits),
    titled with everything that produced them."""
    title = (f"{args.data}: {PROCESSES[args.process]} / {args.param} / {args.solver}\n"
             f"{schedule} schedule, {args.steps} steps, NFE {info.nfe}, {x.shape[0]} samples")
    what = "exact samples" if args.data == "gmm" else "training data"
    x, ref = x.detach().cpu().float(), ref.detach().cpu().float()
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(5.5, 6))
        ax.scatter(ref[:, 0], ref[:, 1], s=3, alpha=0.25, color="0.4", linewidths=0, label=f"reference ({what})")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, color="C0", linewidths=0, label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=4, framealpha=0.8)
        ax.set_title(title, fontsize=9)
    else:
        k = max(min(int(x.shape[0] ** 0.5), 8), 1)
        fig = plt.figure(figsize=(2 * k + 0.5, k + 1))
        left, right = fig.subfigures(1, 2)
        for sub, imgs, name, alpha in ((left, x, "samples", 1.0), (right, ref, f"reference ({what})", 0.45)):
            axes = sub.subplots(k, k, squeeze=False)
            for ax, img in zip(axes.flat, imgs[: k * k]):
                ax.imshow(img[0], cmap="gray", vmin=-1, vmax=1, alpha=alpha)
                ax.axis("off")
            sub.suptitle(name, fontsize=9)
        fig.suptitle(title.replace("\n", ", "), fontsize=9, y=1.0)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _sample(args) -> int:
    """Sample a 2-D toy set (or digits) with any solver and draw it."""
    try:
        check_sample_args(args)  # before any training or sampling
        x, info, schedule = draw_samples(args, _show_progress(args))
    except CLIError as e:
        return _fail("sample", str(e))
    print(f"{args.solver}: {args.steps} steps, {info.nfe} model calls, {x.shape[0]} samples")
    plt = _matplotlib()
    if plt is None:
        out = pathlib.Path(args.out).expanduser().with_suffix(".pt")
        torch.save(x, out)
        print(f"matplotlib is not installed (pip install 'unigen[plot]'): saved the samples to {out} instead")
        return 0
    _plot(plt, args, x, info, schedule, reference_samples(args, x.shape[0]))
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``unigen sample: error: MESSAGE (see unigen sample --help)``
    on stderr and exit status 2, instead of the usage block followed by the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``unigen`` parser: subcommands verify, sample and bench, each with --help and examples."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="unigen", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"unigen {__version__}")
    common = _Parser(add_help=False)
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

    sp = sub.add_parser("sample", parents=[common], formatter_class=fmt, epilog=SAMPLE_EPILOG.format(solvers=_wrap(", ".join(sorted(solvers.REGISTRY)))),
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
    sp.add_argument("--train-steps", type=_positive_int, default=TRAIN_STEPS,
                    help=f"training budget when no cached model exists (default: {TRAIN_STEPS})")
    sp.add_argument("--cache", default="~/.cache/unigen", help="directory of trained models (default: ~/.cache/unigen)")
    sp.set_defaults(func=_sample)

    b = sub.add_parser("bench", parents=[common], formatter_class=fmt, epilog=BENCH_EPILOG,
                       help="NFE-vs-quality sweep on exact Gaussian-mixture oracles (table, JSON, PNG)",
                       description=_wrap("Run every solver at a range of NFE budgets on exact Gaussian-mixture "
                                         "models; print a markdown table per problem, write JSON and log-log plots."))
    b.add_argument("--quick", action="store_true", help="2-D problems and five solvers (about a minute)")
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
