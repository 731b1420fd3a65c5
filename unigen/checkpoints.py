"""Checkpoints: :func:`save` and :func:`load` a :class:`~unigen.trained_model.TrainedModel` as
plain data (process, parametrization, preconditioning, network constructor) plus the network
weights, in one ``torch.save`` file read back with ``weights_only=True``.

The process is stored as :meth:`unigen.process.Process.to_config` and rebuilt with
:func:`unigen.process.from_config` (the process registry); checkpoints written before the
registry have the same ``{"class": name, **fields}`` layout and load unchanged."""

from __future__ import annotations

import torch
from torch import nn

from .model import Model
from .networks import NETWORKS, Preconditioned
from .process import from_config
from .trained_model import TrainedModel

__all__ = ["save", "load"]


_FORMAT = "unigen.train/1"


def _process_record(process) -> dict:
    """The ``"process"`` entry of a checkpoint: :meth:`Process.to_config`'s
    ``{"class": name, **constructor arguments}`` (the layout this module wrote before the process
    registry, field for field), or ``{"class": None, "repr": ...}`` for a process that has no
    config (e.g. :class:`~unigen.process.Affine`, which holds Python callables)."""
    try:
        return process.to_config()
    except TypeError:
        return {"class": None, "repr": repr(process)}


def _process_from_record(cfg: dict):
    """Rebuild the process of a checkpoint's ``"process"`` entry with
    :func:`unigen.process.from_config`; a ValueError that says to pass ``process=`` to
    :func:`load` when it cannot be rebuilt."""
    if cfg.get("class") is None:
        raise ValueError(f"the saved process {cfg.get('repr')} cannot be rebuilt from plain data; pass process= to load()")
    try:
        return from_config(cfg)
    except ValueError as e:
        raise ValueError(f"the saved process cannot be rebuilt ({e}); pass process= to load()") from None


def _body_of(model) -> Preconditioned:
    body = getattr(model, "net", None) if isinstance(model, Model) else None
    if body is None and isinstance(model, Model):
        body = model.fn
    if not isinstance(body, Preconditioned):
        raise TypeError("save() needs a model returned by fit() or load() (a Model around a Preconditioned net)")
    return body


def save(model: TrainedModel, path) -> None:
    """Write the network weights and a plain-data config (process, parametrization,
    preconditioning, network constructor) with ``torch.save``; :func:`load` reads it with
    ``weights_only=True``. A process without a config (``Affine``, which holds callables) is
    stored by its repr only and must be passed to :func:`load`; so must a custom network body.
    A registered process defined in another module loads once that module is imported."""
    body = _body_of(model)
    net_cfg = getattr(body.net, "config", None)
    if net_cfg is not None and net_cfg.get("kind") not in NETWORKS:
        net_cfg = None
    p = next(body.net.parameters(), None)
    payload = {
        "format": _FORMAT,
        "process": _process_record(model.process),
        "precond": body.config(),
        "net": net_cfg,
        "dtype": str(p.dtype).replace("torch.", "") if p is not None else None,
        "event_shape": list(getattr(body, "event_shape", ()) or ()),
        "history": [float(v) for v in getattr(model, "history", [])],
        "state_dict": body.net.state_dict(),
    }
    torch.save(payload, path)


def load(path, process=None, net: nn.Module | None = None, map_location="cpu") -> TrainedModel:
    """Rebuild a :class:`TrainedModel` written by :func:`save` (``torch.load(weights_only=True)``).

    ``process`` / ``net`` override the saved ones (required for a process without a config,
    such as ``Affine``, or a custom network body; ``net`` must have the saved architecture).
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a unigen.train checkpoint (format {_FORMAT})")
    if process is None:
        process = _process_from_record(payload["process"])
    if net is None:
        cfg = payload["net"]
        if cfg is None:
            raise ValueError("the checkpoint holds a custom network body; pass net= (same architecture) to load()")
        kwargs = {k: v for k, v in cfg.items() if k != "kind"}
        if cfg["kind"] == "MLP":
            kwargs["dim"] = tuple(kwargs["dim"])
        net = NETWORKS[cfg["kind"]](**kwargs)
    if payload.get("dtype"):
        net = net.to(getattr(torch, payload["dtype"]))
    net.load_state_dict(payload["state_dict"])
    pc = payload["precond"]
    body = Preconditioned(net, process, pc["parametrization"], sigma_data=pc["sigma_data"], skip=pc["skip"], lam_clip=pc["lam_clip"])
    if payload.get("event_shape"):
        body.event_shape = tuple(payload["event_shape"])
    body.eval()
    return TrainedModel(body, process, pc["parametrization"], history=payload.get("history"))
