r"""Gaussian forward processes  z_t = alpha(t) x + sigma(t) eps.

Every process is a small value object that answers, for a tensor of times ``t``:

* ``alpha(t)``, ``sigma(t)`` and their time derivatives ``d_alpha``, ``d_sigma``;
* the full log-SNR  ``lam(t) = log(alpha^2 / sigma^2)`` (Kingma et al. 2021), strictly
  decreasing in t, and its inverse ``t_from_log_snr``;
* the forward SDE  ``dz = f_t z dt + g_t dW`` with ``f = d log(alpha)/dt`` and
  ``g^2 = d sigma^2/dt - 2 f sigma^2 = -sigma^2 d lam/dt`` (docs/theory.md, section 1).

Time runs from data (``t_min``) to noise (``t_max``). All methods are elementwise, keep
the dtype/device of ``t`` and never synchronise the host, so they may be called inside
solver steps. Closed forms are used wherever they exist; :class:`Affine` falls back to
autograd derivatives and a fixed-iteration bisection for the inverse log-SNR.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import as_time, check_in_domain, check_time_shape, expand_like
from .noise import randn

__all__ = [
    "REGISTRY",
    "Process",
    "from_config",
    "get_process",
    "process_examples",
    "process_names",
    "VP",
    "SubVP",
    "VE",
    "EDM",
    "FlowMatching",
    "Cosine",
    "Affine",
    "time_change",
]


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# every Process subclass by class name (filled by Process.__init_subclass__): from_config reads it
REGISTRY: dict[str, type] = {}


class Process:
    """A Gaussian path ``z_t = alpha(t) x + sigma(t) eps`` on ``[t_min, t_max]``.

    Subclasses implement ``alpha, sigma, d_alpha, d_sigma`` and, where a closed form
    exists, ``log_snr`` and ``t_from_log_snr``. Everything else derives from those.

    Every subclass is registered in :data:`REGISTRY` under its class name (unless its name
    starts with ``_`` or it is declared with ``register=False``), which is what
    :meth:`to_config` / :func:`from_config`, :func:`get_process`, :func:`process_examples`,
    the CLI and ``unigen verify`` read.

    Attributes:
        t_min: start of the domain (data end).
        t_max: end of the domain (prior end).
        aliases: short names :func:`get_process` (and ``unigen sample --process``) accept
            besides the class name; the first is the one the CLI shows.
        configurable: False where the constructor takes something that is not plain data
            (:class:`Affine`'s callables): no :meth:`to_config` then.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    aliases: ClassVar[tuple] = ()
    configurable: ClassVar[bool] = True

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if "aliases" not in cls.__dict__:
            cls.aliases = ()  # short names are not inherited: SubVP is not "vp"
        if register and not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls

    # -- plain-data round trips ----------------------------------------------------------
    def to_config(self) -> dict:
        """The process as JSON-serialisable data: ``{"class": name, **constructor arguments}``.

        :func:`from_config` rebuilds it exactly (same alpha, sigma, derivatives and log-SNR
        bit for bit). The arguments are the constructor's parameters, read from the attributes
        of the same name (tensors become lists of floats). Raises TypeError for a process whose
        constructor takes callables (:class:`Affine`) or whose class is not registered.
        """
        cls = type(self)
        if REGISTRY.get(cls.__name__) is not cls:
            raise TypeError(f"{cls.__name__} is not in unigen.process.REGISTRY (declared with register=False, a "
                            "name starting with _, or replaced by another class of the same name): no config")
        if not cls.configurable:
            raise TypeError(f"{cls.__name__} takes Python callables, which a config cannot hold; keep the "
                            "process object itself (e.g. pass process= to unigen.train.load)")
        cfg = {"class": cls.__name__}
        for name in _init_parameters(cls):
            if not hasattr(self, name):
                raise TypeError(f"{cls.__name__}.to_config needs the constructor argument {name!r} stored as "
                                f"the attribute self.{name}; override to_config otherwise")
            cfg[name] = _plain(getattr(self, name), f"{cls.__name__}.{name}")
        return cfg

    def value_key(self):
        """A hashable VALUE standing for this process in caches: its config (two processes built
        with equal arguments share grids, plans and schedule answers), or the object itself
        where there is no config (:class:`Affine`). Processes are treated as immutable."""
        key = self.__dict__.get("_value_key")
        if key is None:
            cls = type(self)
            if REGISTRY.get(cls.__name__) is not cls or not cls.configurable:
                return self
            try:
                values = [(name, _value(getattr(self, name))) for name in _init_parameters(cls)]
            except (AttributeError, TypeError):
                return self
            key = self.__dict__["_value_key"] = ProcessKey((cls, tuple(values)))  # the class itself: a redefinition differs
        return key

    @classmethod
    def examples(cls) -> dict:
        """A few representative instances of this class, by label (the test suite runs every
        process contract over them). The default is the default-constructed instance under the
        class name; classes whose constructor needs arguments override this."""
        missing = [n for n, p in _init_parameters(cls).items() if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"{cls.__name__}() needs {', '.join(missing)}: define the classmethod "
                            f"{cls.__name__}.examples() returning {{label: instance}}")
        return {cls.__name__: cls()}

    # -- the four primitives -------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    # -- derived quantities (override with closed forms where they exist) ----------
    def log_snr(self, t: Tensor) -> Tensor:
        """lam(t) = log(alpha^2 / sigma^2) (the full log-SNR, not DPM-Solver's half)."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def d_log_snr(self, t: Tensor) -> Tensor:
        """d lam / dt = 2 (alpha'/alpha - sigma'/sigma) = -g^2 / sigma^2."""
        return 2.0 * (self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`. Default: 200 bisection steps (no host sync)."""
        lam = as_time(lam)
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(200 if lam.dtype == torch.float64 else 100):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # lam decreases in t: target lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def drift(self, t: Tensor) -> Tensor:
        """f_t = d log(alpha)/dt."""
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """g_t^2 = d sigma^2/dt - 2 f_t sigma^2 = 2 sigma (sigma' - sigma alpha'/alpha)."""
        s = self.sigma(t)
        return 2.0 * s * (self.d_sigma(t) - s * self.d_alpha(t) / self.alpha(t))

    def diffusion(self, t: Tensor) -> Tensor:
        """g_t of the forward SDE dz = f_t z dt + g_t dW."""
        return torch.sqrt(self.g2(t))

    # -- conveniences ---------------------------------------------------------------
    def ve_sigma(self, t: Tensor) -> Tensor:
        """The VE / EDM noise level sigma/alpha = exp(-lam/2)."""
        return self.sigma(t) / self.alpha(t)

    def scale(self, t: Tensor) -> Tensor:
        """n_t = sqrt(alpha^2 + sigma^2); two processes at equal log-SNR differ by n_B/n_A."""
        return torch.hypot(self.alpha(t), self.sigma(t))

    def marginal(self, x: Tensor, t, eps: Tensor) -> Tensor:
        """z_t = alpha(t) x + sigma(t) eps, with t of shape [] or [batch]."""
        t = as_time(t, like=x)
        check_time_shape(t, x)
        self.check_t(t)
        if eps.shape != x.shape:
            raise ValueError(f"eps must have the shape of x {tuple(x.shape)}, got {tuple(eps.shape)}")
        return expand_like(self.alpha(t), x) * x + expand_like(self.sigma(t), x) * eps

    def prior_std(self, dtype=torch.float64) -> float:
        """sigma(t_max), the std of the Gaussian prior N(0, sigma_max^2 I) (alpha_max x is ignored)."""
        return float(self.sigma(torch.tensor(self.t_max, dtype=dtype)))

    def prior_sample(self, shape, generator=None, dtype=None, device=None) -> Tensor:
        """Draw z_{t_max} ~ N(0, sigma(t_max)^2 I); ``generator`` may be a list (one per batch item)."""
        return self.prior_std() * randn(shape, generator=generator, dtype=dtype, device=device)

    def check_t(self, t: Tensor, name: str = "t") -> None:
        """Raise a ValueError naming ``name`` if t leaves [t_min, t_max] (host sync: API edges only)."""
        check_in_domain(t, self.t_min, self.t_max, type(self).__name__, name)

    @property
    def model_range(self) -> tuple[float, float]:
        """The times a network of this process is trained on and may be called at: the
        whole domain [t_min, t_max] unless the family says otherwise (a DDPM table: [1/N, 1])."""
        return float(self.t_min), float(self.t_max)

    @property
    def log_snr_range(self) -> tuple[float, float]:
        """(lam(t_max), lam(t_min)) in float64."""
        t = torch.tensor([self.t_max, self.t_min], dtype=torch.float64)
        lam = self.log_snr(t)
        return float(lam[0]), float(lam[1])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict:
        return {}


# ---------------------------------------------------------------------------------------
# Variance preserving
# ---------------------------------------------------------------------------------------
class VP(Process, register=False):
    """Variance-preserving processes, alpha^2 + sigma^2 = 1. Build with the constructors
    :meth:`linear`, :meth:`cosine` and :meth:`discrete`."""

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def d_sigma(self, t):
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t):
        la = self._log_alpha(t)
        return 2.0 * la - _log1mexp(2.0 * la)

    def scale(self, t):
        return torch.ones_like(t)

    def _log_alpha(self, t):
        raise NotImplementedError

    @staticmethod
    def _log_alpha_from_log_snr(lam: Tensor) -> Tensor:
        # alpha^2 = sigmoid(lam)  =>  log alpha = -softplus(-lam)/2
        return -0.5 * F.softplus(-lam)

    @staticmethod
    def linear(beta_min: float = 0.1, beta_max: float = 20.0) -> "VPLinear":
        """The continuous VP-SDE of Song et al. (2021): beta(t) = beta_min + t (beta_max - beta_min)."""
        return VPLinear(beta_min, beta_max)

    @staticmethod
    def cosine(s: float = 0.008) -> "VPCosine":
        """Nichol & Dhariwal (2021): alpha^2(t) = f(t)/f(0), f(t) = cos^2((t + s)/(1 + s) pi/2)."""
        return VPCosine(s)

    @staticmethod
    def discrete(betas, rescale_zero_terminal_snr: bool = False) -> "VPDiscrete":
        """Any DDPM beta table (Ho et al. 2020), continuous in t by DPM-Solver's convention."""
        return VPDiscrete(betas, rescale_zero_terminal_snr)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class VPLinear(VP):
    r"""VP-SDE with linear beta:  log alpha(t) = -t^2 (b1 - b0)/4 - t b0/2,  f = -beta/2,  g^2 = beta."""

    aliases = ("vp", "vp_linear")

    @classmethod
    def examples(cls):
        return {"vp_linear": cls()}

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _check_positive("beta_min", beta_min)
        self.beta_max = _check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")

    def _repr_fields(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def t_from_log_snr(self, lam):
        m = self._log_alpha_from_log_snr(as_time(lam))
        # root of (b1-b0)/4 t^2 + b0/2 t + m = 0 in the cancellation-free form -2c/(b + sqrt(b^2-4ac))
        b = 0.5 * self.beta_min
        return -2.0 * m / (b + torch.sqrt(b * b - (self.beta_max - self.beta_min) * m))

    def drift(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)


class VPCosine(VP):
    r"""Nichol & Dhariwal's cosine schedule in continuous time on [0, 1].

    alpha(t) = cos(phi_t)/cos(phi_0), phi_t = (t + s)/(1 + s) * pi/2. Continuous-time alpha
    reaches 0 at t = 1 (zero terminal SNR); their discrete table clips beta at 0.999 instead.
    Sampling starts by default at t = 0.9946 (DPM-Solver's choice for this schedule, where
    log(alpha/sigma) is about -5), so log-SNR grids stay finite.
    """

    sample_start = 0.9946
    aliases = ("vp_cosine",)

    @classmethod
    def examples(cls):
        return {"vp_cosine": cls()}

    def __init__(self, s: float = 0.008):
        if not (isinstance(s, (int, float)) and 0 <= s < 1):
            raise ValueError(f"s must lie in [0, 1), got {s!r}")
        self.s = float(s)
        self._phi0 = self.s / (1 + self.s) * math.pi / 2
        self._dphi = math.pi / (2 * (1 + self.s))

    def _repr_fields(self):
        return {"s": self.s}

    def _phi(self, t):
        return (t + self.s) * self._dphi

    def _cos_phi(self, t):
        # cos(phi_t) = sin(pi/2 - phi_t) = sin((1 - t) dphi): exactly 0 at t = 1, accurate near it
        return torch.sin((1.0 - t) * self._dphi)

    def _log_alpha(self, t):
        return torch.log(self._cos_phi(t)) - math.log(math.cos(self._phi0))

    def alpha(self, t):
        return self._cos_phi(t) / math.cos(self._phi0)

    def sigma(self, t):
        # 1 - cos^2(phi)/cos^2(phi0) = sin(phi - phi0) sin(phi + phi0) / cos^2(phi0), no cancellation
        phi = self._phi(t)
        return torch.sqrt(torch.sin(phi - self._phi0) * torch.sin(phi + self._phi0)) / math.cos(self._phi0)

    def log_snr(self, t):
        phi = self._phi(t)
        return 2.0 * torch.log(self._cos_phi(t)) - torch.log(torch.sin(phi - self._phi0) * torch.sin(phi + self._phi0))

    def d_alpha(self, t):
        return -torch.sin(self._phi(t)) * self._dphi / math.cos(self._phi0)

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        c0, s0 = math.cos(self._phi0), math.sin(self._phi0)
        # cos^2 phi = c0^2 sigmoid(lam), sin^2 phi = s0^2 + c0^2 sigmoid(-lam)
        phi = torch.atan2(
            torch.sqrt(s0 * s0 + c0 * c0 * torch.sigmoid(-lam)), c0 * torch.sqrt(torch.sigmoid(lam))
        )
        return phi / self._dphi - self.s


class VPDiscrete(VP):
    r"""A DDPM beta table as a continuous process on [0, 1].

    Grid point n = 0..N-1 sits at t_n = (n + 1)/N with alpha(t_n)^2 = prod_{i<=n}(1 - beta_i)
    exactly; between grid points log alpha is linear in t (DPM-Solver's discrete-time
    convention, Lu et al. 2022, Appendix). The network's timestep is
    ``timestep(t) = N t - 1``, so the trained range is [1/N, 1]; sampling ends at 1/N by
    default. One extra knot t = 0 with alpha = 1 (diffusers' ``set_alpha_to_one``) is the
    clean-data point that a final step may land on (it is never fed to the network).

    With ``rescale_zero_terminal_snr=True`` the sqrt(alpha_bar) table is shifted and scaled so
    that alpha(1) = 0 while alpha(1/N) is kept (Lin et al. 2023, Algorithm 1). log alpha is
    then -inf at the last grid point, so on the final segment alpha itself (not its log)
    is interpolated linearly; log-SNR there falls to -inf at t = 1 and
    ``t_from_log_snr(-inf) == 1``.
    """

    aliases = ("vp_discrete",)

    @classmethod
    def examples(cls):
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's table (Ho et al. 2020)
        return {"vp_discrete": cls(betas), "vp_discrete_zsnr": cls(betas, rescale_zero_terminal_snr=True)}

    def __init__(self, betas, rescale_zero_terminal_snr: bool = False):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 3:
            raise ValueError(f"betas must be a 1-D table with at least 3 entries, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas < 1))][:3].tolist()
            raise ValueError(f"betas must lie in the open interval (0, 1), got entries {bad}")
        if (betas[1:] < betas[:-1]).any():
            i = int(torch.nonzero(betas[1:] < betas[:-1])[0]) + 1
            raise ValueError(
                f"betas must be non-decreasing (a DDPM table adds more noise each step); betas[{i}]="
                f"{float(betas[i]):g} < betas[{i - 1}]={float(betas[i - 1]):g}. Reversed table?"
            )
        self.betas = betas
        self.num_timesteps = n = betas.numel()
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        sqrt_ab = alphas_cumprod.sqrt()
        if rescale_zero_terminal_snr:
            a0, aT = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
            sqrt_ab = (sqrt_ab - aT) * a0 / (a0 - aT)
            alphas_cumprod = sqrt_ab**2
        self.alphas_cumprod = alphas_cumprod
        self.t_min, self.t_max = 0.0, 1.0
        self.sample_end = 1.0 / n
        self.default_schedule = "trailing" if rescale_zero_terminal_snr else "logsnr"
        # knots k = 0..N at t = k/N; knot 0 is the clean point alpha = 1
        self._t_knots = torch.arange(0, n + 1, dtype=torch.float64) / n
        self._alpha_knots = torch.cat([torch.ones(1, dtype=torch.float64), sqrt_ab])
        log_a = torch.log(self._alpha_knots)
        if rescale_zero_terminal_snr:
            log_a[-1] = log_a[-2]  # placeholder; the last segment is interpolated in alpha
        self._log_alpha_knots = log_a
        self._cache: dict = {}

    def _repr_fields(self):
        return {"num_timesteps": self.num_timesteps, "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr}

    def _knots(self, like: Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(
                k.to(dtype=like.dtype, device=like.device)
                for k in (self._t_knots, self._log_alpha_knots, self._alpha_knots)
            )
        return self._cache[key]

    def _segment(self, t):
        """Left knot index i of the segment [t_i, t_{i+1}] holding t, and the fraction within it."""
        tk, _, _ = self._knots(t)
        n = self.num_timesteps
        # exact comparisons against the knots (t*N would round t = k/N + 1ulp back onto k/N,
        # which matters to integrators that step just past a kink); a knot itself is the
        # right end of its left segment
        i = torch.searchsorted(tk, t.reshape(-1).contiguous(), right=False).reshape(t.shape) - 1
        i = torch.clamp(i, 0, n - 1)
        return i, (t - tk[i]) * n

    def _is_last_linear(self, i):
        return (i == self.num_timesteps - 1) if self.rescale_zero_terminal_snr else torch.zeros_like(i, dtype=torch.bool)

    def _log_alpha(self, t):
        _, la, a = self._knots(t)
        i, frac = self._segment(t)
        log_lin = la[i] + frac * (la[i + 1] - la[i])
        if not self.rescale_zero_terminal_snr:
            return log_lin
        a_lin = torch.clamp(a[i] + frac * (a[i + 1] - a[i]), min=0.0)
        return torch.where(self._is_last_linear(i), torch.log(a_lin), log_lin)

    def d_alpha(self, t):
        _, la, a = self._knots(t)
        i, _ = self._segment(t)
        n = self.num_timesteps
        d = self.alpha(t) * (la[i + 1] - la[i]) * n
        if not self.rescale_zero_terminal_snr:
            return d
        return torch.where(self._is_last_linear(i), (a[i + 1] - a[i]) * n, d)

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        tk, la, a = self._knots(lam)
        n = self.num_timesteps
        m = n if self.rescale_zero_terminal_snr else n + 1  # knots interpolated in log alpha
        target = self._log_alpha_from_log_snr(lam)
        # log alpha decreases along the knots: find i with la[i] >= target > la[i+1]
        idx = torch.searchsorted(-la[:m].contiguous(), -target.reshape(-1).contiguous(), right=True)
        i = torch.clamp(idx - 1, 0, m - 2).reshape(target.shape)
        t = tk[i] + (target - la[i]) / ((la[i + 1] - la[i]) * n)
        if self.rescale_zero_terminal_snr:
            j = n - 1  # final segment: alpha (not log alpha) is linear, reaching 0 at t = 1
            t_last = tk[j] + (torch.exp(target) - a[j]) / ((a[j + 1] - a[j]) * n)
            t = torch.where(target < la[j], t_last, t)
        return t

    @property
    def model_range(self) -> tuple[float, float]:
        """[1/N, 1]: timesteps 0..N-1; t = 0 is the clean point a last step lands on, never an input."""
        return 1.0 / self.num_timesteps, 1.0

    @property
    def breakpoints(self) -> list[float]:
        """The knots t = k/N, where alpha'(t) jumps (adaptive integrators step onto them)."""
        return self._t_knots.tolist()

    def timestep(self, t: Tensor) -> Tensor:
        """The network's (fractional) timestep index n = N t - 1 for continuous t."""
        return t * self.num_timesteps - 1.0

    def t_from_timestep(self, n) -> Tensor:
        """Continuous time t_n = (n + 1)/N of an integer (or fractional) timestep index."""
        n = torch.as_tensor(n)
        return (n.to(torch.float64 if not n.is_floating_point() else n.dtype) + 1.0) / self.num_timesteps


# ---------------------------------------------------------------------------------------
class SubVP(VPLinear):
    r"""sub-VP SDE (Song et al. 2021): alpha as VP-linear, sigma = 1 - alpha^2 (the std),
    f = -beta/2, g^2 = beta (1 - alpha^4)."""

    aliases = ("subvp",)

    @classmethod
    def examples(cls):
        return {"subvp": cls()}

    def sigma(self, t):
        return -torch.expm1(2.0 * self._log_alpha(t))

    def d_sigma(self, t):
        return -2.0 * self.alpha(t) * self.d_alpha(t)

    def log_snr(self, t):
        la = self._log_alpha(t)
        return 2.0 * la - 2.0 * _log1mexp(2.0 * la)

    def scale(self, t):
        return torch.hypot(self.alpha(t), self.sigma(t))

    def t_from_log_snr(self, lam):
        lam = as_time(lam)
        # a = alpha^2 solves e^lam (1 - a)^2 = a; with w = e^-lam the small root has
        # 1 - a = (w + sqrt(4w + w^2)) / (2 + w + sqrt(4w + w^2))
        w = torch.exp(-lam)
        r = torch.sqrt(4.0 * w + w * w)
        one_minus_a = (w + r) / (2.0 + w + r)
        m = 0.5 * torch.log1p(-one_minus_a)
        b = 0.5 * self.beta_min
        return -2.0 * m / (b + torch.sqrt(b * b - (self.beta_max - self.beta_min) * m))

    def g2(self, t):
        return self.beta(t) * (-torch.expm1(4.0 * self._log_alpha(t)))


class VE(Process):
    r"""Variance-exploding SDE (NCSN, Song et al. 2021): alpha = 1,
    sigma(t) = sigma_min (sigma_max/sigma_min)^t, f = 0, g^2 = 2 sigma^2 log(sigma_max/sigma_min)."""

    aliases = ("ve",)

    @classmethod
    def examples(cls):
        return {"ve": cls()}

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = _check_positive("sigma_min", sigma_min)
        self.sigma_max = _check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_min} and {sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _repr_fields(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def log_snr(self, t):
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, lam):
        return (-0.5 * as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def drift(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return 2.0 * self.sigma(t) ** 2 * self._log_ratio


class EDM(Process):
    r"""EDM (Karras et al. 2022): alpha = 1, sigma = t, so the time *is* the noise level.

    The domain is [0, sigma_max]; ``sigma_min`` is the smallest nonzero level a Karras
    grid visits before its final step to sigma = 0. f = 0, g^2 = 2t.
    """

    aliases = ("edm",)

    @classmethod
    def examples(cls):
        return {"edm": cls()}

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min = _check_positive("sigma_min", sigma_min)
        self.sigma_max = _check_positive("sigma_max", sigma_max)
        self.sigma_data = _check_positive("sigma_data", sigma_data)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_min} and {sigma_max}")
        self.t_min = 0.0
        self.t_max = self.sigma_max
        self.sample_end = self.sigma_min
        self.default_schedule = "karras"

    def _repr_fields(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def log_snr(self, t):
        return -2.0 * torch.log(t)

    def t_from_log_snr(self, lam):
        return torch.exp(-0.5 * as_time(lam))

    def drift(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        return 2.0 * t


class FlowMatching(Process):
    r"""Rectified flow / conditional OT path (Lipman et al. 2023, Liu et al. 2023):
    alpha = 1 - t, sigma = t; f = -1/(1-t), g^2 = 2t/(1-t). t = 0 is data."""

    default_schedule = "uniform"
    sample_end = 0.0
    aliases = ("fm",)

    @classmethod
    def examples(cls):
        return {"fm": cls()}

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def log_snr(self, t):
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * as_time(lam))

    def drift(self, t):
        return -1.0 / (1.0 - t)

    def g2(self, t):
        return 2.0 * t / (1.0 - t)


class Cosine(Process):
    r"""Cosine interpolant: alpha = cos(pi t/2), sigma = sin(pi t/2);
    f = -(pi/2) tan(pi t/2), g^2 = pi tan(pi t/2)."""

    default_schedule = "uniform"
    sample_end = 0.0
    aliases = ("cosine",)

    @classmethod
    def examples(cls):
        return {"cosine": cls()}

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * (1.0 - t))  # = cos(pi t/2), exactly 0 at t = 1

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def log_snr(self, t):
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, lam):
        return torch.atan(torch.exp(-0.5 * as_time(lam))) * (2.0 / math.pi)

    def scale(self, t):
        return torch.ones_like(t)

    def drift(self, t):
        return -0.5 * math.pi * torch.tan(0.5 * math.pi * t)

    def g2(self, t):
        return math.pi * torch.tan(0.5 * math.pi * t)


class Affine(Process):
    r"""Any user path z_t = alpha(t) x + sigma(t) eps on [t_min, t_max].

    ``alpha``/``sigma`` are elementwise callables on tensors. Derivatives come from
    autograd unless ``d_alpha``/``d_sigma`` are given; the inverse log-SNR is a bisection.
    The log-SNR must be strictly decreasing, which is checked on 1025 points at
    construction. Its callables cannot be stored as plain data: no :meth:`to_config`.
    """

    configurable = False

    @classmethod
    def examples(cls):
        # a user path with no closed forms given: derivatives by autograd, inverse by bisection
        return {"affine": cls(alpha=lambda t: 1 - t**2, sigma=lambda t: torch.sin(0.5 * math.pi * t))}

    def __init__(
        self,
        alpha: Callable[[Tensor], Tensor],
        sigma: Callable[[Tensor], Tensor],
        d_alpha: Callable[[Tensor], Tensor] | None = None,
        d_sigma: Callable[[Tensor], Tensor] | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
    ):
        for name, fn in (("alpha", alpha), ("sigma", sigma), ("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if not t_max > t_min:
            raise ValueError(f"t_max must exceed t_min, got t_min={t_min}, t_max={t_max}")
        self._alpha, self._sigma = alpha, sigma
        self._d_alpha, self._d_sigma = d_alpha, d_sigma
        self.t_min, self.t_max = float(t_min), float(t_max)
        grid = torch.linspace(self.t_min, self.t_max, 1025, dtype=torch.float64)
        a, s = self.alpha(grid), self.sigma(grid)
        if a.shape != grid.shape or s.shape != grid.shape:
            raise ValueError("alpha and sigma must act elementwise (output shape == input shape)")
        if (a < 0).any() or (s < 0).any():
            raise ValueError("alpha(t) and sigma(t) must be non-negative on [t_min, t_max]")
        lam = self.log_snr(grid)
        ok = lam[1:] < lam[:-1]
        if not ok.all():
            i = int(torch.nonzero(~ok)[0])
            raise ValueError(
                f"log-SNR of the Affine process must be strictly decreasing in t; it does not "
                f"decrease between t={float(grid[i]):.6g} and t={float(grid[i + 1]):.6g}"
            )

    def alpha(self, t):
        return self._alpha(t)

    def sigma(self, t):
        return self._sigma(t)

    @staticmethod
    def _grad(fn, t):
        with torch.enable_grad():
            tt = t if t.requires_grad else t.detach().requires_grad_(True)
            y = fn(tt)
            (g,) = torch.autograd.grad(y.sum(), tt, create_graph=t.requires_grad)
        return g

    def d_alpha(self, t):
        return self._d_alpha(t) if self._d_alpha is not None else self._grad(self._alpha, t)

    def d_sigma(self, t):
        return self._d_sigma(t) if self._d_sigma is not None else self._grad(self._sigma, t)


# ---------------------------------------------------------------------------------------
def time_change(src: Process, dst: Process, t) -> tuple[Tensor, Tensor]:
    r"""Map a time of ``src`` to the time of equal log-SNR in ``dst``.

    Returns ``(t_dst, scale)`` with ``scale = alpha_dst(t_dst)/alpha_src(t) = sigma_dst/sigma_src``,
    so that ``z_dst = scale * z_src`` has the law of dst's marginal (docs/theory.md, section 5).
    The scale is computed as n_dst/n_src with n = sqrt(alpha^2 + sigma^2), which stays
    finite at zero terminal SNR where the alpha ratio would be 0/0.
    """
    t = as_time(t)
    t_dst = dst.t_from_log_snr(src.log_snr(t))
    return t_dst, dst.scale(t_dst) / src.scale(t)


# ---------------------------------------------------------------------------------------
# the registry: configs, names, examples
# ---------------------------------------------------------------------------------------
def _init_parameters(cls) -> dict:
    """The named constructor parameters of a process class (no self, no *args/**kwargs)."""
    if cls.__init__ is object.__init__:
        return {}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    varargs = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if varargs:
        raise TypeError(f"{cls.__name__}.__init__ takes *{varargs[0]}, which a config cannot name; override "
                        "to_config and examples")
    return {p.name: p for p in params}


def _plain(value, what: str):
    """``value`` as JSON data (bool, int, finite float, str, None, lists of those; tensors as lists)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{what} = {value!r} is not a finite number, which JSON cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, what) for v in value]
    raise TypeError(f"{what} is a {type(value).__name__}, which a config cannot hold (plain numbers, strings, "
                    "lists and tensors only); override to_config")


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


def from_config(cfg: dict) -> Process:
    """Rebuild a process from :meth:`Process.to_config`'s ``{"class": name, **arguments}``.

    Raises ValueError for a class name that is not registered (listing the registered ones),
    a process that has no config (:class:`Affine`), a missing or unknown field (listing the
    constructor's) or a value the constructor refuses. A process defined outside
    ``unigen.process`` (e.g. ``unigen.interop.ShiftedFlowMatching``) is registered once its
    module is imported.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"from_config takes the dict of Process.to_config(), got {type(cfg).__name__}")
    name = cfg.get("class")
    cls = REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown process class {name!r} in the config; registered processes are "
                         f"{_names(REGISTRY)}")
    if not cls.configurable:
        raise ValueError(f"{name} takes Python callables and cannot be rebuilt from a config; build it yourself")
    params = _init_parameters(cls)
    fields = {k: v for k, v in cfg.items() if k != "class"}
    unknown = sorted(set(fields) - set(params))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in the config of {name}; its fields are "
                         f"{_names(params)}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in fields]
    if missing:
        raise ValueError(f"the config of {name} lacks the field(s) {', '.join(missing)}; its fields are "
                         f"{_names(params)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad config of {name}: {e}") from None


def process_names() -> dict:
    """Every name :func:`get_process` accepts: class names and each class's ``aliases``, mapped to
    the registered class."""
    out = {}
    for cname, cls in REGISTRY.items():
        for n in (cname, *cls.aliases):
            out[n] = cls
    return out


def get_process(name, **kwargs) -> Process:
    """The process a name stands for: a registered class name ("VPLinear") or alias ("vp", "fm";
    either in any case), built with ``kwargs`` (its defaults otherwise). A Process is returned as
    is. Raises ValueError naming the valid names."""
    if isinstance(name, Process) and not kwargs:
        return name
    names = process_names()
    by_lower = {n.lower(): cls for n, cls in names.items()}
    cls = by_lower.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown process {name!r}; valid names are {_names(names)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}: {e}") from None


def process_examples(classes=None) -> dict:
    """``{label: instance}`` over the :meth:`Process.examples` of ``classes`` (default: every
    registered class defined in this module, i.e. the built-in processes; pass
    ``REGISTRY.values()`` for all): the representative processes the test suite and
    ``unigen verify`` run over. Raises ValueError where two classes use one label or an example
    is not of its class."""
    if classes is None:
        classes = [c for c in REGISTRY.values() if c.__module__ == __name__]
    out = {}
    for cls in classes:
        for label, p in cls.examples().items():
            if type(p) is not cls:
                raise ValueError(f"{cls.__name__}.examples() returned a {type(p).__name__} under {label!r}; "
                                 f"define {cls.__name__}.examples() (it inherits its parent's)")
            if label in out:
                raise ValueError(f"the example label {label!r} is used by {type(out[label]).__name__} and "
                                 f"{cls.__name__}")
            out[label] = p
    return out


class ProcessKey:
    """A process's class and constructor arguments as a hashable value, its hash computed once
    (tensors by dtype, shape and bytes: a DDPM table holds a thousand floats)."""

    __slots__ = ("items", "_hash")

    def __init__(self, items: tuple):
        self.items = items
        self._hash = hash(items)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, ProcessKey) and hash(self) == hash(other) and self.items == other.items

    def __repr__(self):
        return f"ProcessKey({self.items[0]!r})"


def _value(value):
    """A constructor argument as a hashable value (TypeError if it has none)."""
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.numpy().tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_value(v) for v in value)
    hash(value)
    return value
