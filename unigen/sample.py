r"""``sample()``: the one loop every solver runs in.

It owns what k-diffusion repeats in each sampler and diffusers in each scheduler: the
grid, the prior draw, the model-call count, the final step onto zero noise, the
trajectory, callbacks and the progress bar. A solver contributes only its step rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._utils import LRUCache, SingularConversionError, compute_dtype, refuse_non_finite
from .flow_map import FlowMap
from .flow_map_samplers import CountedFlowMap, get_flow_map_sampler
from .model import Model
from .parametrization import undetermined_reason
from .progress import progress_bar
from .schedules import Times, default_schedule, get_schedule, make_grid
from .solvers.base import Dynamics, Noise, get_solver
from .solvers.grid import Grid

__all__ = ["sample", "SampleInfo", "DEFAULT_STEPS", "resolve_schedule"]

DEFAULT_STEPS = 20  # solver steps when sample() is given neither steps nor a tensor grid (as unigen sample)


@dataclass
class SampleInfo:
    """What a run did. ``nfe`` counts real model evaluations."""

    nfe: int
    times: Tensor
    solver: str
    trajectory: list = field(default_factory=list)


def sample(
    model: Model | FlowMap,
    solver=None,
    steps: int | None = None,
    schedule=None,
    *,
    shape=None,
    noise: Tensor | None = None,
    generator=None,
    t_start=None,
    t_end=None,
    denoise_final: bool = False,
    return_trajectory: bool = False,
    callback=None,
    progress: bool = False,
    grad: bool = False,
    dtype: torch.dtype | None = None,
    device=None,
    model_kwargs: dict | None = None,
    check_finite: bool = True,
):
    r"""Draw samples by integrating from noise (t_start) to data (t_end).

    Args:
        model: a :class:`~unigen.model.Model`, or a two-time :class:`~unigen.flow_map.FlowMap`
            (then ``solver`` is a few-step sampler of ``unigen.flow_map_samplers``, one
            flow-map call per step, and ``steps`` defaults to 1).
        solver: a Solver instance, class or registered name (``ug.solvers.REGISTRY``); default
            ``"DPMSolverPP"`` (``"FlowMapJump"`` for a flow map).
        steps: number of solver steps (grid of ``steps + 1`` times); default 20
            (``DEFAULT_STEPS``, as ``unigen sample``), and 1 for ``Adaptive`` (one
            error-controlled solve from t_start to t_end).
        schedule: ``"uniform" | "logsnr" | "karras" | "quadratic" | "leading" | "trailing" |
            "linspace"`` or a strictly decreasing tensor (or list) of times (used exactly, first to
            last), a :class:`~unigen.schedules.Schedule`, or ``"optimized"``: a grid tuned to this
            model and solver on a calibration batch (``unigen.calibration.Optimized``, registered
            when ``unigen`` is imported; computed once, then cached). Default: ``process.default_schedule`` ("logsnr" for diffusion, "karras"
            for EDM, "uniform" for flow matching / cosine).
        shape / noise: draw z ~ N(0, sigma(t_start)^2 I) of ``shape``, or start from ``noise``.
        generator: a torch.Generator or a list of one per batch item (item i then depends
            only on generator i, for the prior and every stochastic step).
        t_start, t_end: override the default range, ``model.default_range()``: the process's
            customary range (``schedules.sample_range``) cut to the model's valid
            ``t_range`` (a model moved to another process with ``Model.to`` starts where it
            is defined, from the prior at that time). Times outside ``t_range`` are refused.
        denoise_final: evaluate the model once more at the last time and return x0_hat.
        return_trajectory: keep z after every step in ``info.trajectory``.
        callback: ``callback(i, t, z)`` after every step.
        progress: show a tqdm bar (optional extra ``progress``).
        grad: keep the autograd graph (differentiate through the sampler).
        dtype, device: of the prior draw when ``noise`` is not given.
        model_kwargs: keyword arguments for every network call (conditioning: class labels,
            text embeddings, ...), e.g. ``model_kwargs={"y": labels}``.
        check_finite: record, without host syncs, the first step whose result is not
            finite, and raise ``FloatingPointError`` naming it after the loop (one sync).

    Returns:
        (x, info) with ``info.nfe`` the number of model evaluations.

    A grid that ends at zero noise (sigma = 0, e.g. EDM's final sigma = 0 or the clean point of
    a DDPM table) lands on x0_hat in its last step without an extra call. Half-precision
    inputs are integrated in float32 (the network still sees its own dtype) and returned in
    the input dtype.
    """
    if isinstance(model, FlowMap):
        if denoise_final:
            raise ValueError("denoise_final applies to a one-time Model; a flow map's last jump lands on the data end")
        return _sample_flow_map(model, "FlowMapJump" if solver is None else solver, steps, schedule, shape=shape,
                                noise=noise, generator=generator, t_start=t_start, t_end=t_end,
                                return_trajectory=return_trajectory, callback=callback, progress=progress, grad=grad,
                                dtype=dtype, device=device, model_kwargs=model_kwargs, check_finite=check_finite)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model or FlowMap, got {type(model).__name__}")
    model_kwargs = check_model_kwargs(model_kwargs)
    solver = get_solver("DPMSolverPP" if solver is None else solver)
    process = model.process
    event = tuple(noise.shape[1:]) if isinstance(noise, Tensor) else tuple(shape or ())[1:]
    data = noise.dtype if isinstance(noise, Tensor) else (dtype or torch.get_default_dtype())
    schedule, steps, t_start, t_end = resolve_schedule(model, solver, schedule, steps, t_start, t_end, event, data)
    ts = model_grid(model, schedule, steps, t_start, t_end)

    z = prior_draw(process, ts, shape, noise, generator, dtype, device)
    if isinstance(generator, (list, tuple)) and len(generator) != z.shape[0]:
        raise ValueError(f"a list of generators needs one per batch item: got {len(generator)} for batch {z.shape[0]}")

    data_dtype = z.dtype
    work = compute_dtype(data_dtype)
    grid = prepared_grid(model, solver, ts, data_dtype, z.device)
    dyn = Dynamics(model, data_dtype, model_kwargs)
    noise_fn = Noise(generator)
    z = z.to(work)
    trajectory = [z] if return_trajectory else []

    bar = progress_bar(grid.n, type(solver).__name__, enabled=progress, require_tqdm=True) if progress else None

    def on_step(i, z):
        if return_trajectory:
            trajectory.append(z)
        if callback is not None:
            callback(i, grid.t[i + 1], z)
        if bar is not None:
            bar.update(1)

    hooks = return_trajectory or callback is not None or bar is not None
    sums = [] if check_finite else None
    with torch.set_grad_enabled(grad):
        z = integrate(solver, dyn, z, grid, noise_fn, on_step if hooks else None, sums)
        if denoise_final:
            z = dyn.predict(z, grid.t[-1]).x0
            if sums is not None:
                sums.append(z.detach().sum())
    if bar is not None:
        bar.close()
    if sums is not None:
        raise_if_not_finite(z, sums, grid, type(solver).__name__)
    info = SampleInfo(nfe=dyn.nfe, times=grid.ts, solver=repr(solver), trajectory=trajectory)
    return z.to(data_dtype), info


def _sample_flow_map(flow_map: FlowMap, sampler, steps, schedule, *, shape, noise, generator, t_start, t_end,
                     return_trajectory, callback, progress, grad, dtype, device, model_kwargs, check_finite):
    """:func:`sample` for a two-time flow map: the grid as for a Model, one flow-map call per step."""
    model_kwargs = check_model_kwargs(model_kwargs)
    sampler = get_flow_map_sampler(sampler)
    if isinstance(schedule, (list, tuple)):
        schedule = torch.tensor([float(v) for v in schedule], dtype=torch.float64)
    if isinstance(schedule, Times):
        schedule = schedule.ts
    if schedule is not None and not isinstance(schedule, Tensor) and get_schedule(schedule).needs_model:
        raise ValueError(f"schedule {schedule!r} is tuned to a one-time model and solver; a flow map takes a named "
                         "schedule or a tensor of times")
    if steps is None and not isinstance(schedule, Tensor):
        steps = 1  # one jump: what a flow map is for
    ts = model_grid(flow_map, schedule, steps, t_start, t_end)
    flow_map.check_times(ts, "the sampling grid")  # every time, the last included: the map is called at it
    z = prior_draw(flow_map.process, ts, shape, noise, generator, dtype, device)
    data_dtype = z.dtype
    z = z.to(compute_dtype(data_dtype))
    times = ts.to(dtype=z.dtype, device=z.device)
    counted = CountedFlowMap(flow_map, data_dtype)
    trajectory = [z] if return_trajectory else []
    n = times.numel() - 1
    bar = progress_bar(n, type(sampler).__name__, enabled=progress, require_tqdm=True) if progress else None
    sums = [] if check_finite else None

    def on_step(i, z):
        if sums is not None:
            sums.append(z.detach().sum())
        if return_trajectory:
            trajectory.append(z)
        if callback is not None:
            callback(i, times[i + 1], z)
        if bar is not None:
            bar.update(1)

    with torch.set_grad_enabled(grad):
        z = sampler.run(counted, z, times, Noise(generator), model_kwargs, on_step)
    if bar is not None:
        bar.close()
    if sums is not None and not bool(torch.isfinite(z).all()):
        bad = (~torch.isfinite(torch.stack(sums))).nonzero()
        i = int(bad[0]) if bad.numel() else n - 1
        raise FloatingPointError(
            f"{type(sampler).__name__} produced non-finite values at step {i} of {n} (t={float(ts[i]):.6g} -> "
            f"{float(ts[i + 1]):.6g}); the flow map returned NaN/inf there. check_finite=False returns the values unchecked"
        )
    info = SampleInfo(nfe=counted.nfe, times=ts, solver=repr(sampler), trajectory=trajectory)
    return z.to(data_dtype), info


def prior_draw(process, ts: Tensor, shape, noise, generator, dtype, device) -> Tensor:
    """z at the grid's first time: ``noise`` as given (checked against ``shape`` and ``device``),
    else z ~ N(0, sigma(ts[0])^2 I) of ``shape``."""
    if noise is not None:
        if not isinstance(noise, Tensor) or not noise.is_floating_point():
            raise TypeError("noise must be a floating tensor z_T")
        refuse_non_finite(noise, "noise")
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ValueError(f"shape {tuple(shape)} disagrees with noise of shape {tuple(noise.shape)}")
        if device is not None and torch.device(device) != noise.device:
            raise ValueError(f"device {device} disagrees with noise on {noise.device}")
        z = noise
    else:
        if shape is None:
            raise ValueError("pass shape=(batch, ...) or noise=z_T")
        z = process.prior_sample(shape, generator=generator, dtype=dtype or torch.get_default_dtype(), device=device)
        if float(ts[0]) != process.t_max:  # the prior's std at the grid's start
            z = z * (float(process.sigma(ts[:1])) / process.prior_std())
    return z


def integrate(solver, dyn: Dynamics, z: Tensor, grid: Grid, noise_fn: Noise, on_step=None, sums=None, state=None) -> Tensor:
    """The loop itself: ``solver.init``, then one step per grid interval, the last one onto
    sigma = 0 by ``solver.final_step``; ``on_step(i, z)`` after every step. If ``sums`` is a
    list, the 0-dim sum of z is appended after every step (one small reduction, no host sync):
    NaN and inf propagate into it, so it locates the first non-finite step afterwards.

    Everything it touches is prepared (grid, plan, dtype), so for the fixed-step solvers it
    is free of host syncs: ``unigen.compile`` traces it (torch.compile) or captures it (CUDA
    graph) as is, passing a ``state`` built eagerly (``solver.init``) so that no plan is
    built inside the trace.
    """
    if state is None:
        state = solver.init(dyn, z, grid)
    for i in range(grid.n):
        if grid.ends_at_zero and i == grid.n - 1:
            z, state = solver.final_step(dyn, z, i, grid, state, noise_fn)
        else:
            z, state = solver.step(dyn, z, i, grid, state, noise_fn)
        if sums is not None:
            sums.append(z.detach().sum() if z.requires_grad else z.sum())
        if on_step is not None:
            on_step(i, z)
    return z


def resolve_schedule(model: Model, solver, schedule, steps, t_start, t_end, event_shape: tuple, dtype):
    """(schedule, steps, t_start, t_end) ready for :func:`model_grid`: the solver's own grid when
    no schedule is given (a tuned solver), lists and ``Times`` as tensors, the default step
    count, and a schedule that depends on the model and solver (``"optimized"``, ``"tuned"``)
    evaluated to its times. What ``sample`` and ``unigen.compile`` share."""
    if schedule is None:  # a solver that carries its own grid (a tuned solver) runs on it by default
        schedule = getattr(solver, "own_schedule", None)
    if isinstance(schedule, (list, tuple)):
        schedule = torch.tensor([float(v) for v in schedule], dtype=torch.float64)
    if isinstance(schedule, Times):  # given times: the same as passing the tensor
        schedule = schedule.ts
    sched = None if schedule is None or isinstance(schedule, Tensor) else get_schedule(schedule)
    if steps is None and not isinstance(schedule, Tensor) and not (sched is not None and sched.needs_model):
        # an adaptive solver chooses its own steps between the grid's two ends
        steps = 1 if getattr(solver, "adaptive", False) else DEFAULT_STEPS
    if sched is not None and sched.needs_model:  # e.g. "optimized": tuned to this model and solver
        schedule = sched.times(model.process, steps, t_start, t_end, model=model, solver=solver,
                               event_shape=tuple(event_shape), dtype=dtype)
        steps = t_start = t_end = None
    return schedule, steps, t_start, t_end


def raise_if_not_finite(z: Tensor, sums: list, grid: Grid, solver: str) -> None:
    """One host sync after the loop: if the result ``z`` is not finite, raise FloatingPointError
    at the first step whose sum (``integrate``'s ``sums``) is not finite."""
    if not sums or bool(torch.isfinite(z).all()):
        return
    bad = (~torch.isfinite(torch.stack(sums))).nonzero()
    i = int(bad[0]) if bad.numel() else len(sums) - 1
    if i >= grid.n:  # denoise_final's extra evaluation
        where = f"the final denoising call at t={grid.times[-1]:.6g}"
    else:
        where = f"step {i} of {grid.n} (t={grid.times[i]:.6g} -> {grid.times[i + 1]:.6g})"
    raise FloatingPointError(
        f"{solver} produced non-finite values at {where}; the network returned NaN/inf there or the step "
        "diverged. Check the model at that time (ug.Model(...)(z, t) validates a single call); "
        "check_finite=False returns the values unchecked"
    )


def check_model_kwargs(model_kwargs) -> dict | None:
    """``model_kwargs`` must be None or a dict of keyword arguments (names as strings)."""
    if model_kwargs is None:
        return None
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments for the network, got {type(model_kwargs).__name__}")
    return model_kwargs


# Grids are reused across calls with the same settings (sampling in a loop, benchmarks): the
# schedule arithmetic and coefficient tables are built once. Keys hold the process's value
# (Process.value_key: its config, or the object itself where it has none), so a new but equal
# process object hits the cache too.
_TIMES = LRUCache(16)
_GRIDS = LRUCache(16)


def model_grid(model: Model, schedule, steps, t_start=None, t_end=None) -> Tensor:
    """The float64 grid :func:`sample` runs ``model`` on: ``schedule`` (None: the process's
    ``default_schedule`` for that start) over the model's default range (``Model.default_range``) unless ``t_start``/``t_end`` say otherwise, checked against
    the model's valid ``t_range`` (a zero-noise last time below it is allowed: nothing is
    evaluated there)."""
    process = model.process
    if isinstance(schedule, Tensor) and (t_start is not None or t_end is not None):
        raise ValueError("t_start/t_end apply to a named schedule; a tensor of times is used exactly (its first and last "
                         "times are the range): pass one or the other")
    if not isinstance(schedule, Tensor):
        d_start, d_end = model.default_range()
        if schedule is None:
            schedule = default_schedule(process, d_start if t_start is None else t_start)
        t_start = d_start if t_start is None else t_start
        t_end = d_end if t_end is None else t_end
    ts = _grid_times(process, schedule, steps, t_start, t_end)
    if tuple(model.t_range) != (process.t_min, process.t_max):
        model.check_times(ts, "the sampling grid" if isinstance(schedule, Tensor) else "t_start/t_end", landing=True)
    return ts


def _grid_times(process, schedule, steps, t_start, t_end) -> Tensor:
    if isinstance(schedule, Tensor):
        return make_grid(process, schedule, steps, t_start, t_end)
    key = (process.value_key(), schedule, steps, t_start, t_end)
    try:
        hash(key)
    except TypeError:
        return make_grid(process, schedule, steps, t_start, t_end)
    return _TIMES.get(key, lambda: make_grid(process, schedule, steps, t_start, t_end))


def prepared_grid(model: Model, solver, ts: Tensor, data_dtype, device) -> Grid:
    """The (cached) :class:`Grid` of times ``ts`` in the working dtype of ``data_dtype``, checked
    for this solver and model: what :func:`sample` and ``unigen.compile`` integrate on."""
    grid = _grid(model.process, ts, compute_dtype(data_dtype), device, model.parametrization)
    solver.check(Dynamics(model, data_dtype), grid)
    # the start check depends on every model this one reads there (Model.views_at), not only on
    # its own parametrization: the key names them by value, so a shared grid never skips it
    views = tuple((v.process.value_key(), v.parametrization, t) for v, t in model.views_at(float(grid.times[0])))
    if views not in grid.checked:
        _check_start(model, grid)
        grid.checked.add(views)
    return grid


def _grid(process, ts: Tensor, dtype, device, parametrization) -> Grid:
    key = (process.value_key(), tuple(ts.tolist()), dtype, str(device), parametrization)
    return _GRIDS.get(key, lambda: Grid(process, ts, dtype, device, parametrization))


def _check_start(model: Model, grid: Grid) -> None:
    """The model's output must determine (x0, eps) at the first time (e.g. not eps at alpha = 0),
    and so must every model it reads there (``Model.views_at``: a transferred model's source)."""
    start = float(grid.times[0])
    for view, t in model.views_at(start):
        reason = _singular_start(view, t)
        if reason is None:
            continue
        if view is model:
            raise SingularConversionError(
                f"the grid starts at t={start:g}, where {reason} Pass t_start below it or use .to(parametrization=...)."
            )
        raise SingularConversionError(
            f"the grid starts at t={start:g} of {type(model.process).__name__}, which reads a {view.parametrization}-model "
            f"of {type(view.process).__name__} at t={t:g} (equal log-SNR), where {reason} Pass t_start below it."
        )


def _singular_start(model: Model, t: float) -> str | None:
    """Why ``model``'s output cannot give (x0, eps) at time t, or None if it can."""
    return undetermined_reason(model.parametrization, model.process, t)
