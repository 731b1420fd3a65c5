"""Gaussian noise with one generator for the batch or one per batch item.

A list of ``torch.Generator`` (one per batch item) makes item ``i`` of a batch
reproducible on its own: sampling a batch of 8 and a batch of 1 with the same
generator for that item gives the same result.
"""

from __future__ import annotations

import torch
from torch import Tensor




def randn(shape, generator=None, dtype=None, device=None) -> Tensor:
    """Standard normal noise of ``shape``; ``generator`` is None, a Generator, or a list of
    ``shape[0]`` Generators (each drawing its own batch item)."""
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(shape) == 0 or len(generator) != shape[0]:
            raise ValueError(
                f"a list of generators needs one per batch item: got {len(generator)} for shape {shape}"
            )
        return torch.stack([_draw(shape[1:], g, dtype, device) for g in generator])
    return _draw(shape, generator, dtype, device)


def _draw(shape, generator, dtype, device) -> Tensor:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    gen_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
    return x.to(device) if device is not None else x


def randn_like(z: Tensor, generator=None) -> Tensor:
    """Noise shaped like ``z`` on its device and in its dtype."""
    return randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
