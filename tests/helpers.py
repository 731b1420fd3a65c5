"""Shared test fixtures: every process of the contract and strategies over them."""

import importlib
import importlib.metadata
import importlib.util
import os

import pytest
import torch
from hypothesis import strategies as st

import unigen as ug

DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # VPDiscrete.examples()' table

# every process class of unigen.process, through its examples() (a new class joins every process
# test by registering itself); processes defined elsewhere (unigen.interop) have tests of their own
PROCESSES = ug.process.process_examples()
NAMES = sorted(PROCESSES)


def interior(process, u):
    """Map u in [0, 1] into the interior [2%, 98%] of the process's domain."""
    lo, hi = process.t_min, process.t_max
    return lo + (0.02 + 0.96 * u) * (hi - lo)


processes = st.sampled_from(NAMES).map(lambda n: PROCESSES[n])
unit = st.floats(0.0, 1.0, allow_nan=False)
shapes = st.sampled_from([(3,), (2, 4), (5, 1, 3), (1, 2, 2, 2)])


def grad(fn, t):
    """Elementwise derivative by autograd (constant functions allowed)."""
    tt = t.detach().clone().requires_grad_(True)
    y = fn(tt) + 0 * tt
    (g,) = torch.autograd.grad(y.sum(), tt)
    return g


def mixture(dim=2, k=3, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(k, dim, generator=g)
    stds = 0.2 + torch.rand((k, dim) if diagonal else (k,), generator=g)
    weights = 0.5 + torch.rand(k, generator=g)
    return ug.GaussianMixture(means, stds, weights)


# ---- solvers --------------------------------------------------------------------------
def solver_instances():
    """Every registered solver class with its variants (``Solver.variants()``, the hook the bench reads too)."""
    return [v for _, cls in sorted(ug.solvers.REGISTRY.items()) for v in cls.variants()]


def solver_id(s):
    return repr(s).replace(" ", "")


SOLVERS = solver_instances()
DETERMINISTIC = [s for s in SOLVERS if not s.stochastic and s.order is not None]


# ---- optional peers ----------------------------------------------------------------------------
# import name -> the distribution (pip name) that provides it
PEER_DISTRIBUTIONS = {
    "diffusers": "diffusers",
    "flow_matching": "flow_matching",
    "k_diffusion": "k-diffusion",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "numpy": "numpy",
    "torchdiffeq": "torchdiffeq",
    "torchsde": "torchsde",
}
PEER_SKIP_PREFIX = "peer not installed: "
REQUIRE_PEERS = os.environ.get("UNIGEN_REQUIRE_PEERS") == "1"


def peer_distribution(module: str) -> str:
    top = module.split(".")[0]
    if top in PEER_DISTRIBUTIONS:
        return PEER_DISTRIBUTIONS[top]
    return (importlib.metadata.packages_distributions().get(top) or [top])[0]


def peer_installed(module: str) -> bool:
    """True when the peer's distribution is installed or its top-level module can be found
    (nothing is imported: a broken peer still counts as installed)."""
    try:
        importlib.metadata.distribution(peer_distribution(module))
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(module.split(".")[0]) is not None


def require(module: str):
    """Import an optional peer for a test (or at module level).

    A clean skip only where the peer is not installed at all and UNIGEN_REQUIRE_PEERS is not 1
    (conftest.py allows exactly that skip). An installed peer that fails to import raises here:
    a test failure, never a skip."""
    if not peer_installed(module):
        if REQUIRE_PEERS:
            pytest.fail(f"{module} is not installed and UNIGEN_REQUIRE_PEERS=1 requires every peer "
                        f"(pip install {peer_distribution(module)})", pytrace=False)
        pytest.skip(f"{PEER_SKIP_PREFIX}{module} (pip install {peer_distribution(module)})", allow_module_level=True)
    return importlib.import_module(module)
