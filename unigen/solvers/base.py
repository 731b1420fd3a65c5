r"""The solver interface: a dynamics view of the model, a precomputed grid, a step rule.

Solvers never see the network (diffrax's "terms"). They ask a :class:`Dynamics` for
exactly what their algorithm needs and declare it in ``requires``:

* ``"x0_eps"``  the semi-linear view (x0_hat, eps_hat) of exponential integrators;
* ``"ode"``     the probability-flow ODE  dz/dt = alpha' x0_hat + sigma' eps_hat;
* ``"sde"``     the reverse-SDE family drift  f z - (1 + eta^2)/2 g^2 score  and  eta g;
* ``"score"``   grad log p_t;
* ``"energy"``  an energy E(z, t) with score = -grad E (energy-based models only).

A :class:`~unigen.solvers.grid.Grid` holds the times and every schedule coefficient,
computed once before the loop. Fixed-grid solvers are :class:`ProgramSolver` s: they
describe each step as data (a :class:`~unigen.solvers.program.Program`, computed from the
paper's formulas on the grid's floats) and ONE executor (:mod:`unigen.solvers.executor`)
runs it: tensor arithmetic only, no ``.item()``, no Python branching on tensor values
(CUDA graphs and torch.compile stay possible). The warm-up / lower-order-final policy of
the multistep methods is :func:`multistep_order`, written once.

Subclasses of :class:`Solver` register themselves by class name; ``variants()`` lists the
configurations the tests and the benchmark run for each.
"""

from __future__ import annotations


import functools
import inspect
import math
import weakref

import numpy as np
import torch
from torch import Tensor

from .._utils import IncompatibleSolverError, LRUCache
from ..noise import randn_like
from ..parametrization import Prediction
from ..process import VP
from .executor import ExecutionState, compile_program, run_step
from .grid import Grid, Node
from .program import Q, Z, Program, Stage, Step

__all__ = [
    "Dynamics", "Solver", "ProgramSolver", "Noise", "REGISTRY", "get_solver", "multistep_order", "check_lower_order_final",
    "LOWER_ORDER_FINAL_BELOW", "FixedProgram", "NAMED",
]

# multistep methods drop to lower order on their last steps when a run has fewer steps than
# this (DPM-Solver's reference implementation; keeps few-step sampling stable)
LOWER_ORDER_FINAL_BELOW = 15

REGISTRY: dict[str, type] = {}
NAMED: dict[str, "Solver"] = {}  # configured instances by name (tuned solvers: unigen.solvers.tuned.register_tuned)

# the constructor arguments of each solver instance (Solver.arguments), by id and dropped when
# the instance is collected: kept beside the instance so that its attributes, repr and cache key
# stay what the solver itself sets, and keyed by identity so that solvers need not be hashable
_ARGUMENTS: dict = {}


