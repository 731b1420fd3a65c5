r"""Energy-based models as unigen Models: score = -grad_z E, sampled by Langevin / MALA.

An energy E_theta(x) defines p_theta(x) = exp(-E_theta(x)) / Z_theta (LeCun et al. 2006), whose
score grad log p = -grad_x E needs no Z. :class:`EnergyModel` wraps E as a ``Model`` with
parametrization ``"score"`` (computed by autograd) and exposes ``energy(z, t)``, so every
score-based solver and the Metropolis-adjusted sampler (:class:`~unigen.solvers.MALA`, which
needs E for its accept test) run on it. A noise-conditional energy E(z, t) (Song & Ermon 2019;
Salimans & Ho 2021) is -log p_t(z) + const at every t of ``process``.

**Contrastive divergence** (Hinton 2002; Du & Mordatch 2019; docs/theory.md, section 11): with
negatives x^- drawn (approximately) from p_theta,

    grad_theta E_data[-log p_theta] = E_data[grad_theta E] - E_{p_theta}[grad_theta E],

so the surrogate loss mean E(x_data) - mean E(stopgrad x^-) has that gradient. The negatives
come from ``sampler.run(model, z0, t)`` (the library's Langevin / MALA kernel at one fixed
time), started at the data (CD-k) or at a :class:`PersistentChains` buffer (PCD, Tieleman 2008).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .model import Model
from .noise import randn
from .process import EDM, Process
from .solvers.langevin import MALA, Langevin

__all__ = ["EnergyModel", "PersistentChains", "contrastive_divergence_loss"]


class EnergyModel(Model):
    r"""``energy`` as a unigen ``Model``: score(z, t) = -grad_z E(z, t), energy(z, t) = E.

    Args:
        energy: ``energy(z) -> [batch]`` (``time_dependent=False``) or ``energy(z, t) -> [batch]``
            with t of shape [batch] (``time_dependent=True``, a noise-conditional energy, meant
            as -log p_t(z) + c(t) for ``process``).
        process: the process that gives t its meaning. Default ``EDM()`` (sigma = t, alpha = 1),
            where the MCMC step delta_t = step_size * sigma_t^2 of Langevin / MALA equals
            ``step_size`` at t = 1 = :attr:`unit_time`. A time-independent energy ignores t.
        time_dependent: whether ``energy`` takes t.
        time_input: maps t to what a time-dependent energy expects (as in ``Model``).
        check_finite: raise on non-finite energies. Off by default: the check syncs the host on
            every call, and samplers must not; turn it on while debugging an energy (energies
            with +inf barriers are fine without it, MALA simply rejects those proposals).

    The score is one vector-Jacobian product. Its graph is kept (``create_graph``) only when
    gradient recording is on at the call, so a loss may differentiate through it (score
    matching); under ``torch.no_grad()`` (solvers, :func:`contrastive_divergence_loss`) it is
    a detached tensor.
    """

    def __init__(
        self,
        energy,
        process: Process | None = None,
        time_dependent: bool = False,
        time_input=None,
        check_finite: bool = False,
    ):
        if not callable(energy):
            raise TypeError(f"energy must be callable as energy(z) or energy(z, t), got {type(energy).__name__}")
        if not isinstance(time_dependent, bool):
            raise TypeError(f"time_dependent must be a bool, got {type(time_dependent).__name__}")
        self.energy_fn = energy
        self.time_dependent = time_dependent
        self.check_finite = bool(check_finite)
        super().__init__(self._score, EDM() if process is None else process, "score", time_input=time_input, energy=self._energy)

    @property
    def unit_time(self) -> float:
        """The time where sigma_t / alpha_t = 1 (log-SNR 0): t = 1 for EDM; the default CD time."""
        return float(self.process.t_from_log_snr(torch.zeros((), dtype=torch.float64)))

    def _energy(self, z: Tensor, t) -> Tensor:
        if self.time_dependent:
            t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
            if t.ndim == 0:
                t = t.expand(z.shape[0])
            e = self.energy_fn(z, self._time(t))
        else:
            e = self.energy_fn(z)
        if not isinstance(e, Tensor) or e.shape != (z.shape[0],):
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"energy must return one value per sample, shape [batch]=({z.shape[0]},), got {got}")
        if self.check_finite and not bool(torch.isfinite(e).all()):
            bad = int((~torch.isfinite(e)).sum())
            raise ValueError(f"energy returned non-finite values for {bad} of {e.shape[0]} samples")
        return e

    def _score(self, z: Tensor, t) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if (create_graph and z.requires_grad) else z.detach().requires_grad_(True)
            e = self._energy(zz, t)
            (g,) = torch.autograd.grad(e.sum(), zz, create_graph=create_graph, allow_unused=True)
        if g is None:  # E does not depend on z
            return torch.zeros_like(z)
        return -g if create_graph else -g.detach()

    # Model.raw applies time_input before fn; the energy applies it itself (above)
    def raw(self, z, t, coefs=None, model_kwargs=None):
        return self._score(z, t)


class PersistentChains:
    r"""A replay buffer of MCMC states for persistent contrastive divergence (Tieleman 2008;
    Du & Mordatch 2019's buffer with re-initialisation).

    Args:
        init: [n, *event] initial states (e.g. noise); its dtype/device are kept.
        reinit: probability that a drawn chain restarts from ``init_fn`` (default: fresh
            N(0, init_std^2) noise with ``init_std`` the std of ``init``).
    """

    def __init__(self, init: Tensor, reinit: float = 0.05, init_fn=None):
        if not isinstance(init, Tensor) or init.ndim < 2 or init.shape[0] < 1:
            raise ValueError(f"init must be a tensor [n_chains, *event], got {getattr(init, 'shape', type(init).__name__)}")
        if isinstance(reinit, bool) or not isinstance(reinit, (int, float)) or not 0.0 <= reinit <= 1.0:
            raise ValueError(f"reinit must be a probability in [0, 1], got {reinit!r}")
        if init_fn is not None and not callable(init_fn):
            raise TypeError(f"init_fn must be callable as init_fn(m, generator), got {type(init_fn).__name__}")
        self.states = init.detach().clone()
        self.reinit = float(reinit)
        std = float(init.std()) if init.numel() > 1 else 1.0
        self.init_fn = init_fn or (
            lambda m, generator: std * randn((m,) + tuple(init.shape[1:]), generator=generator, dtype=init.dtype, device=init.device)
        )
        self._last = None

    def __len__(self):
        return self.states.shape[0]

    def draw(self, m: int, generator=None) -> tuple[Tensor, Tensor]:
        """(indices, states): m chains picked uniformly (with replacement), a ``reinit`` fraction restarted."""
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an integer >= 1, got {m!r}")
        idx = torch.randint(0, len(self), (m,), generator=generator, device=self.states.device)
        z = self.states[idx]
        if self.reinit > 0:
            fresh = torch.rand(m, generator=generator, device=self.states.device) < self.reinit
            z = torch.where(fresh.reshape((m,) + (1,) * (z.ndim - 1)), self.init_fn(m, generator).to(z), z)
        return idx, z

    def update(self, idx: Tensor, z: Tensor) -> None:
        """Write the advanced states back."""
        if z.shape[1:] != self.states.shape[1:] or idx.shape[0] != z.shape[0]:
            raise ValueError(f"update needs [m] indices and [m, *{tuple(self.states.shape[1:])}] states, got {tuple(idx.shape)}, {tuple(z.shape)}")
        self.states[idx] = z.detach().to(self.states)


def contrastive_divergence_loss(
    energy_model: EnergyModel,
    x: Tensor,
    sampler=None,
    n_steps: int | None = None,
    persistent: PersistentChains | None = None,
    t=None,
    generator=None,
    reg: float = 0.0,
    return_negatives: bool = False,
):
    r"""mean E(x) - mean E(x^-), x^- from ``n_steps`` MCMC iterations of ``sampler`` (+ reg (E^2 terms)).

    Args:
        energy_model: an :class:`EnergyModel` (its energy's parameters get the gradient).
        x: [batch, *event] data.
        sampler: a :class:`~unigen.solvers.Langevin` or :class:`~unigen.solvers.MALA` instance
            (default ``Langevin(step_size=0.01)``); its ``.run`` makes the negatives, under
            ``torch.no_grad``, so they carry no gradient.
        n_steps: iterations per call (default: the sampler's own ``n_steps``; the sampler's
            attribute is set for this call and restored, so MALA's acceptance stats stay on it).
        persistent: a :class:`PersistentChains` buffer to start from and write back to (PCD);
            otherwise the chains start at the data (CD-k).
        t: the time at which the kernel runs (default :attr:`EnergyModel.unit_time`, where
            delta = step_size for the default EDM process).
        reg: Du & Mordatch's energy-magnitude penalty reg * (mean E(x)^2 + mean E(x^-)^2).
        return_negatives: also return the negatives.
    """
    if not isinstance(energy_model, EnergyModel):
        raise TypeError(f"energy_model must be an EnergyModel, got {type(energy_model).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor [batch, *event], got {getattr(x, 'shape', type(x).__name__)}")
    if sampler is None:
        sampler = Langevin(step_size=0.01)
    if not isinstance(sampler, (Langevin, MALA)):
        raise TypeError(f"sampler must be a Langevin or MALA instance, got {type(sampler).__name__}")
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not (reg >= 0 and math.isfinite(reg)):
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
    t = energy_model.unit_time if t is None else t

    if persistent is not None:
        if not isinstance(persistent, PersistentChains):
            raise TypeError(f"persistent must be a PersistentChains buffer, got {type(persistent).__name__}")
        idx, z0 = persistent.draw(x.shape[0], generator=generator)
    else:
        idx, z0 = None, x.detach()
    saved = sampler.n_steps
    try:
        if n_steps is not None:
            sampler.n_steps = n_steps
        with torch.no_grad():
            neg = sampler.run(energy_model, z0.to(x), t, generator=generator)
    finally:
        sampler.n_steps = saved
    if persistent is not None:
        persistent.update(idx, neg)
    e_pos = energy_model.energy(x, t)
    e_neg = energy_model.energy(neg.detach(), t)
    loss = e_pos.mean() - e_neg.mean()
    if reg:
        loss = loss + reg * (e_pos.square().mean() + e_neg.square().mean())
    return (loss, neg) if return_negatives else loss
