r"""Training: :func:`fit` a small network to data for any process and parametrization, and
:func:`fit_cached` (load a saved model, or fit and save one).

Everything here runs on a CPU in seconds to minutes and exists to close the loop
"train -> sample -> measure" on problems where the answer is visible. :func:`fit` minimises
:func:`unigen.loss` with Adam (cosine learning rate, optional EMA; stops with the step number
when the loss becomes non-finite) on a :class:`~unigen.networks.Preconditioned` network body and
returns a :class:`~unigen.trained_model.TrainedModel`.

The pieces around it live in their own modules: toy data sets in :mod:`unigen.toy_data`,
networks and preconditioning in :mod:`unigen.networks`, ``save`` / ``load`` in
:mod:`unigen.checkpoints`, ``sliced_wasserstein`` in :mod:`unigen.metrics`. The names users
reach as ``unigen.train.<name>`` (the data sets, ``MLP``, ``TinyConvNet``, ``save``, ``load``,
``sliced_wasserstein``) are re-exported here.
"""

from __future__ import annotations

import copy
import math
import pathlib
import time
from typing import Callable

import torch
from torch import Tensor, nn

from . import process as _proc
from .checkpoints import load, save  # moved to unigen.checkpoints; kept here for existing imports (and fit_cached)
from .losses import loss
from .metrics import sliced_wasserstein  # moved to unigen.metrics; kept here for existing imports
from .model import Model
from .networks import MLP, Preconditioned, TinyConvNet  # MLP, TinyConvNet: moved to unigen.networks; kept here for existing imports
from .parametrization import check_parametrization
from .time_samplers import get_t_sampler
from .toy_data import (  # moved to unigen.toy_data; kept here for existing imports
    DATASETS,
    checkerboard,
    digits,
    eight_gaussians,
    swiss_roll,
    two_moons,
)
from .trained_model import TrainedModel
from .weightings import get_weighting

__all__ = [
    "fit",
    "fit_cached",
    "NATURAL_WEIGHTING",
    # moved to unigen.toy_data; kept here for existing imports
    "eight_gaussians",
    "two_moons",
    "checkerboard",
    "swiss_roll",
    "digits",
    "DATASETS",
    # moved to unigen.networks; kept here for existing imports
    "MLP",
    "TinyConvNet",
    # moved to unigen.checkpoints; kept here for existing imports
    "save",
    "load",
    # moved to unigen.metrics; kept here for existing imports
    "sliced_wasserstein",
]


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
NATURAL_WEIGHTING = {
    "eps": "eps",
    "x0": "x0",
    "v": "v",
    "velocity": "velocity",
    "score": "eps",  # Song et al.'s lambda(t) = sigma^2: plain DSM diverges as sigma -> 0
    "denoiser": "edm",
}


def resolve_data(data, generator):
    """(draw(batch) -> Tensor, probe batch) for a tensor, a dataset name or a sampler."""
    if isinstance(data, str):
        if data not in DATASETS:
            raise ValueError(f"unknown dataset {data!r}; valid names are {', '.join(DATASETS)}")
        data = DATASETS[data]
    if isinstance(data, Tensor):
        if not data.is_floating_point():
            raise TypeError(f"data must be a floating tensor [N, *event], got dtype {data.dtype}")
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape [N, *event] with N >= 1 (a batch of vectors is [N, dim]), got {tuple(data.shape)}")
        bad = ~torch.isfinite(data)
        if bool(bad.any()):
            first = int(torch.nonzero(bad.flatten(1).any(1))[0])
            raise ValueError(f"data contains {int(bad.sum())} non-finite values (first in sample {first})")
        n = data.shape[0]

        def draw(b):
            return data[torch.randint(0, n, (b,), generator=generator, device=generator.device).to(data.device)]

        return draw, data[: min(n, 4096)]
    if callable(data):
        def draw(b):
            x = data(b, generator)
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] != b:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"a data sampler data(n, generator) must return a floating tensor [n, *event], got {got} for n={b}")
            return x

        probe = draw(4096)
        if not bool(torch.isfinite(probe).all()):
            raise ValueError("the data sampler returned non-finite values")
        return draw, probe
    raise TypeError(f"data must be a tensor [N, *event], a dataset name or a sampler data(n, generator), got {type(data).__name__}")


def _default_net(event_shape):
    if len(event_shape) == 1:
        return MLP(event_shape[0])
    if len(event_shape) == 3 and event_shape[1] == event_shape[2]:
        return TinyConvNet(channels=event_shape[0], size=event_shape[1])
    raise ValueError(f"no default network for event shape {event_shape}; pass net= (an nn.Module f(z, c))")


def _seed_from(generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def prepare_training(data, gen: torch.Generator, net, default_net, signature: str, sigma_data):
    """What every trainer does before its loop: the minibatch sampler and a probe batch
    (:func:`resolve_data`), the network (``default_net(event_shape)`` built under a seed drawn
    from ``gen`` when ``net`` is None, else checked to be a Module whose ``event_shape``, if it
    declares one, is the data's) and the data scale (the probe's std unless given). Returns
    (draw, probe, net, sigma_data)."""
    draw, probe = resolve_data(data, gen)
    event_shape = tuple(probe.shape[1:])
    if net is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(gen))
            net = default_net(event_shape).to(dtype=probe.dtype, device=probe.device)
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module {signature}, got {type(net).__name__}")
    net_event = getattr(net, "event_shape", None)
    if net_event is not None and tuple(net_event) != event_shape:
        raise ValueError(f"data samples have shape {event_shape} but the net expects event shape {tuple(net_event)}")
    if sigma_data is None:
        sigma_data = float(probe.std()) if probe.numel() > 1 else 1.0
        sigma_data = sigma_data if math.isfinite(sigma_data) and sigma_data > 0 else 1.0
    return draw, probe, net, sigma_data


