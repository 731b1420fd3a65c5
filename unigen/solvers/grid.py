r"""The sampling grid and its coefficient tables, computed once before the loop.

A :class:`Grid` holds the times t_0 > ... > t_n of a run and, for each, an immutable
:class:`Node`: the schedule values alpha, sigma, alpha', sigma' as Python floats (float64)
and the 0-dim tensors a network call needs (the time, and for EDM-style denoisers the VE
inputs 1/alpha and sigma/alpha). Solvers read floats to compute their coefficients; the
executor feeds the tensors to the network. Nothing here is mutated after construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import output_coefficients

__all__ = ["Node", "Grid"]


@dataclass(frozen=True, eq=False)
class Node:
    """One time of a run with its schedule coefficients (immutable).

    Floats (float64): ``time, alpha, sigma, d_alpha, d_sigma``. Tensors (0-dim, compute
    dtype and device): ``t`` the time the network is given; ``inv_alpha`` and ``level``
    (1/alpha and sigma/alpha, None where alpha = 0) the inputs of a denoiser-convention
    network (``unigen.parametrization``).
    """

    time: float
    alpha: float
    sigma: float
    d_alpha: float
    d_sigma: float
    t: Tensor
    inv_alpha: Tensor | None = None
    level: Tensor | None = None

    def ab(self, name: str) -> tuple[float, float]:
        """(a, b) with output ``name`` = a x0 + b eps at this node."""
        return output_coefficients(name, self.alpha, self.sigma, self.d_alpha, self.d_sigma)

    @property
    def log_snr_dpm(self) -> float:
        """DPM-Solver's lambda = log(alpha/sigma) (-inf at alpha = 0, inf at sigma = 0)."""
        if self.alpha == 0.0:
            return -math.inf
        return math.inf if self.sigma == 0.0 else math.log(self.alpha / self.sigma)

    def __repr__(self):
        return f"Node(t={self.time:.6g}, alpha={self.alpha:.6g}, sigma={self.sigma:.6g})"


def make_nodes(process, times, dtype: torch.dtype, device) -> list[Node]:
    """Nodes at ``times`` (floats or a tensor), every schedule value and tensor made in one pass."""
    t64 = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    if t64.numel() == 0:
        return []
    alpha, sigma, d_alpha, d_sigma = (f(t64).tolist() for f in (process.alpha, process.sigma, process.d_alpha, process.d_sigma))
    ve = [(1.0 / a, s / a) if a > 0 else (1.0, 0.0) for a, s in zip(alpha, sigma)]
    packed = torch.cat([t64, torch.tensor([v for pair in ve for v in pair], dtype=torch.float64)])
    tensors = packed.to(dtype=dtype, device=device).unbind(0)
    n = t64.numel()
    times_f = t64.tolist()
    return [
        Node(
            times_f[j], alpha[j], sigma[j], d_alpha[j], d_sigma[j], tensors[j],
            tensors[n + 2 * j] if alpha[j] > 0 else None, tensors[n + 2 * j + 1] if alpha[j] > 0 else None,
        )
        for j in range(n)
    ]


class Grid:
    """Times ``t[0] > ... > t[n]`` and their :class:`Node` tables, precomputed once.

    ``alpha, sigma, lam`` are lists of Python floats (float64); ``lam`` is the full log-SNR
    log(alpha^2/sigma^2) and ``lam_dpm = lam / 2`` DPM-Solver's / UniPC's lambda =
    log(alpha/sigma): the ONE place the two meet. ``t`` holds 0-dim tensors in the compute
    dtype, for model calls. ``parametrization`` is accepted for callers that pass it and unused.
    """

    def __init__(self, process, ts: Tensor, dtype: torch.dtype, device, parametrization: str | None = None):
        ts64 = ts.detach().to(torch.float64).cpu()
        self.process = process
        self.n = ts64.numel() - 1
        self.nodes = make_nodes(process, ts64, dtype, device)
        self.ts = ts64.to(dtype=dtype, device=device)
        self.t = [node.t for node in self.nodes]
        self.times = [node.time for node in self.nodes]
        self.alpha = [node.alpha for node in self.nodes]
        self.sigma = [node.sigma for node in self.nodes]
        with torch.no_grad():
            self.lam = process.log_snr(ts64).tolist()
        self.lam_dpm = [0.5 * v for v in self.lam]
        self.ends_at_zero = self.sigma[-1] == 0.0
        self.checked: set = set()  # parametrizations whose start has been validated (sample())
        self._cache: dict = {}

    def node(self, i: int) -> Node:
        """The coefficient table at grid point i."""
        return self.nodes[i]

    def nodes_at(self, times) -> list[Node]:
        """Nodes at off-grid times (stages, intermediate points), in one vectorised pass."""
        return make_nodes(self.process, times, self.ts.dtype, self.ts.device)

    def node_at_log_snr(self, lams: list[float]) -> list[Node]:
        """Nodes at full log-SNR values ``lams`` (inf: clean data), through ``process.t_from_log_snr``."""
        if not lams:
            return []
        return self.nodes_at(self.process.t_from_log_snr(torch.tensor(lams, dtype=torch.float64)))

    def h(self, i: int, j: int | None = None) -> float:
        """Step in DPM-Solver's lambda from t_i to t_j (default j = i + 1); positive towards data."""
        j = i + 1 if j is None else j
        return self.lam_dpm[j] - self.lam_dpm[i]

    def cached(self, key, build):
        """A value derived from this grid, built once per ``key`` (a hashable VALUE: a solver's
        configuration, never its repr). Grids are reused across calls with the same settings."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
