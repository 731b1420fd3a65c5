"""unigen: every Gaussian-path generative model as Process x Parametrization x Solver."""

from . import analytic
from ._utils import IncompatibleSolverError, SingularConversionError
from .analytic import GaussianMixture
from .model import Model, guided
from .parametrization import PARAMETRIZATIONS, Prediction, coefficients, convert
from .process import EDM, VE, VP, Affine, Cosine, FlowMatching, Process, SubVP, time_change

__version__ = "0.1.0"

__all__ = [
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
