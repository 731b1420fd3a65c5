r"""A small, dependency-free trainer for toy data: datasets, networks, ``fit``, save/load, metrics.

Everything here runs on a CPU in seconds to minutes and exists to close the loop
"train -> sample -> measure" on problems where the answer is visible:

* data: ``eight_gaussians``, ``two_moons``, ``checkerboard``, ``swiss_roll`` (2-D, roughly unit
  scale, any number of samples) and ``digits`` (scikit-learn's bundled 8x8 digits in [-1, 1],
  shape [N, 1, 8, 8]; needs ``pip install scikit-learn``, the ``unigen[data]`` extra);
* networks: :class:`MLP` (vectors) and :class:`TinyConvNet` (small images), both functions of
  (input, c) where c is a per-sample scalar "network time", embedded with Fourier features;
* :class:`Preconditioned`: EDM's input/skip/output scaling (Karras et al. 2022, Table 1)
  generalised to every parametrization, and the clipped log-SNR as the network time, so one
  network body serves every process and output type;
* :func:`fit` (Adam, cosine learning rate, optional EMA; stops with the step number when the
  loss becomes non-finite), :func:`save` / :func:`load`, :func:`sliced_wasserstein`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Callable

import torch
from torch import Tensor, nn

from . import losses as _losses
from . import process as _proc
from .model import Model
from .parametrization import PathCoefficients, check_parametrization

__all__ = [
    "eight_gaussians",
    "two_moons",
    "checkerboard",
    "swiss_roll",
    "digits",
    "DATASETS",
    "FourierEmbedding",
    "MLP",
    "TinyConvNet",
    "Preconditioned",
    "TrainedModel",
    "fit",
    "save",
    "load",
    "fit_cached",
    "sliced_wasserstein",
    "NATURAL_WEIGHTING",
]


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _rand(shape, generator, dtype=torch.float64):
    return torch.rand(shape, generator=generator, dtype=dtype)


def _randn(shape, generator, dtype=torch.float64):
    return torch.randn(shape, generator=generator, dtype=dtype)


def _out(x: Tensor, dtype) -> Tensor:
    return x.to(dtype or torch.get_default_dtype())


def eight_gaussians(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: eight equal Gaussians (std 0.1) centred on the circle of radius sqrt(2)
    (per-coordinate variance about 1)."""
    _check_n(n)
    k = torch.randint(0, 8, (n,), generator=generator)
    ang = k.to(torch.float64) * (math.pi / 4)
    centres = math.sqrt(2.0) * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return _out(centres + 0.1 * _randn((n, 2), generator), dtype)


def two_moons(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: two interleaved half circles (noise 0.05), centred and scaled by 1/0.7."""
    _check_n(n)
    m = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    th = math.pi * _rand(n, generator)
    x = torch.where(m == 0, torch.cos(th), 1.0 - torch.cos(th))
    y = torch.where(m == 0, torch.sin(th), 0.5 - torch.sin(th))
    pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.05 * _randn((n, 2), generator)
    return _out(pts / 0.7, dtype)


def checkerboard(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: uniform on the 8 dark cells of a 4x4 checkerboard over [-2, 2]^2."""
    _check_n(n)
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # dark cells: row + col even
    u = _rand((n, 2), generator)
    pts = torch.stack([col.to(torch.float64) + u[:, 0], row.to(torch.float64) + u[:, 1]], 1) - 2.0
    return _out(pts, dtype)


def swiss_roll(n: int, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """[n, 2]: the 2-D Swiss roll r = theta, theta in [1.5 pi, 4.5 pi], scaled by 1/6.8
    (per-coordinate std about 1), noise 0.05."""
    _check_n(n)
    th = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, generator))
    pts = torch.stack([th * torch.cos(th), th * torch.sin(th)], 1) / 6.8
    return _out(pts + 0.05 * _randn((n, 2), generator), dtype)


@functools.lru_cache(maxsize=1)
def _digits_table() -> Tensor:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "digits() needs scikit-learn (its bundled 8x8 digits): pip install 'unigen[data]' "
            "(or pip install scikit-learn)"
        ) from e
    images = torch.as_tensor(load_digits().images, dtype=torch.float64)  # [1797, 8, 8], values 0..16
    return (images / 8.0 - 1.0).unsqueeze(1)


