r"""Stochastic samplers of the reverse-SDE family (docs/theory.md, sections 4 and 6b).

With f = d log(alpha)/dt, g^2 = -sigma^2 d lam/dt (``process.drift``, ``process.g2``) and
the exact identities  f z - g^2 score/2 = u  (the PF-ODE velocity) and  score = -eps_hat/sigma,
the family (time runs backward, dt < 0)

    dz = [f z - (1 + eta^2)/2 g^2 score] dt + eta g dW_bar
       = [u + (eta^2/2)(g^2/sigma) eps_hat] dt + eta g dW_bar

interpolates the probability-flow ODE (eta = 0) and Anderson's reverse SDE (eta = 1); every
member has the same marginals p_t. The second form stays finite wherever u and eps_hat do
(f is infinite at zero terminal SNR, u is not). The noise is additive (g depends on t only).

Solvers:

* :class:`EulerMaruyama` - Euler-Maruyama in the process time t; eta = 0 is ``Euler()``.
* :class:`EDMStochastic` - Karras et al. (2022) Algorithm 2 (Heun with churn) in VE variables.
* :class:`SDEDPMSolverPP` - DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion's
  ``sample_dpmpp_2m_sde``, midpoint form): the exact solution of the family's linear part.
* :class:`TorchSDE` - the same family through ``torchsde.sdeint`` on a Brownian interval.

**Zero terminal SNR.** Where alpha = 0 (FlowMatching, Cosine and zero-terminal-SNR tables at
t = 1) g^2 and the eta > 0 drift are infinite, so an Euler-Maruyama step cannot start there.
That one step is taken as the exact solution of the family's linear part with x0_hat frozen
(the first-order SDE-DPM-Solver++ step), which from alpha = 0 is the posterior draw
z' = alpha' x0_hat + sigma' xi for every eta > 0. For eta = 0 nothing is singular (u is finite).
"""

from __future__ import annotations

import math

import torch
import torchsde

from .base import ProgramSolver, Solver, check_lower_order_final, multistep_order
from .program import XI, H, Q, Stage, Step, Z

__all__ = ["EulerMaruyama", "EDMStochastic", "SDEDPMSolverPP", "TorchSDE"]


