r"""The one place the benchmarks import the peer libraries: k-diffusion, diffusers, flow_matching.

Every loader returns ``(entry point, version)`` on success and ``(None, reason)`` when the peer
is absent or does not load, so a benchmark skips that peer cleanly and says why. Loading is
memoised: a process loads each peer once, whichever script (``benchmarks.speed``,
``benchmarks.peers``) or test asks first.

* :func:`load_kdiffusion` -> ``k_diffusion.sampling``. The package ``__init__`` of k-diffusion
  imports a training stack (accelerate, wandb, torchvision, ...); only its ``sampling.py`` is
  loaded, with a stub for the one helper it takes from ``utils``.
* :func:`load_diffusers` -> the ``diffusers`` module, with the schedulers the benchmarks drive
  checked to import and logging set to errors only.
* :func:`load_flow_matching` -> ``flow_matching.solver.ODESolver``.

:func:`ddpm_scheduler` builds a diffusers beta-table scheduler on the benchmarks' DDPM table
(diffusers' default: 1000 steps, linear betas 1e-4 -> 0.02, also ``ug.VP.discrete``'s table
in ``benchmarks.speed``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

# the DDPM table shared by diffusers' schedulers and ug.VP.discrete (diffusers' defaults)
N_TRAIN = 1000
BETA_START, BETA_END = 1e-4, 0.02

# every diffusers scheduler a benchmark drives; load_diffusers checks that each imports
DIFFUSERS_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "UniPCMultistepScheduler",
)

_KD_NAME = "_unigen_bench_kdiffusion"  # the stand-in package k_diffusion/sampling.py is loaded under

__all__ = ["BETA_END", "BETA_START", "N_TRAIN", "ddpm_scheduler", "load_diffusers", "load_flow_matching",
           "load_kdiffusion"]


@functools.cache
def load_kdiffusion():
    """k_diffusion.sampling without the package __init__ (whose imports need a training stack)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, "k-diffusion is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    if not path.is_file():
        return None, f"k-diffusion has no sampling module at {path}"
    for dep in ("scipy.integrate", "torchdiffeq", "torchsde", "tqdm.auto"):
        try:
            importlib.import_module(dep)
        except ImportError as e:
            return None, f"k_diffusion.sampling needs {dep.split('.')[0]}: {e}"
    pkg = types.ModuleType(_KD_NAME)
    pkg.__path__ = [str(path.parent)]
    utils = types.ModuleType(_KD_NAME + ".utils")

    def append_dims(x, target_dims):  # the only helper sampling.py takes from k_diffusion.utils
        extra = target_dims - x.ndim
        if extra < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
        return x[(...,) + (None,) * extra]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules[_KD_NAME], sys.modules[_KD_NAME + ".utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location(_KD_NAME + ".sampling", path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mspec.name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        return None, f"loading k_diffusion/sampling.py failed: {type(e).__name__}: {e}"
    return module, importlib.metadata.version("k-diffusion")


@functools.cache
def load_diffusers():
    """The diffusers module once every scheduler in ``DIFFUSERS_SCHEDULERS`` imports."""
    try:
        import diffusers

        for name in DIFFUSERS_SCHEDULERS:  # diffusers imports lazily: a broken scheduler fails here
            getattr(diffusers, name)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken optional dependency
        return None, f"diffusers unavailable: {type(e).__name__}: {e}"
    with contextlib.suppress(Exception):  # older versions: keep their default verbosity
        diffusers.utils.logging.set_verbosity_error()
    return diffusers, diffusers.__version__


@functools.cache
def load_flow_matching():
    """flow_matching's ``ODESolver`` class."""
    try:
        from flow_matching.solver import ODESolver
    except Exception as e:  # noqa: BLE001
        return None, f"flow_matching unavailable: {type(e).__name__}: {e}"
    return ODESolver, importlib.metadata.version("flow_matching")


def ddpm_scheduler(cls, **kwargs):
    """A diffusers beta-table scheduler ``cls`` on the shared DDPM table (``kwargs``: the rest of its config)."""
    return cls(num_train_timesteps=N_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
               **kwargs)
