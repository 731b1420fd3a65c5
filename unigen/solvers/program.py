r"""Solvers as data: a run is a *linear stage program*.

Every fixed-grid solver here (DDIM, DDPM, the Runge-Kutta family, DPM-Solver(++), UniPC,
DEIS, the SDE solvers) advances the state by linear combinations. Per step:

* each **stage** evaluates the model at a point that is a linear combination of the state
  ``Z``, this step's earlier model quantities ``Q(k, name)``, stored history ``H(j)`` and
  fresh standard normal draws ``XI(m)``, at a :class:`~unigen.solvers.grid.Node` (a time
  with its coefficients);
* the **update** (the next state) is a linear combination of the same symbols;
* **store** lists the quantities pushed onto the history for later steps (newest last:
  ``H(0)`` is the most recently stored one).

``Q(k, name)`` reads stage k's evaluation in any parametrization ("x0", "eps",
"velocity", ...): at a node it is ``cz * point_k + co * out_k`` with (cz, co) from the ONE
conversion formula, so a solver writes its paper's equation (``A*Z - B*psi1*Q(0, "x0")``)
and never the network's own output type. This is a Butcher tableau generalised to
exponential integrators, multistep history and noise; :mod:`unigen.solvers.executor` runs
any program.

A :class:`Lin` is an immutable linear combination with float (or 0-dim tensor, for tuning)
coefficients; exact zeros are dropped, so a term whose coefficient vanishes costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..parametrization import check_parametrization

__all__ = ["Lin", "Z", "Q", "H", "XI", "Stage", "Step", "Program"]


def _is_zero(c) -> bool:
    return not isinstance(c, Tensor) and c == 0.0


class Lin:
    """An immutable linear combination sum_s c_s * symbol_s (symbols: see the module docstring)."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict):
        out = {}
        for s, c in terms.items():
            _check_symbol(s)
            if isinstance(c, Tensor):
                if c.ndim != 0:
                    raise ValueError(f"a coefficient tensor must be 0-dim, got shape {tuple(c.shape)} for {_name(s)}")
            else:
                c = float(c)
                if not math.isfinite(c):
                    raise ValueError(f"the coefficient of {_name(s)} is {c}: a program's coefficients must be finite")
            if not _is_zero(c):
                out[s] = c
        object.__setattr__(self, "terms", out)

    def __setattr__(self, name, value):
        raise AttributeError("Lin is immutable")

    def __add__(self, other: "Lin") -> "Lin":
        if not isinstance(other, Lin):
            return NotImplemented
        out = dict(self.terms)
        for s, c in other.terms.items():
            out[s] = out[s] + c if s in out else c
        return Lin(out)

    def __neg__(self) -> "Lin":
        return Lin({s: -c for s, c in self.terms.items()})

    def __sub__(self, other: "Lin") -> "Lin":
        if not isinstance(other, Lin):
            return NotImplemented
        return self + (-other)

    def __mul__(self, k) -> "Lin":
        if isinstance(k, Lin):
            return NotImplemented
        return Lin({s: c * k for s, c in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, k) -> "Lin":
        return Lin({s: c / k for s, c in self.terms.items()})

    def symbols(self):
        return self.terms.keys()

    def __eq__(self, other):
        return isinstance(other, Lin) and self.terms == other.terms

    __hash__ = None

    def __repr__(self):
        if not self.terms:
            return "0"
        parts = []
        for s, c in self.terms.items():
            v = float(c.detach()) if isinstance(c, Tensor) else float(c)
            parts.append(f"{v:+.6g}*{_name(s)}")
        return " ".join(parts).lstrip("+")


def _check_symbol(symbol) -> None:
    """Symbols are "z", ("q", k, name), ("h", j) or ("xi", m) with non-negative integer indices."""
    ok = symbol == "z" or (
        isinstance(symbol, tuple) and len(symbol) >= 2 and symbol[0] in ("q", "h", "xi")
        and isinstance(symbol[1], int) and not isinstance(symbol[1], bool) and symbol[1] >= 0
        and (len(symbol) == 3 and isinstance(symbol[2], str) if symbol[0] == "q" else len(symbol) == 2)
    )
    if not ok:
        raise ValueError(f"unknown symbol {symbol!r}: use Z, Q(k, name), H(j) or XI(m) with indices >= 0")


def _name(symbol) -> str:
    if symbol == "z":
        return "Z"
    kind = symbol[0]
    if kind == "q":
        return f"{symbol[2]}[{symbol[1]}]"
    return f"H[{symbol[1]}]" if kind == "h" else f"xi[{symbol[1]}]"


Z = Lin({"z": 1.0})
"""The state at the start of the step."""


def Q(k: int, name: str) -> Lin:
    """Stage k's model evaluation read as output type ``name`` (x0, eps, velocity, ...)."""
    check_parametrization(name, "quantity")
    return Lin({("q", k, name): 1.0})


def H(j: int) -> Lin:
    """History entry j: 0 is the quantity stored most recently by an earlier step."""
    return Lin({("h", j): 1.0})


def XI(m: int) -> Lin:
    """This step's m-th fresh standard normal draw (drawn in order of m, shaped like z)."""
    return Lin({("xi", m): 1.0})


@dataclass(frozen=True)
class Stage:
    """One model evaluation at ``point`` and time ``node``."""

    node: object  # a unigen.solvers.grid.Node
    point: Lin

    def __post_init__(self):
        if not all(hasattr(self.node, a) for a in ("t", "time", "alpha", "sigma")):
            raise TypeError(f"a Stage's node must be a Node (grid.node(i) or grid.nodes_at(times)), got {type(self.node).__name__}")
        if not isinstance(self.point, Lin):
            raise TypeError(f"a Stage's point must be a Lin, got {type(self.point).__name__}")


@dataclass(frozen=True)
class Step:
    """One step: its stages (evaluated in order), the next state, and what it stores."""

    stages: tuple
    update: Lin
    store: tuple = ()

    def __post_init__(self):
        if not isinstance(self.stages, (tuple, list)) or not all(isinstance(st, Stage) for st in self.stages):
            raise TypeError(f"stages must be a tuple of Stage, got {self.stages!r}")
        if not isinstance(self.update, Lin):
            raise TypeError(f"update must be a Lin (a combination of Z, Q, H, XI), got {type(self.update).__name__}")
        if not isinstance(self.store, (tuple, list)) or not all(isinstance(lin, Lin) for lin in self.store):
            raise TypeError(f"store must be a tuple of Lin, got {self.store!r}")
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "store", tuple(self.store))
        refs = [s for lin in (*(st.point for st in self.stages), self.update, *self.store) for s in lin.symbols()]
        for k, st in enumerate(self.stages):
            bad = [s for s in st.point.symbols() if s[0] == "q" and s[1] >= k]
            if bad:
                raise ValueError(f"stage {k}'s point reads {_name(bad[0])}, which is not evaluated before it")
        bad = [s for s in refs if s != "z" and s[0] == "q" and s[1] >= len(self.stages)]
        if bad:
            raise ValueError(f"{_name(bad[0])} refers to a stage this step does not have ({len(self.stages)} stages)")

    @property
    def nfe(self) -> int:
        return len(self.stages)


