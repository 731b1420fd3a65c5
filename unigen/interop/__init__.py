r"""Adapters to and from other diffusion libraries.

Nothing here imports diffusers or k-diffusion: the configs are plain dicts, the adapters
only call the peer's objects. :mod:`unigen.interop.diffusers` reads a diffusers scheduler
(or its ``scheduler_config.json`` dict) as a unigen process, parametrization and grid name
and wraps a diffusers network as a :class:`~unigen.model.Model`;
:mod:`unigen.interop.kdiffusion` converts between unigen models and k-diffusion's
VE denoisers ``D(x, sigma)`` and gives any unigen solver as a k-diffusion sampler function.
"""

from .diffusers import (
    DiffusersSpec,
    ShiftedFlowMatching,
    diffusers_betas,
    diffusers_grid,
    diffusers_model,
    from_diffusers,
)
from .kdiffusion import from_kdiffusion_denoiser, kdiffusion_sampler, to_kdiffusion_denoiser

__all__ = [
    "DiffusersSpec",
    "ShiftedFlowMatching",
    "diffusers_betas",
    "diffusers_grid",
    "diffusers_model",
    "from_diffusers",
    "from_kdiffusion_denoiser",
    "kdiffusion_sampler",
    "to_kdiffusion_denoiser",
]
