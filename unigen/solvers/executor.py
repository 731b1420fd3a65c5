r"""The one executor: runs any :class:`~unigen.solvers.program.Program`.

``compile_program(program, parametrization)`` turns the symbolic program into a plan once
per (solver configuration, grid, model parametrization):

* every ``Q(k, name)`` becomes ``cz * point_k + co * out_k`` with (cz, co) from the
  parametrization table (one formula for every pair of output types, ``conversion``);
* each linear combination is expanded either onto the raw symbols (state, network outputs,
  history, noise) or onto materialised stage points, whichever has fewer terms;
* every coefficient becomes a 0-dim tensor in the compute dtype, made in one pass; a
  coefficient of exactly 1 costs no multiplication and an exact 0 no term.

``run_step`` then does only tensor arithmetic: one ``mul`` and one ``addcmul`` per term, the
network calls, pushes onto the history. No host syncs and no Python branching on tensor
values, so a loop over it is traced by torch.compile and captured by CUDA graphs as is
(``unigen.compile``). NFE is the number of stages run (``Program.nfe`` predicts it).

Coefficients given as 0-dim tensors (instead of floats) stay tensors, so a run is
differentiable with respect to them: the door to tuning a solver's coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import SingularConversionError
from ..parametrization import output_coefficients
from .program import Program

__all__ = ["conversion", "compile_program", "Plan", "ExecutionState", "run_step"]


def conversion(node, src: str, dst: str) -> tuple[float, float]:
    r"""(cz, co) with ``dst``-output = cz z + co ``src``-output at ``node``.

    With out = a x0 + b eps and z = alpha x0 + sigma eps (det = alpha b - sigma a), the target
    a' x0 + b' eps = [(a' b - b' a) z + (b' alpha - a' sigma) out] / det. Parallel rows
    (a', b') = k (a, b) are a pure rescaling (cz, co) = (0, k), defined even where det = 0.
    """
    a, b = output_coefficients(src, node.alpha, node.sigma, node.d_alpha, node.d_sigma)
    a2, b2 = output_coefficients(dst, node.alpha, node.sigma, node.d_alpha, node.d_sigma)
    if (a, b) == (a2, b2):
        return 0.0, 1.0
    if a * b2 - b * a2 == 0.0 and (a != 0.0 or b != 0.0):
        return 0.0, (a2 / a if a != 0.0 else b2 / b)
    det = node.alpha * b - node.sigma * a
    if det == 0.0 or not math.isfinite(det):
        raise SingularConversionError(
            f"at t={node.time:.6g} (alpha={node.alpha:.6g}, sigma={node.sigma:.6g}) a {src!r} output does not "
            f"determine {dst!r}, which this solver reads there; predict x0, v or velocity, or stop the grid short of that time"
        )
    cz, co = (a2 * b - b2 * a) / det, (b2 * node.alpha - a2 * node.sigma) / det
    if not (math.isfinite(cz) and math.isfinite(co)):
        raise SingularConversionError(
            f"at t={node.time:.6g} (alpha={node.alpha:.6g}, sigma={node.sigma:.6g}) converting {src!r} to {dst!r} "
            "is infinite; stop the grid short of that time"
        )
    return cz, co


@dataclass(frozen=True)
class _StepPlan:
    n_noise: int
    n_hist: int
    stages: tuple  # ((terms, node), ...): the point's terms and where to evaluate (terms: see Plan)
    stores: tuple  # (terms, ...)
    update: tuple  # terms
    nfe: int


@dataclass(frozen=True)
class Plan:
    """A compiled program: per step, terms ``((is_one, coefficient_tensor, slot), ...)``, or a
    bare slot index where a combination is one value with coefficient 1 (no arithmetic)."""

    steps: tuple
    keep: int
    nfe: int
    program: Program


def _add(acc: dict, symbol, c) -> None:
    acc[symbol] = acc[symbol] + c if symbol in acc else c


def compile_program(program: Program, parametrization: str, dtype: torch.dtype, device) -> Plan:
    """The plan that :func:`run_step` executes (see the module docstring)."""
    raw_steps, floats, depth = [], [], 0
    hist_len = 0
    for i, step in enumerate(program.steps):
        n_noise = 1 + max([-1] + [s[1] for lin in _lins(step) for s in lin.symbols() if s != "z" and s[0] == "xi"])
        n_hist = 1 + max([-1] + [s[1] for lin in _lins(step) for s in lin.symbols() if s != "z" and s[0] == "h"])
        if n_hist > hist_len:
            raise ValueError(f"step {i} of {program.solver} reads H[{n_hist - 1}] but only {hist_len} quantities were stored")
        depth = max(depth, n_hist)
        conv = {}
        points = []  # raw expansion of each stage point: {symbol: coef}, symbols z / xi / h / o
        stage_terms = []
        for st in step.stages:
            raw, cheapest = _expand(st.point, points, conv, step, parametrization)
            points.append(raw)
            stage_terms.append((cheapest, st.node))
        stores = [_expand(lin, points, conv, step, parametrization)[1] for lin in step.store]
        update = _expand(step.update, points, conv, step, parametrization)[1]
        raw_steps.append((n_noise, n_hist, stage_terms, stores, update, len(step.stages)))
        hist_len += len(step.store)
        for terms in [t for t, _ in stage_terms] + stores + [update]:
            floats += [c for c in terms.values() if not isinstance(c, Tensor)]
    it = iter(torch.tensor(floats, dtype=torch.float64).to(dtype=dtype, device=device).unbind(0) if floats else ())

    def tensorise(terms: dict, n_noise: int, n_hist: int):
        """The terms as ((is_one, coefficient, slot), ...), a bare slot (int) for 1 * value, or
        None for an empty combination (zero)."""
        if not terms:
            return None
        if len(terms) == 1:
            ((symbol, c),) = terms.items()
            if not isinstance(c, Tensor) and c == 1.0:
                next(it)  # keep the tensor stream aligned with the floats collected above
                return _slot(symbol, n_noise, n_hist)
        out = []
        for symbol, c in terms.items():
            slot = _slot(symbol, n_noise, n_hist)
            if isinstance(c, Tensor):
                out.append((False, c.to(dtype=dtype, device=device), slot))
            else:
                t = next(it)
                out.append((c == 1.0, t, slot))
        return tuple(out)

    steps = []
    for n_noise, n_hist, stage_terms, stores, update, nfe in raw_steps:
        steps.append(
            _StepPlan(
                n_noise, n_hist,
                tuple((tensorise(t, n_noise, n_hist), node) for t, node in stage_terms),
                tuple(tensorise(t, n_noise, n_hist) for t in stores),
                tensorise(update, n_noise, n_hist),
                nfe,
            )
        )
    return Plan(tuple(steps), max(depth, 1), program.nfe, program)


def _lins(step):
    return (*(st.point for st in step.stages), step.update, *step.store)


def _expand(lin, points: list, conv: dict, step, parametrization: str):
    """``lin`` on raw symbols, and the cheaper of that and its form on raw symbols plus
    materialised stage points ("p", k) (fewer terms; the raw form on a tie)."""
    raw, with_points = {}, {}
    for symbol, c in lin.terms.items():
        if symbol == "z" or symbol[0] in ("h", "xi"):
            _add(raw, symbol, c)
            _add(with_points, symbol, c)
            continue
        _, k, name = symbol
        key = (k, name)
        if key not in conv:
            conv[key] = conversion(step.stages[k].node, parametrization, name)
        cz, co = conv[key]
        if co != 0.0:
            _add(raw, ("o", k), c * co)
            _add(with_points, ("o", k), c * co)
        if cz != 0.0:
            for s, w in points[k].items():
                _add(raw, s, c * cz * w)
            _add(with_points, "z" if _is_state(points[k]) else ("p", k), c * cz)
    raw, with_points = _drop_zeros(raw), _drop_zeros(with_points)
    return raw, (with_points if len(with_points) < len(raw) else raw)


def _is_state(terms: dict) -> bool:
    """True if the combination is exactly 1 * Z (a float 1, not a tunable tensor)."""
    if len(terms) != 1 or "z" not in terms:
        return False
    c = terms["z"]
    return not isinstance(c, Tensor) and c == 1.0


def _drop_zeros(terms: dict) -> dict:
    return {s: c for s, c in terms.items() if isinstance(c, Tensor) or c != 0.0}


def _slot(symbol, n_noise: int, n_hist: int) -> int:
    """Index into run_step's value list [z, xi_0.., h_0.., p_0, o_0, p_1, o_1, ...]."""
    if symbol == "z":
        return 0
    kind, k = symbol[0], symbol[1]
    if kind == "xi":
        return 1 + k
    if kind == "h":
        return 1 + n_noise + k
    return 1 + n_noise + n_hist + 2 * k + (1 if kind == "o" else 0)


