r"""Training two-time models: :func:`fit_flow_map` fits a :class:`~unigen.flow_map.FlowMap` with one
of the objectives of :mod:`unigen.flow_map_losses` (consistency distillation / training, sCM,
MeanFlow, the self-distillation losses, shortcut models, flow map matching).

The conventions are those of :func:`unigen.train.fit`: data as a tensor, a dataset name or a
sampler; one ``torch.Generator`` seeds the network's initialisation, the minibatches, the times
and the noise, so a run is reproducible; Adam with a cosine learning rate, gradient clipping,
an optional EMA of the weights for the returned model, and a FloatingPointError naming the step
when the loss stops being finite.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn

from .flow_map import FlowMap, check_flow_map_parametrization
from .flow_map_losses import get_objective
from .model import Model
from .networks import PreconditionedFlowMap, TwoTimeMLP
from .process import Process
from .train import prepare_training

__all__ = ["fit_flow_map"]

_DEFAULT = object()


def fit_flow_map(
    data,
    process: Process,
    objective,
    *,
    teacher: Model | None = None,
    parametrization: str = "average_velocity",
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    net: nn.Module | None = None,
    ema: float | None = None,
    target_ema=_DEFAULT,
    grad_clip: float | None = 1.0,
    lr_schedule: str = "cosine",
    sigma_data: float | None = None,
    time_input: str = "snr",
    options: dict | None = None,
    log_every: int | None = None,
    callback: Callable | None = None,
) -> FlowMap:
    r"""Train a two-time network on ``data`` for ``process`` with a flow-map ``objective``.

    Args:
        data: a tensor [N, *event], a name from ``DATASETS``, or a sampler ``data(n, generator)``.
        process: the :class:`~unigen.process.Process` whose PF-ODE the map follows.
        objective: a name of ``unigen.flow_map_losses.FLOW_MAP_OBJECTIVES`` (or a record of it).
        teacher: a one-time :class:`~unigen.model.Model` (distillation objectives; optional for
            the self-distillation ones, where it replaces the map's own tangent and the
            flow-matching target). A teacher of another process is moved by ``Model.to``.
        parametrization: the flow map's output (``average_velocity``, ``x0``, ``displacement``,
            ``endpoint``); the objective must support it.
        steps, batch_size, lr: Adam steps, minibatch size and peak learning rate.
        generator: seeds the initialisation, minibatches, times and noise (default seed 0).
        net: the two-time body ``net(z, c_t, c_s)`` (default :class:`TwoTimeMLP` on the event
            shape); wrapped in :class:`PreconditionedFlowMap`.
        ema: an EMA decay of the weights for the returned map (e.g. 0.999).
        target_ema: decay of the target network of objectives that use one (default: the
            objective's ``target_ema``: None, the stop-gradient of the online weights, for
            all; consistency distillation's paper value is 0.95).
        grad_clip: max gradient norm (None: no clipping).
        lr_schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"``.
        sigma_data: data scale for the preconditioning (default: the data's std).
        time_input: the network time of :class:`PreconditionedFlowMap` (``"snr"`` or ``"logsnr"``).
        options: keyword options of the objective's loss function (e.g. ``{"n_steps": 40}``).
        log_every: print the mean loss every this many steps.
        callback: ``callback(step, loss)`` after every step.

    Returns:
        a :class:`~unigen.flow_map.FlowMap` with ``.history`` (loss per step),
        ``.train_seconds`` and ``.objective`` (the name).

    Raises:
        ValueError: an unknown objective, a teacher missing (or given to an objective that takes
            none), a parametrization the objective cannot train, bad data or arguments.
        FloatingPointError: "loss became nan at step k" when the loss is not finite.
    """
    if not isinstance(process, Process):
        raise TypeError(f"process must be a unigen Process, got {type(process).__name__}")
    obj = get_objective(objective)
    check_flow_map_parametrization(parametrization)
    if teacher is not None and not isinstance(teacher, Model):
        raise TypeError(f"teacher must be a unigen Model, got {type(teacher).__name__}")
    obj.check(parametrization, teacher)
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid values are cosine, constant")
    if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
        raise ValueError(f"ema must be a decay in (0, 1), got {ema!r}")
    if target_ema is _DEFAULT:
        target_ema = obj.target_ema
    if target_ema is not None and not (isinstance(target_ema, (int, float)) and 0.0 <= target_ema < 1.0):
        raise ValueError(f"target_ema must be a decay in [0, 1) or None, got {target_ema!r}")
    options = dict(options or {})
    if teacher is not None and teacher.process is not process:
        teacher = teacher.to(process)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    draw, probe, net, sigma_data = prepare_training(data, gen, net, TwoTimeMLP, "net(z, c_t, c_s)", sigma_data)
    event_shape = tuple(probe.shape[1:])

    body = PreconditionedFlowMap(net, process, parametrization, sigma_data=sigma_data, time_input=time_input)
    flow_map = FlowMap(body, process, parametrization)
    params = [p for p in body.parameters() if p.requires_grad]
    if not params:
        raise ValueError("net has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)))
             if lr_schedule == "cosine" else None)
    ema_body = copy.deepcopy(body).requires_grad_(False) if ema is not None else None
    target_body = copy.deepcopy(body).requires_grad_(False) if target_ema else None
    target = FlowMap(target_body, process, parametrization) if target_body is not None else None

    history: list[float] = []
    start = time.perf_counter()
    body.train()
    for step in range(steps):
        xb = draw(batch_size)
        if tuple(xb.shape[1:]) != event_shape:
            raise ValueError(f"data batch at step {step} has event shape {tuple(xb.shape[1:])}, expected {event_shape}")
        value = obj.loss(flow_map, xb, generator=gen, teacher=teacher, target=target, step=step, steps=steps, **options)
        lv = float(value.detach())
        if not math.isfinite(lv):
            what = "nan" if math.isnan(lv) else "inf"
            raise FloatingPointError(
                f"loss became {what} at step {step} (steps count from 0; objective {obj.name}, lr={lr:g}); "
                "lower lr, clip gradients or check the data and the network"
            )
        opt.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            for avg, decay in ((ema_body, ema), (target_body, target_ema)):
                if avg is not None:
                    for pe, p in zip(avg.parameters(), body.parameters()):
                        pe.lerp_(p, 1.0 - decay)
        history.append(lv)
        if callback is not None:
            callback(step, lv)
        if log_every and (step % log_every == 0 or step == steps - 1):
            recent = history[-log_every:]
            print(f"step {step:6d}  loss {sum(recent) / len(recent):.5f}", flush=True)
    seconds = time.perf_counter() - start
    final = ema_body if ema_body is not None else body
    final.eval()
    out = FlowMap(final, process, parametrization)
    out.history, out.train_seconds, out.objective = history, seconds, obj.name
    return out
