r"""NFE-vs-quality sweeps on exact Gaussian-mixture oracles and on small trained models.

A :class:`Problem` bundles a model, its process, a sampler of data (exact mixture samples, a
2-D toy set, or a held-out pool of digits) and a reference probability-flow ODE solve:
torchdiffeq dopri5 through ``ug.Adaptive`` at rtol = atol = 1e-10 in float64, started from
the SAME noise as the solver under test and ending at the same time. The reference solves the
PF-ODE *of the problem's model*: for an oracle (:func:`gmm_problem`) there is no model error,
so every gap is solver error; for a trained model (:func:`trained_problem`) the RMSE is still
the solver's error on that model's ODE, while SW2 / MMD against held-out data also contain
the model's error (their floor is data against data).

:func:`sweep` runs each solver at each NFE budget with the largest number of steps whose
``solver.expected_nfe`` fits the budget (budgets a solver cannot meet are skipped), checks the
real count ``info.nfe`` against the budget, and records

* ``rmse``: endpoint RMSE against the reference solve (deterministic solvers only: a
  stochastic sampler does not follow the ODE path, so its distance to it is not an error);
* ``sw2`` / ``mmd2``: sliced W_2 and unbiased RBF MMD^2 against data samples taken to the
  run's end time (``t_end``, ``sigma_end`` in the record): x0 alpha(t_end) + sigma(t_end) noise,
  the exact marginal there, since a grid that stops at t_end > 0 returns samples of that
  marginal (no final denoising call); where the grid ends at sigma = 0 they are the data;
* ``sw2_floor`` / ``sw2_floor_sd``: mean and standard deviation of SW2 between ``FLOOR_DRAWS``
  further independent data sets of the same size (fresh draws, or bootstrap draws from the
  rest of a held-out pool) and the same comparison set, i.e. what a perfect sampler gets and
  how far one draw of n samples scatters (the noise floor); ``mmd2_floor`` the MMD^2 of the
  first of them;
* ``nll``: negative log-likelihood of held-out data per dimension (nats/dim; bits/dim for
  digits, uniformly dequantised) through the PF-ODE with the exact divergence
  (:func:`unigen.log_likelihood`, Chen et al. 2018; Song et al. 2021, App. D). The reference
  row holds the accurate solve (dopri5, rtol = atol = 1e-7) and, for an oracle, the closed form
  -log p_{t0}(x) / D (``nll_exact``). ``log_likelihood`` integrates with torchdiffeq only, so
  NLL against NFE is measured with torchdiffeq's fixed-step methods (euler 1, midpoint 2,
  rk4 4 calls per step) on the problem's default grid, as rows "NLL torchdiffeq <method>"
  with ``nll_err`` = nll - (closed form for an oracle, accurate solve for a trained model).

Sampling goes through a *runner*: :class:`LocalRunner` samples the whole batch here;
:mod:`unigen.bench.distributed` shards it across ``torch.distributed`` ranks. Stochastic
solvers draw their noise from one generator per sample (``unigen.noise``), so a sample does
not depend on how the batch is split.
"""

from __future__ import annotations

import copy

import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import process as P
from .. import train
from ..analytic import GaussianMixture, ring_mixture
from ..calibration import optimize_schedule
from ..likelihood import log_likelihood
from ..reference import ode_endpoint
from ..sample import sample
from ..progress import progress_bar
from ..schedules import finite_end, default_schedule, make_grid, sample_range
from ..solvers import REGISTRY
from .metrics import endpoint_rmse, median_bandwidth, rbf_mmd2, sliced_wasserstein2

__all__ = [
    "DEFAULT_BUDGETS",
    "NLL_METHODS",
    "PROCESS_KINDS",
    "TOY_DATA",
    "LocalRunner",
    "Problem",
    "SolverSpec",
    "choose_steps",
    "default_solvers",
    "get_problem",
    "gmm_problem",
    "make_process",
    "item_generators",
    "nll",
    "optimized",
    "quick_solvers",
    "sweep",
    "trained_problem",
]