def fit(
    data,
    process,
    parametrization: str = "eps",
    weighting=None,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    net: nn.Module | None = None,
    log_every: int | None = None,
    *,
    t_sampler=None,
    lr_schedule: str = "cosine",
    ema: float | None = None,
    grad_clip: float | None = 1.0,
    sigma_data: float | None = None,
    skip: bool = True,
    callback: Callable | None = None,
) -> TrainedModel:
    r"""Train a network on ``data`` for ``process`` in ``parametrization`` with :func:`unigen.loss`.

    Args:
        data: a tensor [N, *event] (minibatches drawn with replacement), a name from
            ``DATASETS``, or a sampler ``data(n, generator) -> [n, *event]`` (fresh data each step).
        process: a :class:`~unigen.process.Process`.
        parametrization: the network's output type (``eps x0 v score velocity denoiser``).
        weighting: a :func:`unigen.loss` weighting; default the parametrization's natural loss
            (``NATURAL_WEIGHTING``: the plain MSE of its own output, except score -> "eps",
            i.e. Song et al.'s sigma^2-weighted DSM, and denoiser -> "edm").
        steps, batch_size, lr: Adam steps, minibatch size and peak learning rate.
        generator: torch.Generator for minibatches, times, noise and the network's
            initialisation (default: seed 0), so a run is reproducible.
        net: the network body f(z, c) (default :class:`MLP` for vectors, :class:`TinyConvNet`
            for [C, S, S] images); it is wrapped in :class:`Preconditioned`.
        log_every: print the mean loss every this many steps.
        t_sampler: default ``"edm"`` for the EDM process, ``"uniform"`` otherwise.
        lr_schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"``.
        ema: an EMA decay (e.g. 0.999); the returned model then uses the averaged weights.
        grad_clip: max gradient norm (None: no clipping).
        sigma_data: data scale s_d for the preconditioning (default: the data's std).
        skip: use the c_skip z term of the preconditioning.
        callback: ``callback(step, loss)`` after every step.

    Returns:
        a :class:`TrainedModel` (a ``unigen.Model``) with ``.history`` (loss per step).

    Raises:
        FloatingPointError: "loss became nan at step k" (k counts from 0) when the loss is not
            finite; lower ``lr`` or check the data.
        ValueError / TypeError: bad data, shapes or arguments.
    """
    if not isinstance(process, _proc.Process):
        raise TypeError(f"process must be a unigen Process, got {type(process).__name__}")
    check_parametrization(parametrization)
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid values are cosine, constant")
    if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
        raise ValueError(f"ema must be a decay in (0, 1), got {ema!r}")
    if weighting is None:
        weighting = NATURAL_WEIGHTING.get(parametrization, parametrization)  # else its own plain MSE
    weighting = get_weighting(weighting)
    if t_sampler is None:
        t_sampler = "edm" if isinstance(process, _proc.EDM) else "uniform"
    t_sampler = get_t_sampler(t_sampler)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    draw, probe, net, sigma_data = prepare_training(data, gen, net, _default_net, "f(z, c)", sigma_data)
    event_shape = tuple(probe.shape[1:])

    body = Preconditioned(net, process, parametrization, sigma_data=sigma_data, skip=skip)
    body.event_shape = event_shape
    train_model = Model(body, process, parametrization)
    params = [p for p in body.parameters() if p.requires_grad]
    if not params:
        raise ValueError("net has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    if lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)))
    else:
        sched = None
    ema_body = copy.deepcopy(body).requires_grad_(False) if ema is not None else None

    history: list[float] = []
    start = time.perf_counter()
    body.train()
    for step in range(steps):
        xb = draw(batch_size)
        if tuple(xb.shape[1:]) != event_shape:
            raise ValueError(f"data batch at step {step} has event shape {tuple(xb.shape[1:])}, expected {event_shape}")
        value = loss(train_model, xb, weighting=weighting, t_sampler=t_sampler, generator=gen)
        lv = float(value.detach())
        if not math.isfinite(lv):
            what = "nan" if math.isnan(lv) else "inf"
            raise FloatingPointError(
                f"loss became {what} at step {step} (steps count from 0; lr={lr:g}); lower lr, clip gradients "
                "or check the data and the network"
            )
        opt.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        if ema_body is not None:
            with torch.no_grad():
                for pe, p in zip(ema_body.parameters(), body.parameters()):
                    pe.lerp_(p, 1.0 - ema)
        history.append(lv)
        if callback is not None:
            callback(step, lv)
        if log_every and (step % log_every == 0 or step == steps - 1):
            recent = history[-log_every:]
            print(f"step {step:6d}  loss {sum(recent) / len(recent):.5f}", flush=True)
    seconds = time.perf_counter() - start
    final = ema_body if ema_body is not None else body
    final.eval()
    return TrainedModel(final, process, parametrization, history=history, train_seconds=seconds)


def fit_cached(path, data, process, parametrization, *, log: Callable | None = None, **fit_kwargs) -> TrainedModel:
    """The model saved at ``path`` if it exists (:func:`load`), else :func:`fit` with these
    arguments, saved there (:func:`save`; parent folders created). ``log(message)`` hears
    "loaded PATH", or "training ..." and "saved PATH"."""
    say = log or (lambda msg: None)
    path = pathlib.Path(path).expanduser()
    if path.exists():
        model = load(path)
        say(f"loaded {path}")
        return model
    steps = fit_kwargs.get("steps", "default")
    say(f"training a small {parametrization} model on {data if isinstance(data, str) else 'data'} ({steps} steps) ...")
    model = fit(data, process, parametrization, **fit_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, path)
    say(f"saved {path}")
    return model