def _check_nonneg(name: str, value, allow_inf: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if ok and not allow_inf and math.isinf(value):
        ok = False
    if not ok:
        rng = "[0, inf]" if allow_inf else "[0, inf) (a finite number >= 0)"
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")
    return float(value)


def _g2_list(grid) -> list[float]:
    """g^2 at the grid times as Python floats (float64), evaluated once per run."""
    ts = torch.tensor(grid.times, dtype=torch.float64)
    with torch.no_grad():
        return grid.process.g2(ts).tolist()


def _singular(grid, g2: list[float], i: int) -> bool:
    """True where the SDE coefficients are infinite at t_i (alpha = 0, zero terminal SNR)."""
    return grid.alpha[i] == 0.0 or not math.isfinite(g2[i])


def _zero_snr_step(dyn, z, i, grid, noise):
    """The eta > 0 step out of alpha = 0: the exact posterior draw alpha' x0_hat + sigma' xi."""
    x0 = dyn.predict(z, grid.t[i], grid.node(i)).x0
    return grid.alpha[i + 1] * x0 + grid.sigma[i + 1] * noise(z)


def _zero_snr_program(grid, i) -> Step:
    """The same step as a program: z' = alpha' x0_hat + sigma' xi."""
    return Step((Stage(grid.node(i), Z),), grid.alpha[i + 1] * Q(0, "x0") + grid.sigma[i + 1] * XI(0))


# ---------------------------------------------------------------------------------------
class EulerMaruyama(ProgramSolver):
    r"""Euler-Maruyama on the reverse-SDE family in the process time t.

    With the positive step h = t_i - t_{i+1} and coefficients at the left point t_i:

        z_{i+1} = z_i - h [u + (eta^2/2)(g_i^2/sigma_i) eps_hat] + eta sqrt(g_i^2 h) xi

    (docs/theory.md, section 4). ``eta = 0`` is forward Euler on the PF-ODE in t,
    i.e. ``Euler()``. The noise is additive (g depends only on t), so the scheme has strong
    order 1 (Milstein's correction vanishes) and weak order 1. For eta > 0 a step out of
    alpha = 0 is the exact posterior draw (module docstring).

    Args:
        eta: noise scale of the family, in [0, inf); 1 is the reverse SDE of Anderson (1982).
    """

    order = 1
    stochastic = True
    requires = frozenset({"sde"})
    nfe_per_step = 1
    strong_order = 1.0
    weak_order = 1.0

    def __init__(self, eta: float = 1.0):
        self.eta = _check_nonneg("eta", eta)
        self.stochastic = self.eta > 0

    def prepare(self, grid):
        return _g2_list(grid) if self.eta > 0 else [0.0] * (grid.n + 1)

    def step_program(self, grid, i, g2):
        if self.eta > 0 and _singular(grid, g2, i):
            return _zero_snr_program(grid, i)
        h = grid.times[i] - grid.times[i + 1]
        c_eps = 0.5 * self.eta**2 * g2[i] / grid.sigma[i] * h if self.eta > 0 else 0.0
        c_noise = self.eta * math.sqrt(g2[i] * h) if self.eta > 0 else 0.0
        update = Z - h * Q(0, "velocity") - c_eps * Q(0, "eps") + c_noise * XI(0)
        return Step((Stage(grid.node(i), Z),), update)


# ---------------------------------------------------------------------------------------
class EDMStochastic(ProgramSolver):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on any process.

    Runs in VE variables y = z/alpha, s = sigma/alpha (EDM's "sigma"); the model is fed
    z = alpha y at the time of level s. With N = number of steps:

        gamma_i = min(churn/N, sqrt(2) - 1) if s_tmin <= s_i <= s_tmax else 0
        s_hat = s_i (1 + gamma_i),   y_hat = y_i + sqrt(s_hat^2 - s_i^2) s_noise xi
        d  = eps_hat(y_hat; s_hat),   y' = y_hat + (s_{i+1} - s_hat) d
        d' = eps_hat(y'; s_{i+1}),    y_{i+1} = y_hat + (s_{i+1} - s_hat)(d + d')/2

    using (y - D(y; s))/s = eps_hat. The correction is skipped when s_{i+1} = 0 (the last
    step then lands on D(y_hat; s_hat) = x0_hat, churn included). s_hat is capped at the
    process's largest level s(t_max), so the model is never asked outside its domain.
    ``churn = 0`` is ``Heun(clock="sigma")`` (EDM's Algorithm 1); on the EDM process that is
    also ``Heun()`` in t. A step from alpha = 0 (s = inf) is the Euler / DDIM step
    z' = alpha' x0_hat + sigma' eps_hat with no churn (one call): Heun's correction multiplies
    an infinite step there.

    Args:
        churn: S_churn >= 0 (total churn over the run).
        s_tmin, s_tmax: churn only where s_tmin <= s_i <= s_tmax (VE levels, 0 <= s_tmin <= s_tmax).
        s_noise: S_noise > 0, the std multiplier of the added noise.
    """

    order = 2
    stochastic = True
    requires = frozenset({"x0_eps"})
    nfe_per_step = 2
    # gamma = churn/N: the SDE the churn discretises (Karras et al. eq. 6 with beta = churn per
    # unit of step index) depends on the grid's spacing, so no SDE order is claimed
    strong_order = None
    weak_order = None

    def __init__(self, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0):
        self.churn = _check_nonneg("churn", churn)
        self.s_tmin = _check_nonneg("s_tmin", s_tmin)
        self.s_tmax = _check_nonneg("s_tmax", s_tmax, allow_inf=True)
        if self.s_tmax < self.s_tmin:
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
        if not (isinstance(s_noise, (int, float)) and not isinstance(s_noise, bool) and 0 < s_noise < math.inf):
            raise ValueError(f"s_noise must lie in (0, inf) (a finite number > 0), got {s_noise!r}")
        self.s_noise = float(s_noise)
        self.stochastic = self.churn > 0

    @classmethod
    def example(cls):
        """A churning instance for registry-wide tests (the default, churn = 0, is Heun)."""
        return cls(churn=10.0)

    def prepare(self, grid):
        """Per step: the churned node (t_hat, with its level s_hat) and the added std, or None."""
        p = grid.process
        ves = [s / a if a > 0 else math.inf for a, s in zip(grid.alpha, grid.sigma)]
        with torch.no_grad():
            t_top = torch.tensor(p.t_max, dtype=torch.float64)
            s_top = float(p.sigma(t_top) / p.alpha(t_top)) if float(p.alpha(t_top)) > 0 else math.inf
        gamma_max = min(self.churn / grid.n, math.sqrt(2.0) - 1.0)
        churns = []
        for i in range(grid.n):
            s_i = ves[i]
            churn = None
            gamma = gamma_max if (self.s_tmin <= s_i <= self.s_tmax) else 0.0
            if math.isfinite(s_i) and gamma > 0.0 and s_i < s_top:
                s_hat = min(s_i * (1.0 + gamma), s_top)
                with torch.no_grad():
                    t_hat = p.t_from_log_snr(torch.tensor(-2.0 * math.log(s_hat), dtype=torch.float64))
                    t_hat = torch.clamp(t_hat, grid.times[i], p.t_max)
                node = grid.nodes_at(t_hat.reshape(1))[0]
                s_hat = node.sigma / node.alpha  # the level the model actually sees at t_hat
                if s_hat > s_i:
                    churns.append((node, self.s_noise * math.sqrt(s_hat * s_hat - s_i * s_i)))
                    continue
            churns.append(None)
        return ves, churns

    def _churned(self, grid, i, churn):
        """(stage-0 node, z_hat, y_hat, s_hat): noise added at level s_i, in y = z/alpha."""
        if churn is None:
            return grid.node(i), Z, Z / grid.alpha[i], grid.sigma[i] / grid.alpha[i]
        node, std = churn
        y_hat = Z / grid.alpha[i] + std * XI(0)
        return node, node.alpha * y_hat, y_hat, node.sigma / node.alpha

    def step_program(self, grid, i, pre):
        ves, churns = pre
        if math.isinf(ves[i]):  # from alpha = 0: the DDIM step, no churn
            return Step((Stage(grid.node(i), Z),), grid.alpha[i + 1] * Q(0, "x0") + grid.sigma[i + 1] * Q(0, "eps"))
        node, z_hat, y_hat, s_hat = self._churned(grid, i, churns[i])
        ds = ves[i + 1] - s_hat
        d = Q(0, "eps")
        y1 = y_hat + ds * d
        a1 = grid.alpha[i + 1]
        stages = (Stage(node, z_hat), Stage(grid.node(i + 1), a1 * y1))
        return Step(stages, a1 * (y_hat + 0.5 * ds * (d + Q(1, "eps"))))

    def landing(self, grid, pre):
        """Onto s = 0: churn (if active), then one Euler step to 0, i.e. x0_hat(y_hat; s_hat)."""
        ves, churns = pre
        i = grid.n - 1
        if math.isinf(ves[i]):
            return super().landing(grid, pre)
        node, z_hat, _, _ = self._churned(grid, i, churns[i])
        return Step((Stage(node, z_hat),), Q(0, "x0"))


# ---------------------------------------------------------------------------------------
class SDEDPMSolverPP(ProgramSolver):
    r"""SDE-DPM-Solver++ (Lu et al. 2022b), multistep, data prediction; orders 1 and 2.

    In DPM-Solver's lambda = log(alpha/sigma) (``grid.lam_dpm``) the family's drift is linear
    in z up to the x0_hat term: dz = [(log alpha)_lam - (1+eta^2)] z dlam + (1+eta^2) alpha
    x0_hat dlam + noise of variance 2 eta^2 sigma^2 dlam. Its exact solution from s to t,
    h = lam_t - lam_s > 0, with x0_hat frozen (order 1) or linear in lam (2M, midpoint form):

        z_t = (sigma_t/sigma_s) e^{-eta^2 h} z_s + alpha_t (1 - e^{-(1+eta^2) h}) x0_0
              + alpha_t (1 - e^{-(1+eta^2) h}) / (2 r) (x0_0 - x0_-1)
              + sigma_t sqrt(1 - e^{-2 eta^2 h}) xi,              r = h_prev / h.

    ``eta`` is the family's eta (the noise std is eta g), the same as in
    :class:`EulerMaruyama`; k-diffusion's ``sample_dpmpp_2m_sde(eta=...)`` writes e^{-eta h},
    so its eta equals eta^2 here (the two agree at 0 and 1). eta = 0 is DPM-Solver++(2M)
    (``DPMSolverPP(2)``, ODE order 2); order 1 with eta = 1 is DDPM / DDIM(eta=1). The
    first step is first order; with ``lower_order_final`` and fewer than 15 steps the last
    step is first order too, exactly as ``DPMSolverPP``. Out of alpha = 0 (h = inf) the
    formula itself gives the posterior draw alpha_t x0_hat + sigma_t xi (eta > 0).
    """

    stochastic = True
    requires = frozenset({"x0_eps"})
    nfe_per_step = 1

    def __init__(self, order: int = 2, eta: float = 1.0, lower_order_final: bool = True):
        if isinstance(order, bool) or order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        self.order = int(order)
        self.eta = _check_nonneg("eta", eta)
        self.lower_order_final = check_lower_order_final(lower_order_final)
        self.stochastic = self.eta > 0
        # on the SDE (eta > 0): exponential Euler-Maruyama with additive noise, see tests
        self.strong_order = float(self.order) if self.eta == 0 else 1.0
        self.weak_order = float(self.order) if self.eta == 0 else 1.0

    def label(self):
        return f"SDEDPMSolverPP({self.order}" + (f", eta={self.eta:g})" if self.eta != 1.0 else ")")

    def step_program(self, grid, i, pre):
        e2 = self.eta**2
        h = grid.h(i)  # may be inf out of alpha = 0
        ratio = grid.sigma[i + 1] / grid.sigma[i]
        a = ratio * math.exp(-e2 * h) if e2 > 0 else ratio
        c = grid.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * e2 * h)) if e2 > 0 else 0.0
        b = grid.alpha[i + 1] * -math.expm1(-(1.0 + e2) * h)
        x0 = Q(0, "x0")
        update = a * Z + b * x0 + c * XI(0)
        if multistep_order(grid, i, self.order, self.lower_order_final) == 2:
            update = update + b / (2.0 * grid.h(i - 1) / h) * (x0 - H(0))  # b/(2r)
        return Step((Stage(grid.node(i), Z),), update, store=(x0,))


# ---------------------------------------------------------------------------------------
# method: (torchsde sde_type, ODE order, strong and weak order as torchsde states them for additive
# noise, model calls per step; srk is Rossler's SRA1, whose second stage re-evaluates the drift at
# the start point, served from the cache)
_TORCHSDE_METHODS = {
    "euler": ("ito", 1, 1.0, 1.0, 1),
    "milstein": ("ito", 1, 1.0, 1.0, 1),
    "srk": ("ito", 2, 1.5, 1.5, 2),
    "heun": ("stratonovich", 2, 1.0, 1.0, 2),
    "midpoint": ("stratonovich", 2, 1.0, 1.0, 2),
}


class TorchSDE(Solver):
    r"""The reverse-SDE family integrated by ``torchsde.sdeint`` (Li et al. 2020).

    torchsde integrates forward in s = -t the SDE  dz = -b(z, -s) ds + eta g(-s) dW_s  with
    b = u + (eta^2/2)(g^2/sigma) eps_hat the family's drift in t. The noise is additive, so
    Ito and Stratonovich coincide and torchsde's Stratonovich methods (heun, midpoint) apply
    too. Every coordinate is one torchsde state with its own scalar Brownian motion, taken
    from one ``BrownianInterval`` over the whole run, seeded from the sampling generator (a
    seed is drawn with ``torch.randint``). With a list of per-item generators each batch item
    gets its own interval seeded from its generator, so item i is reproducible on its own.

    Each grid step is one torchsde step (``dt=None``) or equal substeps no longer than ``dt``
    (one ``sdeint`` call each). torchsde inspects times on the host (``syncs_host``). A step out
    of alpha = 0 is the exact posterior draw (see the module docstring).

    Args:
        method: one of euler, milstein, srk, heun, midpoint.
        eta: noise scale of the family, in [0, inf).
        dt: None or the largest substep in t (> 0).
    """

    stochastic = True
    requires = frozenset({"sde"})
    syncs_host = True

    def __init__(self, method: str = "euler", eta: float = 1.0, dt: float | None = None):
        if method not in _TORCHSDE_METHODS:
            raise ValueError(f"unknown method {method!r}; TorchSDE methods are {', '.join(_TORCHSDE_METHODS)}")
        self.method = method
        self.eta = _check_nonneg("eta", eta)
        if dt is not None and not (
            isinstance(dt, (int, float)) and not isinstance(dt, bool) and 0 < dt < math.inf
        ):
            raise ValueError(f"dt must be None or lie in (0, inf), got {dt!r}")
        self.dt = None if dt is None else float(dt)
        self.stochastic = self.eta > 0
        _, self.order, self.strong_order, self.weak_order, calls = _TORCHSDE_METHODS[method]
        self._calls = calls

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return self._calls

    def expected_nfe(self, n_steps, ends_at_zero):
        if self.dt is not None:
            return None  # depends on the substeps of each grid step (see info.nfe)
        return super().expected_nfe(n_steps, ends_at_zero)

    def init(self, dyn, z, grid):
        g2 = _g2_list(grid) if self.eta > 0 else [0.0] * (grid.n + 1)
        singular = [self.eta > 0 and _singular(grid, g2, i) for i in range(grid.n)]
        return {"bm": None, "singular": singular}

    def _brownian(self, z, grid, noise):
        """One BrownianInterval over [-t_0, -t_n] for the batch, or one per item for a list of generators."""
        levy = "space-time" if self.method == "srk" else "none"

        def interval(gen, n_states):
            if gen is None:
                seed = int(torch.randint(0, 2**62, ()))
            else:
                seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
            return torchsde.BrownianInterval(
                t0=-grid.times[0], t1=-grid.times[-1], size=(n_states, 1), dtype=z.dtype, device=z.device,
                entropy=seed, levy_area_approximation=levy,
            )

        gen = noise.generator
        if isinstance(gen, (list, tuple)):
            per_item = z[0].numel()
            return _StackedBrownian([interval(g, per_item) for g in gen], levy)
        return interval(gen, z.numel())

    def step(self, dyn, z, i, grid, state, noise):
        if state["singular"][i]:
            return _zero_snr_step(dyn, z, i, grid, noise), state
        shape = z.shape
        n_states = z.numel()
        if state["bm"] is None:
            state["bm"] = self._brownian(z, grid, noise)
        sde = _ReverseSDE(dyn, grid.process, self.eta, shape, grid.ts.dtype, _TORCHSDE_METHODS[self.method][0])
        t_a, t_b = grid.times[i], grid.times[i + 1]
        k = 1 if self.dt is None else max(1, math.ceil((t_a - t_b) / self.dt - 1e-9))
        y = z.reshape(n_states, 1)
        for j in range(k):
            # one sdeint call per torchsde step: dt larger than the span makes torchsde land on
            # the end time exactly (it clamps), with no round-off microstep in low precision
            s0 = -(t_a + (t_b - t_a) * j / k)
            s1 = -(t_a + (t_b - t_a) * (j + 1) / k) if j + 1 < k else -t_b
            ts = torch.tensor([s0, s1], dtype=z.dtype, device=z.device)
            y = torchsde.sdeint(sde, y, ts, bm=state["bm"], method=self.method, dt=2.0 * (s1 - s0))[-1]
        return y.reshape(shape), state


class _StackedBrownian:
    """Per-item Brownian intervals seen by torchsde as one (batch * per_item, 1) Brownian motion."""

    def __init__(self, parts, levy):
        self.parts, self.levy_area_approximation = parts, levy
        first = parts[0]
        self.dtype, self.device = first.dtype, first.device
        self.shape = torch.Size((sum(b.shape[0] for b in parts), 1))

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        outs = [b(ta, tb, return_U=return_U, return_A=return_A) for b in self.parts]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts, 0) for parts in zip(*outs))
        return torch.cat(outs, 0)


class _ReverseSDE:
    """The family in torchsde's convention: time s = -t, additive noise, one scalar state per coordinate.

    ``sdeint`` evaluates the drift once at (s_0, y_0) to check shapes before its first step
    evaluates it there again; the last drift is kept so that costs one model call, not two.
    Only ``f`` and ``g`` are defined (a ``g_prod`` would make the shape check draw from the
    global torch RNG).
    """

    noise_type = "additive"

    def __init__(self, dyn, process, eta, shape, t_dtype, sde_type):
        self.dyn, self.process, self.eta = dyn, process, eta
        self.shape, self.t_dtype, self.sde_type = shape, t_dtype, sde_type
        self._last = None

    def f(self, s, y):
        s_val = float(s)  # host sync: torchsde steps on the host anyway (syncs_host)
        if self._last is not None and self._last[0] is y and self._last[1] == s_val:
            return self._last[2]
        t = -s.to(self.t_dtype)
        z = y.reshape(self.shape)
        pred = self.dyn.predict(z, t)
        b = pred.velocity
        if self.eta > 0:
            b = b + (0.5 * self.eta**2 * self.process.g2(t) / self.process.sigma(t)) * pred.eps
        out = -b.reshape(y.shape)
        self._last = (y, s_val, out)
        return out

    def g(self, s, y):
        g = self.eta * torch.sqrt(self.process.g2(-s.to(self.t_dtype)))
        return (g * torch.ones_like(y)).unsqueeze(-1)
