"""unigen: every Gaussian-path generative model as Process x Parametrization x Solver."""

__version__ = "0.1.0"  # first: unigen.cli and unigen.bench.report import it

# every module imports what it needs at its own top, so the order here is only alphabetical
from . import analytic, calibration, distillation, ebm, flow_map, flow_map_losses, flow_map_samplers, flows, likelihood, losses, solvers, train, tuning, vae
from ._utils import IncompatibleSolverError, SingularConversionError
from .analytic import GaussianMixture
from .calibration import optimize_schedule
from .compile import compiled_sampler
from .ebm import EnergyModel, PersistentChains, contrastive_divergence_loss
from .distillation import fit_dmd, fit_reflow, progressive_distillation, reflow, reflow_couplings, straightness
from .flow_map import FlowMap, integrated
from .flow_map_training import fit_flow_map
from .flow_map_samplers import ConsistencySampler, FlowMapJump, GammaSampler
from .flows import ContinuousFlow, Flow
from .likelihood import bits_per_dim, discrete_vlb, log_likelihood
from .losses import loss
from .model import Model, guided
from .parametrization import PARAMETRIZATIONS, Prediction, coefficients, convert
from .process import EDM, VE, VP, Affine, Cosine, FlowMatching, Process, SubVP, time_change
from .sample import SampleInfo, sample
from .schedules import SCHEDULES, make_grid
from .solvers import *  # noqa: F401,F403  (every registered solver: ug.DDIM, ug.DPMSolverPP, ...)
from .solvers.tuned import register_tuned
from .tuning import gits_grid, ld3_grid, tune_solver
from .vae import VAE


__all__ = [
    "analytic",
    "solvers",
    "likelihood",
    "losses",
    "train",
    "ebm",
    "flows",
    "vae",
    "GaussianMixture",
    "Model",
    "flow_map",
    "flow_map_samplers",
    "flow_map_losses",
    "fit_flow_map",
    "distillation",
    "reflow",
    "reflow_couplings",
    "fit_reflow",
    "straightness",
    "progressive_distillation",
    "fit_dmd",
    "FlowMap",
    "integrated",
    "FlowMapJump",
    "ConsistencySampler",
    "GammaSampler",
    "guided",
    "PARAMETRIZATIONS",
    "Prediction",
    "coefficients",
    "convert",
    "Process",
    "VP",
    "SubVP",
    "VE",
    "EDM",
    "FlowMatching",
    "Cosine",
    "Affine",
    "time_change",
    "sample",
    "SampleInfo",
    "SCHEDULES",
    "make_grid",
    "calibration",
    "optimize_schedule",
    "tuning",
    "tune_solver",
    "gits_grid",
    "ld3_grid",
    "register_tuned",
    "compiled_sampler",
    "log_likelihood",
    "bits_per_dim",
    "discrete_vlb",
    "loss",
    "EnergyModel",
    "PersistentChains",
    "contrastive_divergence_loss",
    "Flow",
    "ContinuousFlow",
    "VAE",
    "SingularConversionError",
    "IncompatibleSolverError",
    *solvers.REGISTRY,
]
