r"""Langevin-type MCMC samplers: ULA, MALA, annealed Langevin (NCSN) and predictor-corrector.

All four sample the time marginals p_t of the model (docs/theory.md, section 6c) using only the
score s = grad_z log p_t (and, for MALA, an energy E = -log p_t + const).

**Conventions.** The literature writes the unadjusted Langevin step in two ways:

    seed / paper convention (Welling & Teh 2011; NCSN paper):  x' = x + (eps/2) s(x) + sqrt(eps) xi
    code convention (NCSN code, score_sde):                    x' = x + delta s(x) + sqrt(2 delta) xi

with **delta = eps/2** (NCSN's ``step_lr`` is this delta). Everything here uses delta, in
the variable z of the process (not y = z/alpha); a step in VE variables,
y' = y + d s_y + sqrt(2 d) xi with s_y = alpha s_z, is the z-step with delta = alpha^2 d.
ULA is biased for delta > 0: on N(mu, S) its stationary law is N(mu, S (I - delta S^{-1}/2)^{-1}),
for N(0, s^2) the variance s^2/(1 - delta/(2 s^2)) = s^2/(1 - eps/(4 s^2)).

**Step sizes relative to sigma_t^2.** ``Langevin`` and ``MALA`` take a dimensionless
``step_size`` r and use delta_t = r sigma_t^2 at time t. Any Gaussian-smoothed law
p_t = Law(alpha x) * N(0, sigma^2 I) has -Hess log p_t <= I/sigma^2, so r bounds the
curvature-scaled step delta/V of every Gaussian component (V >= sigma^2): the same r behaves
alike on VP (sigma <= 1), VE (sigma up to 50) and EDM (sigma up to 80), and r < 2 keeps ULA
stable on every component. This is the NCSN annealing rule delta ~ sigma^2.

**Semantics along a grid** t_0 > t_1 > ... > t_n (``sample()``). After step i the state is
meant to be a draw from p_{t_{i+1}}, like every other solver's. Step i runs the solver's MCMC
kernel (``n_steps`` iterations) **targeting p_{t_{i+1}}**, started from the previous state;
nothing is transported between levels (this is annealed Langevin: a sequence of chains whose
targets move from p_{t_0} towards the data). The prior draw is exact for p_{t_0}, so level
t_0 is never run. A grid that ends at zero noise lands on x0_hat in its last step
(``Solver.final_step``, Tweedie's denoising, NCSNv2's final step) because the score is
infinite there. One model call per ULA iteration; the grid must be fine and ``n_steps``
large for these to be good samplers -- their main use is as correctors, and at a fixed
time through :meth:`run`.

``run(model, z, t)`` runs the kernel at one fixed time t: the MCMC use (leaving p_t
invariant, sampling an energy-based model).

Steps do only tensor arithmetic on z (no ``.item()``, no branching on tensor values):
MALA's accept/reject is a per-sample ``torch.where`` mask and its uniform draw is
Phi(n) for a standard normal n from the same noise source (so per-sample generators keep
batch items independent).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import compute_dtype
from ..model import Model
from .base import Dynamics, Noise, Solver, get_solver
from .grid import Grid

__all__ = ["Langevin", "MALA", "AnnealedLangevin", "PredictorCorrector"]


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a number > 0 and finite, got {value!r}")
    return float(value)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------
# tensor helpers (no host sync)
# ---------------------------------------------------------------------------------------
def _sumsq(x: Tensor) -> Tensor:
    """Per-sample squared L2 norm, shape [batch]."""
    return x.reshape(x.shape[0], -1).square().sum(-1)


def _batch_norm(x: Tensor) -> Tensor:
    """Batch mean of per-sample L2 norms (score_sde's ||.||), a 0-dim tensor."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=-1).mean()


def _per_sample(c: Tensor, z: Tensor) -> Tensor:
    return c.reshape(c.shape + (1,) * (z.ndim - c.ndim))


def _ula(dyn, z: Tensor, t: Tensor, n: int, coef, noise) -> Tensor:
    """``n`` ULA iterations z <- z + delta s + sqrt(2 delta) xi targeting p_t.

    ``coef`` is ``("fixed", delta, sqrt(2 delta))`` or ``("snr", c)``: then
    delta = c (||xi|| / ||s||)^2 with batch-mean norms (c = 2 alpha_c r^2, score_sde's
    LangevinCorrector), one step size for the whole batch.
    """
    for _ in range(n):
        s = dyn.predict(z, t).score
        xi = noise(z)
        if coef[0] == "fixed":  # a Python string: the mode is fixed at init, not a tensor value
            z = z + coef[1] * s + coef[2] * xi
        else:
            delta = coef[1] * (_batch_norm(xi) / _batch_norm(s)) ** 2
            z = z + delta * s + torch.sqrt(2.0 * delta) * xi
    return z


# ---------------------------------------------------------------------------------------
# the MCMC base: kernel at t_{i+1} per grid step, or at one fixed time
# ---------------------------------------------------------------------------------------
class _MCMC(Solver, register=False):
    """A kernel ``_iterate(dyn, z, t, coef, noise)`` run at t_{i+1} in step i."""

    order = None  # pure MCMC: no convergence order on the probability-flow ODE
    stochastic = True
    requires = frozenset({"score"})
    batch_coupled = False  # True where one step size is shared by the batch (batch-mean norms)

    def _coef(self, grid: Grid, j: int):
        """The per-level coefficient for grid time j (Python floats only)."""
        raise NotImplementedError

    def _iterate(self, dyn, z, t, coef, noise):
        raise NotImplementedError

    def init(self, dyn, z, grid):
        # level j = i + 1; the zero-noise end (if any) is reached by final_step, never run
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        return [self._coef(grid, i + 1) if i + 1 <= last else None for i in range(grid.n)]

    def step(self, dyn, z, i, grid, coefs, noise):
        return self._iterate(dyn, z, grid.t[i + 1], coefs[i], noise), coefs

    def run(self, model, z: Tensor, t, *, generator=None) -> Tensor:
        r"""Run this kernel (``n_steps`` iterations) targeting p_t at the single time ``t``.

        Args:
            model: a :class:`~unigen.model.Model` (with ``energy`` for MALA).
            z: [batch, ...] starting points.
            t: one time (float or 0-dim tensor) inside the process's domain with sigma_t > 0.
            generator: None, a torch.Generator, or one per batch item.

        Returns z after the iterations, in z's dtype. Leaves p_t invariant for MALA; for ULA
        up to the O(delta) bias above.
        """
        if not isinstance(model, Model):
            raise TypeError(f"model must be a unigen Model, got {type(model).__name__}")
        t = model.validate(z, t)
        if t.ndim != 0:
            raise ValueError(f"t must be a single time (shape []), got shape {tuple(t.shape)}")
        data_dtype = z.dtype
        work = compute_dtype(data_dtype)
        grid = Grid(model.process, torch.stack([t, t]).to(torch.float64), work, z.device)
        if grid.sigma[1] <= 0.0:
            raise ValueError(f"t must have sigma_t > 0 (the score is infinite at zero noise), got t={grid.times[1]:g}")
        dyn = Dynamics(model, data_dtype)
        self.check(dyn, grid)
        state = self.init(dyn, z, grid)
        z, _ = self.step(dyn, z.to(work), 0, grid, state, Noise(generator))
        return z.to(data_dtype)


class Langevin(_MCMC):
    r"""Unadjusted Langevin algorithm (ULA; Roberts & Tweedie 1996, Welling & Teh 2011).

    ``n_steps`` iterations  z <- z + delta s(z, t) + sqrt(2 delta) xi  at each level
    (delta = eps/2 of the paper convention x' = x + (eps/2) s + sqrt(eps) xi), with

    * ``step_size=r``: delta_t = r sigma_t^2 (NCSN annealing rule; r dimensionless), or
    * ``snr=r``: the signal-to-noise rule delta = 2 (r ||xi|| / ||s||)^2 with ||.|| the batch
      mean of per-sample L2 norms (score_sde's LangevinCorrector with alpha = 1), so that
      ||delta s|| / ||sqrt(2 delta) xi|| = r. One step size is shared by the batch, so batch
      items are then NOT independent (by design of score_sde's rule), and
      ``batch_coupled`` is True.

    Pass at most one of the two; the default is ``step_size=0.5`` (ULA's stationary variance on
    a Gaussian component of variance V >= sigma^2 is V/(1 - delta/(2V)), at most 4/3 V, and
    much closer near the data where V >> sigma^2). Along a grid, step i runs the iterations at
    t_{i+1} (module docstring). NFE per step: ``n_steps``.
    """

    def __init__(self, step_size: float | None = None, n_steps: int = 1, snr: float | None = None):
        if step_size is not None and snr is not None:
            raise ValueError("pass step_size (delta = step_size * sigma_t^2) or snr (signal-to-noise rule), not both")
        if snr is None:
            self.step_size = _positive("step_size", 0.5 if step_size is None else step_size)
            self.snr = None
        else:
            self.step_size = None
            self.snr = _positive("snr", snr)
        self.n_steps = _count("n_steps", n_steps)

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return self.n_steps

    @property
    def batch_coupled(self):  # type: ignore[override]
        return self.snr is not None

    def _coef(self, grid, j):
        if self.snr is not None:
            return ("snr", 2.0 * self.snr**2)
        delta = self.step_size * grid.sigma[j] ** 2
        return ("fixed", delta, math.sqrt(2.0 * delta))

    def _iterate(self, dyn, z, t, coef, noise):
        return _ula(dyn, z, t, self.n_steps, coef, noise)


class AnnealedLangevin(Langevin):
    r"""Annealed Langevin dynamics (Song & Ermon 2019, NCSN Algorithm 1).

    At VE level s_i = sigma_i/alpha_i of the grid: step = step_lr (s_i/s_L)^2 and ``n_steps``
    iterations  y <- y + step s_y + sqrt(2 step) xi  in VE variables y = z/alpha
    (paper: alpha_i = eps s_i^2/s_L^2 with x + (alpha_i/2) s + sqrt(alpha_i) xi, so
    step_lr = eps/2). In z this is ULA with delta_i = alpha_i^2 step = step_lr sigma_i^2/s_L^2,
    i.e. :class:`Langevin` with ``step_size = step_lr/s_L^2``; the two are equal step for step.

    s_L is the smallest nonzero level the chain visits: the grid's last time, or the one before
    it when the grid ends at zero noise (that last step is the denoising x0_hat). Levels are
    t_1..t_L as for :class:`Langevin` (module docstring). In :meth:`run` the level is t itself,
    so step = step_lr.

    Args:
        step_lr: NCSN's step at the smallest level (VE units). Default None means
            0.2 s_L^2, which is NCSN's CIFAR-10 setting 2e-5 at s_L = 0.01 carried to any
            grid (relative step 0.2 at every level, stable on every process).
        n_steps: iterations per level (NCSN: T = 100).
    """

    def __init__(self, step_lr: float | None = None, n_steps: int = 5):
        self.step_lr = None if step_lr is None else _positive("step_lr", step_lr)
        self.n_steps = _count("n_steps", n_steps)

    @property
    def batch_coupled(self):  # type: ignore[override]
        return False

    def init(self, dyn, z, grid):
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        ve = [s / a if a > 0 else math.inf for a, s in zip(grid.alpha, grid.sigma)]
        zeta_l = ve[last]
        if not 0.0 < zeta_l < math.inf:  # only a grid of one zero-noise step: nothing to run
            return [None] * grid.n
        step_lr = 0.2 * zeta_l**2 if self.step_lr is None else self.step_lr
        coefs = []
        for i in range(grid.n):
            j = i + 1
            if j > last:
                coefs.append(None)
                continue
            delta = step_lr * grid.sigma[j] ** 2 / zeta_l**2  # = alpha_j^2 * step_lr (zeta_j/zeta_L)^2
            coefs.append(("fixed", delta, math.sqrt(2.0 * delta)))
        return coefs


class MALA(_MCMC):
    r"""Metropolis-adjusted Langevin (Roberts & Tweedie 1996; docs/theory.md, section 6c).

    Proposal z' = z + delta s(z) + sqrt(2 delta) xi, i.e. N(z + (eps/2) s, eps I) with
    eps = 2 delta, accepted with probability min(1, p(z') q(z|z') / (p(z) q(z'|z))):

        log a = E(z) - E(z') + ||xi||^2/2 - ||z - z' - delta s(z')||^2 / (4 delta)

    with E = -log p_t + const the model's energy (``Model(..., energy=)``; the oracle's is
    exact). This leaves p_t exactly invariant for any delta. delta_t = step_size * sigma_t^2
    as for :class:`Langevin` (default 0.5; the acceptance rate falls with the dimension d
    unless the step shrinks like d^{-1/3}, Roberts & Rosenthal 1998). The accept test is log Phi(n) < log a for a standard normal n
    drawn from the same noise source (u = Phi(n) is uniform), and the update is a per-sample
    ``torch.where``: no host sync.

    Requires a model energy; ``sample()`` raises IncompatibleSolverError otherwise.
    NFE per step: 2 (n_steps + 1) -- score and energy at the start of the level and at each
    proposal (the values at the current point are carried over, both calls counted).

    Acceptance is readable without a sync as tensors of shape [batch]:
    ``last_acceptance`` (fraction accepted in the most recent step / run) and
    ``acceptance_rate`` (over every iteration since the last ``init``, i.e. the whole run).
    """

    requires = frozenset({"energy", "score"})

    def __init__(self, step_size: float = 0.5, n_steps: int = 1):
        self.step_size = _positive("step_size", step_size)
        self.n_steps = _count("n_steps", n_steps)
        self._last_acceptance = None
        self._acc_sum, self._acc_count = None, 0

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return 2 * (self.n_steps + 1)

    @property
    def last_acceptance(self) -> Tensor | None:
        return self._last_acceptance

    @property
    def acceptance_rate(self) -> Tensor | None:
        return None if self._acc_sum is None else self._acc_sum / self._acc_count

    def init(self, dyn, z, grid):
        self._last_acceptance = None
        self._acc_sum, self._acc_count = None, 0
        return super().init(dyn, z, grid)

    def _coef(self, grid, j):
        delta = self.step_size * grid.sigma[j] ** 2
        return (delta, math.sqrt(2.0 * delta))

    def _iterate(self, dyn, z, t, coef, noise):
        delta, sd = coef
        b = z.shape[0]
        s = dyn.predict(z, t).score
        e = dyn.energy(z, t).reshape(b)
        acc = torch.zeros(b, dtype=z.dtype, device=z.device)
        like_u = z.reshape(b, -1)[:, :1]
        for _ in range(self.n_steps):
            xi = noise(z)
            zp = z + delta * s + sd * xi
            sp = dyn.predict(zp, t).score
            ep = dyn.energy(zp, t).reshape(b)
            back = z - zp - delta * sp
            log_a = (e - ep) + 0.5 * _sumsq(xi) - _sumsq(back) / (4.0 * delta)
            log_u = torch.special.log_ndtr(noise(like_u).reshape(b))
            accept = log_u < log_a  # NaN in log_a (non-finite proposal) rejects
            m = _per_sample(accept, z)
            z = torch.where(m, zp, z)
            s = torch.where(m, sp, s)
            e = torch.where(accept, ep, e)
            acc = acc + accept.to(z.dtype)
        self._last_acceptance = acc / self.n_steps
        self._acc_sum = acc if self._acc_sum is None else self._acc_sum + acc
        self._acc_count += self.n_steps
        return z


# ---------------------------------------------------------------------------------------
# predictor-corrector
# ---------------------------------------------------------------------------------------
_CORRECTORS = ("langevin", "ald", "none")


class _ScoreSDECorrector(Langevin, register=False):
    """score_sde's correctors at t_{i+1} with alpha_c = (alpha_i/alpha_{i+1})^2.

    ``"langevin"``: delta = 2 alpha_c (r ||xi||/||s||)^2 (LangevinCorrector);
    ``"ald"``: delta = 2 alpha_c (r sigma_{i+1})^2 (AnnealedLangevinDynamics).
    """

    def __init__(self, kind: str, snr: float, n_steps: int):
        self.kind, self.snr, self.n_steps, self.step_size = kind, snr, n_steps, None

    @property
    def batch_coupled(self):  # type: ignore[override]
        return self.kind == "langevin"

    def init(self, dyn, z, grid):
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        coefs = []
        for i in range(grid.n):
            if i + 1 > last:
                coefs.append(None)
                continue
            alpha_c = (grid.alpha[i] / grid.alpha[i + 1]) ** 2  # 1 - beta_i; 1 for VE / EDM
            if self.kind == "langevin":
                coefs.append(("snr", 2.0 * alpha_c * self.snr**2))
            else:
                delta = 2.0 * alpha_c * (self.snr * grid.sigma[i + 1]) ** 2
                coefs.append(("fixed", delta, math.sqrt(2.0 * delta)))
        return coefs


class PredictorCorrector(Solver):
    r"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

    Step i = one ``predictor`` step t_i -> t_{i+1} (any solver: instance, class or registered
    name), then the corrector's Langevin iterations targeting p_{t_{i+1}}. The zero-noise
    final step is the predictor's alone (the score is infinite there).

    ``corrector``:

    * ``"langevin"`` (default; score_sde ``LangevinCorrector``): ``n_corrector_steps``
      iterations z <- z + delta s + sqrt(2 delta) xi with delta = 2 alpha_c (r ||xi||/||s||)^2,
      ||.|| the batch mean of per-sample L2 norms (one step size for the batch, so batch items
      are coupled: ``batch_coupled`` is True), r = ``snr``. The realised signal-to-noise ratio is
      ||delta s|| / ||sqrt(2 delta) xi|| = r sqrt(alpha_c).
    * ``"ald"`` (score_sde ``AnnealedLangevinDynamics``): delta = 2 alpha_c (r sigma_{t_{i+1}})^2.
    * ``"none"``: the predictor alone.
    * a :class:`Langevin` / :class:`MALA` / :class:`AnnealedLangevin` instance (or class): its own
      step rule and ``n_steps`` at t_{i+1}; then leave ``snr`` and ``n_corrector_steps`` unset.

    alpha_c = (alpha_{t_i}/alpha_{t_{i+1}})^2 = abar_i / abar_{i+1} is the continuous analogue of
    score_sde's 1 - beta_i over the interval just crossed (exactly 1 - beta on a full DDPM
    table, 1 for VE and EDM, in (0, 1] for every process whose alpha grows towards the data).
    At a zero-terminal-SNR start (alpha_{t_0} = 0) it is 0 and the first correction is void.

    ``order`` is None: the corrector's noise breaks the predictor's deterministic order.
    ``requires`` is the union of both; NFE per step = predictor's + corrector's. Predictors that
    keep model values across steps (multistep solvers, UniPC) see the value at the uncorrected
    point, as in any PC scheme with a multistep predictor.
    """

    order = None
    stochastic = True

    def __init__(self, predictor="DDPM", corrector="langevin", snr: float | None = None, n_corrector_steps: int | None = None):
        self.predictor = get_solver(predictor)
        if isinstance(corrector, type) and issubclass(corrector, _MCMC):
            corrector = corrector()
        if isinstance(corrector, _MCMC):
            if snr is not None or n_corrector_steps is not None:
                raise ValueError(
                    "snr and n_corrector_steps apply to corrector='langevin' or 'ald'; set the step rule "
                    f"and n_steps on the {type(corrector).__name__} instance instead"
                )
            self.corrector = corrector
            self.snr, self.n_corrector_steps = None, corrector.n_steps
            self._corr = corrector
        elif isinstance(corrector, str) and corrector in _CORRECTORS:
            self.corrector = corrector
            if corrector == "none":
                if snr is not None or n_corrector_steps is not None:
                    raise ValueError("corrector='none' takes no snr or n_corrector_steps")
                self.snr, self.n_corrector_steps, self._corr = None, 0, None
            else:
                self.snr = _positive("snr", 0.16 if snr is None else snr)
                self.n_corrector_steps = _count("n_corrector_steps", 1 if n_corrector_steps is None else n_corrector_steps)
                self._corr = _ScoreSDECorrector(corrector, self.snr, self.n_corrector_steps)
        else:
            raise ValueError(
                f"corrector must be one of {', '.join(map(repr, _CORRECTORS))} or a Langevin / MALA / "
                f"AnnealedLangevin instance, got {corrector!r}"
            )

    # -- declared properties forward the parts --------------------------------------
    @property
    def requires(self):  # type: ignore[override]
        extra = self._corr.requires if self._corr is not None else frozenset()
        return frozenset(self.predictor.requires) | extra

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return self.predictor.nfe_per_step + (self._corr.nfe_per_step if self._corr is not None else 0)

    @property
    def syncs_host(self):  # type: ignore[override]
        return self.predictor.syncs_host

    @property
    def batch_coupled(self) -> bool:
        """True when a batch item's result depends on the other items (the "langevin" rule)."""
        corr = self._corr is not None and self._corr.batch_coupled
        return corr or bool(getattr(self.predictor, "batch_coupled", False))

    def expected_nfe(self, n_steps, ends_at_zero):
        pred = self.predictor.expected_nfe(n_steps, ends_at_zero)
        if pred is None:
            return None
        per = self._corr.nfe_per_step if self._corr is not None else 0
        return pred + per * (n_steps - 1 if ends_at_zero else n_steps)

    def check(self, dyn, grid):
        super().check(dyn, grid)
        self.predictor.check(dyn, grid)

    # -- the step -------------------------------------------------------------------
    def init(self, dyn, z, grid):
        pred_state = self.predictor.init(dyn, z, grid)
        corr_state = self._corr.init(dyn, z, grid) if self._corr is not None else None
        return pred_state, corr_state

    def step(self, dyn, z, i, grid, state, noise):
        pred_state, corr_state = state
        z, pred_state = self.predictor.step(dyn, z, i, grid, pred_state, noise)
        if self._corr is not None:
            z, corr_state = self._corr.step(dyn, z, i, grid, corr_state, noise)
        return z, (pred_state, corr_state)

    def final_step(self, dyn, z, i, grid, state, noise):
        pred_state, corr_state = state
        z, pred_state = self.predictor.final_step(dyn, z, i, grid, pred_state, noise)
        return z, (pred_state, corr_state)
