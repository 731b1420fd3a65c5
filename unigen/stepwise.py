r"""``sample()``'s loop as a coroutine, for callers that evaluate the network themselves.

A diffusers pipeline owns its loop: it calls the network, then hands the output to a
scheduler's ``step``. :class:`SteppedSampling` lets such a caller drive unigen's own loop
(:func:`unigen.sample.integrate`, the code :func:`~unigen.sample.sample` runs) one network
call at a time, so every solver runs unchanged, with no second implementation of any step
rule:

.. code-block:: python

    run = SteppedSampling(process, "eps", solver, ts, z_T)
    while not run.done:
        out = network(run.point, run.t)     # where the loop asks for the network
        run.send(out)                       # the loop continues to its next request
    x = run.result

The loop runs on a worker thread that waits while the caller evaluates the network; only
one of the two threads works at any time, so results are those of :func:`sample` on the
same grid, noise and network, call for call. The worker inherits the caller's grad and
inference modes. A run that is abandoned is stopped by :meth:`close`, or when the object is
garbage collected (the worker holds only the run's parts, never the object itself).
"""

from __future__ import annotations

import queue
import threading
import weakref

import torch
from torch import Tensor

from ._utils import compute_dtype
from .model import Model
from .process import Process
from .sample import integrate, prepared_grid
from .solvers.base import Dynamics, Noise, Solver, get_solver

__all__ = ["SteppedSampling", "call_plan", "call_times", "check_fixed_grid"]


class _Stop(BaseException):
    """Raised inside the worker to unwind an abandoned run (not an Exception: never caught)."""


def _network(inbox: queue.SimpleQueue, outbox: queue.SimpleQueue):
    """The network as the worker's loop sees it: each call is a request to the caller."""

    def network(point: Tensor, t: Tensor, **_) -> Tensor:
        outbox.put(("call", point, t))
        message = inbox.get()
        if message is _Stop:
            raise _Stop
        out, moved = message
        if moved is not None:  # the caller evaluated the network elsewhere: that is the point now
            point.copy_(moved)
        return out

    return network


def _work(solver, dyn, z, grid, noise, outbox, modes) -> None:
    """The worker thread: ``integrate`` (references the run's parts, never the SteppedSampling
    object, so an abandoned run is collected and its finalizer stops this thread)."""
    grad, inference = modes
    # the solver's arithmetic is elementwise: one thread, so that this thread's OpenMP team does not
    # spin on the cores the caller's network runs on (set per thread; the caller keeps its own setting)
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            z = integrate(solver, dyn, z, grid, noise)
        outbox.put(("done", z, None))
    except _Stop:
        pass
    except BaseException as e:  # noqa: BLE001 - handed to the caller's thread and raised there
        outbox.put(("error", e, None))


def _stop(inbox: queue.SimpleQueue, thread: threading.Thread) -> None:
    if thread.is_alive():
        inbox.put(_Stop)
        thread.join()


