r"""Any unigen solver as a diffusers scheduler: ``pipe.scheduler = UnigenScheduler.from_config(...)``.

A diffusers pipeline owns its loop::

    scheduler.set_timesteps(num_inference_steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:                      # one entry per network call
        out = network(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(out, t, latents).prev_sample

:class:`UnigenScheduler` answers that protocol with unigen's own sampling loop
(:class:`unigen.stepwise.SteppedSampling`, the loop :func:`unigen.sample` runs): each
``step`` hands the network's output to the loop, which runs the solver until it needs the
network again and returns that point as ``prev_sample``. A multi-stage solver (Heun, RK4,
singlestep DPM-Solver) therefore lists one timestep per stage, as diffusers' Heun does, and
``order`` is its calls per step.

The latents are the process's own state z_t = alpha_t x + sigma_t eps (``init_noise_sigma``
is 1 and ``scale_model_input`` is the identity for the DDPM tables and flow matching), and
the network is called at diffusers' timestep convention: the DDPM index for beta tables,
sigma * num_train_timesteps for flow matching.

The grid (which times the solver visits) is, in order of precedence:

* ``set_timesteps(timesteps=...)``: the network timesteps, used exactly (for flow
  matching sigma = timestep / num_train_timesteps, not shifted again);
* ``set_timesteps(sigmas=...)``: for beta tables the VE levels sigma/alpha visited, the last
  one where sampling ends (as diffusers' Euler); for flow matching the unshifted sigmas, one
  call each, shifted once by ``shift`` (or by ``mu`` with dynamic shifting) and with the source
  FlowMatch scheduler's sigma options applied, as the SD3 and Flux pipelines pass them;
* the config's ``schedule`` as a list of times of the process (VP.discrete's t, or the
  flow-matching time sigma), used exactly: e.g. a grid optimised for the pipeline's network by
  :func:`unigen.calibration.optimize_schedule` on :func:`~unigen.interop.diffusers_model`;
* the config's ``schedule`` as a name: any unigen schedule ("logsnr", "karras", "uniform",
  "quadratic", "leading", ...) over the process's sampling range, then the clean point;
* by default, for a scheduler made with :meth:`from_config` from a diffusers beta-table
  scheduler, exactly that scheduler's ``set_timesteps`` grid (its spacing and sigma options),
  so that swapping the solver changes nothing else; otherwise the ``timestep_spacing`` of the
  config ("leading" / "trailing" / "linspace", DDIM's convention) for beta tables and, for
  flow matching, sigma = 1, ..., 1/N shifted once, then 0.

Each grid ends at the clean point (sigma = 0), where the last step lands on x0 without a
network call, as diffusers' schedulers do.

Beyond text-to-image: img2img pipelines slice the timesteps and call ``set_begin_index`` (or
just start stepping at a later timestep); the run then starts at that call, which must begin a
solver step, from the latents they pass (``add_noise`` / ``scale_noise``). A learned-variance
network (``variance_type`` "learned" / "learned_range") has its variance channels dropped.
Wan-style configs of beta-table schedulers for flow-matching networks (``use_flow_sigmas``,
``prediction_type="flow_prediction"``, ``flow_shift``) are read as flow matching. Source
options that change the sampler itself (FlowMatch ``invert_sigmas``, ``stochastic_sampling``)
are refused rather than ignored.

This module imports diffusers (the scheduler is a diffusers ``SchedulerMixin`` /
``ConfigMixin``, so ``save_pretrained``, ``from_pretrained``, ``from_config`` and pipeline
saving work); ``import unigen`` does not import it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from types import SimpleNamespace

import diffusers
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from .._utils import LRUCache, SingularConversionError
from ..parametrization import Prediction
from ..process import FlowMatching, VPDiscrete
from ..sample import model_grid
from ..model import Model
from ..schedules import check_grid, get_schedule, sample_range
from ..solvers import REGISTRY, Solver, get_solver
from ..solvers.executor import conversion
from ..stepwise import SteppedSampling, call_plan, call_times
from .diffusers import ShiftedFlowMatching, diffusers_grid, from_diffusers

__all__ = ["UnigenScheduler", "UnigenSchedulerOutput", "build_solver", "solver_arguments", "source_class_name"]

_F64 = torch.float64

COMPATIBLES = (
    # the diffusers schedulers whose configs this one reads (diffusers' from_config switching)
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
    "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
)


@dataclass
class UnigenSchedulerOutput(BaseOutput):
    """``prev_sample``: where the network is called next (the final sample after the last
    call); ``pred_original_sample``: x0 predicted by the output just given."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