class ExecutionState:
    """Per-run state of the executor: the plan and the stored history (newest last)."""

    __slots__ = ("plan", "history")

    def __init__(self, plan: Plan):
        self.plan = plan
        self.history: list = []


def _combine(terms, vals: list) -> Tensor:
    if terms.__class__ is int:  # a single term with coefficient 1: the value itself
        return vals[terms]
    if terms is None:  # an empty combination
        return torch.zeros_like(vals[0])
    one, coef, slot = terms[0]
    out = vals[slot] if one else vals[slot] * coef
    for one, coef, slot in terms[1:]:
        out = out + vals[slot] if one else torch.addcmul(out, coef, vals[slot])
    return out


def run_step(state: ExecutionState, i: int, dyn, z: Tensor, noise) -> Tensor:
    """Step i of the plan from state z: draw its noise, run its stages, store, update."""
    plan = state.plan.steps[i]
    hist = state.history
    vals = [z]
    for _ in range(plan.n_noise):
        vals.append(noise(z))
    for j in range(plan.n_hist):
        vals.append(hist[-1 - j])
    for terms, node in plan.stages:
        point = vals[terms] if terms.__class__ is int else _combine(terms, vals)
        vals.append(point)
        vals.append(dyn.raw(point, node.t, node))
    if plan.stores:
        hist.extend([vals[terms] if terms.__class__ is int else _combine(terms, vals) for terms in plan.stores])
        del hist[: -state.plan.keep]
    update = plan.update
    return vals[update] if update.__class__ is int else _combine(update, vals)
