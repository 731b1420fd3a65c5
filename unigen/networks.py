r"""Toy network bodies and EDM-style preconditioning: a function f(z, c) seen as a prediction.

* :class:`MLP` (vectors) and :class:`TinyConvNet` (small images), both functions of
  (input, c) where c is a per-sample scalar "network time", embedded with Fourier features
  (:class:`FourierEmbedding`); ``NETWORKS`` maps their ``config["kind"]`` to the class, so a
  checkpoint can rebuild them;
* :class:`Preconditioned`: EDM's input/skip/output scaling (Karras et al. 2022, Table 1)
  generalised to every parametrization, and the clipped log-SNR as the network time, so one
  network body serves every process and output type;
* :class:`TwoTimeMLP` (vectors, f(z, c_t, c_s)) and :class:`PreconditionedFlowMap`: the same
  for the two-time networks of :class:`~unigen.flow_map.FlowMap` (start time t, target time s).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .parametrization import PathCoefficients, check_parametrization, input_convention, output_coefficients

__all__ = ["FourierEmbedding", "MLP", "TinyConvNet", "TwoTimeMLP", "NETWORKS", "Preconditioned", "PreconditionedFlowMap",
           "FLOW_MAP_TIME_INPUTS", "snr_time"]


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


class TwoTimeMLP(nn.Module):
    """f(z, c_t, c_s) for z of shape [B, *event] (flattened) and per-sample scalars c_t, c_s:
    the two-time body of a flow map (t the start, s the target time).

    As :class:`MLP`, but every hidden layer sees the embeddings of c_t, of c_s and of the gap
    c_t - c_s (each :class:`FourierEmbedding`, or the scalar alone with
    ``time_embedding="linear"``): MeanFlow (Geng et al. 2025) found conditioning on the gap
    as well as on one end to train better than the two ends alone.
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
        self.config = {"kind": "TwoTimeMLP", "dim": list(event), "hidden": hidden, "depth": depth,
                       "time_embedding": time_embedding, "n_freq": n_freq}
        d = math.prod(event)
        self.embed = FourierEmbedding(n_freq if time_embedding == "fourier" else 0)
        e = 3 * self.embed.out_dim
        self.layers = nn.ModuleList([nn.Linear((d if i == 0 else hidden) + e, hidden) for i in range(depth)])
        self.out = nn.Linear(hidden, d)
        self.act = nn.SiLU()
        _kaiming(self.layers)

    def forward(self, z: Tensor, c_t: Tensor, c_s: Tensor) -> Tensor:
        b = z.shape[0]
        ct, cs = _per_sample(c_t, b, z), _per_sample(c_s, b, z)
        emb = torch.cat([self.embed(ct), self.embed(cs), self.embed(ct - cs)], 1)
        h = z.reshape(b, -1)
        for layer in self.layers:
            h = self.act(layer(torch.cat([h, emb], 1)))
        return self.out(h).reshape(z.shape)


NETWORKS = {"MLP": MLP, "TinyConvNet": TinyConvNet, "TwoTimeMLP": TwoTimeMLP}


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
        if input_convention(self.parametrization) == "ve":  # Model passes (y = z/alpha, s = sigma/alpha)
            s = _per_sample(t, b, z)
            alpha, sigma = torch.ones_like(s), s
            lam = -2.0 * torch.log(s)
            a, bb = output_coefficients(self.parametrization, alpha, sigma)
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


# ---------------------------------------------------------------------------------------
# flow maps: two-time preconditioning
# ---------------------------------------------------------------------------------------
def snr_time(process, t: Tensor) -> Tensor:
    r"""The bounded network time c(t) = (alpha_t - sigma_t)/(alpha_t + sigma_t) = tanh(lam/4)
    (lam the log-SNR log alpha^2/sigma^2), in [-1, 1] on every process.

    For flow matching c = 1 - 2t exactly; for EDM (1 - sigma)/(1 + sigma). Unlike the clipped
    log-SNR it is smooth with a bounded derivative at both ends of flow matching and EDM, which
    matters to the losses that differentiate the network in time (sCM, MeanFlow, the Eulerian
    and Lagrangian self-distillation: a JVP with tangent 1 in t multiplies the network's time
    derivative by dc/dt, and d lam/dt is infinite at zero noise)."""
    a, s = process.alpha(t), process.sigma(t)
    return (a - s) / (a + s)


FLOW_MAP_TIME_INPUTS = ("snr", "logsnr")


