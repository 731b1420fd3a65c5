r"""DPM-Solver (Lu et al. 2022a, noise prediction) and DPM-Solver++ (Lu et al. 2022b, data
prediction), orders 1-3, singlestep and multistep: one body for all twelve variants.

In DPM-Solver's lambda = log(alpha/sigma), with h = lambda_t - lambda_s, hh = -h (data) or
+h (noise), A = sigma_t/sigma_s (data) or alpha_t/alpha_s (noise), B = alpha_t or sigma_t and
m the expanded model quantity (x0_hat or eps_hat):

    order 1:   z_t = A z_s - B psi_1(hh) m_s                                   (= DDIM)
    2M:        z_t = A z_s - B psi_1(hh) [m_0 + (m_0 - m_-1)/(2 r)],   r = h_-1/h   ("midpoint")
               z_t = A z_s - B [psi_1(hh) m_0 + psi_2(hh) (m_0 - m_-1)/r]            ("taylor")
    3M:        z_t = A z_s - B [psi_1 m_0 + psi_2 D1 + 2 psi_3 D2]
               D1_0 = (m_0-m_-1)/r0, D1_1 = (m_-1-m_-2)/r1,
               D1 = D1_0 + r0/(r0+r1) (D1_0-D1_1), D2 = (D1_0-D1_1)/(r0+r1)
    2S (r1 = 1/2):  u = A_1 z_s - B_1 psi_1(r1 hh) m_s;
               z_t = A z_s - B psi_1(hh) m_s - B/(2 r1) psi_1(hh) (m(u) - m_s)
    3S (r1 = 1/3, r2 = 2/3):  u1 as above; u2 = A_2 z_s - B_2 psi_1(r2 hh) m_s - B_2 (r2/r1) psi_2(r2 hh) D1;
               z_t = A z_s - B psi_1(hh) m_s - (B/r2) psi_2(hh) D2,  D_k = m(u_k) - m_s

with psi_1(x) = e^x - 1, psi_2(x) = psi_1/x - 1, psi_3 = psi_2/x - 1/2 (``_expint``). These are
the "dpmsolver" (midpoint) variants of the reference implementation; the 2M update of
docs/theory.md, section 6, is the first line.

3M coefficient. D1 ~ h m' and D2 ~ h^2 m''/2 (Taylor), and the exact integral of the
quadratic term is -2 psi_3 D2, so the factor 2 is required for third order. The reference
implementation (and the k-diffusion / diffusers ports) use psi_3 D2, which leaves an O(h^3)
local error: measured global order 2.0 instead of 3.0 (tests/test_ode_order.py pins both).
``match_reference_3m=True`` reproduces the reference coefficient for side-by-side comparisons
(its declared ``order`` is then 2).

Starting from pure noise (alpha = 0 at the grid start, as on flow matching's default grid)
the noise form's A = alpha_t/alpha_s is infinite; its limit is z_t = alpha_t x0_hat + sigma_t
eps_hat (DDIM), which multistep DPM-Solver takes as its first step. The zero-SNR point then
never enters a divided difference (r = inf drops to first order).

Multistep runs at reduced order during warm-up, and for fewer
than 15 steps the last steps drop to order 1 (and 2) as in the reference implementation
(``lower_order_final``), which keeps small-step-count sampling stable.

Warm-up and the asymptotic order of 3M. A first-order first step has an O(h^2) local error,
so strictly a 3M method started that way is globally second order. At a low-SNR start the
constant is tiny for the data form (x0_hat barely moves) but not for the noise form: the
measured slope of DPM-Solver-3M falls from 3.8 to 2.3 between 128 and 1024 steps.
``warmup="singlestep"`` takes the first step with singlestep DPM-Solver-2 instead (one extra
model call), which restores third order at every step count (tests pin both behaviours).
"""

from __future__ import annotations

import math

import torch

from .._utils import check_choice
from ._expint import Form, psi
from .base import Solver, affine, cached_plan

__all__ = ["DPMSolver", "DPMSolverPP"]


