r"""Normalizing flows, discrete and continuous, as bijectors.

A :class:`Bijector` maps data x to a latent y (the "normalizing" direction) and reports the
log-determinant of its Jacobian (the change of variables; docs/theory.md, section 11):

    forward(x) -> (y, log|det dy/dx|),        inverse(y) -> (x, log|det dx/dy|),

both [batch]. A :class:`Flow` composes bijectors f = f_K o ... o f_1 and, by the change of
variables,

    log p_X(x) = log p_Z(f(x)) + sum_k log|det df_k/dx_{k-1}|.

Discrete layers (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow):

* :class:`AffineCoupling`: y_a = x_a, y_b = x_b * exp(s(x_a)) + t(x_a), s = s_max tanh(.);
  log|det| = sum s. Its conditioner ends in a zero-initialised layer, so a new coupling is
  exactly the identity.
* :class:`ActNorm`: y = (x + b) * exp(log_s) per channel, initialised from the first batch so
  that batch comes out zero-mean unit-variance; log|det| = (H W) sum log_s.
* :class:`InvertibleLinear`: y = W x over channels (Glow's 1x1 convolution), with
  W = P L (U + diag(sign(s) exp(log|s|))); log|det| = (H W) sum log|s|.

Continuous (Chen et al. 2018; Song et al. 2021): :class:`ContinuousFlow` is the
probability-flow ODE dz/dt = u(z, t) of any unigen :class:`~unigen.model.Model`, run from the
data time t0 to the noise time T. Along the ODE d/dt log|det dz_t/dx| = tr(du/dz) = div u, so

    forward:  log|det dz_T/dx| = +int_{t0}^{T} div u(z_t, t) dt   (= LikelihoodInfo.delta_logp),
    inverse:  log|det dx/dz_T| = -int_{t0}^{T} div u(z_t, t) dt,

and log p_{t0}(x) = log p_T(z_T) + log|det dz_T/dx|, the instantaneous change of variables
that :func:`unigen.likelihood.log_likelihood` computes. The forward direction *is* a call to
``log_likelihood`` (with a zero prior, reading z_T and delta_logp from its info); the inverse
integrates the same augmented field (``likelihood.AugmentedODE``) with the same torchdiffeq
call and landing options, only over [T, t0]; there is no second integrator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .likelihood import DIVERGENCES, PROBES, AugmentedODE, likelihood_range, log_likelihood, trainable_parameters
from .model import Model
from .noise import randn
from .solvers.adaptive import landing_options

__all__ = ["ActNorm", "AffineCoupling", "Bijector", "ContinuousFlow", "Flow", "InvertibleLinear", "StandardNormal"]


def _check_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _check_input(x, name: str, features: int | None, ndims: Sequence[int], who: str) -> None:
    """Validate x [batch, features, *spatial] for a layer acting on ``features`` channels."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{who}: {name} must be a floating tensor, got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    if x.ndim not in ndims:
        shapes = " or ".join({2: "[batch, features]", 4: "[batch, channels, H, W]"}.get(n, f"{n}-D") for n in ndims)
        raise ValueError(f"{who}: {name} must have shape {shapes}, got {tuple(x.shape)}")
    if features is not None and x.shape[1] != features:
        raise ValueError(f"{who}: {name} has {x.shape[1]} features/channels in dim 1, expected {features} (shape {tuple(x.shape)})")


class Bijector(nn.Module):
    """Protocol of an invertible map with a tractable Jacobian determinant.

    Subclasses implement ``forward(x) -> (y, logdet)`` with logdet = log|det dy/dx| [batch] and
    ``inverse(y) -> (x, logdet)`` with logdet = log|det dx/dy| [batch] (= minus the forward one
    at the corresponding point).
    """

    def forward(self, x: Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor):  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# Coupling