def _recording(init):
    """``init`` that first records the arguments of the outermost constructor call."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        key = id(self)
        if key not in _ARGUMENTS:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            try:
                weakref.finalize(self, _ARGUMENTS.pop, key, None)
            except TypeError:  # not weak-referenceable (__slots__): nothing recorded
                pass
            else:
                _ARGUMENTS[key] = {k: v for k, v in list(bound.arguments.items())[1:]}
        init(self, *args, **kwargs)

    return wrapper


class Dynamics:
    """What a solver may ask of a model. Counts every model evaluation in ``nfe``;
    ``model_kwargs`` (conditioning) go to every network call."""

    def __init__(self, model, data_dtype: torch.dtype, model_kwargs: dict | None = None):
        self.model = model
        self.process = model.process
        self.data_dtype = data_dtype
        self.model_kwargs = model_kwargs
        self.nfe = 0
        caps = {"x0_eps", "ode", "sde", "score"}
        if callable(getattr(model, "energy", None)):
            caps.add("energy")
        self.capabilities = frozenset(caps)

    def predict(self, z: Tensor, t: Tensor, node: Node | None = None):
        """One model call at (z, t); the network sees z in the data dtype.

        ``node`` (a :class:`~unigen.solvers.grid.Node` at t) supplies precomputed alpha,
        sigma, alpha', sigma' so that conversions skip the schedule arithmetic.
        """
        return Prediction(self.raw(z, t, node), z, t, self.process, self.model.parametrization, node)

    def raw(self, z: Tensor, t: Tensor, node: Node | None = None) -> Tensor:
        """One model call returning the network's own output (what the executor combines)."""
        self.nfe += 1
        if z.dtype != self.data_dtype:
            return self.model.raw(z.to(self.data_dtype), t, node, self.model_kwargs).to(z.dtype)
        return self.model.raw(z, t, node, self.model_kwargs)

    def velocity(self, z: Tensor, t: Tensor, node: Node | None = None) -> Tensor:
        """The probability-flow ODE drift dz/dt in the process's own time."""
        return self.predict(z, t, node).velocity

    def energy(self, z: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.model.energy(z, t)


class Noise:
    """Standard normal draws for stochastic steps, from one generator or one per batch item."""

    def __init__(self, generator=None):
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        return randn_like(like, self.generator)


class Solver:
    """Base class of every step rule.

    Attributes:
        order: convergence order on the probability-flow ODE (None for MCMC correctors).
        stochastic: whether steps draw noise.
        requires: views of the model the solver needs (see module docstring).
        nfe_per_step: model calls per ordinary step (NOT the order; diffusers conflates them).
        syncs_host: True only for wrappers of adaptive integrators (torchdiffeq/torchsde).
        batch_coupled: True if one batch item's result depends on the others (adaptive step
            control on a batch norm, a batch-mean step size); False for every fixed-step rule.
    """

    order: int | None = None
    stochastic: bool = False
    requires: frozenset = frozenset({"ode"})
    nfe_per_step: int = 1
    syncs_host: bool = False
    batch_coupled: bool = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])

    def arguments(self) -> dict:
        """The arguments this solver was constructed with (defaults filled in), by name:
        ``type(s)(**s.arguments())`` builds the same configuration."""
        return dict(_ARGUMENTS.get(id(self), {}))

    # -- the interface -------------------------------------------------------------------
    def init(self, dyn: Dynamics, z: Tensor, grid: Grid):
        """Per-run state (multistep history, precomputed coefficients). Runs before the loop."""
        return None

    def step(self, dyn: Dynamics, z: Tensor, i: int, grid: Grid, state, noise: Noise):
        """Advance z from grid.t[i] to grid.t[i+1]; returns (z, state)."""
        raise NotImplementedError

    def final_step(self, dyn: Dynamics, z: Tensor, i: int, grid: Grid, state, noise: Noise):
        """The step onto zero noise (sigma = 0): z lands on x0_hat (first order, no extra call).

        This is DDIM / DPM-Solver-1 / Euler-in-sigma at sigma_next = 0; for a stochastic
        sampler the posterior q(z_0 | z_t, x0_hat) is a point mass at x0_hat too.
        """
        return dyn.predict(z, grid.t[i], grid.node(i)).x0, state

    def expected_nfe(self, n_steps: int, ends_at_zero: bool) -> int:
        """Model calls for a run of ``n_steps`` (the last step onto sigma = 0 costs one call)."""
        return self.nfe_per_step * (n_steps - 1) + (1 if ends_at_zero else self.nfe_per_step)

    def check(self, dyn: Dynamics, grid: Grid) -> None:
        """Raise before the first step if this solver cannot run on (model, grid)."""
        missing = self.requires - dyn.capabilities
        if missing:
            raise IncompatibleSolverError(
                f"{type(self).__name__} requires {', '.join(sorted(missing))}; this model "
                f"({type(dyn.model).__name__}) provides {', '.join(sorted(dyn.capabilities))}"
            )

    @classmethod
    def variants(cls) -> list["Solver"]:
        """The configurations of this class that the test suite and ``unigen bench`` run
        (every registered solver, each variant): ``cls.example()`` where a class defines one
        (its default is a degenerate case, e.g. EDMStochastic without churn), else ``cls()``."""
        return [cls.example() if hasattr(cls, "example") else cls()]

    def label(self) -> str:
        """A short name for tables: the class name with the arguments that differ from the
        default configuration (families override it with their customary names)."""
        try:
            default = type(self)()
        except Exception:  # noqa: BLE001 - a class without a default configuration
            default = None
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        simple = (int, float, str, bool, type(None))
        diff = [
            (k, getattr(self, k)) for k in names
            if isinstance(getattr(self, k, None), simple) and getattr(self, k) != getattr(default, k, object())
        ]
        fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
        return type(self).__name__ + (f"({', '.join(f'{k}={fmt(v)}' for k, v in diff)})" if diff else "")

    def cache_key(self):
        """This configuration as a hashable value (class and every attribute), or None if an
        attribute is unhashable: what per-grid caches are keyed by (never the repr)."""
        key = (type(self), tuple(vars(self).items()))  # attributes in assignment order (one per constructor)
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def get_solver(name_or_solver) -> Solver:
    """A solver instance from an instance, a class or a registered name."""
    if isinstance(name_or_solver, Solver):
        return name_or_solver
    if isinstance(name_or_solver, type) and issubclass(name_or_solver, Solver):
        return name_or_solver()
    if isinstance(name_or_solver, str) and name_or_solver in REGISTRY:
        return REGISTRY[name_or_solver]()
    if isinstance(name_or_solver, str) and name_or_solver in NAMED:
        return NAMED[name_or_solver]
    raise ValueError(
        f"unknown solver {name_or_solver!r}; valid names are {', '.join(sorted(REGISTRY) + sorted(NAMED))} "
        "(or a Solver instance)"
    )


