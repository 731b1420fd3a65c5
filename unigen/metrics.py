r"""Sample-distance metrics that close the loop train -> sample -> measure:
:func:`sliced_wasserstein` (SW_2 between two samples, in float64). The benchmark suite's
metrics (:mod:`unigen.bench.metrics`) build on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein"]


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    r"""Sliced Wasserstein-2 distance between two samples (flattened to vectors):

        SW_2(a, b) = ( E_theta W_2^2(theta^T a, theta^T b) )^{1/2},  theta uniform on the sphere,

    with the 1-D W_2 from sorted projections (equal sizes) or matched quantiles, and the
    expectation over ``n_projections`` random directions. For b = a + m it equals |m|/sqrt(D).
    Computed in float64.
    """
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, Tensor) or v.ndim < 2 or v.shape[0] < 1:
            raise ValueError(f"{name} must be a tensor [N, *event], got {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    a2, b2 = a.reshape(a.shape[0], -1).to(torch.float64), b.reshape(b.shape[0], -1).to(torch.float64)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"a and b must have the same event size, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    theta = torch.randn(a2.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(a2.device)
    pa, pb = (a2 @ theta).T, (b2 @ theta).T  # [P, N]
    qa, qb = pa.sort(dim=1).values, pb.sort(dim=1).values
    if qa.shape[1] != qb.shape[1]:
        k = max(qa.shape[1], qb.shape[1])
        levels = (torch.arange(k, dtype=torch.float64, device=a2.device) + 0.5) / k
        qa, qb = _quantiles(qa, levels), _quantiles(qb, levels)
    return float(((qa - qb) ** 2).mean().sqrt())


def _quantiles(q_sorted: Tensor, levels: Tensor) -> Tensor:
    """Linear interpolation of sorted rows [P, n] at levels u (the empirical point u n - 1/2)."""
    n = q_sorted.shape[1]
    pos = torch.clamp(levels * n - 0.5, 0.0, n - 1.0)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=n - 1)
    w = pos - lo.to(pos.dtype)
    return q_sorted[:, lo] * (1 - w) + q_sorted[:, hi] * w
