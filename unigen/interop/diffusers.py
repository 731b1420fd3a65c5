r"""Read diffusers schedulers as unigen processes; wrap diffusers networks as unigen models.

``from_diffusers(scheduler_or_config)`` takes a diffusers scheduler object or the plain dict
stored in ``scheduler_config.json`` and returns a :class:`DiffusersSpec`
``(process, parametrization, schedule, num_train_timesteps)``:

=========================  ==============================================================
config                     unigen
=========================  ==============================================================
beta_schedule / trained    ``VP.discrete(betas)``, the table rebuilt in float64
rescale_betas_zero_snr     ``VP.discrete(..., rescale_zero_terminal_snr=True)``
prediction_type            epsilon -> "eps", sample -> "x0", v_prediction -> "v"
timestep_spacing           schedule "leading" / "trailing" / "linspace"
FlowMatch*Scheduler        ``FlowMatching()`` ("velocity"); ``shift`` s != 1 gives
                           :class:`ShiftedFlowMatching`, the log-SNR shift lam - 2 ln s
=========================  ==============================================================

diffusers itself is never imported here (the adapters only read ``.config`` and call the
network), so this module works without diffusers installed.

``steps_offset`` and DDIM's ``set_alpha_to_one=False`` have no schedule name:
:func:`diffusers_grid` gives the exact tensor of times for them. Not represented: the FlowMatch
``use_karras/exponential/beta_sigmas`` grid options (the spec's schedule stays "uniform")
and Euler's ``alphas_cumprod[-1] = 2**-24`` patch under zero-SNR rescaling (unigen keeps
alpha(1) = 0 exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._utils import as_time
from ..model import Model
from ..process import VP, FlowMatching, Process, VPDiscrete
from ..schedules import check_grid, make_grid

__all__ = ["DiffusersSpec", "ShiftedFlowMatching", "diffusers_betas", "diffusers_grid", "diffusers_model", "from_diffusers"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_UNSUPPORTED = ("ScoreSdeVe", "KarrasVe", "EDM", "Consistency", "LCM", "TCD", "Amused", "VQ")


class DiffusersSpec(NamedTuple):
    """What a diffusers scheduler config means in unigen terms (unpacks as a tuple)."""

    process: Process
    parametrization: str
    schedule: str
    num_train_timesteps: int


class ShiftedFlowMatching(Process):
    r"""Flow matching with diffusers' timestep ``shift`` s:  sigma(t) = s t / (1 + (s - 1) t),
    alpha = 1 - sigma.

    Since alpha/sigma = (1 - t)/(s t), the log-SNR is FlowMatching's minus 2 ln s
    (lam = 2 log(alpha/sigma); docs/theory.md, section 1), and the time t is diffusers' *unshifted* sigma. The network is
    trained on plain flow matching at FM time sigma(t): its output ``noise - x`` is the
    velocity dz/dsigma, not dz/dt; :func:`diffusers_model` converts it.
    """

    default_schedule = "uniform"
    sample_end = 0.0

    @classmethod
    def examples(cls):
        return {"fm_shift3": cls(3.0)}  # SD3's shift

    def __init__(self, shift: float):
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive finite number, got {shift!r}")
        self.shift = float(shift)
        self._log_shift = math.log(self.shift)

    def _repr_fields(self):
        return {"shift": self.shift}

    def _den(self, t):
        return 1.0 + (self.shift - 1.0) * t

    def alpha(self, t):
        return (1.0 - t) / self._den(t)

    def sigma(self, t):
        return self.shift * t / self._den(t)

    def d_sigma(self, t):
        return self.shift / self._den(t) ** 2

    def d_alpha(self, t):
        return -self.d_sigma(t)

    def log_snr(self, t):
        return 2.0 * (torch.log1p(-t) - torch.log(t)) - 2.0 * self._log_shift

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * as_time(lam) - self._log_shift)

    def drift(self, t):
        return -self.shift / (self._den(t) * (1.0 - t))

    def fm_time(self, t: Tensor) -> Tensor:
        """The flow-matching time (diffusers' shifted sigma) the network is evaluated at."""
        return self.sigma(t)


# ---------------------------------------------------------------------------------------
def _config_and_name(scheduler_or_config) -> tuple[dict, str]:
    if isinstance(scheduler_or_config, dict):
        cfg = dict(scheduler_or_config)
        return cfg, str(cfg.get("_class_name") or "")
    cfg = getattr(scheduler_or_config, "config", None)
    if not isinstance(cfg, dict):
        raise TypeError(
            "from_diffusers takes a diffusers scheduler (with a .config) or a dict config "
            f"(scheduler_config.json), got {type(scheduler_or_config).__name__}"
        )
    return dict(cfg), type(scheduler_or_config).__name__


def _choose(value, valid, what: str):
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values are {', '.join(valid)}")
    return value


def diffusers_betas(config: dict) -> Tensor:
    """The float64 beta table a diffusers beta-based scheduler builds from ``config``
    (before any zero-SNR rescaling)."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.as_tensor(trained, dtype=torch.float64).flatten()
        if betas.numel() != n and "num_train_timesteps" in config:
            raise ValueError(f"trained_betas has {betas.numel()} entries but num_train_timesteps is {n}")
        return betas
    b0, b1 = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    name = _choose(config.get("beta_schedule", "linear"), BETA_SCHEDULES, "beta_schedule")
    if name == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6.0, 6.0, n, dtype=torch.float64)) * (b1 - b0) + b0
    # squaredcos_cap_v2: Nichol & Dhariwal's cosine alpha_bar, betas clipped at 0.999
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1.0 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)


def from_diffusers(scheduler_or_config, *, shift: float | None = None) -> DiffusersSpec:
    """Read a diffusers scheduler (object or ``scheduler_config.json`` dict) as a
    :class:`DiffusersSpec` ``(process, parametrization, schedule, num_train_timesteps)``.

    ``shift`` overrides a FlowMatch config's shift (needed with ``use_dynamic_shifting``,
    where diffusers picks s = exp(mu) per image size).

    Raises:
        ValueError: unknown beta_schedule / prediction_type / timestep_spacing (listing the
            valid ones), or a scheduler family that is not a DDPM table or flow matching.
    """
    cfg, name = _config_and_name(scheduler_or_config)
    n = int(cfg.get("num_train_timesteps", 1000))
    if any(bad in name for bad in _UNSUPPORTED):
        raise ValueError(
            f"{name} is not supported; supported are the beta-table schedulers (DDPM, DDIM, Euler, "
            "DPMSolver*, UniPC, ...) and FlowMatch*Scheduler"
        )
    if "FlowMatch" in name:
        if shift is None:
            if cfg.get("use_dynamic_shifting", False):
                raise ValueError("this FlowMatch config uses dynamic shifting; pass shift=exp(mu) for your image size")
            shift = float(cfg.get("shift", 1.0))
        if cfg.get("shift_terminal") is not None:
            raise ValueError("FlowMatch shift_terminal is not supported (it is not a log-SNR shift)")
        if cfg.get("invert_sigmas", False):
            raise ValueError("FlowMatch invert_sigmas is not supported")
        process = FlowMatching() if float(shift) == 1.0 else ShiftedFlowMatching(float(shift))
        return DiffusersSpec(process, "velocity", "uniform", n)

    pred = PREDICTION_TYPES[_choose(cfg.get("prediction_type", "epsilon"), tuple(PREDICTION_TYPES), "prediction_type")]
    spacing = _choose(cfg.get("timestep_spacing", "leading"), TIMESTEP_SPACINGS, "timestep_spacing")
    if cfg.get("use_karras_sigmas", False):
        spacing = "karras"
    process = VP.discrete(diffusers_betas(cfg), rescale_zero_terminal_snr=bool(cfg.get("rescale_betas_zero_snr", False)))
    return DiffusersSpec(process, pred, spacing, n)


def diffusers_grid(scheduler_or_config, steps: int) -> Tensor:
    """The exact time grid (float64, ``steps + 1`` points) of a beta-table scheduler's
    ``set_timesteps(steps)``, as a tensor for ``ug.sample(..., schedule=...)``.

    The spacing's timesteps (:func:`unigen.schedules.make_grid`), plus ``steps_offset`` for
    "leading" (as diffusers adds it), mapped by ``t_from_timestep``; the last step lands on
    the clean point t = 0, or, with DDIM's ``set_alpha_to_one=False``, on alpha-bar[0]
    (t = 1/N; when the last timestep is already 0, diffusers' final step is zero-length and
    the grid ends there, one model call fewer, same samples).
    """
    cfg, _ = _config_and_name(scheduler_or_config)
    spec = from_diffusers(scheduler_or_config)
    if not isinstance(spec.process, VPDiscrete) or spec.schedule == "karras":
        raise ValueError("diffusers_grid is for beta-table schedulers with leading/trailing/linspace spacing")
    proc = spec.process
    ts = make_grid(proc, spec.schedule, steps)
    offset = int(cfg.get("steps_offset", 0) or 0)
    if offset and spec.schedule == "leading":
        ts = torch.cat([proc.t_from_timestep(proc.timestep(ts[:-1]) + offset), ts[-1:]])
    if not cfg.get("set_alpha_to_one", True):
        first = proc.t_from_timestep(torch.zeros(1, dtype=torch.float64))
        # a last model timestep of 0 makes diffusers' final DDIM step zero-length (the identity,
        # at the cost of one call): the grid then simply ends there
        ts = ts[:-1] if float(ts[-2]) == float(first) else torch.cat([ts[:-1], first])
        if ts.numel() < 2:
            raise ValueError("with set_alpha_to_one=False and one step the grid has no interval")
    return check_grid(ts, proc)


# ---------------------------------------------------------------------------------------
def diffusers_model(
    unet: Callable,
    process: Process,
    parametrization: str = "eps",
    *,
    num_train_timesteps: int = 1000,
    time_input: Callable | None = None,
    **unet_kwargs,
) -> Model:
    r"""A diffusers network ``unet(z, timestep, **unet_kwargs).sample`` as a unigen :class:`Model`.

    The timestep fed to the network is
    ``process.timestep(t)`` (the fractional DDPM index N t - 1) for ``VP.discrete``, and
    ``sigma * num_train_timesteps`` for flow matching (diffusers' FlowMatch convention). For a
    :class:`ShiftedFlowMatching` process the network (trained on plain FM at time sigma) is
    read through :meth:`Model.to`, which turns its dz/dsigma into dz/dt exactly. Any other
    process needs ``time_input``. Extra keyword arguments (e.g. ``encoder_hidden_states``)
    are passed to every network call.
    """
    if not callable(unet):
        raise TypeError(f"unet must be callable as unet(z, timestep).sample, got {type(unet).__name__}")

    def fn(z, timestep):
        out = unet(z, timestep, **unet_kwargs)
        return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out

    if time_input is not None:
        return Model(fn, process, parametrization, time_input=time_input)
    if isinstance(process, VPDiscrete):
        return Model(fn, process, parametrization, time_input=process.timestep)
    scale = float(num_train_timesteps)
    if isinstance(process, FlowMatching):
        return Model(fn, process, parametrization, time_input=lambda t: t * scale)
    if isinstance(process, ShiftedFlowMatching):
        base = Model(fn, FlowMatching(), parametrization, time_input=lambda t: t * scale)
        return base.to(process, parametrization)
    raise ValueError(
        f"no diffusers timestep convention for {type(process).__name__}; pass time_input= "
        "(a map from the process time to the network's timestep)"
    )