@dataclass(frozen=True)
class Program:
    """A solver on one grid: the steps in order (``solver`` names where it came from).

    ``print(program)`` lists every stage point and update with its coefficients; the
    quantities are named (x0, eps, velocity), so the program does not depend on the model's
    own parametrization (the executor converts).
    """

    steps: tuple
    solver: str = ""

    @property
    def nfe(self) -> int:
        """Model evaluations of one run."""
        return sum(step.nfe for step in self.steps)

    @property
    def history_depth(self) -> int:
        """How many stored quantities any step reads back (the executor keeps no more)."""
        depth = 0
        for step in self.steps:
            for lin in (*(st.point for st in step.stages), step.update, *step.store):
                depth = max([depth] + [s[1] + 1 for s in lin.symbols() if s != "z" and s[0] == "h"])
        return depth

    def _lins(self):
        for step in self.steps:
            yield from (st.point for st in step.stages)
            yield step.update
            yield from step.store

    def coefficients(self) -> list:
        """Every coefficient of the program in a fixed order (stage points, update, stores of
        each step; terms in their order): the parameters a tuner would adjust."""
        return [c for lin in self._lins() for c in lin.terms.values()]

    def with_coefficients(self, values) -> "Program":
        """The same program with ``values`` (as many as :meth:`coefficients`; floats or 0-dim
        tensors, e.g. requiring grad) in place of its coefficients."""
        values = list(values)
        if len(values) != len(self.coefficients()):
            raise ValueError(f"expected {len(self.coefficients())} coefficients, got {len(values)}")
        it = iter(values)

        def swap(lin: Lin) -> Lin:
            return Lin({s: next(it) for s in lin.terms})

        steps = []
        for step in self.steps:
            stages = tuple(Stage(st.node, swap(st.point)) for st in step.stages)
            update = swap(step.update)
            steps.append(Step(stages, update, tuple(swap(lin) for lin in step.store)))
        return Program(tuple(steps), self.solver)

    def __str__(self):
        lines = [f"{self.solver or 'Program'}: {len(self.steps)} steps, {self.nfe} model calls"]
        for i, step in enumerate(self.steps):
            lines.append(f"step {i}:")
            for k, st in enumerate(step.stages):
                lines.append(f"  stage {k} at t={st.node.time:.6g}: {st.point!r}")
            lines.append(f"  Z <- {step.update!r}")
            for lin in step.store:
                lines.append(f"  store {lin!r}")
        return "\n".join(lines)
