r"""NFE-vs-quality sweeps on exact Gaussian-mixture oracles.

A :class:`Problem` bundles an exact model (``GaussianMixture.model``), its process, an exact
sampler of the data and a reference probability-flow ODE solve: torchdiffeq dopri5 through
``ug.Adaptive`` at rtol = atol = 1e-10 in float64, started from the SAME noise as the solver
under test and ending at the same time. With the oracle there is no model error, so every
gap is solver (discretisation) error.

:func:`sweep` runs each solver at each NFE budget with the largest number of steps whose
``solver.expected_nfe`` fits the budget (budgets a solver cannot meet are skipped), checks the
real count ``info.nfe`` against the budget, and records

* ``rmse``: endpoint RMSE against the reference solve (deterministic solvers only: a
  stochastic sampler does not follow the ODE path, so its distance to it is not an error);
* ``sw2`` / ``mmd2``: sliced W_2 and unbiased RBF MMD^2 against fresh exact data samples;
* ``sw2_floor`` / ``mmd2_floor``: the same metrics between two independent exact sample sets
  of the same size, i.e. the value a perfect sampler would get (the noise floor).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import process as P
from ..analytic import GaussianMixture
from ..sample import sample
from ..schedules import default_schedule, make_grid, sample_range
from ..solvers import REGISTRY
from .metrics import endpoint_rmse, median_bandwidth, rbf_mmd2, sliced_wasserstein2

__all__ = ["Problem", "SolverSpec", "gmm_problem", "choose_steps", "sweep", "default_solvers", "quick_solvers",
           "DEFAULT_BUDGETS", "PROCESS_KINDS"]

DEFAULT_BUDGETS = (4, 6, 8, 10, 15, 20, 50, 100)
PROCESS_KINDS = ("vp", "fm", "ddpm")
REFERENCE_TOL = 1e-10


def _make_process(kind: str):
    if kind == "vp":
        return P.VP.linear(), "eps"
    if kind == "fm":
        return P.FlowMatching(), "velocity"
    if kind == "ddpm":
        return P.VP.discrete(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)), "eps"
    raise ValueError(f"process must be one of {', '.join(PROCESS_KINDS)}, got {kind!r}")


def _mixture(dim: int, k: int, seed: int) -> GaussianMixture:
    """8 modes on a circle of radius 2 (std 0.3) in 2-D; a seeded random mixture otherwise."""
    if dim == 2:
        ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return GaussianMixture(means, torch.full((k,), 0.3, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


@dataclass
class Problem:
    """An exact model, its data sampler and the reference PF-ODE solve (float64 throughout)."""

    name: str
    mixture: GaussianMixture
    process: object
    model: object
    kind: str
    schedule: str
    _refs: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def grid(self, schedule, steps: int) -> torch.Tensor:
        return make_grid(self.process, schedule, steps)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """z ~ N(0, sigma(t_start)^2 I) at the default sampling start (float64)."""
        t0 = torch.tensor(sample_range(self.process)[0], dtype=torch.float64)
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * float(self.process.sigma(t0))

    def exact(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.mixture.sample(n, generator=generator, dtype=torch.float64)

    def reference(self, z: torch.Tensor, t_start: float, t_end: float) -> tuple[torch.Tensor, int]:
        """dopri5 at rtol = atol = 1e-10 from ``z`` at t_start to t_end; cached per (z, range)."""
        key = (id(z), float(t_start), float(t_end))
        hit = self._refs.get(key)
        if hit is None or hit[0] is not z:
            from ..solvers import Adaptive

            ts = torch.tensor([t_start, t_end], dtype=torch.float64)
            solver = Adaptive("dopri5", rtol=REFERENCE_TOL, atol=REFERENCE_TOL)
            if float(self.process.sigma(ts[1:])) > 0.0:
                x, info = sample(self.model, solver, schedule=ts, noise=z)
                nfe = info.nfe
            else:
                # sample() treats a last step onto sigma = 0 as the jump to x0_hat; the reference
                # must integrate the ODE all the way (the exact velocity is finite at sigma = 0).
                from ..solvers import Dynamics, Grid

                dyn = Dynamics(self.model, torch.float64)
                grid = Grid(self.process, ts, torch.float64, z.device, self.model.parametrization)
                with torch.no_grad():
                    x, _ = solver.step(dyn, z.to(torch.float64), 0, grid, None, None)
                nfe = dyn.nfe
            hit = self._refs[key] = (z, x, nfe)
        return hit[1], hit[2]


def gmm_problem(dim: int = 2, process: str = "vp", k: int = 8, seed: int = 0) -> Problem:
    """The benchmark problem ``gmm{dim}-{process}``: an exact K-mode Gaussian-mixture model.

    ``process``: "vp" (VP.linear, eps model), "fm" (FlowMatching, velocity model) or "ddpm"
    (VP.discrete over a 1000-step linear beta table, eps model). ``dim`` = 2 gives 8 modes on a
    circle; any other dimension a seeded random mixture (means N(0, I), stds in [0.2, 0.7]).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    proc, param = _make_process(process)
    gm = _mixture(dim, k, seed)
    return Problem(f"gmm{dim}-{process}", gm, proc, gm.model(proc, param), process, default_schedule(proc))