# ---------------------------------------------------------------------------------------
class AffineCoupling(Bijector):
    r"""RealNVP affine coupling (Dinh et al. 2017):

        y_a = x_a,    y_b = x_b * exp(s(x_a)) + t(x_a),    s = s_max * tanh(h_s(x_a)),

    log|det dy/dx| = sum s(x_a). Inverse: x_b = (y_b - t(y_a)) * exp(-s(y_a)).

    Args:
        num_features: D for vectors [batch, D]; C for images [batch, C, H, W] (``conv=True``:
            the split is over channels and the conditioner is a small conv net).
        hidden: width of the conditioner.
        mask: "alternate" (features with index % 2 == parity are kept, x_a), "half" (the first
            d // 2 are kept, or the complement with parity=1), or a bool tensor [num_features], True
            marking the kept (conditioning) features. Both parts must be non-empty.
        parity: 0 or 1, swaps the roles of the two parts for the named masks.
        conv: treat inputs as images [batch, C, H, W].
        s_max: bound on |s| (tanh bounding keeps exp(s) in [e^-s_max, e^s_max]).
    """

    def __init__(self, num_features: int, hidden: int = 64, mask="alternate", parity: int = 0, conv: bool = False, s_max: float = 2.0):
        super().__init__()
        d = _check_int("num_features", num_features)
        _check_int("hidden", hidden)
        if parity not in (0, 1) or isinstance(parity, bool):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        if not (isinstance(s_max, (int, float)) and math.isfinite(s_max) and s_max > 0):
            raise ValueError(f"s_max must be a positive finite number, got {s_max!r}")
        if isinstance(mask, str):
            idx = torch.arange(d)
            if mask == "alternate":
                keep = idx % 2 == parity
            elif mask == "half":
                keep = (idx < d // 2) if parity == 0 else (idx >= d // 2)
            else:
                raise ValueError(f"unknown mask {mask!r}; valid names are 'alternate', 'half' (or a bool tensor)")
        elif isinstance(mask, Tensor):
            if mask.dtype != torch.bool or mask.shape != (d,):
                raise ValueError(f"mask must be a bool tensor of shape [{d}], got {mask.dtype} {tuple(mask.shape)}")
            keep = mask.clone().cpu()
        else:
            raise TypeError(f"mask must be 'alternate', 'half' or a bool tensor, got {type(mask).__name__}")
        n_a = int(keep.sum())
        if n_a == 0 or n_a == d:
            raise ValueError(
                f"mask keeps {n_a} of {num_features} features: a coupling needs both a non-empty kept part and a "
                "non-empty transformed part (num_features >= 2)"
            )
        self.num_features, self.conv, self.s_max = d, bool(conv), float(s_max)
        idx_a, idx_b = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("perm_inv", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        n_b = d - n_a
        if conv:
            self.net = nn.Sequential(
                nn.Conv2d(n_a, hidden, 3, padding=1), nn.SiLU(),
                nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                nn.Conv2d(hidden, 2 * n_b, 3, padding=1),
            )  # fmt: skip
        else:
            self.net = nn.Sequential(nn.Linear(n_a, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * n_b))
        nn.init.zeros_(self.net[-1].weight)  # zero last layer: s = t = 0, a new coupling is the identity
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, x_a: Tensor):
        h = self.net(x_a)
        raw_s, t = h.chunk(2, dim=1)
        return self.s_max * torch.tanh(raw_s / self.s_max), t

    def _check(self, x, name):
        _check_input(x, name, self.num_features, (4,) if self.conv else (2,), "AffineCoupling")

    def forward(self, x: Tensor):
        self._check(x, "x")
        x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._st(x_a)
        y_b = x_b * torch.exp(s) + t
        y = torch.cat([x_a, y_b], 1)[:, self.perm_inv]
        return y, s.reshape(x.shape[0], -1).sum(-1)

    def inverse(self, y: Tensor):
        self._check(y, "y")
        y_a, y_b = y[:, self.idx_a], y[:, self.idx_b]
        s, t = self._st(y_a)
        x_b = (y_b - t) * torch.exp(-s)
        x = torch.cat([y_a, x_b], 1)[:, self.perm_inv]
        return x, -s.reshape(y.shape[0], -1).sum(-1)


# ---------------------------------------------------------------------------------------
# ActNorm
# ---------------------------------------------------------------------------------------
def _channel_view(p: Tensor, x: Tensor) -> Tensor:
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _spatial(x: Tensor) -> int:
    return int(math.prod(x.shape[2:]))


class ActNorm(Bijector):
    r"""Glow's activation normalisation (Kingma & Dhariwal 2018): per channel c,

        y = (x + b_c) * exp(log_s_c),    log|det dy/dx| = (H W) sum_c log_s_c,

    (H W = 1 for vectors [batch, C]). Data-dependent initialisation: on the first forward call
    b = -mean and log_s = -log(std) of that batch per channel (biased std, over batch and
    spatial positions), so that batch comes out zero-mean unit-variance; afterwards b, log_s
    are ordinary parameters. ``initialized`` is a buffer, saved with the state dict.
    """

    def __init__(self, num_features: int, eps: float = 1e-12):
        super().__init__()
        c = _check_int("num_features", num_features)
        self.num_features, self.eps = c, float(eps)
        self.bias = nn.Parameter(torch.zeros(c))
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, x, name):
        _check_input(x, name, self.num_features, (2, 4), "ActNorm")

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set b, log_s so that ``x`` maps to zero mean and unit variance per channel."""
        xc = x.transpose(0, 1).reshape(self.num_features, -1)
        if xc.shape[1] < 2:
            raise ValueError("ActNorm: the initialisation batch needs at least 2 values per channel (batch * H * W >= 2)")
        mean, std = xc.mean(1), xc.std(1, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(self.eps)))
        self.initialized.fill_(True)

    def forward(self, x: Tensor):
        self._check(x, "x")
        if not bool(self.initialized):
            self.initialize(x)
        y = (x + _channel_view(self.bias, x)) * _channel_view(torch.exp(self.log_scale), x)
        logdet = (_spatial(x) * self.log_scale.sum()).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor):
        self._check(y, "y")
        if not bool(self.initialized):
            raise RuntimeError("ActNorm is not initialised: call forward on a data batch first (data-dependent initialisation)")
        x = y * _channel_view(torch.exp(-self.log_scale), y) - _channel_view(self.bias, y)
        logdet = (-_spatial(y) * self.log_scale.sum()).expand(y.shape[0])
        return x, logdet


# ---------------------------------------------------------------------------------------
# Invertible linear (1x1 convolution)
# ---------------------------------------------------------------------------------------
class InvertibleLinear(Bijector):
    r"""Glow's invertible 1x1 convolution in LU form (Kingma & Dhariwal 2018, section 3.2):

        W = P L (U + diag(sign(s) exp(log|s|))),    y[:, i, ...] = sum_j W_ij x[:, j, ...],

    P a fixed permutation, L unit lower triangular, U strictly upper triangular. On vectors
    [batch, C] it is a dense linear map. log|det dy/dx| = (H W) sum log|s|. Initialised at a
    random rotation (QR of a Gaussian matrix, drawn with ``generator``).
    """

    def __init__(self, num_features: int, generator: torch.Generator | None = None):
        super().__init__()
        c = _check_int("num_features", num_features)
        self.num_features = c
        dtype = torch.get_default_dtype()
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        p, low, up = torch.linalg.lu(q)
        s = torch.diagonal(up)
        self.register_buffer("P", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c, dtype=torch.bool), -1), persistent=False)
        self.L = nn.Parameter(torch.tril(low, -1).to(dtype))
        self.U = nn.Parameter(torch.triu(up, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(s.abs()).to(dtype))

    def _factors(self):
        eye = torch.eye(self.num_features, dtype=self.L.dtype, device=self.L.device)
        low = self.L * self.lower_mask + eye
        up = self.U * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return low, up

    def weight(self) -> Tensor:
        """W = P L (U + diag(sign(s) exp(log|s|)))."""
        low, up = self._factors()
        return self.P @ low @ up

    def _check(self, x, name):
        _check_input(x, name, self.num_features, (2, 4), "InvertibleLinear")

    def forward(self, x: Tensor):
        self._check(x, "x")
        y = torch.einsum("ij,bj...->bi...", self.weight(), x)
        return y, (_spatial(x) * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor):
        self._check(y, "y")
        low, up = self._factors()
        c = self.num_features
        flat = y.transpose(0, 1).reshape(c, -1)  # [C, batch * HW]
        v = self.P.T @ flat  # W^{-1} = U^{-1} L^{-1} P^T, by two triangular solves
        v = torch.linalg.solve_triangular(low, v, upper=False, unitriangular=True)
        v = torch.linalg.solve_triangular(up, v, upper=True)
        x = v.reshape((c, y.shape[0]) + tuple(y.shape[2:])).transpose(0, 1)
        return x, (-_spatial(y) * self.log_s.sum()).expand(y.shape[0])


# ---------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------
class StandardNormal:
    """N(0, I) on events of shape ``event_shape``: ``log_prob(z)`` [batch], ``sample(n, generator=)``."""

    def __init__(self, event_shape: Sequence[int]):
        self.event_shape = tuple(int(s) for s in event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * flat.shape[1] * math.log(2 * math.pi) - 0.5 * flat.square().sum(-1)

    def sample(self, n: int, generator=None, dtype=None, device=None) -> Tensor:
        return randn((n,) + self.event_shape, generator=generator, dtype=dtype or torch.get_default_dtype(), device=device)


class Flow(Bijector):
    r"""f = f_K o ... o f_1 (data -> latent), itself a bijector, with a base density p_Z:

        log p(x) = log p_Z(f(x)) + sum_k log|det df_k/dx_{k-1}|,    x = f^{-1}(z), z ~ p_Z.

    Args:
        bijectors: a non-empty sequence of :class:`Bijector` (applied in order by ``forward``).
        base: any object with ``log_prob(z) -> [batch]`` and ``sample(n, generator=)``;
            default N(0, I) (needs ``event_shape`` for sampling).
        event_shape: shape of one event, e.g. (2,) or (C, H, W); checked on input if given.
    """

    def __init__(self, bijectors: Sequence[Bijector], base=None, event_shape: Sequence[int] | None = None):
        super().__init__()
        if isinstance(bijectors, Bijector):
            bijectors = [bijectors]
        bijectors = list(bijectors)
        if not bijectors:
            raise ValueError("bijectors must be a non-empty sequence of Bijector")
        for i, b in enumerate(bijectors):
            if not isinstance(b, Bijector):
                raise TypeError(f"bijectors[{i}] must be a unigen.flows.Bijector, got {type(b).__name__}")
        self.event_shape = None if event_shape is None else tuple(int(s) for s in event_shape)
        if base is None:
            base = StandardNormal(self.event_shape) if self.event_shape is not None else None
        elif not (callable(getattr(base, "log_prob", None)) and callable(getattr(base, "sample", None))):
            raise TypeError(f"base must have log_prob(z) and sample(n, generator=), got {type(base).__name__}")
        self.bijectors = nn.ModuleList(bijectors)
        self.base = base

    def _check(self, x, name):
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(f"Flow: {name} must be a tensor [batch, *event], got {getattr(x, 'shape', type(x).__name__)}")
        if self.event_shape is not None and tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"Flow: {name} has event shape {tuple(x.shape[1:])}, expected {self.event_shape}")

    def forward(self, x: Tensor):
        self._check(x, "x")
        logdet = x.new_zeros(x.shape[0])
        for b in self.bijectors:
            x, ld = b(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor):
        self._check(y, "y")
        logdet = y.new_zeros(y.shape[0])
        for b in reversed(self.bijectors):
            y, ld = b.inverse(y)
            logdet = logdet + ld
        return y, logdet

    def _base(self, x: Tensor):
        return self.base if self.base is not None else StandardNormal(x.shape[1:])

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = log p_Z(f(x)) + log|det df/dx| [batch]."""
        z, logdet = self.forward(x)
        return self._base(z).log_prob(z) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """x = f^{-1}(z), z ~ p_Z ([n, *event])."""
        _check_int("n", n)
        if self.base is None:
            raise ValueError("Flow.sample with the default N(0, I) base needs event_shape= (e.g. Flow(layers, event_shape=(2,)))")
        z = self.base.sample(n, generator=generator)
        return self.inverse(z)[0]


