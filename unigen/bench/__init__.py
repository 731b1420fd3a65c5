"""Benchmark helpers: sample-quality metrics and an NFE-vs-quality sweep harness.

``unigen.bench.metrics``  sliced Wasserstein-2, unbiased RBF MMD^2, endpoint RMSE;
``unigen.bench.harness``  problems (exact Gaussian-mixture oracles) and ``sweep``.
"""

from .harness import Problem, SolverSpec, choose_steps, default_solvers, gmm_problem, quick_solvers, sweep
from .metrics import endpoint_rmse, median_bandwidth, rbf_mmd2, sliced_wasserstein2

__all__ = [
    "Problem",
    "SolverSpec",
    "choose_steps",
    "default_solvers",
    "gmm_problem",
    "quick_solvers",
    "sweep",
    "endpoint_rmse",
    "median_bandwidth",
    "rbf_mmd2",
    "sliced_wasserstein2",
]