def digits(n: int | None = None, generator: torch.Generator | None = None, dtype=None) -> Tensor:
    """scikit-learn's 1797 handwritten 8x8 digits scaled from 0..16 to [-1, 1]: [N, 1, 8, 8].

    With ``n`` given, n images drawn with replacement (so it is a sampler like the 2-D sets).
    Requires scikit-learn (``pip install 'unigen[data]'``), imported on first use.
    """
    table = _digits_table()
    if n is None:
        return _out(table.clone(), dtype)
    _check_n(n)
    idx = torch.randint(0, table.shape[0], (n,), generator=generator)
    return _out(table[idx], dtype)


DATASETS: dict[str, Callable] = {
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "digits": digits,
}


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------
class FourierEmbedding(nn.Module):
    """c -> [c, sin(w_k c), cos(w_k c)], w_k geometric in [w_min, w_max] (fixed, not learned)."""

    def __init__(self, n_freq: int = 16, w_min: float = 0.5, w_max: float = 40.0):
        super().__init__()
        if isinstance(n_freq, bool) or not isinstance(n_freq, int) or n_freq < 0:
            raise ValueError(f"n_freq must be a non-negative integer, got {n_freq!r}")
        w = torch.exp(torch.linspace(math.log(w_min), math.log(w_max), n_freq)) if n_freq else torch.zeros(0)
        self.register_buffer("freqs", w.to(torch.get_default_dtype()), persistent=False)
        self.out_dim = 1 + 2 * n_freq

    def forward(self, c: Tensor) -> Tensor:
        c = c.reshape(-1, 1).to(self.freqs.dtype if self.freqs.numel() else c.dtype)
        arg = c * self.freqs
        return torch.cat([c, torch.sin(arg), torch.cos(arg)], dim=1)


def _per_sample(c: Tensor, b: int, like: Tensor) -> Tensor:
    c = torch.as_tensor(c, dtype=like.dtype, device=like.device)
    return c.expand(b) if c.ndim == 0 else c.reshape(b)


def _kaiming(layers):
    """He-normal weights (gain sqrt 2), zero biases. PyTorch's default init (variance 1/(3 fan_in))
    starts a SiLU network in its nearly linear regime, where a target with no linear part
    (the v-target of VP on unit-scale data, or the residual after the c_skip term) gets almost
    no gradient: measured on eight_gaussians, training then stalls at the Gaussian fit."""
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """f(z, c) for z of shape [B, *event] (flattened) and a per-sample scalar c.

    Each of ``depth`` hidden layers (width ``hidden``, SiLU) sees the previous layer and the
    time embedding. ``time_embedding="fourier"`` uses :class:`FourierEmbedding` of c,
    ``"linear"`` feeds c alone.
    """

    def __init__(self, dim, hidden: int = 128, depth: int = 3, time_embedding: str = "fourier", n_freq: int = 16):
        super().__init__()
        event = (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)
        if not event or any(d < 1 for d in event):
            raise ValueError(f"dim must be a positive integer or event shape, got {dim!r}")
        for name, v in (("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if time_embedding not in ("fourier", "linear"):
            raise ValueError(f"unknown time_embedding {time_embedding!r}; valid values are fourier, linear")
        self.event_shape = event
        self.config = {"kind": "MLP", "dim": list(event), "hidden": hidden, "depth": depth,
                       "time_embedding": time_embedding, "n_freq": n_freq}
        d = math.prod(event)
        self.embed = FourierEmbedding(n_freq if time_embedding == "fourier" else 0)
        e = self.embed.out_dim
        self.layers = nn.ModuleList([nn.Linear((d if i == 0 else hidden) + e, hidden) for i in range(depth)])
        self.out = nn.Linear(hidden, d)
        self.act = nn.SiLU()
        _kaiming(self.layers)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        b = z.shape[0]
        emb = self.embed(_per_sample(c, b, z))
        h = z.reshape(b, -1)
        for layer in self.layers:
            h = self.act(layer(torch.cat([h, emb], 1)))
        return self.out(h).reshape(z.shape)


class TinyConvNet(nn.Module):
    """f(z, c) for small images [B, channels, size, size]: a 3x3 conv stem, ``blocks`` residual
    conv blocks with the time embedding added per channel, and a 3x3 conv head."""

    def __init__(self, channels: int = 1, size: int = 8, width: int = 32, blocks: int = 3, n_freq: int = 16):
        super().__init__()
        for name, v in (("channels", channels), ("size", size), ("width", width), ("blocks", blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.event_shape = (channels, size, size)
        self.config = {"kind": "TinyConvNet", "channels": channels, "size": size, "width": width,
                       "blocks": blocks, "n_freq": n_freq}
        self.embed = FourierEmbedding(n_freq)
        self.temb = nn.Sequential(nn.Linear(self.embed.out_dim, width), nn.SiLU(), nn.Linear(width, width * blocks))
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.convs1 = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks)])
        self.convs2 = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks)])
        self.head = nn.Conv2d(width, channels, 3, padding=1)
        self.act = nn.SiLU()
        self.width, self.blocks = width, blocks
        _kaiming([self.stem, *self.convs1, *self.convs2, self.temb[0], self.temb[2]])

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        b = z.shape[0]
        temb = self.temb(self.embed(_per_sample(c, b, z))).reshape(b, self.blocks, self.width, 1, 1)
        h = self.stem(z)
        for k in range(self.blocks):
            r = self.convs1[k](self.act(h) + temb[:, k])
            h = h + self.convs2[k](self.act(r))
        return self.head(self.act(h))