class ProgramSolver(Solver, register=False):
    """A fixed-grid solver given as data: :meth:`step_program` returns step i as a
    :class:`~unigen.solvers.program.Step` from the paper's formulas; the executor runs it.

    The base class owns the run's shape: steps ``0 .. n-1``, where a grid ending at zero
    noise (sigma = 0) ends with :meth:`landing`, and the per-grid caching of program and plan.
    """

    def prepare(self, grid: Grid):
        """Whatever the steps share, computed once per grid in vectorised passes (e.g. the
        nodes of every off-grid stage); passed to :meth:`step_program` and :meth:`landing`."""
        return None

    def step_program(self, grid: Grid, i: int, pre) -> Step:
        """Step i (from t_i to t_{i+1}) of this solver on ``grid``."""
        raise NotImplementedError

    def landing(self, grid: Grid, pre) -> Step:
        """The step onto zero noise (sigma = 0): z lands on x0_hat (first order, one call).

        This is DDIM / DPM-Solver-1 / Euler-in-sigma at sigma_next = 0; for a stochastic
        sampler the posterior q(z_0 | z_t, x0_hat) is a point mass at x0_hat too.
        """
        return Step((Stage(grid.node(grid.n - 1), Z),), Q(0, "x0"))

    def check_grid(self, grid: Grid) -> None:
        """Raise ValueError if this solver cannot run on ``grid`` (before any program is built)."""

    def program(self, grid: Grid) -> Program:
        """This solver on ``grid``, as a printable :class:`~unigen.solvers.program.Program`."""
        self.check_grid(grid)
        pre = self.prepare(grid)
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        steps = [self.step_program(grid, i, pre) for i in range(last)]
        if grid.ends_at_zero:
            steps.append(self.landing(grid, pre))
        return Program(tuple(steps), self.label())

    def plan(self, grid: Grid, parametrization: str):
        """The compiled program for a model of ``parametrization`` (cached on the grid by value)."""
        key = self.cache_key()
        build = lambda: compile_program(self.program(grid), parametrization, grid.ts.dtype, grid.ts.device)  # noqa: E731
        return build() if key is None else grid.cached(("plan", key, parametrization), build)

    def init(self, dyn, z, grid):
        return ExecutionState(self.plan(grid, dyn.model.parametrization))

    def step(self, dyn, z, i, grid, state, noise):
        return run_step(state, i, dyn, z, noise), state

    final_step = step

    def expected_nfe(self, n_steps: int, ends_at_zero: bool) -> int:
        """Model calls of a run of ``n_steps``: the program's count on a reference VP grid."""
        return _reference_nfe(self, n_steps, ends_at_zero)