def solver_arguments(solver: Solver) -> dict:
    """The constructor arguments of ``solver`` (:meth:`Solver.arguments`) that differ from its
    class's defaults, as plain values (what a scheduler config stores to rebuild it); a solver
    argument (PredictorCorrector's predictor) becomes ``{"solver": name, "solver_options": ...}``."""
    defaults = {
        name: p.default for name, p in inspect.signature(type(solver).__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    out = {}
    for name, value in solver.arguments().items():
        if isinstance(value, type) and issubclass(value, Solver):
            value = value()
        if isinstance(value, Solver):
            default = defaults.get(name)
            same = (isinstance(default, Solver) or (isinstance(default, str) and default in REGISTRY)) and \
                repr(get_solver(default)) == repr(value)
            if not same:
                out[name] = {"solver": type(value).__name__, "solver_options": solver_arguments(value)}
            continue
        if name in defaults and defaults[name] == value and type(defaults[name]) is type(value):
            continue
        if not isinstance(value, (int, float, str, bool, type(None))):
            raise ValueError(
                f"{type(solver).__name__}'s argument {name}={value!r} cannot be stored in a scheduler config "
                "(only numbers, strings, booleans and None)"
            )
        out[name] = value
    return out


def build_solver(name: str, options: dict | None) -> Solver:
    """The registered solver ``name`` with ``options`` (:func:`solver_arguments`' output; nested
    ``{"solver": ..., "solver_options": ...}`` entries become solver instances)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid names are {', '.join(sorted(REGISTRY))} (or a Solver instance)")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"solver_options must be a dict of keyword arguments, got {type(options).__name__}")
    kwargs = {
        k: build_solver(v["solver"], v.get("solver_options")) if isinstance(v, dict) and "solver" in v else v
        for k, v in (options or {}).items()
    }
    try:
        return REGISTRY[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"solver_options do not fit {name}: {e}") from None


def source_class_name(config: dict) -> str:
    """The diffusers scheduler class a config belongs to: its ``_class_name`` (a config read from
    ``scheduler_config.json``), else the class whose ``__init__`` arguments are all keys of the config
    (``scheduler.config`` does not name its class), the most specific if several; "" if none does."""
    name = str(config.get("_class_name") or "")
    if name:
        return name
    keys = {k for k in config if not k.startswith("_")}
    best, size = "", 0
    for candidate in COMPATIBLES:
        cls = getattr(diffusers, candidate, None)
        params = set(inspect.signature(cls.__init__).parameters) - {"self"} if isinstance(cls, type) else None
        if params == keys:
            return candidate
        # every argument of the class is in the config (a config keeps the keys it was given and
        # its class does not take, too): the class with the most arguments is the most specific
        if params and params <= keys and len(params) > size:
            best, size = candidate, len(params)
    return best


def _grid_source(config: dict | None, flow_matching: bool):
    """The diffusers scheduler class whose grid a config reproduces (a beta-table one, or a
    FlowMatch one for flow matching), or None."""
    cls = getattr(diffusers, str((config or {}).get("_class_name") or ""), None)
    if not isinstance(cls, type) or not issubclass(cls, SchedulerMixin):
        return None
    if flow_matching:
        return cls if "FlowMatch" in cls.__name__ or flow_sigmas(config) else None
    return cls if "beta_schedule" in inspect.signature(cls.__init__).parameters else None


def flow_sigmas(config: dict) -> bool:
    """A beta-table scheduler configured for a flow-matching network (Wan-style UniPC / DPM-Solver
    configs: ``use_flow_sigmas`` or ``prediction_type="flow_prediction"``)."""
    return bool(config.get("use_flow_sigmas")) or config.get("prediction_type") == "flow_prediction"


# source-scheduler options that change the sampler itself (not only its grid); unigen refuses
# them rather than ignore them
_REFUSED_OPTIONS = {
    "invert_sigmas": "inverts the noise direction (sigma -> 1 - sigma)",
    "stochastic_sampling": "re-noises each step (a different sampler; pick a stochastic unigen solver instead)",
}


class UnigenScheduler(SchedulerMixin, ConfigMixin):
    r"""A diffusers scheduler that runs any registered unigen solver and schedule.

    Args (the config; diffusers' names where diffusers has the setting):
        solver: a registered solver name (``unigen.solvers.REGISTRY``) or a Solver instance
            (stored as its name and :func:`solver_arguments`).
        solver_options: keyword arguments for the solver class.
        schedule: a unigen schedule name, a list of the process's times (first to last, used
            exactly: e.g. an optimised grid, ``unigen.calibration.optimize_schedule(...).grid``),
            or None for the source scheduler's / the config's spacing (module docstring).
        flow_matching: the network is a flow-matching velocity model (``noise - x`` at
            sigma = t); set by :meth:`from_config` for ``FlowMatch*`` configs.
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        prediction_type, timestep_spacing, steps_offset, set_alpha_to_one,
        rescale_betas_zero_snr: the DDPM table and its network, as in diffusers.
        shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len,
        max_image_seq_len, time_shift_type: flow matching's timestep shift, as in diffusers.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
        sample_max_value: limit the predicted x0 (diffusers' options, :meth:`limit_x0`).
        source_config: the diffusers config this one was made from (:meth:`from_config`),
            whose ``set_timesteps`` grid is reproduced when ``schedule`` is None.
    """

    _compatibles = list(COMPATIBLES)
    order = 1

    @register_to_config
    def __init__(
        self,
        solver="DPMSolverPP",
        solver_options: dict | None = None,
        schedule: str | None = None,
        flow_matching: bool = False,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        rescale_betas_zero_snr: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        source_config: dict | None = None,
    ):
        if isinstance(solver, Solver) or (isinstance(solver, type) and issubclass(solver, Solver)):
            instance = get_solver(solver)
            options = {**solver_arguments(instance), **(solver_options or {})}
            self.register_to_config(solver=type(instance).__name__, solver_options=options or None)
            solver, solver_options = type(instance).__name__, options
        self.solver = build_solver(solver, solver_options)
        if isinstance(schedule, str):
            get_schedule(schedule)  # an unknown name fails here, listing the valid ones
        elif schedule is not None and not isinstance(schedule, (list, tuple)):
            raise TypeError(f"schedule must be a schedule name or a list of times, got {type(schedule).__name__}")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
        if flow_matching:
            spec = from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": num_train_timesteps,
                                   "shift": 1.0})
        else:
            spec = from_diffusers({
                "_class_name": "DDIMScheduler", "num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
                "beta_end": beta_end, "beta_schedule": beta_schedule, "trained_betas": trained_betas,
                "prediction_type": prediction_type, "timestep_spacing": timestep_spacing,
                "rescale_betas_zero_snr": rescale_betas_zero_snr,
            })
        self.process, self.parametrization = spec.process, spec.parametrization
        for key, why in _REFUSED_OPTIONS.items():
            if (source_config or {}).get(key):
                raise ValueError(f"the source config sets {key}=True, which {why}; unigen does not run that sampler")
        if isinstance(schedule, (list, tuple)):  # given times: checked now, used exactly
            check_grid(torch.tensor([float(v) for v in schedule], dtype=_F64), self.process)
        self.order = int(self.solver.nfe_per_step)
        self.init_noise_sigma = 1.0  # the latents start as standard normal noise, as in diffusers' pipelines
        self.num_inference_steps = None
        self.timesteps = None
        self._times = None  # the grid (float64 process times)
        self._calls: list = []  # (time, (cz, co) of x0 = cz z + co output, starts a step) per network call
        self._run: SteppedSampling | None = None
        self._begin_index: int | None = None
        self._taus: list[float] = []  # the network timestep of each call, on the host
        self._plans = LRUCache(8)
        self._returned: Tensor | None = None
        self._step_index = 0

    # -- diffusers' scheduler protocol ------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``; a config from another scheduler also records what it
        was (``source_config``, so its grid is reproduced) and whether it is flow matching.
        Every key of the source counts, also those it left at its defaults."""
        if config is not None and not isinstance(config, dict):
            config = getattr(config, "config", config)
        cfg = dict(config or {})
        name = source_class_name(cfg)
        if name != cls.__name__ and not {"solver", "flow_matching"} <= set(cfg):  # not one of ours
            source = {k: v for k, v in cfg.items() if not k.startswith("_")}
            if name:
                source["_class_name"] = name
            kwargs.setdefault("source_config", source)
            flow = "FlowMatch" in name or ("shift" in cfg and "beta_schedule" not in cfg) or flow_sigmas(cfg)
            kwargs.setdefault("flow_matching", flow)
            if flow_sigmas(cfg) and "shift" not in kwargs:
                kwargs["shift"] = float(cfg.get("flow_shift", 1.0))
            if flow and cfg.get("prediction_type") == "flow_prediction":
                cfg.pop("prediction_type")  # the flow-matching network's own output, not a DDPM prediction type
            cfg.pop("_use_default_values", None)
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the network takes the process state z_t itself."""
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      mu: float | None = None):
        """Build the grid (module docstring) and list the network timestep of every call in
        :attr:`timesteps` (on ``device``). Ends any unfinished run."""
        if self._run is not None:
            self._run.close()
        self._run, self._returned, self._step_index, self._begin_index = None, None, 0, None
        self.init_noise_sigma = 1.0
        given = [v for v in (timesteps, sigmas) if v is not None]
        if len(given) > 1:
            raise ValueError("pass at most one of timesteps and sigmas")
        times = self.config.schedule if isinstance(self.config.schedule, (list, tuple)) and not given else None
        if times is not None:
            if num_inference_steps is not None and num_inference_steps != len(times) - 1:
                raise ValueError(f"num_inference_steps={num_inference_steps} disagrees with the config's {len(times)} "
                                 f"schedule times ({len(times) - 1} steps)")
        elif not given:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        else:
            # beta-table sigmas end at their last level (no call there); everything else is one per call
            calls = len(given[0]) - (1 if sigmas is not None and not self.config.flow_matching else 0)
            if num_inference_steps is not None and num_inference_steps != calls:
                raise ValueError(f"num_inference_steps={num_inference_steps} disagrees with the {calls} network calls of the "
                                 f"given {'sigmas' if sigmas is not None else 'timesteps'}")
        as_key = lambda v: None if v is None else tuple(float(x) for x in torch.as_tensor(v).reshape(-1).tolist())  # noqa: E731
        key = (None if times is not None else num_inference_steps, as_key(timesteps), as_key(sigmas), mu)
        # the grid, its calls and their timesteps: built once per setting (a pipeline calls
        # set_timesteps on every run; building needs the source scheduler and a dry run)
        ts, self._calls, taus, self.init_noise_sigma = self._plans.get(
            key, lambda: self._plan(times, num_inference_steps, timesteps, sigmas, mu))
        self._times, self._taus = ts, taus
        self.num_inference_steps = ts.numel() - 1
        self.timesteps = torch.tensor(taus, dtype=torch.float32, device=device)
        if not self.config.flow_matching and all(float(v).is_integer() for v in taus):
            self.timesteps = self.timesteps.to(torch.int64)  # diffusers' integer DDPM indices

    def _plan(self, times, steps, timesteps, sigmas, mu):
        """(grid, call times, network timestep of each call, init_noise_sigma) for these settings."""
        self.init_noise_sigma = 1.0
        if times is not None:
            ts, node_steps = torch.tensor([float(v) for v in times], dtype=_F64), None
        elif self.config.flow_matching:
            ts, node_steps = self._flow_grid(steps, timesteps, sigmas, mu)
        else:
            ts, node_steps = self._table_grid(steps, timesteps, sigmas)
        ts = check_grid(ts, self.process)
        calls, starts = call_plan(self.process, self.parametrization, self.solver, ts)
        taus = [self._network_timestep(t, node_steps) for t in calls]
        return ts, [(t, self._x0_coefficients(t), i in starts) for i, t in enumerate(calls)], taus, self.init_noise_sigma

    def _x0_coefficients(self, t: float):
        """(cz, co) with x0 = cz z + co output at time t (None where the output does not determine x0)."""
        p, tt = self.process, torch.tensor([t], dtype=_F64)
        node = SimpleNamespace(time=t, alpha=float(p.alpha(tt)), sigma=float(p.sigma(tt)),
                               d_alpha=float(p.d_alpha(tt)), d_sigma=float(p.d_sigma(tt)))
        try:
            return conversion(node, self.parametrization, "x0")
        except SingularConversionError:
            return None

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True):
        """Hand the network's output at the current call to the solver; returns where the
        network is called next (``prev_sample``; the sample itself after the last call) and
        the x0 that this output predicts (``pred_original_sample``).

        ``sample`` starts the run at the first call. Later, if it is not the tensor this scheduler
        returned (a pipeline that rebuilds or edits its latents between calls: DiT's guidance
        batch, inpainting blends), it is taken as the point the network was evaluated at: at a
        step's start the solver continues from it, as diffusers' schedulers do."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
            raise TypeError("model_output and sample must be tensors")
        model_output = self._own_output(model_output, sample)
        if self._run is None and self._begin_index is None:
            # like diffusers: a run that starts at a later timestep (img2img slices the list)
            # begins there (one read of the timestep per run)
            self._step_index = self._index_for_timestep(timestep)
        k = self._step_index
        if k >= len(self._calls):
            raise RuntimeError(f"all {len(self._calls)} calls of this grid are done; call set_timesteps again to start a new run")
        if self._run is not None:
            self._check_timestep(timestep, k)
        moved = None
        if self._run is None:
            self._run = SteppedSampling(self.process, self.parametrization, self.solver, self._times[self._start_step(k):],
                                        sample, generator=generator)
        else:
            moved = self._moved(sample)
            self._run.generator = generator
        run = self._run
        point, t = (run.point if moved is None else moved), run.t
        output = model_output.to(point.dtype)
        x0 = None
        if self.config.clip_sample or self.config.thresholding:
            x0 = Prediction(output, point, t, self.process, self.parametrization).x0
            x0 = self.limit_x0(x0)
            output = Prediction(x0, point, t, self.process, "x0").as_(self.parametrization)
        elif self._calls[k][1] is not None:
            cz, co = self._calls[k][1]
            x0 = output * co if cz == 0.0 else torch.add(point * cz, output, alpha=co)
        run.send(output.to(model_output.dtype), moved)
        prev = run.result if run.done else run.point
        self._step_index += 1
        prev = prev.to(sample.dtype)
        self._returned = prev
        x0 = None if x0 is None else x0.to(sample.dtype)
        if not return_dict:
            return prev, x0
        return UnigenSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def limit_x0(self, x0: Tensor) -> Tensor:
        r"""The predicted x0 limited as the config says: clipped to +-``clip_sample_range``, or
        dynamic thresholding (Saharia et al. 2022, Imagen): per sample, s = the
        ``dynamic_thresholding_ratio`` quantile of |x0| clamped to [1, ``sample_max_value``],
        x0 -> clamp(x0, -s, s) / s.

        The solver then sees the network's output re-expressed from the limited x0 at the same
        point (e.g. eps = (z - alpha x0) / sigma), so every solver uses one consistent
        prediction. (diffusers' DDIM keeps the unlimited eps next to the limited x0; the
        data-prediction solvers, DPM-Solver++ and UniPC, use x0 alone and agree.)"""
        if self.config.thresholding:
            flat = x0.reshape(x0.shape[0], -1)
            s = torch.quantile(flat.abs().float(), self.config.dynamic_thresholding_ratio, dim=1).to(x0.dtype)
            s = s.clamp(min=1.0, max=self.config.sample_max_value).reshape((-1,) + (1,) * (x0.ndim - 1))
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """z_t = alpha_t x + sigma_t eps at network timesteps ``timesteps`` (one per batch item, or one)."""
        t = self._time_of_timestep(torch.as_tensor(timesteps, device=original_samples.device).to(_F64).reshape(-1))
        alpha = self.process.alpha(t).to(original_samples.dtype)
        sigma = self.process.sigma(t).to(original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return alpha.reshape(shape) * original_samples + sigma.reshape(shape) * noise

    @property
    def step_index(self) -> int:
        """The index (into :attr:`timesteps`) of the next network call."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The call the run starts at (:meth:`set_begin_index`), or None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at call ``begin_index`` of :attr:`timesteps` (img2img pipelines: the
        latents they pass are the noised image at that timestep). It must be the first call of a
        solver step; the solver starts there afresh, as diffusers' multistep schedulers do."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or not 0 <= begin_index < len(self._calls):
            raise ValueError(f"begin_index must be a call index in [0, {len(self._calls)}), got {begin_index!r}")
        self._start_step(begin_index)
        self._begin_index = self._step_index = begin_index

    def scale_noise(self, sample: Tensor, timestep, noise: Tensor) -> Tensor:
        """Flow-matching pipelines' name for :meth:`add_noise` (argument order of diffusers'
        FlowMatch schedulers): (1 - sigma) x + sigma noise at the network timestep."""
        return self.add_noise(sample, noise, timestep)

    def _start_step(self, k: int) -> int:
        """The grid step that call k starts; a ValueError unless k is a step's first call and the
        solver, started there afresh, makes the calls listed from k on."""
        if k == 0:
            return 0
        t = self._calls[k][0]
        # call times are recorded in the loop's float32 (for float32 data): compare to that precision
        close = lambda a, b: abs(a - b) <= 1e-6 * max(1.0, abs(b))  # noqa: E731
        steps = [i for i, s in enumerate(self._times[:-1].tolist()) if close(s, t)]
        ok = bool(self._calls[k][2] and steps)
        if ok:
            rest = call_times(self.process, self.parametrization, self.solver, self._times[steps[0]:])
            listed = [c[0] for c in self._calls[k:]]
            ok = len(rest) == len(listed) and all(close(a, b) for a, b in zip(rest, listed))
        if not ok:
            raise ValueError(
                f"a run cannot start at call {k} (timestep {self._taus[k]:g}): it is not the first call of a "
                f"step of {type(self.solver).__name__} on this grid"
            )
        return steps[0]

    def _index_for_timestep(self, timestep) -> int:
        """The first call listed at ``timestep`` (0 if it is not listed: _check_timestep names it)."""
        if isinstance(timestep, Tensor):
            timestep = timestep.reshape(-1)[0] if timestep.numel() else float("nan")
        got = float(timestep)
        for k, want in enumerate(self._taus):
            if abs(got - want) <= 1e-3 * max(1.0, abs(want)):
                return k
        self._check_timestep(got, 0)
        return 0

    def __len__(self):
        return self.config.num_train_timesteps

    # -- grids ---------------------------------------------------------------------------
    def _named(self, process, schedule, steps: int) -> Tensor:
        """``steps`` network calls on ``schedule`` over the sampling range, then the clean point."""
        model = Model(None, process, self.parametrization)
        end = sample_range(process)[1]
        if float(process.sigma(torch.tensor([end], dtype=_F64))) == 0.0:
            return model_grid(model, schedule, steps)
        if steps == 1:
            return torch.tensor([model.default_range()[0], 0.0], dtype=_F64)
        return torch.cat([model_grid(model, schedule, steps - 1), torch.zeros(1, dtype=_F64)])

    def _table_grid(self, steps, timesteps, sigmas):
        process: VPDiscrete = self.process
        end = torch.zeros(1, dtype=_F64) if self.config.set_alpha_to_one else process.t_from_timestep(torch.zeros(1))
        if timesteps is not None:
            taus = torch.as_tensor(timesteps, dtype=_F64).reshape(-1).cpu()
            ts = process.t_from_timestep(taus)
            ts = torch.cat([ts, end if float(end[0]) < float(ts[-1]) else ts.new_zeros(1)])
            return ts, dict(zip(ts[:-1].tolist(), taus.tolist()))  # the given timesteps are what the network sees
        if sigmas is not None:
            # as diffusers' Euler: the levels visited, the last one the end (0: the clean point)
            sig = torch.as_tensor(sigmas, dtype=_F64).reshape(-1).cpu()
            if sig.numel() < 2:
                raise ValueError(f"sigmas must hold at least 2 levels (the last is where sampling ends), got {sig.tolist()}")
            ts = self._from_levels(sig)
            return (ts if float(sig[-1]) == 0.0 else ts[:-1]), None
        if self.config.schedule is not None:
            return self._named(process, self.config.schedule, steps), None
        source = _grid_source(self.config.source_config, False)
        if source is None:
            return diffusers_grid(dict(self.config, _class_name="DDIMScheduler"), steps), None
        return self._source_grid(source, steps)

    def _from_levels(self, sig: Tensor) -> Tensor:
        """Grid times of VE levels sigma/alpha (a last level 0 is the clean point; else one is added)."""
        if sig.numel() < 1 or not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
            raise ValueError(f"sigmas must be finite and >= 0, got {sig.tolist()[:6]}")
        positive = sig[sig > 0]
        ts = self.process.t_from_log_snr(-2.0 * torch.log(positive)).clamp(self.process.t_min, self.process.t_max)
        return torch.cat([ts, torch.zeros(1, dtype=_F64)])

    def _source_scheduler(self, source):
        """The source scheduler with this config's values (where it has the key) over its own."""
        config = dict(self.config.source_config)
        config.update({k: v for k, v in self.config.items() if k in config and not k.startswith("_")})
        return source.from_config(config)

    def _source_grid(self, source, steps):
        """The grid of the diffusers scheduler ``source`` with this config: its timesteps, or
        (where it has them) its VE sigmas with fractional timesteps; and the network timestep
        of each grid node, exactly as that scheduler feeds it."""
        s = self._source_scheduler(source)
        s.set_timesteps(steps)
        taus = torch.unique_consecutive(s.timesteps.to(_F64).cpu())
        sig = getattr(s, "sigmas", None)
        levels = None if sig is None else torch.unique_consecutive(sig.to(_F64).cpu())
        if levels is not None and taus.numel() != int((levels > 0).sum()):
            # the timesteps interleave the steps with their midpoints (KDPM2, DPMSolverSDE):
            # each level's own timestep, by diffusers' log-sigma interpolation of the table
            taus = self._timestep_of_level(levels[levels > 0])
        # integer timesteps at their own table levels (diffusers' sigmas are float32): the grid
        # nodes are the table's knots exactly; otherwise the levels decide (Karras sigmas, ...)
        on_knots = bool((taus == taus.round()).all())
        if on_knots and levels is not None:
            at_knots = self.process.ve_sigma(self.process.t_from_timestep(taus))
            on_knots = bool(((levels[: taus.numel()] - at_knots).abs() <= 1e-5 * at_knots).all())
        if on_knots or levels is None:
            ts = self.process.t_from_timestep(taus)
            last = None if levels is None else float(levels[-1])
            if last is None:
                end = 0.0 if s.config.get("set_alpha_to_one", True) else float(self.process.t_from_timestep(torch.zeros(1)))
            else:
                end = 0.0 if last == 0.0 else float(self.process.t_from_log_snr(torch.tensor(-2.0 * math.log(last), dtype=_F64)))
            if end >= float(ts[-1]):
                raise ValueError(
                    f"{source.__name__}'s last step with this config has zero length (its last timestep is 0 and "
                    "set_alpha_to_one=False); a solver grid needs distinct times: use steps_offset=1, another step count, "
                    "or pass timesteps="
                )
            ts = torch.cat([ts, torch.tensor([end], dtype=_F64)])
        else:
            ts = self._from_levels(levels)
            if float(levels[-1]) != 0.0:  # the source ends at its last level (final_sigmas_type "sigma_min")
                ts = ts[:-1]
                if ts.numel() < 2:
                    raise ValueError(f"{source.__name__} with final_sigmas_type='sigma_min' and one step has no interval to "
                                     "integrate (its single step is zero-length); use 2 or more steps")
        nodes = dict(zip(ts[: taus.numel()].tolist(), taus.tolist()))
        # the source's starting latents in z units: schedulers that keep the VE state x = z/alpha
        # (Euler, Heun, LMS, ...) start at init_noise_sigma * noise there, i.e. z = that * alpha
        scale = float(s.init_noise_sigma)
        if scale != 1.0:
            self.init_noise_sigma = scale * float(self.process.alpha(ts[:1]))
        return ts, nodes

    def _timestep_of_level(self, levels: Tensor) -> Tensor:
        """diffusers' timestep of VE levels (``_sigma_to_t``): linear in log sigma between table entries."""
        n = self.config.num_train_timesteps
        knots = self.process.ve_sigma(self.process.t_from_timestep(torch.arange(n, dtype=_F64))).log()
        logs = levels.log().clamp(float(knots[0]), float(knots[-1]))
        hi = torch.searchsorted(knots, logs).clamp(1, n - 1)
        w = (logs - knots[hi - 1]) / (knots[hi] - knots[hi - 1])
        return hi - 1 + w

    def _shift_factor(self, mu) -> float:
        """diffusers' timestep shift s (sigma -> s sigma / (1 + (s - 1) sigma)): the static
        ``shift``, or from ``mu`` with dynamic shifting (s = exp(mu), or mu for the "linear" type)."""
        if not self.config.use_dynamic_shifting:
            return float(self.config.shift)
        if mu is None:
            raise ValueError("this config uses dynamic shifting: pass mu to set_timesteps (the pipeline computes it "
                             "from the image size)")
        s = math.exp(mu) if self.config.time_shift_type == "exponential" else float(mu)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"mu={mu!r} gives the shift {s!r}; it must be positive and finite")
        return s

    def _shift(self, sig: Tensor, mu) -> Tensor:
        s = self._shift_factor(mu)
        return sig if s == 1.0 else s * sig / (1.0 + (s - 1.0) * sig)

    def _flow_grid(self, steps, timesteps, sigmas, mu):
        n = float(self.config.num_train_timesteps)
        source = _grid_source(self.config.source_config, True) if self.config.schedule is None else None
        nodes = None
        if timesteps is not None:
            sig = torch.as_tensor(timesteps, dtype=_F64).reshape(-1).cpu() / n
            nodes = dict(zip(sig.tolist(), torch.as_tensor(timesteps, dtype=_F64).reshape(-1).tolist()))
        elif source is not None and (sigmas is None or "sigmas" in inspect.signature(source.set_timesteps).parameters):
            # the source scheduler's own grid, its sigma options (Karras, shift_terminal, ...) applied
            # to user sigmas too: its sigmas are the FM times, its timesteps what the network sees
            s = self._source_scheduler(source)
            kw = {"mu": mu} if self.config.use_dynamic_shifting else {}
            if sigmas is not None:
                kw["sigmas"] = [float(v) for v in torch.as_tensor(sigmas, dtype=_F64).reshape(-1)]
            s.set_timesteps(None if sigmas is not None else steps, **kw)
            levels = torch.unique_consecutive(s.sigmas.to(_F64).cpu())
            sig = levels[levels > 0]
            taus = torch.unique_consecutive(s.timesteps.to(_F64).cpu())
            nodes = dict(zip(sig.tolist(), taus.tolist())) if taus.numel() == sig.numel() else None
        elif sigmas is not None:
            sig = self._shift(torch.as_tensor(sigmas, dtype=_F64).reshape(-1).cpu(), mu)
        elif self.config.schedule is not None:
            s = self._shift_factor(mu)
            process = FlowMatching() if s == 1.0 else ShiftedFlowMatching(s)
            ts = self._named(process, self.config.schedule, steps)
            return (ts if s == 1.0 else process.sigma(ts)), None
        else:
            sig = self._shift(torch.linspace(1.0, 1.0 / steps, steps, dtype=_F64), mu)
        if not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()) or bool((sig > 1).any()):
            raise ValueError(f"flow-matching sigmas must lie in (0, 1], got {sig.tolist()[:6]}")
        return torch.cat([sig, torch.zeros(1, dtype=_F64)]), nodes

    # -- network timesteps ------------------------------------------------------------------
    def _network_timestep(self, t: float, nodes) -> float:
        if nodes:
            for node, tau in nodes.items():
                if abs(node - t) <= 1e-6 * max(1.0, abs(node)):
                    return float(tau)
        if self.config.flow_matching:
            return t * float(self.config.num_train_timesteps)
        return float(self.process.timestep(torch.tensor(t, dtype=_F64)))

    def _time_of_timestep(self, taus: Tensor) -> Tensor:
        if self.config.flow_matching:
            return taus / float(self.config.num_train_timesteps)
        return self.process.t_from_timestep(taus)

    # -- checks ----------------------------------------------------------------------------
    def _check_timestep(self, timestep, k: int) -> None:
        """The pipeline's timestep must be the k-th listed one (checked where it costs no device sync)."""
        if isinstance(timestep, Tensor):
            if timestep.device.type != "cpu" or timestep.numel() == 0:
                return
            timestep = timestep.reshape(-1)[0]
        try:
            got = float(timestep)
        except (TypeError, ValueError):
            raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}") from None
        want = self._taus[k]
        if abs(got - want) > 1e-3 * max(1.0, abs(want)):
            raise ValueError(
                f"step() got timestep {got:g} but call {k} of {len(self._calls)} is at timestep {want:g}: step once per "
                "entry of scheduler.timesteps, in order, after set_timesteps"
            )

    def _own_output(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The prediction part of the network's output: a learned-variance network (config
        ``variance_type`` "learned" / "learned_range", DeepFloyd IF, improved DDPM) returns the
        variance channels after it, which unigen's solvers do not use."""
        if model_output.shape == sample.shape:
            return model_output
        variance = (self.config.source_config or {}).get("variance_type")
        c = sample.shape[1] if sample.ndim > 1 else None
        if (variance in ("learned", "learned_range") and c is not None and model_output.shape[1] == 2 * c
                and model_output.shape[2:] == sample.shape[2:] and model_output.shape[0] == sample.shape[0]):
            return model_output[:, :c]
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; the network must "
            "predict one value per latent entry (a learned-variance output needs variance_type 'learned' or "
            "'learned_range' in the config)"
        )

    def _moved(self, sample: Tensor) -> Tensor | None:
        """``sample`` as the point the network was evaluated at, if it is not the latents this
        scheduler returned (DiT's pipeline rebuilds its batch; inpainting blends): the solver's
        point is replaced by it. None when it is the returned tensor itself."""
        last = self._returned
        if sample is last:
            return None
        point = self._run.point
        if sample.shape != point.shape:
            raise ValueError(f"sample has shape {tuple(sample.shape)}, but this run's latents have shape {tuple(point.shape)}")
        if not sample.is_floating_point():
            raise TypeError(f"sample must be a floating tensor, got {sample.dtype}")
        return sample.to(point.dtype)
