"""TrainedModel: the :class:`~unigen.model.Model` around a :class:`~unigen.networks.Preconditioned`
network that :func:`unigen.train.fit` returns and :mod:`unigen.checkpoints` saves and loads,
with its training record (loss history, training time)."""

from __future__ import annotations

from .model import Model
from .networks import Preconditioned

__all__ = ["TrainedModel"]


class TrainedModel(Model):
    """A :class:`~unigen.model.Model` returned by :func:`unigen.train.fit` / :func:`unigen.checkpoints.load`.

    Attributes: ``net`` (the :class:`Preconditioned` module, the EMA copy if EMA was used),
    ``history`` (the training loss at every step), ``event_shape``, ``train_seconds``.
    """

    def __init__(self, net: Preconditioned, process, parametrization, history=None, train_seconds=None):
        super().__init__(net, process, parametrization)
        self.net = net
        self.event_shape = getattr(net, "event_shape", None)
        self.history = list(history or [])
        self.train_seconds = train_seconds