# ---------------------------------------------------------------------------------------
# Continuous flow: the probability-flow ODE as a bijector
# ---------------------------------------------------------------------------------------
class ContinuousFlow(Bijector):
    r"""The probability-flow ODE dz/dt = u(z, t) of a unigen Model as a bijector from data (t0)
    to noise (T) (Chen et al. 2018, FFJORD; Song et al. 2021).

    ``forward(x) -> (z_T, log|det dz_T/dx|)`` with log|det dz_T/dx| = +int_{t0}^{T} div u dt,
    so log p_{t0}(x) = log p_T(z_T) + logdet (the instantaneous change of variables); computed
    by :func:`unigen.likelihood.log_likelihood` (zero prior, ``return_info=True``).
    ``inverse(z_T) -> (x, log|det dx/dz_T|)`` integrates the same augmented field (z, div u)
    from T back to t0 with the same torchdiffeq call, giving -int_{t0}^{T} div u dt.

    Args:
        model: any :class:`~unigen.model.Model`.
        t0, T: data and noise times; default as in ``log_likelihood``
            (:func:`unigen.likelihood.likelihood_range`).
        rtol, atol, method: torchdiffeq settings.
        divergence: "exact" or "hutchinson" (``n_probes`` Rademacher/Gaussian ``probe``s, drawn
            with the ``generator`` given to forward/inverse).
        grad: keep the graph (backpropagate through the solver).
    """

    def __init__(self, model: Model, t0: float | None = None, T: float | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher", method: str = "dopri5", grad: bool = False):  # fmt: skip
        super().__init__()
        if not isinstance(model, Model):
            raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; valid names are {', '.join(DIVERGENCES)}")
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; valid names are {', '.join(PROBES)}")
        _check_int("n_probes", n_probes)
        self.t0, self.T = likelihood_range(model, t0, T)
        self.model = model
        self.kw = {"rtol": rtol, "atol": atol, "method": method}
        self.divergence, self.n_probes, self.probe, self.grad = divergence, n_probes, probe, bool(grad)

    def _check(self, x, name):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
            raise ValueError(f"ContinuousFlow: {name} must be a floating tensor [batch, *event], got {getattr(x, 'shape', type(x).__name__)}")

    def forward(self, x: Tensor, generator: torch.Generator | None = None):
        """(z_T, +int_{t0}^{T} div u dt), through ``log_likelihood``."""
        self._check(x, "x")
        _, info = log_likelihood(
            self.model, x, t0=self.t0, T=self.T, prior=lambda z: z.new_zeros(z.shape[0]), return_info=True,
            divergence=self.divergence, n_probes=self.n_probes, probe=self.probe, generator=generator,
            grad=self.grad, **self.kw,
        )  # fmt: skip
        return info.z_T, info.delta_logp

    def inverse(self, z: Tensor, generator: torch.Generator | None = None):
        """(x at t0, int_{T}^{t0} div u dt = -int_{t0}^{T} div u dt): likelihood's augmented
        field and torchdiffeq call, over the reversed span."""
        from torchdiffeq import odeint


        self._check(z, "z")
        probes = None
        if self.divergence == "hutchinson":
            g = randn((self.n_probes,) + tuple(z.shape), generator=generator, dtype=z.dtype, device=z.device)
            probes = g if self.probe == "gaussian" else torch.sign(g)
        func = AugmentedODE(self.model, probes, trainable_parameters(self.model) if self.grad else [])
        ts = torch.tensor([self.T, self.t0], dtype=z.dtype, device=z.device)
        delta_shape = (z.shape[0],) if probes is None else (self.n_probes, z.shape[0])
        state = (z, torch.zeros(delta_shape, dtype=z.dtype, device=z.device))
        opts = landing_options(self.kw["method"], ts, None, self.model.process)
        with torch.set_grad_enabled(self.grad):
            x, delta = (s[-1] for s in odeint(func, state, ts, options=opts, **self.kw))
        return x, delta if probes is None else delta.mean(0)
