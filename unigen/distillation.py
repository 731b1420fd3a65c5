r"""Few-step generators distilled from a one-time :class:`~unigen.model.Model` (the teacher).

Three methods, each on any process (the teacher's), each returning something ``ug.sample`` or a
plain call can run:

**Reflow** (Liu, Gong & Liu 2022, "Flow straight and fast: rectified flow"). Draw noise eps and
the teacher's ODE endpoint x = X_{T->0}(sigma_T eps) (:func:`reflow_couplings`), then fit a
flow-matching velocity on the straight line between the coupled pair (:func:`fit_reflow`):

    min_theta  E_{(eps, x), t ~ U}  || v_theta(z_t, t) - (eps - x) ||^2,   z_t = (1 - t) x + t eps,

in our flow-matching convention (``ug.FlowMatching``: alpha = 1 - t, sigma = t), where **t = 1
is noise (x_1 = eps) and t = 0 is data (x_0 = x)** and v = dz/dt. The new flow has the same
marginals at both ends and trajectories no less straight; k rounds (each on the couplings of the
previous flow) give the k-rectified flow (:func:`reflow`). Liu et al.'s straightness of a flow
(:func:`straightness`, their eq. for S(Z)) is, along the model's own ODE trajectories,

    S = E int_0^1 || (x_1 - x_0) - v(z_t, t) ||^2 dt,

zero exactly when every trajectory is a straight line traversed at constant speed (then one
Euler step is exact). A teacher of another process is read in flow-matching time by
``Model.to(ug.FlowMatching(), "velocity")`` (equal log-SNR, exact).

**Progressive distillation** (Salimans & Ho 2022, Algorithm 2). On a teacher grid
t_0 > t_1 > ... > t_N, a student whose ONE DDIM step t -> t'' equals TWO teacher DDIM steps
t -> t' -> t''. A DDIM step is z_s = alpha_s x_hat + (sigma_s/sigma_t)(z_t - alpha_t x_hat), so the
student must predict (:func:`progressive_target`)

    x~ = (z_{t''} - (sigma_{t''}/sigma_t) z_t) / (alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t),

with z_{t''} the teacher's two steps from z_t = alpha_t x + sigma_t eps; the loss is
max(SNR_t, 1) ||x~ - x_hat_theta(z_t)||^2 ("truncated SNR" weighting). The student starts from
the teacher's weights; each round halves the steps (:func:`progressive_distillation`).

**Distribution matching distillation** (Yin et al. 2023, DMD). A one-step generator
x = G(eps) is trained with the gradient of KL(p_fake,t || p_real,t) at noised samples
z_t = alpha_t G(eps) + sigma_t n,

    grad_x KL = E_t w_t alpha_t (s_fake(z_t, t) - s_real(z_t, t)),
    s(z, t) = -(z - alpha_t mu(z, t)) / sigma_t^2,  so  alpha_t (s_fake - s_real) = (alpha_t^2/sigma_t^2)(mu_fake - mu_real),

with the weight w_t = (sigma_t^2/alpha_t^2) D / ||x - mu_real(z_t, t)||_1 (D the dimension), i.e.
the step x <- x - (mu_fake - mu_real) D / ||x - mu_real||_1. The paper writes w_t = (sigma_t^2/alpha_t)
D / ||.||_1, which keeps one more factor alpha_t; the two agree on VE/EDM paths (alpha = 1), and
the form here (also that of DMD2's released code) weights every log-SNR the same way on VP and
flow-matching paths instead of down-weighting alpha_t -> 0. s_real is the teacher; s_fake is a
model trained online on generator samples by denoising score matching. DMD's regression loss
lambda_reg ||G(eps_ref) - x_ref||^2 on teacher (noise, ODE endpoint) pairs keeps the generator
from dropping modes (squared L2 here, where the paper uses LPIPS on images). :func:`fit_dmd`
returns a :class:`OneStepGenerator`: call it on noise (``gen(eps)``), or drive it with
``ug.sample(gen.as_model(), "DDIM", steps=1, shape=...)`` (one DDIM step from flow-matching
t = 1 onto t = 0 lands on its x0 prediction, which is G).

All trainers follow :func:`unigen.train.fit`'s conventions: a ``torch.Generator`` seeds every
draw and the network initialisation (default seed 0), Adam with a cosine learning rate,
optional EMA, gradient clipping, and a FloatingPointError naming the step when a loss is not
finite.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ._utils import expand_like
from .losses import loss as denoising_loss
from .model import Model
from .networks import MLP, Preconditioned, TinyConvNet
from .noise import randn
from .parametrization import undetermined_reason
from .process import FlowMatching, Process, time_change
from .reference import ode_endpoint, ode_trajectory
from .sample import model_grid, sample
from .time_samplers import default_t_range
from .train import NATURAL_WEIGHTING, resolve_data

__all__ = [
    "Couplings",
    "reflow_couplings",
    "fit_reflow",
    "reflow",
    "straightness",
    "progressive_target",
    "DistilledStudent",
    "progressive_distillation",
    "OneStepGenerator",
    "fit_dmd",
]


# ---------------------------------------------------------------------------------------
# shared plumbing
# ---------------------------------------------------------------------------------------
def _check_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _check_model(model, name: str = "teacher") -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be a unigen Model (ug.Model(net, process, parametrization)), got {type(model).__name__}")
    return model


def _check_determined_at(teacher: Model, t: float, where: str) -> None:
    """Refuse a teacher whose output does not give x0_hat at ``t`` (an eps model at alpha = 0, the
    start of flow matching), which would train on NaN from the first step."""
    reason = undetermined_reason(teacher.parametrization, teacher.process, t)
    if reason is not None:
        raise ValueError(f"the teacher cannot give x0_hat at {where} t={t:g}: {reason}")


def _gen(generator) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def _default_net(event_shape: tuple, gen: torch.Generator, dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(gen))
        if len(event_shape) == 1:
            net = MLP(event_shape[0])
        elif len(event_shape) == 3 and event_shape[1] == event_shape[2]:
            net = TinyConvNet(channels=event_shape[0], size=event_shape[1])
        else:
            raise ValueError(f"no default network for event shape {event_shape}; pass net= (an nn.Module f(z, c))")
    return net.to(dtype=dtype)


def _fresh_model(net, event_shape, process, parametrization, sigma_data, gen, dtype) -> Model:
    """A :class:`Preconditioned` network (``net`` or the default body) seen as a Model."""
    if net is None:
        net = _default_net(event_shape, gen, dtype)
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module f(z, c), got {type(net).__name__}")
    body = Preconditioned(net, process, parametrization, sigma_data=sigma_data)
    body.event_shape = tuple(event_shape)
    return Model(body, process, parametrization)


def _copied(model: Model) -> Model:
    """A trainable copy of ``model`` (its network deep-copied), the same function as ``model``."""
    if not isinstance(model.fn, nn.Module):
        raise ValueError(
            f"the teacher {model!r} has no torch.nn.Module network to start from (an oracle or a transformed "
            "model); pass init='fresh' (or net=) for a new network"
        )
    fn = copy.deepcopy(model.fn).requires_grad_(True).train()
    out = Model(fn, model.process, model.parametrization, model.time_input, t_range=model.t_range,
                batch_time=model.batch_time, dtype=model.dtype)
    return out


def _sigma_data(x: Tensor) -> float:
    s = float(x.std()) if x.numel() > 1 else 1.0
    return s if math.isfinite(s) and s > 0 else 1.0


class _Trainer:
    """Adam + cosine (or constant) learning rate + optional EMA + clipping + a finite-loss check,
    as in :func:`unigen.train.fit`."""

    def __init__(self, modules, steps: int, lr: float, lr_schedule: str = "cosine", ema: float | None = None,
                 grad_clip: float | None = 1.0, what: str = "loss"):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid values are cosine, constant")
        if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
            raise ValueError(f"ema must be a decay in (0, 1), got {ema!r}")
        self.modules = list(modules)
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the network has no trainable parameters")
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.sched = None
        if lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)))
        self.ema = ema
        self.averaged = [copy.deepcopy(m).requires_grad_(False) for m in self.modules] if ema is not None else None
        self.grad_clip, self.what, self.lr = grad_clip, what, lr
        self.history: list[float] = []

    def step(self, value: Tensor, k: int) -> float:
        lv = float(value.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(
                f"{self.what} became {'nan' if math.isnan(lv) else 'inf'} at step {k} (steps count from 0; "
                f"lr={self.lr:g}); lower lr or check the teacher and the data"
            )
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.averaged is not None:
            with torch.no_grad():
                for avg, m in zip(self.averaged, self.modules):
                    for pe, p in zip(avg.parameters(), m.parameters()):
                        pe.lerp_(p, 1.0 - self.ema)
        self.history.append(lv)
        return lv

    def finish(self) -> None:
        """Copy the EMA weights into the trained modules (if EMA was used) and set eval mode."""
        if self.averaged is not None:
            with torch.no_grad():
                for avg, m in zip(self.averaged, self.modules):
                    for pe, p in zip(avg.parameters(), m.parameters()):
                        p.copy_(pe)
        for m in self.modules:
            m.eval()


def _log(log_every, k, steps, history, name="loss"):
    if log_every and (k % log_every == 0 or k == steps - 1):
        recent = history[-log_every:]
        print(f"step {k:6d}  {name} {sum(recent) / len(recent):.5f}", flush=True)


def _uniform_times(n: int, lo: float, hi: float, gen, dtype) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)


def _flow_matching_view(model: Model) -> Model:
    """``model`` as a flow-matching velocity model (itself if it is one)."""
    if isinstance(model.process, FlowMatching) and model.parametrization == "velocity":
        return model
    return model.to(FlowMatching(), "velocity")


def _zero_noise(process: Process, t: float) -> bool:
    return float(process.sigma(torch.tensor(t, dtype=torch.float64))) == 0.0


# ---------------------------------------------------------------------------------------
# Reflow
# ---------------------------------------------------------------------------------------
@dataclass
class Couplings:
    """Teacher couplings: ``noise`` eps ~ N(0, I) (the flow-matching t = 1 end, x_1) and ``data``
    x = the teacher's ODE endpoint from z = sigma(t_start) eps (the t = 0 end, x_0), row by row;
    ``nfe``: the teacher evaluations spent; ``teacher``: a description of who made them."""

    noise: Tensor
    data: Tensor
    nfe: int = 0
    teacher: str = ""

    def __post_init__(self):
        for name, v in (("noise", self.noise), ("data", self.data)):
            if not isinstance(v, Tensor) or not v.is_floating_point() or v.ndim < 2:
                raise ValueError(f"Couplings.{name} must be a floating tensor [N, *event]")
        if self.noise.shape != self.data.shape:
            raise ValueError(f"Couplings.noise {tuple(self.noise.shape)} and .data {tuple(self.data.shape)} must have the same shape")
        if not (bool(torch.isfinite(self.noise).all()) and bool(torch.isfinite(self.data).all())):
            raise ValueError("Couplings hold non-finite values (the teacher's solve diverged?)")

    def __len__(self):
        return self.noise.shape[0]

    @property
    def event_shape(self) -> tuple:
        return tuple(self.noise.shape[1:])


def reflow_couplings(teacher: Model, n: int | None = None, event_shape=None, *, noise: Tensor | None = None,
                     solver=None, steps: int | None = None, schedule=None, tol: float = 1e-7,
                     generator: torch.Generator | None = None, dtype=None, batch_size: int = 8192) -> Couplings:
    r"""(eps, X_{T->0}(sigma_T eps)) pairs from ``teacher``: the training set of a reflow round.

    Args:
        teacher: any :class:`~unigen.model.Model` (any process and parametrization).
        n, event_shape: how many pairs and the event shape (default ``teacher.event_shape``);
            or give ``noise`` (standard normal eps, [N, *event]) instead.
        solver, steps, schedule: the teacher's sampler (``ug.sample`` with ``noise=sigma_T eps``).
            Default (``solver=None``): the accurate PF-ODE solve :func:`unigen.reference.ode_endpoint`
            with rtol = atol = ``tol`` (in the noise's dtype; float64 for an exact oracle coupling).
        generator: for the noise (default seed 0). dtype: of the drawn noise.
        batch_size: pairs per teacher solve.

    The solve runs from the teacher's ``default_range()`` start T onto its end; if the end has
    sigma > 0 (a VP or DDPM end), the endpoint is the teacher's x0 prediction there.
    """
    _check_model(teacher)
    if noise is None:
        _check_int("n", n)
        event_shape = tuple(event_shape) if event_shape is not None else getattr(teacher, "event_shape", None)
        if event_shape is None:
            raise ValueError("pass event_shape= (the teacher has no .event_shape) or noise=")
        noise = randn((n,) + tuple(event_shape), generator=_gen(generator), dtype=dtype or torch.get_default_dtype())
    elif not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        raise ValueError("noise must be a floating tensor [N, *event] of standard normal draws")
    _check_int("batch_size", batch_size)
    t_start, t_end = teacher.default_range()
    sigma_start = float(teacher.process.sigma(torch.tensor(t_start, dtype=torch.float64)))
    denoise = not _zero_noise(teacher.process, t_end)
    outs, nfe = [], 0
    for chunk in noise.split(batch_size):
        z = sigma_start * chunk
        if solver is None:
            x, k = ode_endpoint(teacher, z, t_start, t_end, tol=tol)
            if denoise:
                with torch.no_grad():
                    x = teacher.predict(x, torch.tensor(t_end, dtype=x.dtype)).x0
                k += 1
        else:
            with torch.no_grad():
                x, info = sample(teacher, solver, steps, schedule, noise=z, denoise_final=denoise)
            k = info.nfe
        outs.append(x.detach())
        nfe += k
    desc = f"{teacher!r} by {'ode_endpoint(tol=%g)' % tol if solver is None else f'{solver} ({steps} steps)'}"
    return Couplings(noise.detach(), torch.cat(outs), nfe, desc)


def fit_reflow(couplings: Couplings, *, init: Model | None = None, net: nn.Module | None = None,
               steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, generator: torch.Generator | None = None,
               lr_schedule: str = "cosine", ema: float | None = None, grad_clip: float | None = 1.0,
               log_every: int | None = None) -> Model:
    r"""Fit a flow-matching velocity to the straight interpolation of ``couplings`` (one reflow round).

    Minimises E || v_theta(z_t, t) - (eps - x) ||^2 with z_t = (1 - t) x + t eps, t ~ U over the
    model's flow-matching time range (eps = ``couplings.noise`` at t = 1, x = ``couplings.data`` at
    t = 0). ``init``: a Model whose network (deep-copied) is the starting point (Liu et al.
    fine-tune the previous flow), read in flow-matching time by ``.to(ug.FlowMatching(),
    "velocity")`` when it is of another process; else a fresh :class:`~unigen.networks.Preconditioned`
    ``net`` (default MLP / TinyConvNet). Returns the trained flow-matching velocity
    :class:`~unigen.model.Model` (the network in eval mode) with ``.history`` (loss per step) and
    ``.train_seconds``.
    """
    if not isinstance(couplings, Couplings):
        raise TypeError(f"couplings must be a Couplings (from reflow_couplings), got {type(couplings).__name__}")
    _check_int("steps", steps)
    _check_int("batch_size", batch_size)
    gen = _gen(generator)
    x_all, e_all = couplings.data, couplings.noise
    if init is not None:
        base = _copied(_check_model(init, "init"))
        student = _flow_matching_view(base)
        module = base.fn
    else:
        student = _fresh_model(net, couplings.event_shape, FlowMatching(), "velocity", _sigma_data(x_all), gen, x_all.dtype)
        module = student.fn
    lo, hi = student.t_range
    trainer = _Trainer([module], steps, lr, lr_schedule, ema, grad_clip, "reflow loss")
    n = len(couplings)
    start = time.perf_counter()
    for k in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x, e = x_all[idx], e_all[idx]
        t = _uniform_times(batch_size, lo, hi, gen, x.dtype)
        tt = expand_like(t, x)
        z = (1.0 - tt) * x + tt * e
        v = student.predict(z, t).velocity
        value = (v - (e - x)).flatten(1).square().sum(1).mean()
        trainer.step(value, k)
        _log(log_every, k, steps, trainer.history)
    trainer.finish()
    student.history = trainer.history
    student.train_seconds = time.perf_counter() - start
    return student


def reflow(teacher: Model, rounds: int = 1, n: int = 4096, event_shape=None, *, init_from_teacher: bool = True,
           couplings_kwargs: dict | None = None, generator: torch.Generator | None = None, **fit_kwargs) -> list[Model]:
    r"""k-rectified flow: ``rounds`` reflow rounds, round k on the couplings of flow k - 1 (flow 0 =
    ``teacher``). Each round draws ``n`` fresh pairs (:func:`reflow_couplings` with
    ``couplings_kwargs``) and fits with :func:`fit_reflow` (``fit_kwargs``), starting from the
    previous flow's network when ``init_from_teacher`` and it has one. Returns the k flows."""
    _check_model(teacher)
    _check_int("rounds", rounds)
    gen = _gen(generator)
    flows, current = [], teacher
    event_shape = event_shape if event_shape is not None else getattr(teacher, "event_shape", None)
    for _ in range(rounds):
        pairs = reflow_couplings(current, n, event_shape, generator=gen, **(couplings_kwargs or {}))
        event_shape = pairs.event_shape
        init = current if init_from_teacher and isinstance(current.fn, nn.Module) else None
        current = fit_reflow(pairs, init=init, generator=gen, **fit_kwargs)
        flows.append(current)
    return flows


