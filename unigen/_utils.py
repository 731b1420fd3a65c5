"""Small shared helpers: the one broadcast rule, input checks and error classes."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor


class SingularConversionError(ValueError):
    """A parametrization conversion that has no unique answer at this time.

    Example: x0 -> eps at sigma = 0, or eps -> x0 at alpha = 0 (zero terminal SNR).
    """


class IncompatibleSolverError(TypeError):
    """A solver needs a view of the model (energy, score, ...) that the model lacks."""


def check_choice(name: str, value, allowed: tuple):
    """Raise ``ValueError("name must be a, b or c, got value")`` unless value is one of ``allowed``."""
    if value in allowed and not isinstance(value, bool):
        return value
    opts = [repr(a) for a in allowed]
    listed = opts[0] if len(opts) == 1 else ", ".join(opts[:-1]) + " or " + opts[-1]
    raise ValueError(f"{name} must be {listed}, got {value!r}")


def as_time(t, like: Tensor | None = None) -> Tensor:
    """Return ``t`` as a floating tensor; python numbers take ``like``'s dtype/device.

    Integer tensors are refused: a common bug is passing a discrete network index
    (0..T-1) where a continuous time is expected.
    """
    if isinstance(t, Tensor):
        if not t.is_floating_point():
            raise TypeError(
                f"t must be a floating-point tensor of continuous times, got dtype {t.dtype}; "
                "for a discrete schedule convert indices with process.t_from_timestep(n)"
            )
        return t
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a floating tensor, got {type(t).__name__}")
    if like is not None:
        return torch.tensor(float(t), dtype=like.dtype, device=like.device)
    return torch.tensor(float(t), dtype=torch.get_default_dtype())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which schedule coefficients are computed for data of ``dtype``.

    Half precision has 11 (fp16) or 8 (bf16) significant bits; alpha/sigma near the
    ends of a schedule lose all accuracy there, so coefficients use float32 instead.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def expand_like(c: Tensor, z: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient of shape [] or [batch] against ``z`` [batch, ...]."""
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (z.ndim - c.ndim))


def check_time_shape(t: Tensor, z: Tensor, name: str = "t") -> None:
    """``t`` must be a scalar or have one entry per batch item of ``z``, on z's device."""
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim < 1:
        raise ValueError(f"z must have a batch dimension, got shape {tuple(z.shape)}")
    if t.device != z.device:
        raise ValueError(f"{name} is on {t.device} but z is on {z.device}; put both on one device")
    if not (t.ndim == 0 or (t.ndim == 1 and t.shape[0] == z.shape[0])):
        raise ValueError(
            f"{name} must have shape [] or [batch]=[{z.shape[0]}] to match z of shape "
            f"{tuple(z.shape)}, got {tuple(t.shape)}"
        )


def check_in_domain(t: Tensor, lo: float, hi: float, what: str, name: str = "t") -> None:
    """Raise if any entry of ``t`` lies outside [lo, hi] (a small relative slack is allowed).

    This syncs the host, so it is only called at API boundaries, never in a solver step.
    """
    slack = 1e-6 * max(1.0, abs(lo), abs(hi))
    bad = torch.isnan(t) | (t < lo - slack) | (t > hi + slack)
    if bool(bad.any()):
        vals = t[bad].flatten()[:4].tolist()
        raise ValueError(f"{name} must lie in {what}'s domain [{lo:g}, {hi:g}], got {vals}")


def refuse_non_finite(x: Tensor, name: str) -> None:
    """Refuse a tensor with NaN/inf entries up front, saying how many (one host sync: API edges)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite values")


class LRUCache:
    """A bounded memo: ``get(key, make)`` returns the value stored under ``key``, else stores
    ``make()``; the least recently used entry goes first once more than ``size`` are held."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make):
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        value = self._items[key] = make()
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