@dataclass
class SolverSpec:
    """A solver configuration in a sweep: ``make()`` builds a fresh solver; ``schedule`` None
    means the problem's default; ``kinds`` limits it to some process kinds (None: all)."""

    label: str
    make: Callable
    schedule: str | None = None
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


def _diffusion(kind):
    return kind in ("vp", "ddpm")


def default_solvers() -> list[SolverSpec]:
    """Every registered solver with a customary configuration and grid (Adaptive excepted: it
    chooses its own NFE, and is the reference)."""
    S = REGISTRY
    vpk = ("vp", "ddpm")
    return [
        SolverSpec("DDIM", lambda: S["DDIM"]()),
        SolverSpec("Euler", lambda: S["Euler"]()),
        SolverSpec("Heun", lambda: S["Heun"]()),
        SolverSpec("Heun(sigma, karras)", lambda: S["Heun"](clock="sigma"), "karras", vpk),
        SolverSpec("Midpoint", lambda: S["Midpoint"]()),
        SolverSpec("RK4", lambda: S["RK4"]()),
        SolverSpec("DPMSolver(2M)", lambda: S["DPMSolver"](order=2)),
        SolverSpec("DPMSolver(3M)", lambda: S["DPMSolver"](order=3)),
        SolverSpec("DPMSolverPP(2M)", lambda: S["DPMSolverPP"](order=2)),
        SolverSpec("DPMSolverPP(3M)", lambda: S["DPMSolverPP"](order=3)),
        SolverSpec("DPMSolverPP(2S)", lambda: S["DPMSolverPP"](order=2, multistep=False)),
        SolverSpec("DPMSolverPP(3S)", lambda: S["DPMSolverPP"](order=3, multistep=False)),
        SolverSpec("UniPC(2)", lambda: S["UniPC"](order=2)),
        SolverSpec("UniPC(3)", lambda: S["UniPC"](order=3)),
        SolverSpec("DEIS(2)", lambda: S["DEIS"](order=2)),
        SolverSpec("DEIS(3)", lambda: S["DEIS"](order=3)),
        SolverSpec("DDPM", lambda: S["DDPM"]()),
        SolverSpec("DDIM(eta=1)", lambda: S["DDIM"](eta=1.0)),
        SolverSpec("EulerMaruyama", lambda: S["EulerMaruyama"]()),
        SolverSpec("EDMStochastic(churn=10)", lambda: S["EDMStochastic"](churn=10.0), "karras", vpk),
        SolverSpec("EDMStochastic(churn=10)", lambda: S["EDMStochastic"](churn=10.0), None, ("fm",)),
        SolverSpec("SDEDPMSolverPP(2)", lambda: S["SDEDPMSolverPP"](order=2)),
        SolverSpec("TorchSDE(euler)", lambda: S["TorchSDE"](method="euler")),
        SolverSpec("PredictorCorrector", lambda: S["PredictorCorrector"]()),
        SolverSpec("Langevin", lambda: S["Langevin"]()),
        SolverSpec("AnnealedLangevin", lambda: S["AnnealedLangevin"]()),
        SolverSpec("MALA", lambda: S["MALA"]()),
    ]


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
        ts = problem.grid(schedule, steps)
        ends_at_zero = float(problem.process.sigma(ts[-1:])) == 0.0
        e = solver.expected_nfe(steps, ends_at_zero)
        if e is None:
            return None
        if e <= budget:
            best = steps
    return best