def straightness(model: Model, noise: Tensor, *, nodes: int = 16, tol: float = 1e-7, per_sample: bool = False):
    r"""Liu et al.'s straightness S = E int || (x_1 - x_0) - v(z_t, t) ||^2 dt of ``model``'s ODE.

    The model is read as a flow-matching velocity (t = 1 noise, t = 0 data; v = dz/dt, so
    x_1 - x_0 = int_0^1 v dt is the average velocity); its trajectories start at z = sigma(T) eps
    (``noise`` = eps, standard normal) at the start T of its flow-matching ``default_range()``
    (1 for a flow-matching model, just below it for a VP one) and are solved accurately
    (:func:`unigen.reference.ode_trajectory`, rtol = atol = ``tol``) onto its end t_0. The integral
    is Gauss-Legendre quadrature with ``nodes`` nodes on [t_0, T]; on a range of length L != 1 the
    measure is (1/L) int || (x_T - x_{t_0})/L - v ||^2 dt (Liu et al.'s for L = 1). The squared
    norm sums over the event (divide by the dimension for a per-coordinate value).
    Returns the mean over the batch (a float), or the [N] values with ``per_sample``.
    """
    _check_model(model, "model")
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        raise ValueError("noise must be a floating tensor [N, *event] of standard normal draws")
    _check_int("nodes", nodes, 2)
    fm = _flow_matching_view(model)
    t1, t0 = fm.default_range()
    length = t1 - t0
    u, w = np.polynomial.legendre.leggauss(nodes)  # on [-1, 1], ascending
    ts = t0 + 0.5 * length * (torch.tensor(u[::-1].copy(), dtype=torch.float64) + 1.0)  # descending
    wts = torch.tensor(w[::-1].copy(), dtype=torch.float64) * 0.5  # weights of the mean over [t0, t1]
    times = torch.cat([torch.tensor([t1], dtype=torch.float64), ts, torch.tensor([t0], dtype=torch.float64)])
    z = float(fm.process.sigma(torch.tensor(t1, dtype=torch.float64))) * noise
    # solved on the model itself (ode_trajectory lands on x0_hat where its output leaves the
    # velocity undetermined at sigma = 0), at the times of equal log-SNR, then rescaled to FM
    if isinstance(model.process, FlowMatching):
        xs, _ = ode_trajectory(model, z, times, tol=tol, interpolate=True)
    else:
        src, scale = time_change(fm.process, model.process, times)
        if not bool(torch.isfinite(src).all() & torch.isfinite(scale).all()):
            raise ValueError(f"the flow-matching times {times.tolist()} have no finite image in {model.process!r}")
        xs, _ = ode_trajectory(model, z * float(scale[0]), src, tol=tol, interpolate=True)
        xs = xs / scale.to(xs.dtype).reshape(-1, *[1] * noise.ndim)
    chord = (xs[0] - xs[-1]) / length
    total = torch.zeros(noise.shape[0], dtype=torch.float64, device=noise.device)
    with torch.no_grad():
        for k in range(nodes):
            v = fm.predict(xs[k + 1], torch.tensor(float(ts[k]), dtype=noise.dtype)).velocity
            total = total + float(wts[k]) * (chord - v).flatten(1).to(torch.float64).square().sum(1)
    return total if per_sample else float(total.mean())


