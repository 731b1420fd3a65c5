"""Every solver module in this package registers its solvers on import (one file per family)."""

import importlib
import pkgutil

from .base import REGISTRY, Dynamics, Grid, Noise, Solver, get_solver

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

globals().update(REGISTRY)
__all__ = ["REGISTRY", "Dynamics", "Grid", "Noise", "Solver", "get_solver", *sorted(REGISTRY)]