class PreconditionedFlowMap(nn.Module):
    r"""A two-time body ``net(z, c_t, c_s)`` seen as the output of a
    :class:`~unigen.flow_map.FlowMap` in ``parametrization`` for ``process``: ``fn(z, t, s)``.

    With s_d the data scale and n_t^2 = alpha_t^2 s_d^2 + sigma_t^2 (the marginal scale at t for
    data x ~ N(0, s_d^2)), the network sees c_in z = z / n_t and the network times c(t), c(s)
    (``time_input="snr"``: :func:`snr_time`, bounded and smooth; ``"logsnr"``: the clipped
    log-SNR lam/lam_clip of :class:`Preconditioned`). The output is a skip term plus a scaled
    network output, chosen so that F has unit-scale input and target:

    ==================  ============================================  =========================
    parametrization     skip                                          c_out
    ==================  ============================================  =========================
    average_velocity    the velocity's c_skip(t) z (best linear       std of v - c_skip z at t
                        predictor of v at s = t)
    x0                  alpha_t s_d^2 / n_t^2 z (E[x|z] for Gaussian   sigma_t s_d / n_t
                        data)
    endpoint            (n_s / n_t) z (the exact map for Gaussian      n_s
                        data)
    displacement        (n_s / n_t - 1) z                              n_s (c(s) - c(t)): zero at s = t
    ==================  ============================================  =========================

    All coefficients are smooth functions of t and s (forward-mode differentiable), and the
    average_velocity and x0 rows equal :class:`Preconditioned`'s at s = t.
    """

    def __init__(self, net: nn.Module, process, parametrization: str = "average_velocity", sigma_data: float = 1.0,
                 time_input: str = "snr", lam_clip: float = 20.0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module f(z, c_t, c_s), got {type(net).__name__}")
        if parametrization not in ("average_velocity", "x0", "endpoint", "displacement"):
            raise ValueError(f"unknown flow-map parametrization {parametrization!r}; valid names are "
                             "average_velocity, x0, endpoint, displacement")
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
        if time_input not in FLOW_MAP_TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; valid values are {', '.join(FLOW_MAP_TIME_INPUTS)}")
        self.net = net
        self.process = process
        self.parametrization = parametrization
        self.sigma_data, self.time_input, self.lam_clip = float(sigma_data), time_input, float(lam_clip)
        es = getattr(net, "event_shape", None)
        if es is not None:
            self.event_shape = tuple(es)

    def config(self) -> dict:
        return {"parametrization": self.parametrization, "sigma_data": self.sigma_data,
                "time_input": self.time_input, "lam_clip": self.lam_clip}

    def _net_time(self, t: Tensor) -> Tensor:
        if self.time_input == "snr":
            return snr_time(self.process, t)
        lam = self.process.log_snr(t)
        return torch.clamp(torch.nan_to_num(lam, nan=0.0), -self.lam_clip, self.lam_clip) / self.lam_clip

    def forward(self, z: Tensor, t: Tensor, s: Tensor) -> Tensor:
        b = z.shape[0]
        t, s = _per_sample(t, b, z), _per_sample(s, b, z)
        shape = (b,) + (1,) * (z.ndim - 1)
        sd, sd2 = self.sigma_data, self.sigma_data**2
        p = self.process
        at, st = p.alpha(t), p.sigma(t)
        nt = torch.sqrt(at * at * sd2 + st * st)
        if self.parametrization == "average_velocity":
            dat, dst = p.d_alpha(t), p.d_sigma(t)
            skip = (dat * at * sd2 + dst * st) / (nt * nt)
            c_out = torch.abs(dat * st - dst * at) * sd / nt
        elif self.parametrization == "x0":
            skip = at * sd2 / (nt * nt)
            c_out = st * sd / nt
        else:
            a_s, s_s = p.alpha(s), p.sigma(s)
            ns = torch.sqrt(a_s * a_s * sd2 + s_s * s_s)
            if self.parametrization == "displacement":  # out = 0 at s = t: X_{t->t} = id exactly
                skip = ns / nt - 1.0
                c_out = ns * (self._net_time(s) - self._net_time(t)) if self.time_input == "snr" else ns * (s - t)
            else:
                skip, c_out = ns / nt, ns
        p0 = next(self.net.parameters(), None)
        dt = p0.dtype if p0 is not None else z.dtype
        f = self.net((z / nt.reshape(shape)).to(dt), self._net_time(t).to(dt), self._net_time(s).to(dt)).to(z.dtype)
        return skip.reshape(shape) * z + c_out.reshape(shape) * f