DEFAULT_BUDGETS = (4, 6, 8, 10, 15, 20, 50, 100)
PROCESS_KINDS = ("vp", "fm", "ddpm")  # the kinds a full sweep runs (make_process takes any registered process)
KIND_ALIASES = {"ddpm": "vp_discrete"}  # problem-name kind -> unigen.process example label
REFERENCE_TOL = 1e-10
FLOOR_DRAWS = 16  # independent data sets behind the SW2 floor's mean and standard deviation
NLL_TOL = 1e-7
NLL_METHODS = {"euler": 1, "midpoint": 2, "rk4": 4}  # torchdiffeq fixed-step methods: model calls per step
TOY_DATA = {"moons": "two_moons", "checkerboard": "checkerboard", "eight_gaussians": "eight_gaussians",
            "swiss_roll": "swiss_roll", "digits": "digits"}  # CLI name -> unigen.train dataset
DIGITS_HELD_OUT = 600  # digits images kept out of training (the first ones of the table)
DIGITS_BIN = 0.125  # digits take the 17 values k/8 - 1: dequantisation bin width


def make_process(kind: str):
    """``(process, parametrization)`` of a problem kind, read from the process registry: an example
    label of :func:`unigen.process.process_examples` ("vp_discrete", "vp_discrete_zsnr", ...),
    "ddpm" (= "vp_discrete": DDPM's 1000-step linear beta table) or any name
    :func:`unigen.process.get_process` builds from its defaults ("vp", "fm", "ve", "edm", "VPCosine",
    ...). The parametrization of the exact model: eps, or velocity where sampling starts from pure
    noise (alpha = 0 at the start, e.g. flow matching)."""
    examples = P.process_examples()
    label = KIND_ALIASES.get(kind, kind)
    if label in examples:
        proc = examples[label]
    else:
        try:
            proc = P.get_process(kind)
        except (TypeError, ValueError):
            names = sorted(set(examples) | set(KIND_ALIASES) | {n for n, c in P.process_names().items() if n in c.aliases})
            raise ValueError(f"unknown process kind {kind!r}; valid kinds are {', '.join(names)} (or a registered "
                             "class name)") from None
    alpha0 = float(proc.alpha(torch.tensor(sample_range(proc)[0], dtype=torch.float64)))
    return proc, ("velocity" if alpha0 == 0.0 else "eps")


def _mixture(dim: int, k: int, seed: int) -> GaussianMixture:
    """8 modes on a circle of radius 2 (std 0.3) in 2-D; a seeded random mixture otherwise."""
    if dim == 2:
        return ring_mixture(k)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


