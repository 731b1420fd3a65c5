"""Benchmark helpers: sample-quality metrics and an NFE-vs-quality sweep harness.

``unigen.bench.metrics``      sliced Wasserstein-2, unbiased RBF MMD^2, endpoint RMSE;
``unigen.bench.harness``      problems (exact Gaussian-mixture oracles, small trained models), ``sweep``, ``nll``;
``unigen.bench.report``       tables, plots, the JSON record;
``unigen.bench.distributed``  sharded sampling over ``torch.distributed`` ranks (imported on demand).
"""

from .harness import (
    LocalRunner,
    Problem,
    SolverSpec,
    choose_steps,
    default_solvers,
    get_problem,
    gmm_problem,
    nll,
    optimized,
    quick_solvers,
    sweep,
    trained_problem,
)
from .metrics import endpoint_rmse, median_bandwidth, rbf_mmd2, sliced_wasserstein2

__all__ = [
    "LocalRunner",
    "Problem",
    "SolverSpec",
    "choose_steps",
    "default_solvers",
    "endpoint_rmse",
    "get_problem",
    "gmm_problem",
    "median_bandwidth",
    "nll",
    "optimized",
    "quick_solvers",
    "rbf_mmd2",
    "sliced_wasserstein2",
    "sweep",
    "trained_problem",
]