def sweep(
    problem: Problem,
    solvers=None,
    nfe_budgets=DEFAULT_BUDGETS,
    schedules=None,
    n_samples: int = 1000,
    seed: int = 0,
    n_projections: int = 256,
    log: Callable | None = None,
) -> list[dict]:
    """Run every solver at every NFE budget on ``problem``; one record (dict) per run.

    Args:
        solvers: SolverSpec / registered names / Solver instances (default: ``default_solvers()``).
        nfe_budgets: model-call budgets; each run uses the most steps with real NFE <= budget.
        schedules: None (each spec's schedule, else the problem's default), one schedule name
            for all, or a dict label -> schedule.
        n_samples: samples per run; the exact comparison sets have the same size.
        seed: seeds the noise (shared by every run and the reference), the exact sets, the SW
            projections and the stochastic solvers.
    """
    specs = [_spec(s) for s in (default_solvers() if solvers is None else solvers)]
    specs = [s for s in specs if s.applies(problem)]
    say = log or (lambda msg: None)
    gen = lambda k: torch.Generator().manual_seed(seed * 1000 + k)  # noqa: E731
    z = problem.noise(n_samples, gen(1))
    exact_a, exact_b = problem.exact(n_samples, gen(2)), problem.exact(n_samples, gen(3))
    med = median_bandwidth(exact_a)
    bws = tuple(med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0))

    def sw(x):
        return sliced_wasserstein2(x, exact_a, n_projections=n_projections, generator=gen(4))

    floor = {"sw2_floor": sw(exact_b), "mmd2_floor": rbf_mmd2(exact_b, exact_a, bws)}
    t_start, t_end = sample_range(problem.process)
    t0 = time.perf_counter()
    ref, ref_nfe = problem.reference(z, t_start, t_end)
    ref_s = time.perf_counter() - t0
    base = {"problem": problem.name, "dim": problem.dim, "process": problem.kind, "n_samples": n_samples, **floor}
    records = [dict(base, solver="reference dopri5 (rtol 1e-10)", schedule="adaptive", budget=None, steps=None,
                    nfe=ref_nfe, stochastic=False, rmse=0.0, sw2=sw(ref), mmd2=rbf_mmd2(ref, exact_a, bws), seconds=ref_s)]
    say(f"[{problem.name}] reference: {ref_nfe} NFE in {ref_s:.1f} s; floor SW2 {floor['sw2_floor']:.4f}")
    for spec in specs:
        if isinstance(schedules, dict):
            schedule = schedules.get(spec.label, spec.schedule or problem.schedule)
        elif schedules is not None:
            schedule = schedules
        else:
            schedule = spec.schedule or problem.schedule
        for budget in nfe_budgets:
            solver = spec.make()
            rec = dict(base, solver=spec.label, schedule=schedule, budget=int(budget), stochastic=bool(solver.stochastic))
            try:
                steps = choose_steps(solver, problem, schedule, budget)
                if steps is None:
                    say(f"[{problem.name}] {spec.label}: budget {budget} skipped (no step count fits)")
                    continue
                while True:
                    t0 = time.perf_counter()
                    x, info = sample(problem.model, solver, steps=steps, schedule=schedule, noise=z, generator=gen(5))
                    sec = time.perf_counter() - t0
                    if info.nfe <= budget or steps == 1:
                        break
                    steps -= 1  # expected_nfe was optimistic: take fewer steps
                if info.nfe > budget:
                    say(f"[{problem.name}] {spec.label}: budget {budget} skipped (1 step costs {info.nfe})")
                    continue
                ts = info.times.to(torch.float64)
                end = float(ts[-1])
                if solver.stochastic:
                    rmse = None
                elif abs(float(ts[0]) - t_start) < 1e-12 and abs(end - t_end) < 1e-12:
                    rmse = endpoint_rmse(x, ref)
                else:
                    rmse = endpoint_rmse(x, problem.reference(z, float(ts[0]), end)[0])
                ok = bool(torch.isfinite(x).all())
                rec.update(steps=steps, nfe=int(info.nfe), rmse=rmse if ok else math.inf,
                           sw2=sw(x) if ok else math.inf, mmd2=rbf_mmd2(x, exact_a, bws) if ok else math.inf, seconds=sec)
            except Exception as e:  # a solver that cannot run here is reported, not fatal
                rec.update(steps=None, nfe=None, rmse=None, sw2=None, mmd2=None, error=f"{type(e).__name__}: {e}")
                say(f"[{problem.name}] {spec.label}: budget {budget} failed: {rec['error']}")
            records.append(rec)
    return records