@dataclass
class Problem:
    """A model, its data and the reference PF-ODE solve (float64 throughout).

    ``draw(n, generator)`` samples data; ``held_out`` (a finite pool, e.g. digits kept out of
    training) replaces it for the metrics when given. ``mixture`` is set for an exact oracle
    (closed-form log-density); ``dequant`` is the bin width of discrete data, whose NLL is then
    reported in bits/dim of the uniformly dequantised data. ``ref_tol`` / ``nll_tol``: the
    rtol = atol of the reference sampling solve and of the accurate NLL solve.
    """

    name: str
    process: object
    model: object
    kind: str
    schedule: str
    event_shape: tuple
    draw: Callable
    mixture: GaussianMixture | None = None
    held_out: torch.Tensor | None = None
    dequant: float | None = None
    info: dict = field(default_factory=dict)
    ref_tol: float = REFERENCE_TOL
    nll_tol: float = NLL_TOL
    _refs: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    @property
    def trained(self) -> bool:
        return self.mixture is None

    @property
    def nll_unit(self) -> str:
        return "bits/dim" if self.dequant else "nats/dim"

    def grid(self, schedule, steps: int, solver=None) -> torch.Tensor:
        """The time grid of ``steps`` steps: a schedule name, or a callable (problem, solver, steps) -> Tensor."""
        if callable(schedule) and not isinstance(schedule, torch.Tensor):
            return make_grid(self.process, schedule(self, solver, steps).to(torch.float64))
        return make_grid(self.process, schedule, steps)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """z ~ N(0, sigma(t_start)^2 I) at the default sampling start (float64)."""
        t0 = torch.tensor(sample_range(self.process)[0], dtype=torch.float64)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        return z * float(self.process.sigma(t0))

    def exact(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.draw(n, generator).to(torch.float64)

    def data_sets(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent data sets (the comparison set and the floor's second set): fresh draws
        of n each, or the two halves of a seeded permutation of the held-out pool."""
        gen = lambda k: torch.Generator().manual_seed(seed * 1000 + k)  # noqa: E731
        if self.held_out is None:
            return self.exact(n, gen(2)), self.exact(n, gen(3))
        pool = self.held_out.to(torch.float64)
        m = min(n, pool.shape[0] // 2)
        perm = torch.randperm(pool.shape[0], generator=gen(2))
        return pool[perm[:m]], pool[perm[m : 2 * m]]

    def floor_sets(self, n: int, seed: int, count: int) -> list[torch.Tensor]:
        """``count`` data sets independent of the comparison set of :meth:`data_sets` (the first is
        its second set): fresh draws, or for a held-out pool draws with replacement from the
        images not in the comparison set. They measure how SW2 scatters between draws of n."""
        a, b = self.data_sets(n, seed)
        sets = [b]
        if self.held_out is None:
            sets += [self.exact(n, torch.Generator().manual_seed(seed * 1000 + 10 + k)) for k in range(1, count)]
            return sets
        pool = self.held_out.to(torch.float64)
        m = a.shape[0]
        rest = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed * 1000 + 2))[m:]
        for k in range(1, count):
            pick = torch.randint(0, rest.shape[0], (m,), generator=torch.Generator().manual_seed(seed * 1000 + 10 + k))
            sets.append(pool[rest[pick]])
        return sets

    def at_time(self, x: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
        """Data ``x`` taken to time t: alpha(t) x + sigma(t) noise (``x`` itself where sigma(t) = 0)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = float(self.process.alpha(tt)), float(self.process.sigma(tt))
        if sigma == 0.0 and alpha == 1.0:
            return x
        return alpha * x + sigma * noise

    def reference(self, z: torch.Tensor, t_start: float, t_end: float) -> tuple[torch.Tensor, int]:
        """``unigen.reference.ode_endpoint`` (dopri5, rtol = atol = ``ref_tol``, 1e-10) from ``z`` at
        t_start to t_end; cached per (z, range)."""
        key = (id(z), float(t_start), float(t_end))
        hit = self._refs.get(key)
        if hit is None or hit[0] is not z:
            # on the flow-matching view, all the way onto sigma = 0 where the range ends there
            x, nfe = ode_endpoint(self.model, z, t_start, t_end, tol=self.ref_tol)
            hit = self._refs[key] = (z, x, nfe)
        return hit[1], hit[2]


def gmm_problem(dim: int = 2, process: str = "vp", k: int = 8, seed: int = 0) -> Problem:
    """The benchmark problem ``gmm{dim}-{process}``: an exact K-mode Gaussian-mixture model.

    ``process``: a kind of :func:`make_process`, e.g. "vp" (VP.linear, eps model), "fm"
    (FlowMatching, velocity model) or "ddpm" (VP.discrete over a 1000-step linear beta table, eps
    model). ``dim`` = 2 gives 8 modes on a circle (:func:`unigen.analytic.ring_mixture`); any other
    dimension a seeded random mixture (means N(0, I), stds in [0.2, 0.7]).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    proc, param = make_process(process)
    gm = _mixture(dim, k, seed)
    draw = lambda n, g: gm.sample(n, generator=g, dtype=torch.float64)  # noqa: E731
    return Problem(f"gmm{dim}-{process}", proc, gm.model(proc, param), process, default_schedule(proc),
                   gm.event_shape, draw, mixture=gm)


def trained_problem(data: str, process: str = "fm", param: str | None = None, train_steps: int | None = None,
                    cache_dir="~/.cache/unigen", seed: int = 0, log: Callable | None = None) -> Problem:
    """The benchmark problem ``{data}-{process}`` on a small model trained with :func:`unigen.train.fit`.

    ``data``: a 2-D toy set (``moons``/``two_moons``, ``checkerboard``, ``eight_gaussians``,
    ``swiss_roll``) or ``digits`` (8x8, needs scikit-learn). ``param`` defaults to the process's
    (eps for vp/ddpm, velocity for fm); ``train_steps`` to 500 (2-D) / 1500 (digits, a
    ``TinyConvNet(width=16, blocks=2)``, batch 128). Checkpoints
    are cached in ``cache_dir`` as ``{data}-{process}-{param}-{train_steps}.pt`` (the benchmark's
    own recipe: ``unigen sample`` trains a wider network and names its files by its recipe). The
    digits model is trained on all but the first 600 images (the held-out pool for the metrics
    and the NLL), and its file name ends in ``-holdout600``. The network is cast to float64.
    """
    cli_name = {v: k for k, v in TOY_DATA.items()}.get(data, data)
    if cli_name not in TOY_DATA:
        raise ValueError(f"unknown data {data!r}; valid names are {', '.join(TOY_DATA)}")
    proc, default_param = make_process(process)
    param = param or default_param
    is_digits = cli_name == "digits"
    steps = train_steps or (1500 if is_digits else 500)
    say = log or (lambda msg: None)
    if is_digits:
        table = train.digits(dtype=torch.float64)  # ImportError without scikit-learn
        held_out, train_data = table[:DIGITS_HELD_OUT], table[DIGITS_HELD_OUT:].float()
        stem = f"digits-{process}-{param}-{steps}-holdout{DIGITS_HELD_OUT}"
        draw = lambda n, g: held_out[torch.randint(0, held_out.shape[0], (n,), generator=g)]  # noqa: E731
    else:
        held_out, train_data = None, TOY_DATA[cli_name]
        stem = f"{cli_name}-{process}-{param}-{steps}"
        sampler = train.DATASETS[train_data]
        draw = lambda n, g: sampler(n, generator=g, dtype=torch.float64)  # noqa: E731
    ckpt = pathlib.Path(cache_dir).expanduser() / f"{stem}.pt"
    net = None
    if is_digits and not ckpt.exists():  # a narrow net: float64 sweeps (the 1e-10 reference) stay affordable
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = train.TinyConvNet(channels=1, size=8, width=16, blocks=2)
    model = train.fit_cached(ckpt, train_data, proc, param, log=lambda m: say(f"[{cli_name}-{process}] {m}"),
                             steps=steps, generator=torch.Generator().manual_seed(seed),  # as unigen sample --seed
                             net=net, batch_size=128 if is_digits else 256)
    seconds = model.train_seconds  # None when loaded from the cache
    model.net.double()
    event = (1, 8, 8) if is_digits else (2,)
    return Problem(f"{cli_name}-{process}", model.process, model, process, default_schedule(model.process), event,
                   draw, held_out=held_out, dequant=DIGITS_BIN if is_digits else None,
                   info={"checkpoint": str(ckpt), "train_steps": steps, "train_seconds": seconds,
                         "final_loss": model.history[-1] if model.history else None})


def get_problem(name: str, *, seed: int = 0, train_steps: int | None = None, cache_dir="~/.cache/unigen",
                log: Callable | None = None) -> Problem:
    """A problem by name: ``gmm{dim}-{process}`` (oracle) or ``{data}-{process}`` (trained), e.g.
    ``gmm2-vp``, ``gmm16-fm``, ``moons-fm``, ``checkerboard-vp``, ``digits-fm``."""
    data, _, kind = name.rpartition("-")
    if data.startswith("gmm") and data[3:].isdigit():
        return gmm_problem(int(data[3:]), kind, seed=seed)
    return trained_problem(data, kind, train_steps=train_steps, cache_dir=cache_dir, seed=seed, log=log)


@dataclass
class SolverSpec:
    """A solver configuration in a sweep: ``make()`` builds a fresh solver; ``schedule`` None
    means the problem's default, else a schedule name or a callable (problem, solver, steps) ->
    Tensor of times (e.g. a calibrated grid); ``kinds`` limits it to some process kinds (None: all)."""

    label: str
    make: Callable
    schedule: str | Callable | None = None
    kinds: tuple | None = None

    def applies(self, problem: Problem) -> bool:
        return self.kinds is None or problem.kind in self.kinds


def _spec(x) -> SolverSpec:
    if isinstance(x, SolverSpec):
        return x
    if isinstance(x, str) and x in REGISTRY:
        return SolverSpec(x, REGISTRY[x])
    if isinstance(x, type):
        return SolverSpec(x.__name__, x)
    return SolverSpec(repr(x), lambda x=x: x)


# The customary grid of some configurations, by label: EDM's Heun in the sigma clock runs on
# Karras et al.'s grid where the process has a finite largest level (a grid preference, not a
# list of solvers: which solvers run comes from the registry).
_CUSTOMARY_GRIDS = {
    "Heun(sigma)": [("karras", ("vp", "ddpm"))],
    "Euler(sigma)": [("karras", ("vp", "ddpm"))],
    "RK4(sigma)": [("karras", ("vp", "ddpm"))],
    "EDMStochastic(churn=10)": [("karras", ("vp", "ddpm")), (None, ("fm",))],
}


def default_solvers() -> list[SolverSpec]:
    """Every registered solver, in every configuration its class lists (``Solver.variants()``,
    the same hook the test suite reads), labelled by ``Solver.label()``; Adaptive excepted (it
    chooses its own NFE, and is the reference)."""
    specs = []
    for name, cls in sorted(REGISTRY.items()):
        if getattr(cls, "adaptive", False):
            continue
        for variant in cls.variants():
            make = lambda v=variant: copy.deepcopy(v)  # noqa: E731 - a fresh solver per run
            label = variant.label()
            for schedule, kinds in _CUSTOMARY_GRIDS.get(label, [(None, None)]):
                specs.append(SolverSpec(label, make, schedule, kinds))
    return specs


CALIBRATION_SEED = 777_777  # the calibration noise of optimised grids, disjoint from the sweep's seeds


def optimized(spec: SolverSpec, n_calibration: int = 1024, max_evals: int | None = None) -> SolverSpec:
    """``spec`` with its grid optimised per (problem, step count) by :func:`unigen.optimize_schedule`
    on ``n_calibration`` draws of the problem's noise under their own seed (disjoint from the
    sweep's noise); labelled "<label>, optimized". Deterministic solvers only."""
    def optimized_grid(problem, solver, steps):
        calib = problem.noise(n_calibration, torch.Generator().manual_seed(CALIBRATION_SEED))
        return optimize_schedule(problem.model, solver, steps, noise=calib, max_evals=max_evals).grid

    return SolverSpec(f"{spec.label}, optimized", spec.make, optimized_grid, spec.kinds)


def quick_solvers() -> list[SolverSpec]:
    """A handful: first order, Heun, the multistep exponential integrators, one SDE."""
    S = REGISTRY
    return [
        SolverSpec("DDIM", lambda: S["DDIM"]()),
        SolverSpec("Heun", lambda: S["Heun"]()),
        SolverSpec("DPMSolverPP(2M)", lambda: S["DPMSolverPP"](order=2)),
        SolverSpec("UniPC(3)", lambda: S["UniPC"](order=3)),
        SolverSpec("DDPM", lambda: S["DDPM"]()),
    ]


def choose_steps(solver, problem: Problem, schedule, budget: int) -> int | None:
    """The largest step count whose ``solver.expected_nfe`` is <= budget (None: none fits)."""
    best = None
    for steps in range(1, int(budget) + 1):
        # a callable grid (e.g. an optimised one) keeps the sampling range: its end decides the
        # NFE, so the problem's default grid stands in for it rather than computing it per count
        ts = problem.grid(problem.schedule if callable(schedule) else schedule, steps, solver)
        ends_at_zero = float(problem.process.sigma(ts[-1:])) == 0.0
        e = solver.expected_nfe(steps, ends_at_zero)
        if e is None:
            return None
        if e <= budget:
            best = steps
    return best


class LocalRunner:
    """Runs batch work in this process: ``rows(fn, *args)`` = ``fn(*args)``.

    ``fn`` maps batch-leading tensors (or lists of per-sample generators) to ``(tensor, info)``;
    ``coupled=True`` marks work whose rows depend on each other (adaptive step control), which
    a sharding runner must not split. ``is_main``: this process computes metrics and writes.
    """

    is_main = True
    world_size = 1

    def rows(self, fn, *args, coupled: bool = False):
        return fn(*args)

    def place(self, model):
        return model


def item_generators(n: int, seed: int) -> list[torch.Generator]:
    """One generator per sample (sample i: seed 10^6 (seed + 1) + i), so a stochastic sampler's
    sample i is the same whatever batch or shard it is drawn in."""
    base = 1_000_000 * (seed + 1)
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def _nll_scale(problem: Problem) -> tuple[float, float]:
    """(factor, offset): value per dim = factor * (-log p) + offset (nats/dim, or dequantised bits/dim)."""
    if problem.dequant:
        return 1.0 / (problem.dim * math.log(2)), -math.log2(problem.dequant)
    return 1.0 / problem.dim, 0.0


def nll(problem: Problem, x: torch.Tensor, method: str = "dopri5", steps: int | None = None,
        runner=None) -> tuple[torch.Tensor | None, int]:
    """Per-sample NLL of data ``x`` (nats/dim, or bits/dim for dequantised data) and the NFE.

    ``method="dopri5"`` is the accurate adaptive solve (rtol = atol = 1e-7); a torchdiffeq
    fixed-step method takes ``steps`` steps on the problem's default grid from t0 to T (the
    sampling range reversed). An oracle's prior is its exact marginal p_T, so the only error is
    the ODE's. Returns (None, nfe) on a runner's non-main ranks for the adaptive solve.
    """
    runner = runner or LocalRunner()
    t_hi, t_lo = sample_range(problem.process)
    kw = {}
    if method in NLL_METHODS:
        grid = make_grid(problem.process, problem.schedule, steps, t_start=t_hi,
                         t_end=_finite_t(problem.process, t_lo)).flip(0)
        t0, T = float(grid[0]), float(grid[-1])
        kw["options"] = {"grid_constructor": lambda func, y0, t: grid.to(dtype=t.dtype, device=t.device)}
    else:
        t0, T = _finite_t(problem.process, t_lo), t_hi
        kw.update(rtol=problem.nll_tol, atol=problem.nll_tol)
    prior = None
    if problem.mixture is not None:
        gm, proc = problem.mixture, problem.process
        prior = lambda z: gm.marginal_log_prob(z, T, proc)  # noqa: E731
    factor, offset = _nll_scale(problem)
    model = problem.model if method not in NLL_METHODS else runner.place(problem.model)

    def fn(xs):
        logp, info = log_likelihood(model, xs, method=method, t0=t0, T=T, prior=prior, return_info=True, **kw)
        return -logp * factor + offset, info.nfe

    return runner.rows(fn, x.to(torch.float64), coupled=method not in NLL_METHODS)


def _endpoint(problem: Problem, t: float) -> dict:
    """``t_end`` and ``sigma_end`` of a record: where its samples (and the data they meet) are."""
    return {"t_end": float(t), "sigma_end": float(problem.process.sigma(torch.tensor([float(t)], dtype=torch.float64)))}


def _finite_t(process, t: float) -> float:
    """t, or the likelihood's default t0 where log-SNR(t) is infinite (flow matching ends at 0)."""
    return t if math.isfinite(float(process.log_snr(torch.tensor(t, dtype=torch.float64)))) else finite_end(process)


def _nll_data(problem: Problem, a: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The held-out points whose NLL is measured: the first n of the comparison set, uniformly
    dequantised within their bin for discrete data."""
    x = a[:n]
    if problem.dequant:
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed * 1000 + 6), dtype=torch.float64)
        x = x + (u - 0.5) * problem.dequant
    return x


def _schedule_label(schedule) -> str:
    if isinstance(schedule, str):
        return schedule
    return getattr(schedule, "__name__", type(schedule).__name__)


def sweep(
    problem: Problem,
    solvers=None,
    nfe_budgets=DEFAULT_BUDGETS,
    schedules=None,
    n_samples: int = 1000,
    seed: int = 0,
    n_projections: int = 256,
    log: Callable | None = None,
    *,
    nll_samples: int | None = 200,
    nll_methods=tuple(NLL_METHODS),
    nll_accurate: bool = True,
    progress: bool = False,
    runner=None,
) -> list[dict]:
    """Run every solver at every NFE budget on ``problem``; one record (dict) per run.

    Args:
        solvers: SolverSpec / registered names / Solver instances (default: ``default_solvers()``).
        nfe_budgets: model-call budgets; each run uses the most steps with real NFE <= budget.
        schedules: None (each spec's schedule, else the problem's default), one schedule (name
            or callable) for all, or a dict label -> schedule.
        n_samples: samples per run; the data comparison sets have the same size (at most half
            the held-out pool).
        seed: seeds the noise (shared by every run and the reference), the data sets, the SW
            projections and the stochastic solvers (one generator per sample).
        nll_samples: held-out points for the NLL column (0 or None: no NLL).
        nll_methods: torchdiffeq fixed-step methods for the NLL-vs-NFE rows (subset of NLL_METHODS).
        nll_accurate: also the accurate (dopri5) NLL; an oracle may skip it (its errors are
            against the closed form), a trained problem always runs it.
        progress: a progress bar over the runs on stderr (:func:`unigen.progress.progress_bar`: tqdm
            when installed, else a counter line).
        runner: where sampling runs (default :class:`LocalRunner`); with a sharding runner only
            the main rank computes metrics and gets the records (the others get []).
    """
    runner = runner or LocalRunner()
    main = runner.is_main
    specs = [_spec(s) for s in (default_solvers() if solvers is None else solvers)]
    specs = [s for s in specs if s.applies(problem)]
    say = (log or (lambda msg: None)) if main else (lambda msg: None)
    z = problem.noise(n_samples, torch.Generator().manual_seed(seed * 1000 + 1))
    gens = item_generators(n_samples, seed)
    t_start, t_end = sample_range(problem.process)
    records, base, ref, ref_rec = [], {}, None, None
    exact_a, _ = problem.data_sets(n_samples, seed)  # on every rank: the NLL points are sharded too
    x_nll = _nll_data(problem, exact_a, nll_samples, seed) if nll_samples else None
    if main:
        med = median_bandwidth(exact_a)
        bws = tuple(med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0))

        # every sample is compared with data at its own end time (the reference's and every run's
        # grid end at t_end: sigma = 0 for flow matching, sigma(1e-3) ~ 0.01 for VP)
        noise_gen = torch.Generator().manual_seed(seed * 1000 + 5)
        eps_a = torch.randn(exact_a.shape, generator=noise_gen, dtype=torch.float64)
        targets = {}

        def target(t: float) -> torch.Tensor:
            if t not in targets:
                targets[t] = problem.at_time(exact_a, t, eps_a)
            return targets[t]

        def sw(x, t):
            return sliced_wasserstein2(x, target(t), n_projections=n_projections,
                                       generator=torch.Generator().manual_seed(seed * 1000 + 4))

        others = [problem.at_time(b, t_end, torch.randn(b.shape, generator=noise_gen, dtype=torch.float64))
                  for b in problem.floor_sets(n_samples, seed, FLOOR_DRAWS)]
        spread = torch.tensor([sw(b, t_end) for b in others], dtype=torch.float64)
        floor = {"sw2_floor": float(spread.mean()), "sw2_floor_sd": float(spread.std()), "floor_draws": len(others),
                 "mmd2_floor": rbf_mmd2(others[0], target(t_end), bws)}
        t0 = time.perf_counter()
        ref, ref_nfe = problem.reference(z, t_start, t_end)
        ref_s = time.perf_counter() - t0
        base = {"problem": problem.name, "dim": problem.dim, "process": problem.kind, "n_samples": n_samples,
                "trained": problem.trained, "nll_unit": problem.nll_unit, **floor}
        ref_rec = dict(base, solver=f"reference dopri5 (rtol {problem.ref_tol:g})", schedule="adaptive", budget=None, steps=None,
                       nfe=ref_nfe, stochastic=False, rmse=0.0, sw2=sw(ref, t_end), mmd2=rbf_mmd2(ref, target(t_end), bws),
                       seconds=ref_s, nll=None, **_endpoint(problem, t_end),
                       **({"model": problem.info} if problem.info else {}))
        records.append(ref_rec)
        say(f"[{problem.name}] reference: {ref_nfe} NFE in {ref_s:.1f} s; SW2 {ref_rec['sw2']:.4f}, floor SW2 "
            f"{floor['sw2_floor']:.4f} +- {floor['sw2_floor_sd']:.4f}")
    nll_target = None
    if nll_samples and main:
        ref_rec.update(nll_samples=x_nll.shape[0], nll_nfe=None)
        if nll_accurate or problem.trained:
            t0 = time.perf_counter()
            vals, nfe = nll(problem, x_nll, "dopri5", runner=runner)
            ref_rec.update(nll=float(vals.mean()), nll_nfe=nfe, nll_tol=problem.nll_tol, nll_seconds=time.perf_counter() - t0)
            nll_target = ref_rec["nll"]
        if problem.mixture is not None:
            gm = problem.mixture
            factor, offset = _nll_scale(problem)
            t_lo = _finite_t(problem.process, t_end)
            nll_target = ref_rec["nll_exact"] = float((-gm.marginal_log_prob(x_nll, t_lo, problem.process)).mean()
                                                      * factor + offset)
        if ref_rec["nll"] is not None:
            say(f"[{problem.name}] NLL {ref_rec['nll']:.4f} {problem.nll_unit} (dopri5, {ref_rec['nll_nfe']} NFE)"
                + (f"; closed form {nll_target:.4f}" if problem.mixture is not None else ""))

    todo = [(spec, b) for spec in specs for b in nfe_budgets]
    todo_nll = [(m, b) for m in (nll_methods if nll_samples else ()) for b in nfe_budgets]
    bar = progress_bar(len(todo) + len(todo_nll), problem.name, progress and main, leave=False)
    for spec, budget in todo:
        rec = _run_solver(problem, spec, budget, schedules, z, gens, seed, runner, say, base)
        if rec is not None and main:
            if rec.get("error") is None:
                x, rec_ref = rec.pop("_x"), ref
                ts = rec.pop("_times")
                end = t_end if abs(float(ts[-1]) - t_end) <= 1e-12 else float(ts[-1])
                ok = bool(torch.isfinite(x).all())
                if rec["stochastic"]:
                    rmse = None
                else:  # against the reference over the same time range
                    if abs(float(ts[0]) - t_start) > 1e-12 or end != t_end:
                        rec_ref = problem.reference(z, float(ts[0]), end)[0]
                    rmse = endpoint_rmse(x, rec_ref) if ok else math.inf
                rec.update(rmse=rmse, sw2=sw(x, end) if ok else math.inf,
                           mmd2=rbf_mmd2(x, target(end), bws) if ok else math.inf, **_endpoint(problem, end))
            records.append(rec)
        bar.update()
    for method, budget in todo_nll:
        steps = budget // NLL_METHODS[method]
        if steps >= 1:
            t0 = time.perf_counter()
            vals, nfe = nll(problem, x_nll, method, steps, runner=runner)
            if main:
                v = float(vals.mean())
                records.append(dict(base, solver=f"NLL torchdiffeq {method}", schedule=problem.schedule, budget=int(budget),
                                    steps=steps, nfe=int(nfe), stochastic=False, rmse=None, sw2=None, mmd2=None, nll=v,
                                    nll_err=v - nll_target if math.isfinite(v) else math.inf,
                                    seconds=time.perf_counter() - t0))
        bar.update()
    bar.close()
    return records


def _run_solver(problem, spec, budget, schedules, z, gens, seed, runner, say, base) -> dict | None:
    """Sample with ``spec`` at ``budget`` (fewer steps while the real NFE exceeds it); a record
    with the samples in ``_x`` (gathered on the main rank), an error record, or None (skipped)."""
    if isinstance(schedules, dict):
        schedule = schedules.get(spec.label, spec.schedule or problem.schedule)
    else:
        schedule = schedules if schedules is not None else (spec.schedule or problem.schedule)
    solver = spec.make()
    rec = dict(base, solver=spec.label, schedule=_schedule_label(schedule), budget=int(budget),
               stochastic=bool(solver.stochastic), nll=None)
    try:
        steps = choose_steps(solver, problem, schedule, budget)
        if steps is None:
            say(f"[{problem.name}] {spec.label}: budget {budget} skipped (no step count fits)")
            return None
        # rows coupled by the solver, or a torchdiffeq/torchsde wrapper (whose noise comes from a
        # Brownian object per batch, and per-sample generators would cost ~10x): the whole batch,
        # one generator, on every rank
        coupled = bool(getattr(solver, "batch_coupled", False) or getattr(solver, "syncs_host", False))
        model = problem.model if coupled else runner.place(problem.model)
        while True:
            ts = problem.grid(schedule, steps, solver)

            def fn(zs, gs, ts=ts):
                if not solver.stochastic:
                    gs = None
                elif coupled:
                    gs = torch.Generator().manual_seed(1_000_000 * (seed + 1) - 1)
                x, info = sample(model, solver, schedule=ts, noise=zs, generator=gs)
                return x, (info.nfe, info.times)

            t0 = time.perf_counter()
            x, (nfe, times) = runner.rows(fn, z, gens, coupled=coupled)
            sec = time.perf_counter() - t0
            if nfe <= budget or steps == 1:
                break
            steps -= 1  # expected_nfe was optimistic: take fewer steps
        if nfe > budget:
            say(f"[{problem.name}] {spec.label}: budget {budget} skipped (1 step costs {nfe})")
            return None
        rec.update(steps=steps, nfe=int(nfe), seconds=sec, _x=x, _times=times.to(torch.float64))
    except Exception as e:  # a solver that cannot run here is reported, not fatal
        rec.update(steps=None, nfe=None, rmse=None, sw2=None, mmd2=None, error=f"{type(e).__name__}: {e}")
        say(f"[{problem.name}] {spec.label}: budget {budget} failed: {rec['error']}")
    return rec
