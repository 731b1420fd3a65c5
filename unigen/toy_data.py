r"""Toy data sets: 2-D point clouds and small images, each a sampler ``f(n, generator, dtype)``.

* ``eight_gaussians``, ``two_moons``, ``checkerboard``, ``swiss_roll``: 2-D, roughly unit
  scale, any number of samples, drawn in float64 and returned in ``dtype`` (default: torch's
  default dtype), reproducible from a ``torch.Generator``;
* ``digits``: scikit-learn's bundled 8x8 digits in [-1, 1], shape [N, 1, 8, 8]; needs
  ``pip install scikit-learn`` (the ``unigen[data]`` extra), imported on first use.

``DATASETS`` maps each name to its sampler (the names :func:`unigen.train.fit` and the CLI accept).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["eight_gaussians", "two_moons", "checkerboard", "swiss_roll", "digits", "DATASETS"]


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _rand(shape, generator, dtype=torch.float64):
    return torch.rand(shape, generator=generator, dtype=dtype)


def _randn(shape, generator, dtype=torch.float64):
    return torch.randn(shape, generator=generator, dtype=dtype)


def _out(x: Tensor, dtype) -> Tensor:
    return x.to(dtype or torch.get_default_dtype())


def eight_gaussians(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: eight equal Gaussians (std 0.1) centred on the circle of radius sqrt(2)
    (per-coordinate variance about 1)."""
    _check_n(n)
    k = torch.randint(0, 8, (n,), generator=generator)
    ang = k.to(torch.float64) * (math.pi / 4)
    centres = math.sqrt(2.0) * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return _out(centres + 0.1 * _randn((n, 2), generator), dtype)


def two_moons(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: two interleaved half circles (noise 0.05), centred and scaled by 1/0.7."""
    _check_n(n)
    m = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    th = math.pi * _rand(n, generator)
    x = torch.where(m == 0, torch.cos(th), 1.0 - torch.cos(th))
    y = torch.where(m == 0, torch.sin(th), 0.5 - torch.sin(th))
    pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.05 * _randn((n, 2), generator)
    return _out(pts / 0.7, dtype)


def checkerboard(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: uniform on the 8 dark cells of a 4x4 checkerboard over [-2, 2]^2."""
    _check_n(n)
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # dark cells: row + col even
    u = _rand((n, 2), generator)
    pts = torch.stack([col.to(torch.float64) + u[:, 0], row.to(torch.float64) + u[:, 1]], 1) - 2.0
    return _out(pts, dtype)


def swiss_roll(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: the 2-D Swiss roll r = theta, theta in [1.5 pi, 4.5 pi], scaled by 1/6.8
    (per-coordinate std about 1), noise 0.05."""
    _check_n(n)
    th = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, generator))
    pts = torch.stack([th * torch.cos(th), th * torch.sin(th)], 1) / 6.8
    return _out(pts + 0.05 * _randn((n, 2), generator), dtype)


@functools.lru_cache(maxsize=1)
def _digits_table() -> Tensor:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "digits() needs scikit-learn (its bundled 8x8 digits): pip install 'unigen[data]' "
            "(or pip install scikit-learn)"
        ) from e
    images = torch.as_tensor(load_digits().images, dtype=torch.float64)  # [1797, 8, 8], values 0..16
    return (images / 8.0 - 1.0).unsqueeze(1)


def digits(n: int | None = None, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """scikit-learn's 1797 handwritten 8x8 digits scaled from 0..16 to [-1, 1]: [N, 1, 8, 8].

    With ``n`` given, n images drawn with replacement (so it is a sampler like the 2-D sets).
    Requires scikit-learn (``pip install 'unigen[data]'``), imported on first use.
    """
    table = _digits_table()
    if n is None:
        return _out(table.clone(), dtype)
    _check_n(n)
    idx = torch.randint(0, table.shape[0], (n,), generator=generator)
    return _out(table[idx], dtype)


DATASETS: dict[str, Callable] = {
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "digits": digits,
}
