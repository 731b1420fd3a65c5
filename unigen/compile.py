r"""The sampling loop as one compiled graph or one CUDA graph.

``ug.sample`` prepares a run on the host (grid times, cache look-ups keyed by the grid's
floats, validation) and then runs :func:`unigen.sample.integrate`, a loop whose steps do
only tensor arithmetic with 0-dim tensor coefficients, branching on Python ints and
floats. :func:`compiled_sampler` does the preparation once, eagerly, with the same pieces
(``model_grid``, ``_grid``, ``Solver.check``, ``_check_start``), and hands the loop alone to

* ``mode="compile"``: ``torch.compile`` (``fullgraph=True`` by default, so a graph break or
  host sync in a step is an error, not a silent fallback); the loop unrolls into one graph of
  ``steps`` steps, which inductor fuses into a few kernels;
* ``mode="cuda_graph"``: ``torch.cuda.CUDAGraph`` capture with static input/output buffers
  after a warm-up on a side stream (PyTorch's CUDA-graph recipe): a call is one copy into
  the input buffer and one graph replay, with no Python or kernel-launch cost per step;
* ``mode="eager"``: the same prepared loop, uncompiled (the baseline).

The result is a callable ``noise -> x`` for one shape, dtype and device: ``noise`` is z_T at
the grid's first time, as ``ug.sample(..., noise=...)`` takes it, and ``x`` equals
``ug.sample(...)[0]`` (bit for bit in eager and ``backend="eager"/"aot_eager"``; to rounding
with inductor, which reorders float operations).

Stochastic steps draw from the global RNG (per-item generators are host-side objects); a
graph replays fresh draws of the CUDA generator but compiled draws differ from eager ones.
Adaptive solvers (``syncs_host``) cannot be captured and are refused.
"""

from __future__ import annotations

import itertools
import types

import torch
from torch import Tensor

from ._utils import compute_dtype
from .model import Model
from .sample import check_model_kwargs, integrate, model_grid, prepared_grid, resolve_schedule
from .solvers.base import Dynamics, Noise, get_solver
from .solvers.executor import ExecutionState

__all__ = ["MODES", "CompiledSampler", "compiled_sampler"]

MODES = ("compile", "cuda_graph", "eager")