# ---------------------------------------------------------------------------------------
# Progressive distillation
# ---------------------------------------------------------------------------------------
def _ddim(process: Process, z: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """One DDIM (eta = 0) step z_t -> z_s given x0_hat: alpha_s x0 + (sigma_s/sigma_t)(z - alpha_t x0)."""
    a_t, s_t = expand_like(process.alpha(t), z), expand_like(process.sigma(t), z)
    a_s, s_s = expand_like(process.alpha(s), z), expand_like(process.sigma(s), z)
    return a_s * x0 + (s_s / s_t) * (z - a_t * x0)


def progressive_target(teacher: Model, z: Tensor, t, t_mid, t_next) -> Tensor:
    r"""Salimans & Ho's distillation target x~ (Algorithm 2): the x0 prediction at (z, t) with
    which ONE DDIM step t -> t_next lands where TWO teacher DDIM steps t -> t_mid -> t_next land,

        x~ = (z'' - (sigma_{t''}/sigma_t) z) / (alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t).

    ``t``, ``t_mid``, ``t_next``: times of the teacher's process, 0-dim or [batch], t > t_mid > t_next
    (t_next may be a zero-noise end, where x~ = z''/alpha_{t''}). No gradient flows to the teacher."""
    _check_model(teacher)
    p = teacher.process
    t, t_mid, t_next = (torch.as_tensor(v, dtype=z.dtype, device=z.device) for v in (t, t_mid, t_next))
    with torch.no_grad():
        z1 = _ddim(p, z, teacher.predict(z, t).x0, t, t_mid)
        z2 = _ddim(p, z1, teacher.predict(z1, t_mid).x0, t_mid, t_next)
    a_t, s_t = expand_like(p.alpha(t), z), expand_like(p.sigma(t), z)
    a_n, s_n = expand_like(p.alpha(t_next), z), expand_like(p.sigma(t_next), z)
    ratio = s_n / s_t
    return (z2 - ratio * z) / (a_n - ratio * a_t)


@dataclass
class DistilledStudent:
    """One round of progressive distillation: ``model`` sampled with DDIM on ``grid`` (``steps``
    steps): ``ug.sample(s.model, "DDIM", schedule=s.grid, shape=...)``; ``history``: loss per step."""

    model: Model
    steps: int
    grid: Tensor
    history: list = field(default_factory=list)
    train_seconds: float = 0.0


def progressive_distillation(teacher: Model, data, steps: int, rounds: int = 1, *, schedule=None,
                             init: str = "teacher", parametrization: str = "x0", net: nn.Module | None = None,
                             train_steps: int = 1000, batch_size: int = 256, lr: float = 5e-4,
                             generator: torch.Generator | None = None, lr_schedule: str = "cosine",
                             ema: float | None = None, grad_clip: float | None = 1.0,
                             log_every: int | None = None) -> list[DistilledStudent]:
    r"""Progressive distillation: ``rounds`` rounds from a ``steps``-step DDIM teacher, each halving
    the steps (Salimans & Ho 2022, Algorithm 2, with x0_hat read from any parametrization).

    Args:
        teacher: any :class:`~unigen.model.Model`.
        data: training data x: a tensor [N, *event] (minibatches with replacement) or a sampler
            ``data(n, generator)``.
        steps: the teacher's DDIM step count (divisible by 2^rounds); round r's student takes
            steps / 2^r steps on every other time of the previous grid.
        schedule: the teacher's grid (default: the process's default schedule over
            ``teacher.default_range()``, as ``ug.sample``), or a tensor of ``steps + 1`` times.
        init: ``"teacher"``: the student starts as a copy of the teacher's network (the paper; the
            student keeps the teacher's parametrization), ``"fresh"``: a new
            :class:`~unigen.networks.Preconditioned` ``net`` in ``parametrization`` ("x0" or "v",
            Salimans & Ho's stable choices; any name is accepted).
        train_steps, batch_size, lr, ...: per round, as :func:`unigen.train.fit`.

    Loss: max(alpha_t^2/sigma_t^2, 1) || x~ - x_hat_student(z_t, t) ||^2 (truncated-SNR weighting)
    with x~ from :func:`progressive_target`, t a uniformly drawn student grid time. Returns one
    :class:`DistilledStudent` per round.
    """
    _check_model(teacher)
    _check_int("steps", steps, 2)
    _check_int("rounds", rounds)
    _check_int("train_steps", train_steps)
    _check_int("batch_size", batch_size)
    if steps % (2**rounds):
        raise ValueError(f"steps={steps} must be divisible by 2**rounds = {2**rounds} (each round halves the steps)")
    if init not in ("teacher", "fresh"):
        raise ValueError(f"init must be 'teacher' or 'fresh', got {init!r}")
    gen = _gen(generator)
    draw, probe = resolve_data(data, gen)
    grid = model_grid(teacher, schedule if schedule is not None else None, steps)
    _check_determined_at(teacher, float(grid[0]), "progressive distillation's first grid time")
    if isinstance(schedule, Tensor) and grid.numel() != steps + 1:
        raise ValueError(f"a schedule tensor must hold steps + 1 = {steps + 1} times, got {grid.numel()}")
    if init == "teacher":
        student = _copied(teacher)
    else:
        student = _fresh_model(net, tuple(probe.shape[1:]), teacher.process, parametrization, _sigma_data(probe),
                               gen, probe.dtype)
    process = teacher.process
    out, current = [], teacher
    for _ in range(rounds):
        if current is not teacher:
            student = _copied(current)
        n_student = (grid.numel() - 1) // 2
        g = grid.to(probe.dtype)
        trainer = _Trainer([student.fn], train_steps, lr, lr_schedule, ema, grad_clip, "distillation loss")
        start = time.perf_counter()
        for k in range(train_steps):
            x = draw(batch_size)
            i = torch.randint(0, n_student, (batch_size,), generator=gen)
            t, t_mid, t_next = g[2 * i], g[2 * i + 1], g[2 * i + 2]
            eps = randn(x.shape, generator=gen, dtype=x.dtype)
            z = expand_like(process.alpha(t), x) * x + expand_like(process.sigma(t), x) * eps
            target = progressive_target(current, z, t, t_mid, t_next)
            snr = (process.alpha(t) / process.sigma(t)) ** 2
            weight = torch.clamp(snr, min=1.0)
            x_hat = student.predict(z, t).x0
            value = (weight * (x_hat - target).flatten(1).square().sum(1)).mean()
            trainer.step(value, k)
            _log(log_every, k, train_steps, trainer.history)
        trainer.finish()
        grid = grid[::2]
        out.append(DistilledStudent(student, n_student, grid.clone(), trainer.history, time.perf_counter() - start))
        current = student
    return out


# ---------------------------------------------------------------------------------------
# Distribution matching distillation
# ---------------------------------------------------------------------------------------
class OneStepGenerator:
    r"""x = G(eps): the x0 prediction of ``model`` at its start time T from z = sigma_T eps.

    ``gen(eps)`` maps standard normal noise [N, *event] to samples (one network call).
    ``gen.as_model()`` is the same map as a flow-matching x0 :class:`~unigen.model.Model` defined
    at t = 1 only, so ``ug.sample(gen.as_model(), "DDIM", steps=1, shape=...)`` (or ``noise=eps``)
    returns G(eps) with NFE 1 (a grid with more steps is refused: G is not a denoiser at t < 1).
    Attributes: ``model``, ``t_start``, ``history`` (generator loss per step), ``fake`` (the
    fake-score model at the end of training), ``train_seconds``.
    """

    def __init__(self, model: Model, t_start: float, event_shape=None):
        self.model = _check_model(model, "model")
        self.t_start = float(t_start)
        self.sigma_start = float(model.process.sigma(torch.tensor(self.t_start, dtype=torch.float64)))
        self.event_shape = tuple(event_shape) if event_shape is not None else None
        self.history: list = []
        self.fake: Model | None = None
        self.train_seconds = 0.0

    def __call__(self, noise: Tensor) -> Tensor:
        if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 2:
            raise ValueError("noise must be a floating tensor [N, *event] of standard normal draws")
        with torch.no_grad():
            return self.generate(noise)

    def generate(self, noise: Tensor) -> Tensor:
        """G(noise) without checks, differentiable (the training path)."""
        t = torch.tensor(self.t_start, dtype=noise.dtype, device=noise.device)
        return self.model.predict(self.sigma_start * noise, t).x0

    def parameters(self):
        return self.model.fn.parameters() if isinstance(self.model.fn, nn.Module) else iter(())

    def as_model(self) -> Model:
        """G as a flow-matching x0 Model at t = 1 (z = eps there), for ``ug.sample(..., "DDIM", steps=1)``."""
        return _GeneratorModel(self)

    def __repr__(self):
        return f"OneStepGenerator({self.model!r}, t_start={self.t_start:g})"


class _GeneratorModel(Model):
    """A :class:`OneStepGenerator` as a flow-matching x0 model valid at t = 1 only (t_range
    [1 - 1e-6, 1]); its sampling range is (1, 0), so one DDIM step lands on G(z)."""

    def __init__(self, gen: OneStepGenerator):
        super().__init__(self._fn, FlowMatching(), "x0", t_range=(1.0 - 1e-6, 1.0))
        self.generator = gen

    def _fn(self, z, t):
        with torch.no_grad():
            return self.generator.generate(z)

    def default_range(self) -> tuple[float, float]:
        return 1.0, 0.0


def fit_dmd(teacher: Model, event_shape=None, *, couplings: Couplings | None = None, n_regression: int = 1024,
            reg_weight: float = 0.25, kl_weight: float = 1.0, init: str = "teacher", net: nn.Module | None = None,
            fake_net: nn.Module | None = None, fake_parametrization: str = "x0", fake: Model | None = None,
            steps: int = 2000, fake_steps: int = 1, fake_warmup: int = 0, batch_size: int = 256, lr: float = 1e-3, fake_lr: float | None = None,
            noise_range: tuple = (0.02, 0.98), generator: torch.Generator | None = None, dtype=None,
            lr_schedule: str = "cosine", ema: float | None = None, grad_clip: float | None = 1.0,
            log_every: int | None = None) -> OneStepGenerator:
    r"""Distribution matching distillation (Yin et al. 2023): a one-step generator from ``teacher``.

    Args:
        teacher: the real score, any :class:`~unigen.model.Model` (read through its x0 prediction).
        event_shape: of a sample (default ``teacher.event_shape`` or ``couplings.event_shape``).
        couplings: the regression pairs (eps_ref, x_ref) (:func:`reflow_couplings`); default
            ``n_regression`` accurate teacher solves (none if ``reg_weight`` is 0).
        reg_weight: lambda_reg of the regression loss (the paper's 0.25); 0 = pure distribution matching.
        kl_weight: the weight of the distribution-matching gradient (1; 0 = the regression alone,
            an ablation: no fake score is trained then).
        init: ``"teacher"``: the generator and the fake score start as copies of the teacher's
            network (the paper), the generator read as x0_hat at the teacher's start time T;
            ``"fresh"``: new :class:`~unigen.networks.Preconditioned` networks (``net``,
            ``fake_net``; default MLP / TinyConvNet), the generator an x0 network at T.
        fake_parametrization: of a fresh fake-score network.
        fake: a fake-score :class:`~unigen.model.Model` to use (and train in place, if it has a
            network and ``fake_steps`` > 0) instead of the ``init`` choice.
        steps: generator updates; ``fake_steps``: fake-score updates (denoising score matching on
            fresh generator samples, the fake's natural ``unigen.loss``) before each of them;
            ``fake_warmup``: fake-score updates before the first generator update (useful when
            the fake score starts fresh rather than from the teacher).
        lr, fake_lr: Adam learning rates (fake_lr defaults to lr).
        noise_range: the KL is evaluated at t uniform in this fraction of the teacher's training
            time range (the paper's [0.02 T, 0.98 T]).

    Returns a :class:`OneStepGenerator` (``.history``: the total generator loss per step; ``.fake``).
    """
    _check_model(teacher)
    _check_determined_at(teacher, teacher.default_range()[0], "the generator's start time")
    for name, v in (("steps", steps), ("fake_steps", fake_steps), ("fake_warmup", fake_warmup),
                    ("batch_size", batch_size)):
        _check_int(name, v, 0 if name in ("fake_steps", "fake_warmup") else 1)
    if init not in ("teacher", "fresh"):
        raise ValueError(f"init must be 'teacher' or 'fresh', got {init!r}")
    for name, v in (("reg_weight", reg_weight), ("kl_weight", kl_weight)):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if reg_weight == 0 and kl_weight == 0:
        raise ValueError("reg_weight and kl_weight are both 0: nothing to train")
    try:
        f_lo, f_hi = (float(v) for v in noise_range)
    except (TypeError, ValueError):
        raise ValueError(f"noise_range must be a pair of fractions, got {noise_range!r}") from None
    if not 0.0 <= f_lo < f_hi <= 1.0:
        raise ValueError(f"noise_range must satisfy 0 <= lo < hi <= 1, got {noise_range!r}")
    gen = _gen(generator)
    dtype = dtype or torch.get_default_dtype()
    if event_shape is None:
        event_shape = couplings.event_shape if couplings is not None else getattr(teacher, "event_shape", None)
    if event_shape is None:
        raise ValueError("pass event_shape= (the teacher has no .event_shape)")
    event_shape = tuple(event_shape)
    if couplings is None and reg_weight > 0:
        couplings = reflow_couplings(teacher, n_regression, event_shape, generator=gen, dtype=dtype)
    if couplings is not None and couplings.event_shape != event_shape:
        raise ValueError(f"couplings have event shape {couplings.event_shape}, expected {event_shape}")
    process = teacher.process
    t_start = teacher.default_range()[0]
    fake_given = fake
    if fake_given is not None:
        _check_model(fake_given, "fake")
    if init == "teacher":
        g_model = _copied(teacher)
        fake = fake_given if fake_given is not None else _copied(teacher)
    else:
        scale = _sigma_data(couplings.data) if couplings is not None else 1.0
        g_model = _fresh_model(net, event_shape, process, "x0", scale, gen, dtype)
        fake = fake_given if fake_given is not None else _fresh_model(
            fake_net, event_shape, process, fake_parametrization, scale, gen, dtype)
    result = OneStepGenerator(g_model, t_start, event_shape)
    lo, hi = default_t_range(process)
    lo, hi = max(lo, teacher.t_range[0]), min(hi, teacher.t_range[1])
    t_lo, t_hi = lo + f_lo * (hi - lo), lo + f_hi * (hi - lo)
    g_train = _Trainer([g_model.fn], steps, lr, lr_schedule, ema, grad_clip, "DMD generator loss")
    fake_updates = fake_steps if kl_weight > 0 else 0
    f_train = None
    if fake_updates or (kl_weight > 0 and fake_warmup):
        if not isinstance(fake.fn, nn.Module):
            raise ValueError("the fake score has no network to train; pass fake_steps=0 and fake_warmup=0 to keep it fixed")
        f_train = _Trainer([fake.fn], fake_warmup + steps * fake_updates, fake_lr or lr, lr_schedule, None,
                           grad_clip, "DMD fake-score loss")
    weighting = NATURAL_WEIGHTING.get(fake.parametrization, fake.parametrization)
    shape = (batch_size,) + event_shape
    start = time.perf_counter()
    fk = 0

    def fake_update():
        # the fake score follows the generator's current distribution (denoising score matching)
        nonlocal fk
        with torch.no_grad():
            x_fake = result.generate(randn(shape, generator=gen, dtype=dtype))
        f_train.step(denoising_loss(fake, x_fake, weighting=weighting, generator=gen), fk)
        fk += 1

    for _ in range(fake_warmup if f_train is not None else 0):
        fake_update()
    for k in range(steps):
        for _ in range(fake_updates):
            fake_update()
        # the generator: the KL gradient (mu_fake - mu_real) D / ||x - mu_real||_1 at noised samples
        value = torch.zeros((), dtype=dtype)
        if kl_weight > 0:
            x = result.generate(randn(shape, generator=gen, dtype=dtype))
            t = _uniform_times(batch_size, t_lo, t_hi, gen, dtype)
            n = randn(shape, generator=gen, dtype=dtype)
            with torch.no_grad():
                xd = x.detach()
                z = expand_like(process.alpha(t), xd) * xd + expand_like(process.sigma(t), xd) * n
                mu_real = teacher.predict(z, t).x0
                mu_fake = fake.predict(z, t).x0
                norm = (xd - mu_real).flatten(1).abs().mean(1).clamp_min(1e-8)
                grad = (mu_fake - mu_real) / expand_like(norm, xd)
            # 0.5 ||x - sg(x - grad)||^2 has gradient `grad` with respect to x
            value = value + kl_weight * 0.5 * (x - (xd - grad)).flatten(1).square().sum(1).mean()
        if couplings is not None and reg_weight > 0:
            idx = torch.randint(0, len(couplings), (batch_size,), generator=gen)
            pred = result.generate(couplings.noise[idx].to(dtype))
            value = value + reg_weight * (pred - couplings.data[idx].to(dtype)).flatten(1).square().sum(1).mean()
        g_train.step(value, k)
        _log(log_every, k, steps, g_train.history, "generator loss")
    g_train.finish()
    if f_train is not None:
        f_train.finish()
    result.history = g_train.history
    result.fake = fake
    result.train_seconds = time.perf_counter() - start
    return result
