"""Every solver module in this package registers its solvers on import (one file per family)."""

import importlib
import pkgutil

from .base import NAMED, REGISTRY, Dynamics, FixedProgram, Noise, ProgramSolver, Solver, get_solver, multistep_order
from .grid import Grid, Node
from .program import XI, H, Lin, Program, Q, Stage, Step, Z

INFRASTRUCTURE_MODULES = ("base", "grid", "program", "executor")  # the rest define solvers
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in INFRASTRUCTURE_MODULES:
        importlib.import_module(f"{__name__}.{_mod.name}")

globals().update(REGISTRY)
__all__ = [
    "REGISTRY", "NAMED", "INFRASTRUCTURE_MODULES", "Dynamics", "Grid", "Node", "Noise", "Solver", "ProgramSolver", "get_solver", "multistep_order",
    "FixedProgram", "Program", "Step", "Stage", "Lin", "Z", "Q", "H", "XI", *sorted(REGISTRY),
]
