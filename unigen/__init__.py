"""unigen: every Gaussian-path generative model as Process x Parametrization x Solver."""

from . import analytic
from ._utils import IncompatibleSolverError, SingularConversionError
from .analytic import GaussianMixture
from .model import Model, guided
from .parametrization import PARAMETRIZATIONS, Prediction, coefficients, convert
from .process import EDM, VE, VP, Affine, Cosine, FlowMatching, Process, SubVP, time_change
from . import solvers
from . import likelihood
from .likelihood import bits_per_dim, discrete_vlb, log_likelihood
from .sample import SampleInfo, sample
from .schedules import SCHEDULES, make_grid
from .solvers import *  # noqa: F401,F403  (every registered solver: ug.DDIM, ug.DPMSolverPP, ...)

__version__ = "0.1.0"

__all__ = [
    "likelihood",
    "log_likelihood",
    "bits_per_dim",
    "discrete_vlb",
    "solvers",
    "sample",
    "SampleInfo",
    "SCHEDULES",
    "make_grid",
    *solvers.REGISTRY,
    "analytic",
    "GaussianMixture",
    "Model",
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
    "SingularConversionError",
    "IncompatibleSolverError",
]

from . import losses, train  # noqa: E402
from .losses import loss  # noqa: E402

__all__ += ["losses", "train", "loss"]
