r"""Few-step samplers over flow maps: a registry of rules that move noise to data with jumps.

Each sampler runs on a grid t_0 > t_1 > ... > t_n (``ug.sample(flow_map, name, steps=n)``
builds it as for one-time models) and calls the flow map once per step, so NFE = n:

* :class:`FlowMapJump` - deterministic jumps z_{i+1} = X_{t_i -> t_{i+1}}(z_i) (flow-map
  models; with the exact map every grid gives the exact ODE endpoint);
* :class:`ConsistencySampler` - multistep consistency sampling (Song et al. 2023, Algorithm 1):
  jump to the data end, x = X_{t_i -> t_n}(z_i), then re-noise to the next time,
  z_{i+1} = alpha_{i+1} x + sigma_{i+1} eps;
* :class:`GammaSampler` - CTM's gamma-sampling (Kim et al. 2024) between the two: jump to the
  time s~ whose noise-to-signal ratio is sqrt(1 - gamma^2) times that of t_{i+1}, then add
  the forward transition's noise from s~ to t_{i+1},

      z_{i+1} = (alpha_{i+1}/alpha_s~) X_{t_i -> s~}(z_i)
                + sqrt(sigma_{i+1}^2 - (alpha_{i+1} sigma_s~/alpha_s~)^2) eps,

  which keeps the marginal at t_{i+1} when X is exact. gamma = 0 is :class:`FlowMapJump`,
  gamma = 1 is :class:`ConsistencySampler` (s~ is the grid's end).

The last step always lands deterministically on t_n. Samplers are registered by class name in
``FLOW_MAP_SAMPLERS``; the one-time solvers stay in ``unigen.solvers.REGISTRY``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import expand_like
from .flow_map import FlowMap

__all__ = ["FlowMapSampler", "FlowMapJump", "ConsistencySampler", "GammaSampler", "FLOW_MAP_SAMPLERS",
           "get_flow_map_sampler", "CountedFlowMap"]

FLOW_MAP_SAMPLERS: dict[str, type] = {}


class FlowMapSampler:
    """Base class: ``run`` moves z from ``ts[0]`` to ``ts[-1]`` with one flow-map call per step.

    Attributes:
        stochastic: whether steps draw noise.
    """

    stochastic: bool = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and not cls.__name__.startswith("_"):
            FLOW_MAP_SAMPLERS[cls.__name__] = cls

    def run(self, flow_map: FlowMap, z: Tensor, ts: Tensor, noise, model_kwargs: dict | None = None,
            on_step=None) -> Tensor:
        """Advance z along the times ``ts`` (a strictly decreasing 1-D tensor in z's dtype and
        device); ``noise(like)`` draws standard normal noise; ``on_step(i, z)`` after each step."""
        for i in range(ts.numel() - 1):
            z = self.step(flow_map, z, ts, i, noise, model_kwargs)
            if on_step is not None:
                on_step(i, z)
        return z

    def step(self, flow_map: FlowMap, z: Tensor, ts: Tensor, i: int, noise, model_kwargs) -> Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class FlowMapJump(FlowMapSampler):
    """z_{i+1} = X_{t_i -> t_{i+1}}(z_i): the flow map applied along the grid."""

    def step(self, flow_map, z, ts, i, noise, model_kwargs):
        return flow_map.jump(z, ts[i], ts[i + 1], model_kwargs)


class GammaSampler(FlowMapSampler):
    """CTM's gamma-sampling (Kim et al. 2024, "Consistency trajectory models", section 5):
    a partial jump to s~ (noise-to-signal ratio sqrt(1 - gamma^2) r_{i+1}) and re-noising to
    t_{i+1} with the forward transition. See the module docstring for the update."""

    stochastic = True

    def __init__(self, gamma: float = 0.5):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0.0 <= gamma <= 1.0):
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)

    def intermediate(self, flow_map: FlowMap, t_next: Tensor, t_end: Tensor) -> Tensor:
        """s~: the time whose log-SNR is lam(t_next) - 2 log sqrt(1 - gamma^2) (the grid's end at gamma = 1)."""
        if self.gamma >= 1.0:
            return t_end
        lam = flow_map.process.log_snr(t_next) - math.log1p(-self.gamma**2)
        s = flow_map.process.t_from_log_snr(lam)
        return torch.clamp(s, min=t_end, max=t_next)

    def step(self, flow_map, z, ts, i, noise, model_kwargs):
        t_next, t_end = ts[i + 1], ts[-1]
        if i == ts.numel() - 2 or self.gamma == 0.0:
            return flow_map.jump(z, ts[i], t_next, model_kwargs)
        s = self.intermediate(flow_map, t_next, t_end)
        x = flow_map.jump(z, ts[i], s, model_kwargs)
        proc = flow_map.process
        a_next, s_next = proc.alpha(t_next), proc.sigma(t_next)
        ratio = a_next / proc.alpha(s)
        std = torch.sqrt(torch.clamp(s_next**2 - (ratio * proc.sigma(s)) ** 2, min=0.0))
        return expand_like(ratio, z) * x + expand_like(std, z) * noise(z)


class ConsistencySampler(GammaSampler):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x = f(z_i, t_i) =
    X_{t_i -> t_n}(z_i), then z_{i+1} = alpha_{i+1} x + sigma_{i+1} eps (sigma_n = 0 at a
    zero-noise end). Gamma-sampling with gamma = 1."""

    def __init__(self):
        super().__init__(1.0)


class CountedFlowMap:
    """What a sampler sees of a flow map: its process and :meth:`jump`, which counts the calls
    in ``nfe`` and feeds the map z in the data dtype (the integration runs in the compute dtype)."""

    def __init__(self, flow_map: FlowMap, data_dtype: torch.dtype):
        self.flow_map, self.process, self.data_dtype = flow_map, flow_map.process, data_dtype
        self.nfe = 0

    def jump(self, z: Tensor, t: Tensor, s: Tensor, model_kwargs: dict | None = None) -> Tensor:
        self.nfe += 1
        if z.dtype != self.data_dtype:
            return self.flow_map.jump(z.to(self.data_dtype), t.to(self.data_dtype), s.to(self.data_dtype),
                                      model_kwargs).to(z.dtype)
        return self.flow_map.jump(z, t, s, model_kwargs)


def get_flow_map_sampler(name_or_sampler) -> FlowMapSampler:
    """A sampler instance from an instance, a class or a registered name."""
    if isinstance(name_or_sampler, FlowMapSampler):
        return name_or_sampler
    if isinstance(name_or_sampler, type) and issubclass(name_or_sampler, FlowMapSampler):
        return name_or_sampler()
    if isinstance(name_or_sampler, str) and name_or_sampler in FLOW_MAP_SAMPLERS:
        return FLOW_MAP_SAMPLERS[name_or_sampler]()
    raise ValueError(
        f"unknown flow-map sampler {name_or_sampler!r}; valid names are {', '.join(sorted(FLOW_MAP_SAMPLERS))} "
        "(a flow map is sampled by these, a one-time Model by unigen.solvers)"
    )