class SteppedSampling:
    """The sampling loop of ``solver`` on the grid ``ts`` from ``z``, driven by :meth:`send`.

    Args:
        process, parametrization: what the caller's network predicts.
        solver: a Solver instance, class or registered name (fixed-grid: adaptive solvers
            choose their own times and are refused).
        ts: the float64 grid of times, first to last (the last may be the clean point).
        z: the starting state at ``ts[0]``; it is copied.
        generator: for stochastic steps; :attr:`generator` may be changed between calls.
        data_dtype: the data's dtype (default z's); the loop and :attr:`point` are in its
            compute dtype (float32 for half precision), the caller casts for its network.

    Attributes:
        point, t: where the network is to be evaluated next (``None`` once :attr:`done`).
        result: the sample once :attr:`done`.
        nfe: network evaluations so far.
    """

    def __init__(self, process: Process, parametrization: str, solver, ts: Tensor, z: Tensor, *, generator=None,
                 data_dtype: torch.dtype | None = None):
        solver = check_fixed_grid(solver)
        # the loop works in the compute dtype (float32 for half-precision data) and the caller sees
        # that very point: an edit to it (send's ``point``) reaches the solver's state
        work = compute_dtype(z.dtype if data_dtype is None else data_dtype)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # network outputs (or the stop signal) for the worker
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # the worker's requests and its end
        self.model = Model(_network(self._inbox, self._outbox), process, parametrization)
        self.grid = prepared_grid(self.model, solver, ts, work, z.device)
        self._dyn = Dynamics(self.model, work)
        self._noise = Noise(generator)
        self.solver = solver
        self.point = self.t = self.result = None
        self.done = False
        z = z.detach().to(work, copy=True)
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self._thread = threading.Thread(target=_work, args=(solver, self._dyn, z, self.grid, self._noise, self._outbox, modes),
                                        daemon=True, name="unigen-stepped-sampling")
        self._thread.start()
        # an abandoned run (dropped unfinished, e.g. after the network raised) stops its worker
        self._finalizer = weakref.finalize(self, _stop, self._inbox, self._thread)
        self._receive()

    @property
    def nfe(self) -> int:
        return self._dyn.nfe

    @property
    def generator(self):
        return self._noise.generator

    @generator.setter
    def generator(self, value):
        self._noise.generator = value

    # -- the caller's side -----------------------------------------------------------------
    def _receive(self) -> None:
        kind, value, t = self._outbox.get()
        if kind == "error":
            self.done, self.point, self.t = True, None, None
            raise value
        if kind == "done":
            self.done, self.point, self.t, self.result = True, None, None, value
        else:
            self.point, self.t = value, t

    def send(self, output: Tensor, point: Tensor | None = None) -> None:
        """Hand the network's output at (:attr:`point`, :attr:`t`) to the loop; it runs until
        it needs the network again (or ends).

        ``point``: where the caller actually evaluated the network, if it changed the point it
        was given (e.g. a pipeline that edits its latents between steps). It replaces the
        requested point in the loop, in place: at a step's start that is the solver's state,
        so the step continues from the edited state (as diffusers' schedulers, which take the
        latents they are given, do). It must have the point's shape and dtype."""
        if self.done:
            raise RuntimeError("this sampling run has ended; start a new one")
        if not isinstance(output, Tensor):
            raise TypeError(f"the network output must be a tensor, got {type(output).__name__}")
        if point is not None and (point.shape != self.point.shape or point.dtype != self.point.dtype):
            raise ValueError(f"the point must keep the requested point's shape {tuple(self.point.shape)} and dtype "
                             f"{self.point.dtype}, got {tuple(point.shape)} and {point.dtype}")
        self._inbox.put((output.to(self.point.dtype), point))
        self._receive()

    def close(self) -> None:
        """Stop an unfinished run (its worker unwinds and exits)."""
        self._finalizer()
        self.done, self.point, self.t = True, None, None


def check_fixed_grid(solver) -> Solver:
    """``solver`` as an instance, refused if it chooses its own times during a run (an adaptive
    integrator): a caller that evaluates the network needs the calls' times up front."""
    solver = get_solver(solver)
    if getattr(solver, "adaptive", False) or solver.syncs_host:
        raise ValueError(f"{type(solver).__name__} chooses its own times during the run; a caller that evaluates "
                         "the network needs the grid of calls up front (use a fixed-grid solver)")
    return solver


def call_times(process: Process, parametrization: str, solver, ts: Tensor, data_dtype=torch.float32) -> list[float]:
    """The times at which ``solver`` on the grid ``ts`` calls the network, in order (see :func:`call_plan`)."""
    return call_plan(process, parametrization, solver, ts, data_dtype)[0]


def call_plan(process: Process, parametrization: str, solver, ts: Tensor, data_dtype=torch.float32):
    """(times, starts): the times at which ``solver`` on the grid ``ts`` calls the network, in
    order, and for each grid step the index of its first call. The loop is run once on a
    one-element state against a network that returns zeros (fixed-grid solvers call at times
    that do not depend on the values)."""
    solver = check_fixed_grid(solver)
    times: list[float] = []
    starts: list[int] = [0]

    def zeros(z, t, **_):
        times.append(float(t))
        return torch.zeros_like(z)

    model = Model(zeros, process, parametrization)
    z = torch.zeros(1, 1, dtype=data_dtype)
    grid = prepared_grid(model, solver, ts, data_dtype, z.device)
    with torch.no_grad():
        integrate(solver, Dynamics(model, data_dtype), z.to(compute_dtype(data_dtype)), grid,
                  Noise(torch.Generator().manual_seed(0)), on_step=lambda i, z: starts.append(len(times)))
    return times, starts[:-1]