_NETS = {"MLP": MLP, "TinyConvNet": TinyConvNet}


class Preconditioned(nn.Module):
    r"""A network body seen as a prediction of type ``parametrization`` for ``process``.

    EDM's preconditioning (Karras et al. 2022) generalised to any output M = a x + b eps: for
    data of scale s_d (x ~ N(0, s_d^2) as a model of the data), with n^2 = alpha^2 s_d^2 + sigma^2,

        out = c_skip z + c_out F(c_in z, lam / lam_clip),
        c_in = 1/n,  c_skip = (a alpha s_d^2 + b sigma)/n^2  (the best linear predictor E[M|z]),
        c_out = |a sigma - b alpha| s_d / n  (the std of M - c_skip z),

    so F's input and target have unit scale at every t. For the EDM denoiser (a, b) = (1, 0)
    on VE inputs this is exactly EDM's c_skip = s_d^2/(s^2+s_d^2), c_out = s s_d/sqrt(s^2+s_d^2).
    The network time is the log-SNR lam, clipped to [-lam_clip, lam_clip] (finite at both ends
    of every process) and divided by lam_clip. Called by :class:`~unigen.model.Model` as
    ``fn(z, t)`` (or ``fn(y, s)`` with the VE level s for ``parametrization="denoiser"``). The
    input is cast to the network's dtype and the output back.
    """

    def __init__(self, net: nn.Module, process, parametrization: str = "eps", sigma_data: float = 1.0,
                 skip: bool = True, lam_clip: float = 20.0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module f(z, c), got {type(net).__name__}")
        self.net = net
        self.process = process
        self.parametrization = check_parametrization(parametrization)
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
        self.sigma_data, self.skip, self.lam_clip = float(sigma_data), bool(skip), float(lam_clip)
        es = getattr(net, "event_shape", None)
        if es is not None:
            self.event_shape = tuple(es)

    def config(self) -> dict:
        return {"parametrization": self.parametrization, "sigma_data": self.sigma_data, "skip": self.skip,
                "lam_clip": self.lam_clip}

    def _net_dtype(self, z):
        p = next(self.net.parameters(), None)
        return p.dtype if p is not None else z.dtype

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        b = z.shape[0]
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        sd2 = self.sigma_data**2
        if self.parametrization == "denoiser":  # Model passes (y = z/alpha, s = sigma/alpha)
            s = _per_sample(t, b, z)
            alpha, sigma = torch.ones_like(s), s
            lam = -2.0 * torch.log(s)
            a, bb = 1.0, 0.0
        else:
            tt = _per_sample(t, b, z)
            c = PathCoefficients(self.process, tt, tt)
            alpha, sigma = c.alpha, c.sigma
            lam = self.process.log_snr(tt)
            a, bb = c.ab(self.parametrization)
        n2 = alpha * alpha * sd2 + sigma * sigma
        shape = (b,) + (1,) * (z.ndim - 1)
        c_in = torch.rsqrt(n2).reshape(shape)
        if self.skip:
            c_out = torch.abs(a * sigma - bb * alpha) * self.sigma_data * torch.rsqrt(n2)
        else:
            c_out = torch.sqrt(a * a * sd2 + bb * bb + torch.zeros_like(alpha))
        c_out = c_out.reshape(shape)
        lam_in = torch.clamp(torch.nan_to_num(lam, nan=0.0), -self.lam_clip, self.lam_clip) / self.lam_clip
        dt = self._net_dtype(z)
        f = self.net((c_in * z).to(dt), lam_in.to(dt)).to(z.dtype)
        out = c_out * f
        if self.skip:
            c_skip = ((a * alpha * sd2 + bb * sigma) / n2).reshape(shape)
            out = out + c_skip * z
        return out


class TrainedModel(Model):
    """A :class:`~unigen.model.Model` returned by :func:`fit` / :func:`load`.

    Attributes: ``net`` (the :class:`Preconditioned` module, the EMA copy if EMA was used),
    ``history`` (the training loss at every step), ``event_shape``, ``train_seconds``.
    """

    def __init__(self, net: Preconditioned, process, parametrization, history=None, train_seconds=None):
        super().__init__(net, process, parametrization)
        self.net = net
        self.event_shape = getattr(net, "event_shape", None)
        self.history = list(history or [])
        self.train_seconds = train_seconds


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


def _resolve_data(data, generator):
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
        weighting = NATURAL_WEIGHTING[parametrization]
    weighting = _losses.get_weighting(weighting)
    if t_sampler is None:
        t_sampler = "edm" if isinstance(process, _proc.EDM) else "uniform"
    t_sampler = _losses.get_t_sampler(t_sampler)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    draw, probe = _resolve_data(data, gen)
    event_shape = tuple(probe.shape[1:])
    if net is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(gen))
            net = _default_net(event_shape).to(dtype=probe.dtype, device=probe.device)
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module f(z, c), got {type(net).__name__}")
    net_event = getattr(net, "event_shape", None)
    if net_event is not None and tuple(net_event) != event_shape:
        raise ValueError(f"data samples have shape {event_shape} but the net expects event shape {tuple(net_event)}")
    if sigma_data is None:
        sigma_data = float(probe.std()) if probe.numel() > 1 else 1.0
        sigma_data = sigma_data if math.isfinite(sigma_data) and sigma_data > 0 else 1.0

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
        value = _losses.loss(train_model, xb, weighting=weighting, t_sampler=t_sampler, generator=gen)
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