_NFE = LRUCache(4096)  # configurations x step counts seen by one process


def _reference_nfe(solver: ProgramSolver, n_steps: int, ends_at_zero: bool) -> int:
    def count() -> int:
        end = 0.0 if ends_at_zero else 1e-3
        ts = torch.linspace(1.0, end, n_steps + 1, dtype=torch.float64)
        return solver.program(Grid(VP.linear(), ts, torch.float64, "cpu")).nfe

    config = solver.cache_key()
    return count() if config is None else _NFE.get((config, n_steps, ends_at_zero), count)


def multistep_order(grid: Grid, i: int, order: int, lower_order_final: bool, history: bool = True) -> int:
    """The order a multistep method (or a singlestep one, ``history=False``) uses at step i.

    The ONE warm-up policy: step i has i + 1 evaluated points, less a zero-SNR start
    (lambda = -inf never enters a divided difference); with ``lower_order_final=True`` and
    fewer than ``LOWER_ORDER_FINAL_BELOW`` steps the order is at most n - i (the last step is
    first order), as in DPM-Solver's reference implementation; ``"always"`` applies that cap
    at every step count (diffusers' UniPC), False never (see :func:`check_lower_order_final`).
    """
    k = order
    if history:
        k = min(k, i + 1 - (1 if math.isinf(grid.lam_dpm[0]) and i > 0 else 0))
    if lower_order_final == "always" or (lower_order_final and grid.n < LOWER_ORDER_FINAL_BELOW):
        k = min(k, grid.n - i)
    return max(k, 1)


def check_lower_order_final(value) -> bool | str:
    """The lower-order-final setting: True (below ``LOWER_ORDER_FINAL_BELOW`` steps, DPM-Solver's
    reference rule), False (never) or "always" (every step count, diffusers' UniPC rule)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value == "always":
        return value
    raise ValueError(f"lower_order_final must be True, False or 'always', got {value!r}")


class FixedProgram(ProgramSolver, register=False):
    """Runs one given :class:`~unigen.solvers.program.Program` on the grid it was built for
    (e.g. one whose coefficients were replaced by tensors to differentiate or tune them)::

        program = ug.DPMSolverPP(2).program(grid)
        tuned = ug.solvers.FixedProgram(program.with_coefficients(values), grid.times)
    """

    def __init__(self, program: Program, times, order: int | None = None, stochastic: bool = False):
        if not isinstance(program, Program):
            raise TypeError(f"program must be a unigen Program, got {type(program).__name__}")
        self.program_ = program
        self.times = [float(t) for t in times]
        if len(self.times) != len(program.steps) + 1:
            raise ValueError(f"a program of {len(program.steps)} steps runs on {len(program.steps) + 1} times, got {len(self.times)}")
        self.order = order
        self.stochastic = bool(stochastic)
        self.requires = frozenset({"x0_eps"})

    def expected_nfe(self, n_steps, ends_at_zero):
        return self.program_.nfe

    def program(self, grid):
        if grid.times != self.times:
            raise ValueError(f"this program was built for the grid {self.times}; got {grid.times}")
        return self.program_

    def cache_key(self):
        return None  # tensor coefficients may change between runs (tuning): compile each time