class _DPMSolverBase(Solver, register=False):
    prediction = "noise"
    requires = frozenset({"x0_eps"})

    def __init__(self, order: int = 2, multistep: bool = True, lower_order_final: bool = True,
                 match_reference_3m: bool = False, warmup: str = "lower_order", solver_type: str = "midpoint"):
        check_choice("order", order, (1, 2, 3))
        check_choice("warmup", warmup, ("lower_order", "singlestep"))
        check_choice("solver_type", solver_type, ("midpoint", "taylor"))
        self.warmup = warmup
        self.solver_type = solver_type
        self.multistep = bool(multistep)
        self.lower_order_final = bool(lower_order_final)
        self.match_reference_3m = bool(match_reference_3m)
        self._k = order  # the algorithm's order (Taylor terms kept)
        reference_3m = self.match_reference_3m and self.multistep and order == 3
        self.order = 2 if reference_3m else order  # the convergence order it achieves (measured)
        self._d2 = 1.0 if reference_3m else 2.0
        self._form = Form(self.prediction)

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return 1 if self.multistep else self._k

    def expected_nfe(self, n_steps, ends_at_zero):
        last = n_steps - 1 if ends_at_zero else n_steps  # the step onto sigma = 0 costs one call
        return sum(self._calls_at(i, n_steps) for i in range(last)) + (n_steps - last)

    def _order_at(self, i: int, n: int) -> int:
        """Taylor order of step i (warm-up and lower_order_final included)."""
        if not self.multistep or self._singlestep_warmup(i):
            k = self._k if not self.multistep else 2
        else:
            k = min(self._k, i + 1)
        if self.lower_order_final and n < 15:
            k = min(k, n - i)
        return k

    def _singlestep_warmup(self, i: int) -> bool:
        return self.multistep and self.warmup == "singlestep" and self._k == 3 and i == 0

    def _calls_at(self, i: int, n: int) -> int:
        single = not self.multistep or self._singlestep_warmup(i)
        return self._order_at(i, n) if single else 1

    # -- precomputation --------------------------------------------------------------------
    def init(self, dyn, z, grid):
        plan = self._plan(dyn, grid)
        return {"hist": [], "inter": plan["inter"], "weights": plan["weights"], "from_noise": plan["from_noise"]}

    @cached_plan
    def _plan(self, dyn, grid):
        from_noise = not self._form.data and grid.alpha[0] == 0.0
        if grid.alpha[0] == 0.0 and not self.multistep and self._k > 1:
            # the intermediate points sit at lambda_s + r h, which is -inf for every r
            raise ValueError(
                f"singlestep {type(self).__name__}({self._k}) places its intermediate points between the log-SNRs of "
                f"a step, and the first is -inf (alpha = 0 at t={grid.times[0]:g}); use multistep=True or a smaller t_start"
            )
        state = {"inter": {}, "weights": {}, "from_noise": None}
        if self.multistep:  # every multistep update as 0-dim tensor weights, made in one pass
            n_plan = grid.n - 1 if grid.ends_at_zero else grid.n
            first = 1 if from_noise else 0
            plans = [self._multistep_weights(grid, i, self._order_at(i, grid.n)) for i in range(first, n_plan)]
            it = iter(grid.tensors([v for A, ws in plans for v in [A, *ws]]))
            state["weights"] = {i: (next(it), [next(it) for _ in ws]) for i, (_, ws) in enumerate(plans, first)}
        if from_noise:  # the alpha_s -> 0 limit of the noise-form step: z_t = alpha_t x0_hat + sigma_t eps_hat
            state["from_noise"] = tuple(grid.tensors([grid.alpha[1], grid.sigma[1]]))
        # intermediate points r of singlestep steps, evaluated in one vectorised pass
        plan = []
        for i in range(grid.n):
            if not self.multistep or self._singlestep_warmup(i):
                rs = {2: (0.5,), 3: (1 / 3, 2 / 3)}.get(self._order_at(i, grid.n), ())
                state["inter"][i] = []
                plan += [(i, r, 2.0 * (grid.lam_dpm[i] + r * grid.h(i))) for r in rs]
        if plan:
            ts = grid.process.t_from_log_snr(torch.tensor([lam for _, _, lam in plan], dtype=torch.float64))
            for (i, r, _), c in zip(plan, grid.fixed(ts)):
                state["inter"][i].append((r, c.t, c.alpha, c.sigma, c))
        return state

    def _ab(self, grid, i, a_t, s_t, h):
        return self._form.coefs(grid.alpha[i], grid.sigma[i], a_t, s_t, h)

    # -- steps -------------------------------------------------------------------------------
    def step(self, dyn, z, i, grid, state, noise):
        if i == 0 and state["from_noise"] is not None:
            pred = dyn.predict(z, grid.t[0], grid.coefs(0))
            state["hist"].append((0, pred.eps))  # lambda_0 = -inf: never used in a difference
            a_t, s_t = state["from_noise"]
            return affine(pred.x0, a_t, [(s_t, pred.eps)]), state
        m0 = self._form.target(dyn.predict(z, grid.t[i], grid.coefs(i)))
        k = self._order_at(i, grid.n)
        if self.multistep:
            hist = state["hist"]
            hist.append((i, m0))
            del hist[:-3]
            if i not in state["inter"]:
                A, ws = state["weights"][i]
                return affine(z, A, [(w, hist[-1 - j][1]) for j, w in enumerate(ws)]), state
        return self._singlestep(dyn, z, i, grid, m0, state["inter"][i], k), state

    def _multistep_weights(self, grid, i, k) -> tuple[float, list[float]]:
        """z_t = A z_s + sum_j w_j m_{-j}: the multistep update with its divided differences
        expanded into weights on the stored model values (m_0, m_-1, m_-2)."""
        h = grid.h(i)
        A, B, hh = self._ab(grid, i, grid.alpha[i + 1], grid.sigma[i + 1], h)
        p1, p2, p3 = psi(1, hh), psi(2, hh), psi(3, hh)
        r0 = grid.h(i - 1, i) / h if k >= 2 else math.inf
        r1 = grid.h(i - 2, i - 1) / h if k >= 3 else math.inf
        if math.isinf(r0):  # no usable history (warm-up, or a zero-SNR previous point)
            return A, [-B * p1]
        if k == 2 or math.isinf(r1):
            if self.solver_type == "taylor":
                return A, [-B * (p1 + p2 / r0), B * p2 / r0]
            return A, [-B * p1 * (1 + 0.5 / r0), B * p1 * 0.5 / r0]
        # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1; D1 = D1_0 + r0/(r0+r1)(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1)
        d1_0 = [1 / r0, -1 / r0, 0.0]
        diff = [1 / r0, -1 / r0 - 1 / r1, 1 / r1]
        d1 = [x + r0 / (r0 + r1) * y for x, y in zip(d1_0, diff)]
        d2 = [y / (r0 + r1) for y in diff]
        e0 = [1.0, 0.0, 0.0]
        return A, [-B * (p1 * a + p2 * b + self._d2 * p3 * c) for a, b, c in zip(e0, d1, d2)]

    def _singlestep(self, dyn, z, i, grid, m0, inter, k):
        h = grid.h(i)
        A, B, hh = self._ab(grid, i, grid.alpha[i + 1], grid.sigma[i + 1], h)
        base = A * z - (B * psi(1, hh)) * m0
        if k == 1:
            return base
        r1, t1, a1, s1, c1 = inter[0]
        A1, B1, _ = self._ab(grid, i, a1, s1, r1 * h)
        u1 = A1 * z - (B1 * psi(1, r1 * hh)) * m0
        d1 = self._form.target(dyn.predict(u1, t1, c1)) - m0
        if k == 2:
            return base - (B * psi(1, hh) / (2 * r1)) * d1
        r2, t2, a2, s2, c2 = inter[1]
        A2, B2, _ = self._ab(grid, i, a2, s2, r2 * h)
        u2 = A2 * z - (B2 * psi(1, r2 * hh)) * m0 - (B2 * (r2 / r1) * psi(2, r2 * hh)) * d1
        d2 = self._form.target(dyn.predict(u2, t2, c2)) - m0
        return base - (B * psi(2, hh) / r2) * d2


class DPMSolver(_DPMSolverBase):
    """DPM-Solver: exponential integrator of the noise-prediction form (Lu et al. 2022a)."""

    prediction = "noise"


class DPMSolverPP(_DPMSolverBase):
    """DPM-Solver++: exponential integrator of the data-prediction form (Lu et al. 2022b)."""

    prediction = "data"