# ---------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------
_FORMAT = "unigen.train/1"
_PROCESS_FIELDS = {
    "VPLinear": ("beta_min", "beta_max"),
    "SubVP": ("beta_min", "beta_max"),
    "VPCosine": ("s",),
    "VE": ("sigma_min", "sigma_max"),
    "EDM": ("sigma_min", "sigma_max", "sigma_data"),
    "FlowMatching": (),
    "Cosine": (),
}


def _process_config(process) -> dict:
    name = type(process).__name__
    if name in _PROCESS_FIELDS and type(process) is getattr(_proc, name):
        return {"class": name, **{f: float(getattr(process, f)) for f in _PROCESS_FIELDS[name]}}
    if type(process) is _proc.VPDiscrete:
        return {"class": "VPDiscrete", "betas": process.betas.tolist(),
                "rescale_zero_terminal_snr": process.rescale_zero_terminal_snr}
    return {"class": None, "repr": repr(process)}


def _build_process(cfg: dict):
    name = cfg.get("class")
    if name is None:
        raise ValueError(f"the saved process {cfg.get('repr')} cannot be rebuilt from plain data; pass process= to load()")
    if name == "VPDiscrete":
        return _proc.VPDiscrete(torch.tensor(cfg["betas"], dtype=torch.float64), cfg["rescale_zero_terminal_snr"])
    return getattr(_proc, name)(**{f: cfg[f] for f in _PROCESS_FIELDS[name]})


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
    ``weights_only=True``. A process that is not a built-in (e.g. ``Affine``) is stored by name
    only and must be passed to :func:`load`; so must a custom network body."""
    body = _body_of(model)
    net_cfg = getattr(body.net, "config", None)
    if net_cfg is not None and net_cfg.get("kind") not in _NETS:
        net_cfg = None
    p = next(body.net.parameters(), None)
    payload = {
        "format": _FORMAT,
        "process": _process_config(model.process),
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

    ``process`` / ``net`` override the saved ones (required for a non-built-in process or a
    custom network body; ``net`` must have the saved architecture).
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a unigen.train checkpoint (format {_FORMAT})")
    if process is None:
        process = _build_process(payload["process"])
    if net is None:
        cfg = payload["net"]
        if cfg is None:
            raise ValueError("the checkpoint holds a custom network body; pass net= (same architecture) to load()")
        kwargs = {k: v for k, v in cfg.items() if k != "kind"}
        if cfg["kind"] == "MLP":
            kwargs["dim"] = tuple(kwargs["dim"])
        net = _NETS[cfg["kind"]](**kwargs)
    if payload.get("dtype"):
        net = net.to(getattr(torch, payload["dtype"]))
    net.load_state_dict(payload["state_dict"])
    pc = payload["precond"]
    body = Preconditioned(net, process, pc["parametrization"], sigma_data=pc["sigma_data"], skip=pc["skip"], lam_clip=pc["lam_clip"])
    if payload.get("event_shape"):
        body.event_shape = tuple(payload["event_shape"])
    body.eval()
    return TrainedModel(body, process, pc["parametrization"], history=payload.get("history"))


def fit_cached(path, data, process, parametrization, *, log: Callable | None = None, **fit_kwargs) -> TrainedModel:
    """The model saved at ``path`` if it exists (:func:`load`), else :func:`fit` with these
    arguments, saved there (:func:`save`; parent folders created). ``log(message)`` hears
    "loaded PATH", or "training ..." and "saved PATH"."""
    import pathlib

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


# ---------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------
def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    r"""Sliced Wasserstein-2 distance between two samples (flattened to vectors):

        SW_2(a, b) = ( E_theta W_2^2(theta^T a, theta^T b) )^{1/2},  theta uniform on the sphere,

    with the 1-D W_2 from sorted projections (equal sizes) or matched quantiles, and the
    expectation over ``n_projections`` random directions. For b = a + m it equals |m|/sqrt(D).
    Computed in float64.
    """
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, Tensor) or v.ndim < 2 or v.shape[0] < 1:
            raise ValueError(f"{name} must be a tensor [N, *event], got {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    a2, b2 = a.reshape(a.shape[0], -1).to(torch.float64), b.reshape(b.shape[0], -1).to(torch.float64)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"a and b must have the same event size, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    theta = torch.randn(a2.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(a2.device)
    pa, pb = (a2 @ theta).T, (b2 @ theta).T  # [P, N]
    qa, qb = pa.sort(dim=1).values, pb.sort(dim=1).values
    if qa.shape[1] != qb.shape[1]:
        k = max(qa.shape[1], qb.shape[1])
        levels = (torch.arange(k, dtype=torch.float64, device=a2.device) + 0.5) / k
        qa, qb = _quantiles(qa, levels), _quantiles(qb, levels)
    return float(((qa - qb) ** 2).mean().sqrt())


def _quantiles(q_sorted: Tensor, levels: Tensor) -> Tensor:
    """Linear interpolation of sorted rows [P, n] at levels u (the empirical point u n - 1/2)."""
    n = q_sorted.shape[1]
    pos = torch.clamp(levels * n - 0.5, 0.0, n - 1.0)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=n - 1)
    w = pos - lo.to(pos.dtype)
    return q_sorted[:, lo] * (1 - w) + q_sorted[:, hi] * w