class CompiledSampler:
    """``noise -> x`` for one (model, solver, grid, shape, dtype, device); see :func:`compiled_sampler`.

    Attributes: ``mode``, ``grid`` (the prepared :class:`~unigen.solvers.base.Grid`),
    ``solver``, ``shape``, ``dtype``, ``device``, ``nfe`` (model calls per sample run).
    """

    def __init__(self, model, solver, grid, shape, dtype, device, mode, loop, nfe):
        self.model, self.solver, self.grid = model, solver, grid
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        self.mode, self.nfe = mode, nfe
        self._loop = loop
        self._graph = self._static_in = self._static_out = None

    def __call__(self, noise: Tensor) -> Tensor:
        if not isinstance(noise, Tensor) or tuple(noise.shape) != self.shape or noise.dtype != self.dtype:
            got = (tuple(noise.shape), noise.dtype) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"this sampler was built for noise of shape {self.shape} and dtype {self.dtype}, "
                             f"got {got}")
        if noise.device != self.device:
            raise ValueError(f"this sampler was built for {self.device}, got noise on {noise.device}")
        if self._graph is None:
            return self._loop(noise)
        self._static_in.copy_(noise)
        self._graph.replay()
        return self._static_out.clone()

    def capture(self, warmup: int) -> None:
        """Warm up on a side stream (allocator, lazy init), then capture one run into a graph."""
        self._static_in = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self._loop(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._loop(self._static_in)
        self._graph = graph

    def __repr__(self):
        return (f"CompiledSampler(mode={self.mode!r}, solver={self.solver!r}, steps={self.grid.n}, "
                f"shape={self.shape}, dtype={self.dtype}, device={self.device})")


_SERIAL = itertools.count()

def _own_code(fn):
    """``fn`` with a code object of its own. torch.compile caches graphs per code object and
    guards on the closure; samplers sharing ``loop``'s code would pile up in one cache and
    hit dynamo's recompile limit (an error under ``fullgraph=True``) after a few samplers."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_SERIAL)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def compiled_sampler(
    model: Model,
    solver="DPMSolverPP",
    steps: int | None = None,
    schedule=None,
    *,
    shape,
    dtype: torch.dtype | None = None,
    device=None,
    t_start=None,
    t_end=None,
    mode: str = "compile",
    warmup: int = 2,
    compile_mode: str | None = None,
    model_kwargs: dict | None = None,
    **compile_kwargs,
) -> CompiledSampler:
    r"""A sampler ``noise -> x`` equal to ``ug.sample(model, solver, steps, schedule, noise=noise)[0]``
    whose loop runs compiled (``mode="compile"``), as a CUDA graph (``"cuda_graph"``) or eagerly.

    Args:
        model, solver, steps, schedule, t_start, t_end, model_kwargs: as for
            :func:`unigen.sample` (``model_kwargs`` are fixed here: the graph holds them).
        shape, dtype, device: of the noise every call takes (fixed: a graph is shape-static).
        mode: ``"compile"``, ``"cuda_graph"`` or ``"eager"``.
        warmup: eager runs before capture (``"cuda_graph"``).
        compile_mode: ``torch.compile``'s own ``mode`` (e.g. ``"reduce-overhead"``: inductor
            with CUDA graphs; ``"max-autotune-no-cudagraphs"``).
        compile_kwargs: other ``torch.compile`` options (default ``fullgraph=True``; e.g.
            ``backend="aot_eager"``).

    Compilation happens on the first call (torch.compile) or here (CUDA graph). Inference only:
    the loop runs under ``torch.no_grad()``. Unlike ``sample`` it does not check the result
    for non-finite values (that check syncs the host once per call); check the output yourself.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(model, Model):
        raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
    if compile_mode is not None:
        compile_kwargs["mode"] = compile_mode
    if compile_kwargs and mode != "compile":
        raise TypeError(f"compile options {sorted(compile_kwargs)} apply to mode='compile' only")
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())  # "cuda" is "cuda:<current>", as tensors report it
    if mode == "cuda_graph" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise RuntimeError(
            f"mode='cuda_graph' needs a CUDA device, got device={device} "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()}); use mode='compile' or 'eager'"
        )
    solver = get_solver(solver)
    if solver.syncs_host:
        raise ValueError(f"{type(solver).__name__} adapts its steps on the host and cannot be compiled or captured")
    model_kwargs = check_model_kwargs(model_kwargs)
    schedule, steps, t_start, t_end = resolve_schedule(model, solver, schedule, steps, t_start, t_end, tuple(shape)[1:], dtype)
    ts = model_grid(model, schedule, steps, t_start, t_end)
    work = compute_dtype(dtype)
    grid = prepared_grid(model, solver, ts, dtype, device)
    noise_fn = Noise(None)
    # build the solver's plan now, eagerly: traced, its coefficient tensors would become graph values
    warm = solver.init(Dynamics(model, dtype, model_kwargs), torch.zeros(shape, dtype=work, device=device), grid)
    plan = warm.plan if isinstance(warm, ExecutionState) else None

    def loop(z: Tensor) -> Tensor:
        with torch.no_grad():
            dyn = Dynamics(model, dtype, model_kwargs)  # fresh per call: its nfe counter is not an input of the graph
            state = ExecutionState(plan) if plan is not None else None  # a fresh history per call
            return integrate(solver, dyn, z.to(work), grid, noise_fn, state=state).to(dtype)

    nfe = plan.nfe if plan is not None else solver.expected_nfe(grid.n, grid.ends_at_zero)  # the real grid's count
    if mode == "compile":
        loop = torch.compile(_own_code(loop), **({"fullgraph": True} | compile_kwargs))
    out = CompiledSampler(model, solver, grid, shape, dtype, device, mode, loop, nfe)
    if mode == "cuda_graph":
        out.capture(warmup)
    return out
