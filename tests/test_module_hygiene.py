"""Module hygiene of unigen/ (issue 12), read with ``ast`` from every file of the package:

* no private name of one module used by another: no ``from .x import _name`` and no
  ``obj._attr`` on anything but ``self`` / ``cls`` (a name that another module needs is public
  in the module that owns it);
* no import inside a function, except of an optional dependency (``OPTIONAL``: installed only
  with an extra, or a peer library) or a deferred one (``DEFERRED``, with the measured reason);
  every module imports what it needs at its top, so no module depends on the order in which
  ``unigen/__init__.py`` imports the others;
* the graph of module-level imports between modules of unigen has no cycle.

What is left over is listed in ``ALLOWED_PRIVATE`` / ``ALLOWED_LOCAL``, each entry with its
reason; an entry that no longer occurs fails the test too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unigen"

# installed only with an extra of pyproject.toml (plot, progress, data, bench) or a peer compared
# against: imported where used, so ``import unigen`` works without them
OPTIONAL = {"diffusers", "transformers", "matplotlib", "tqdm", "sklearn", "scipy", "flow_matching", "k_diffusion"}

# run-time dependencies imported where used on purpose
DEFERRED = {
    # ``import torchdiffeq`` imports scipy.integrate: 0.6-0.75 s on top of ``import unigen``
    # (about 2.3 s, torch included) and of every ``unigen --help``, for the adaptive solver and
    # the likelihoods only
    "torchdiffeq": "imports scipy.integrate (+0.6-0.75 s per process start)",
}

# (file relative to the repository, private name) -> reason
ALLOWED_PRIVATE: dict = {}

# (file relative to the repository, the import as ast.unparse writes it) -> reason
ALLOWED_LOCAL: dict = {}


# ---------------------------------------------------------------------------------------
# the checks, on source text (so the negative checks below run them on small examples)
# ---------------------------------------------------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, private name) for every private name imported from another module or reached as
    an attribute of anything but ``self`` / ``cls``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            out += [(node.lineno, a.name) for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls"):
                out.append((node.lineno, node.attr))
    return out


def _top_package(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.ImportFrom):
        return {"." if node.level else (node.module or "").split(".")[0]}
    return {a.name.split(".")[0] for a in node.names}


def local_imports(source: str) -> list[tuple[int, str]]:
    """(line, import statement) for every import inside a function that is not of an optional
    or deferred dependency (a relative import never is)."""
    out, seen = [], set()
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in seen:
                seen.add(id(node))  # nested functions are walked twice
                if not _top_package(node) <= OPTIONAL | set(DEFERRED):
                    out.append((node.lineno, ast.unparse(node)))
    return out


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(tree: ast.Module):
    """The nodes that run when the module is imported: everything but function bodies, and
    not ``if TYPE_CHECKING:`` blocks."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
            continue
        yield node
        stack += list(ast.iter_child_nodes(node))


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports when it is imported (module-level
    imports; ``from pkg import name`` counts as importing ``pkg.name`` where that is a module).
    A package that calls ``importlib.import_module`` at import time (``unigen.solvers``
    registers its solvers so) is taken to import every module in its folder."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in _module_level(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
        elif is_package and isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module"):
            out |= {m for m in modules if m.rsplit(".", 1)[0] == module}
    return {m for m in out if m in modules and m != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state, path = {}, []

    def visit(v):
        state[v] = "open"
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = "done"
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def _files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, "unigen/ not found"
    return [(f, f.relative_to(ROOT).as_posix(), f.read_text()) for f in files]


def _check(find, allowed: dict) -> None:
    found, problems = set(), []
    for _, rel, source in _files():
        for line, what in find(source):
            found.add((rel, what))
            if (rel, what) not in allowed:
                problems.append(f"{rel}:{line}: {what}")
    stale = [f"{rel}: {what}" for rel, what in allowed if (rel, what) not in found]
    assert not problems, "\n".join(problems)
    assert not stale, "allow-list entries that no longer occur (remove them): " + "; ".join(stale)


# ---------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------
def test_no_private_name_is_used_outside_its_module():
    _check(private_uses, ALLOWED_PRIVATE)


def test_no_function_level_imports_but_optional_dependencies():
    _check(local_imports, ALLOWED_LOCAL)


def test_module_imports_are_acyclic():
    files = _files()
    modules = {module_name(f) for f, _, _ in files}
    graph = {module_name(f): imports_of(src, module_name(f), f.name == "__init__.py", modules) for f, _, src in files}
    assert graph["unigen.cli"] >= {"unigen", "unigen.verify"}  # the graph sees relative imports
    assert "unigen.solvers.langevin" in graph["unigen.solvers"]  # and the solver registry's imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checks_report_new_violations():
    """A violation of each kind, in a small source text, is reported; the allowed forms are not."""
    src = '''
from .schedules import _finite_end, sample_range
import torch

def f(other, self):
    from .model import Model
    import matplotlib.pyplot as plt
    from torchdiffeq import odeint
    from sklearn.datasets import load_digits
    import torchsde
    return other._hidden, self._mine, torch.__version__
'''
    assert private_uses(src) == [(2, "_finite_end"), (11, "_hidden")]
    assert local_imports(src) == [(6, "from .model import Model"), (10, "import torchsde")]
    modules = {"unigen", "unigen.a", "unigen.b", "unigen.pkg", "unigen.pkg.c"}
    a = imports_of("from . import b\nfrom .pkg import c\ndef f():\n    from . import a", "unigen.a", False, modules)
    assert a == {"unigen.b", "unigen.pkg.c"}
    assert imports_of("from .. import b", "unigen.pkg", True, modules) == {"unigen.b"}
    assert imports_of("from ..b import x", "unigen.pkg.c", False, modules) == {"unigen.b"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
