r"""The solver interface: a dynamics view of the model, a precomputed grid, a step rule.

Solvers never see the network (diffrax's "terms"). They ask a :class:`Dynamics` for
exactly what their algorithm needs and declare it in ``requires``:

* ``"x0_eps"``  the semi-linear view (x0_hat, eps_hat) of exponential integrators;
* ``"ode"``     the probability-flow ODE  dz/dt = alpha' x0_hat + sigma' eps_hat;
* ``"sde"``     the reverse-SDE family drift  f z - (1 + eta^2)/2 g^2 score  and  eta g;
* ``"score"``   grad log p_t;
* ``"energy"``  an energy E(z, t) with score = -grad E (energy-based models only).

A :class:`Grid` holds the times and every schedule coefficient as Python floats, computed
once before the loop, so a step does only tensor arithmetic on z: no ``.item()``, no
Python branching on tensor values (CUDA graphs and torch.compile stay possible).
Subclasses of :class:`Solver` register themselves by class name.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .._utils import IncompatibleSolverError, SingularConversionError
from ..noise import randn_like
from ..parametrization import Prediction, PathCoefficients, lin_coefs

__all__ = ["Dynamics", "Grid", "Solver", "Noise", "REGISTRY", "get_solver"]

REGISTRY: dict[str, type] = {}


class Dynamics:
    """What a solver may ask of a model. Counts every model evaluation in ``nfe``;
    ``model_kwargs`` (conditioning) go to every network call."""

    def __init__(self, model, data_dtype: torch.dtype, model_kwargs: dict | None = None):
        self.model = model
        self.process = model.process
        self.data_dtype = data_dtype
        self.model_kwargs = model_kwargs
        self.nfe = 0
        caps = {"x0_eps", "ode", "sde", "score"}
        if callable(getattr(model, "energy", None)):
            caps.add("energy")
        self.capabilities = frozenset(caps)

    def predict(self, z: Tensor, t: Tensor, coefs=None):
        """One model call at (z, t); the network sees z in the data dtype.

        ``coefs`` (from :meth:`Grid.coefs` or :meth:`Grid.fixed`) supplies precomputed
        alpha, sigma, alpha', sigma' so that conversions skip the schedule arithmetic.
        """
        return Prediction(self.raw(z, t, coefs), z, t, self.process, self.model.parametrization, coefs)

    def raw(self, z: Tensor, t: Tensor, coefs=None) -> Tensor:
        """One model call returning the network's own output (for steps folded into (z, out))."""
        self.nfe += 1
        if z.dtype != self.data_dtype:
            return self.model.raw(z.to(self.data_dtype), t, coefs, self.model_kwargs).to(z.dtype)
        return self.model.raw(z, t, coefs, self.model_kwargs)

    def velocity(self, z: Tensor, t: Tensor, coefs=None) -> Tensor:
        """The probability-flow ODE drift dz/dt in the process's own time."""
        return self.predict(z, t, coefs).velocity

    def energy(self, z: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.model.energy(z, t)


class Grid:
    """Times ``t[0] > ... > t[n]`` and their schedule coefficients, precomputed once.

    ``alpha, sigma, d_alpha, d_sigma, lam`` are lists of Python floats (float64);
    ``lam`` is the full log-SNR log(alpha^2/sigma^2). ``lam_dpm = lam / 2`` is
    DPM-Solver's / UniPC's lambda = log(alpha/sigma): the ONE place the two meet.
    ``t`` holds 0-dim tensors in the compute dtype, for model calls.
    """

    def __init__(self, process, ts: Tensor, dtype: torch.dtype, device, parametrization: str | None = None):
        ts64 = ts.detach().to(torch.float64).cpu()
        self.process = process
        self.n = ts64.numel() - 1
        self.ts = ts64.to(dtype=dtype, device=device)
        self.t = list(self.ts.unbind(0))
        self.times = ts64.tolist()
        self.alpha = process.alpha(ts64).tolist()
        self.sigma = process.sigma(ts64).tolist()
        with torch.no_grad():
            self.lam = process.log_snr(ts64).tolist()
        self.lam_dpm = [0.5 * v for v in self.lam]
        self.ends_at_zero = self.sigma[-1] == 0.0
        d_alpha, d_sigma = self.d_coefs(self.times)
        self._coefs = [
            PathCoefficients.fixed(process, self.t[i], self.alpha[i], self.sigma[i], d_alpha[i], d_sigma[i]) for i in range(self.n + 1)
        ]
        self.parametrization = parametrization
        self.checked: set = set()  # parametrizations whose start has been validated (sample())
        if parametrization is not None:
            self._precompute_conversions(parametrization)

    def memo(self, key, build):
        """A solver's immutable precomputation for this grid, built once (grids are reused)."""
        plans = self.__dict__.setdefault("_plans", {})
        if key not in plans:
            plans[key] = build()
        return plans[key]

    def tensors(self, values: list[float]) -> list[Tensor]:
        """0-dim tensors (compute dtype, device) for per-step coefficients, made in one pass."""
        if not values:
            return []
        return list(torch.tensor(values, dtype=torch.float64).to(dtype=self.ts.dtype, device=self.ts.device).unbind(0))

    def lins(self, pairs: list[tuple[float, float]]) -> list[tuple]:
        """(cz, co) float pairs -> (cz, co, cz_t, co_t) for ``apply_lin``, tensorised in one pass."""
        ts = self.tensors([v for pair in pairs for v in pair])
        return [(cz, co, ts[2 * j], ts[2 * j + 1]) for j, (cz, co) in enumerate(pairs)]

    def _precompute_conversions(self, param: str) -> None:
        """x0 and eps from the model's output at every grid point, as 0-dim tensor coefficients."""
        keys, vals = [], []
        for i, c in enumerate(self._coefs):
            for dst, (cx, ce) in (("x0", (1.0, 0.0)), ("eps", (0.0, 1.0))):
                try:
                    cz, co = lin_coefs(c, param, cx, ce)
                except (SingularConversionError, ZeroDivisionError):
                    continue  # e.g. eps at alpha = 0, score at sigma = 0: left to the slow path
                keys.append((i, dst, cz, co))
                vals += [cz, co]
        ts = self.tensors(vals)
        for j, (i, dst, cz, co) in enumerate(keys):
            self._coefs[i].__dict__.setdefault("lin", {})[(param, dst)] = (cz, co, ts[2 * j], ts[2 * j + 1])
        if param == "denoiser":
            self._attach_ve(self._coefs)

    def _attach_ve(self, coefs: list[PathCoefficients]) -> None:
        """(1/alpha, sigma/alpha, alpha == 1) as 0-dim tensors: the denoiser's VE inputs (Model.raw)."""
        ok = [c for c in coefs if c.alpha > 0]
        ts = self.tensors([v for c in ok for v in (1.0 / c.alpha, c.sigma / c.alpha)])
        for j, c in enumerate(ok):
            c.__dict__["ve"] = (ts[2 * j], ts[2 * j + 1], c.alpha == 1.0)

    def coefs(self, i: int) -> PathCoefficients:
        """Precomputed coefficients at grid point i (for ``Dynamics.predict``)."""
        return self._coefs[i]

    def fixed(self, times) -> list[PathCoefficients]:
        """Coefficients at off-grid times (stages, intermediate points), in one vectorised pass."""
        t64 = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
        if t64.numel() == 0:
            return []
        p = self.process
        vals = [f(t64).tolist() for f in (p.alpha, p.sigma, p.d_alpha, p.d_sigma)]
        tt = t64.to(dtype=self.ts.dtype, device=self.ts.device).unbind(0)
        out = [PathCoefficients.fixed(p, tt[j], *(v[j] for v in vals)) for j in range(len(tt))]
        if self.parametrization == "denoiser":
            self._attach_ve(out)
        return out

    def h(self, i: int, j: int | None = None) -> float:
        """Step in DPM-Solver's lambda from t_i to t_j (default j = i + 1); positive towards data."""
        j = i + 1 if j is None else j
        return self.lam_dpm[j] - self.lam_dpm[i]

    def d_coefs(self, times: list[float]) -> tuple[list[float], list[float]]:
        tt = torch.tensor(times, dtype=torch.float64)
        return self.process.d_alpha(tt).tolist(), self.process.d_sigma(tt).tolist()


class Noise:
    """Standard normal draws for stochastic steps, from one generator or one per batch item."""

    def __init__(self, generator=None):
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        return randn_like(like, self.generator)


class Solver:
    """Base class of every step rule.

    Attributes:
        order: convergence order on the probability-flow ODE (None for MCMC correctors).
        stochastic: whether steps draw noise.
        requires: views of the model the solver needs (see module docstring).
        nfe_per_step: model calls per ordinary step (NOT the order; diffusers conflates them).
        syncs_host: True only for wrappers of adaptive integrators (torchdiffeq/torchsde).
        batch_coupled: True if one batch item's result depends on the others (adaptive step
            control on a batch norm, a batch-mean step size); False for every fixed-step rule.
    """

    order: int | None = None
    stochastic: bool = False
    requires: frozenset = frozenset({"ode"})
    nfe_per_step: int = 1
    syncs_host: bool = False
    batch_coupled: bool = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls

    # -- the interface -------------------------------------------------------------------
    def init(self, dyn: Dynamics, z: Tensor, grid: Grid):
        """Per-run state (multistep history, precomputed coefficients). Runs before the loop."""
        return None

    def step(self, dyn: Dynamics, z: Tensor, i: int, grid: Grid, state, noise: Noise):
        """Advance z from grid.t[i] to grid.t[i+1]; returns (z, state)."""
        raise NotImplementedError

    def final_step(self, dyn: Dynamics, z: Tensor, i: int, grid: Grid, state, noise: Noise):
        """The step onto zero noise (sigma = 0): z lands on x0_hat (first order, no extra call).

        This is DDIM / DPM-Solver-1 / Euler-in-sigma at sigma_next = 0; for a stochastic
        sampler the posterior q(z_0 | z_t, x0_hat) is a point mass at x0_hat too.
        """
        return dyn.predict(z, grid.t[i], grid.coefs(i)).x0, state

    def expected_nfe(self, n_steps: int, ends_at_zero: bool) -> int:
        """Model calls for a run of ``n_steps`` (the last step onto sigma = 0 costs one call)."""
        return self.nfe_per_step * (n_steps - 1) + (1 if ends_at_zero else self.nfe_per_step)

    def check(self, dyn: Dynamics, grid: Grid) -> None:
        """Raise before the first step if this solver cannot run on (model, grid)."""
        missing = self.requires - dyn.capabilities
        if missing:
            raise IncompatibleSolverError(
                f"{type(self).__name__} requires {', '.join(sorted(missing))}; this model "
                f"({type(dyn.model).__name__}) provides {', '.join(sorted(dyn.capabilities))}"
            )

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def get_solver(name_or_solver) -> Solver:
    """A solver instance from an instance, a class or a registered name."""
    if isinstance(name_or_solver, Solver):
        return name_or_solver
    if isinstance(name_or_solver, type) and issubclass(name_or_solver, Solver):
        return name_or_solver()
    if isinstance(name_or_solver, str) and name_or_solver in REGISTRY:
        return REGISTRY[name_or_solver]()
    raise ValueError(
        f"unknown solver {name_or_solver!r}; valid names are {', '.join(sorted(REGISTRY))} (or a Solver instance)"
    )


def cached_plan(build):
    """Decorator: ``build(self, dyn, grid)`` returns an immutable plan (coefficient tensors,
    stage times), memoised on the grid under the solver's configuration and the model's
    parametrization. Sampling again with the same settings skips all schedule arithmetic."""

    def plan(self, dyn, grid):
        return grid.memo((type(self), repr(self), dyn.model.parametrization), lambda: build(self, dyn, grid))

    plan.__doc__ = build.__doc__
    return plan


def affine(z: Tensor, a: Tensor, terms) -> Tensor:
    """a z + sum_j w_j m_j with 0-dim tensor coefficients: one mul and one addcmul per term."""
    out = z * a
    for w, m in terms:
        out = torch.addcmul(out, w, m)
    return out
