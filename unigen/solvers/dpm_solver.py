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
``match_reference_3m=True`` uses the reference coefficient (its declared ``order`` is then 2).

Which is the default was decided by measurement (``benchmarks/low_nfe_defaults.py``: nine
exact-oracle problems, NFE 4-20, default grids). For the data form the published coefficient
has the lower endpoint error in 29 of 45 cases at NFE 4-10 (geometric-mean ratio 0.96) and in
19 of 27 at NFE 12-20 (0.78); the corrected one overtakes it only near 100 steps. For the
noise form the corrected one wins (24 of 45 at NFE 4-10, 25 of 27 at 12-20). So
``DPMSolverPP(3)`` defaults to the published coefficient and ``DPMSolver(3)`` to the
corrected one; pass ``match_reference_3m`` to choose.

Starting from pure noise (alpha = 0 at the grid start, as on flow matching's default grid)
the noise form's A = alpha_t/alpha_s is infinite; its limit is z_t = alpha_t x0_hat + sigma_t
eps_hat (DDIM), which multistep DPM-Solver takes as its first step. The zero-SNR point then
never enters a divided difference (r = inf drops to first order).

Multistep runs at reduced order during warm-up, and for fewer
than 15 steps the last steps drop to order 1 (and 2) as in the reference implementation
(``lower_order_final``; the one policy is ``base.multistep_order``), which keeps
small-step-count sampling stable.

Warm-up and the asymptotic order of 3M. A first-order first step has an O(h^2) local error,
so strictly a 3M method started that way is globally second order. At a low-SNR start the
constant is tiny for the data form (x0_hat barely moves) but not for the noise form: the
measured slope of DPM-Solver-3M falls from 3.8 to 2.3 between 128 and 1024 steps.
``warmup="singlestep"`` takes the first step with singlestep DPM-Solver-2 instead (one extra
model call), which restores third order at every step count (tests pin both behaviours).
"""

from __future__ import annotations

import math

from .._utils import check_choice
from ._expint import Form, psi
from .base import ProgramSolver, check_lower_order_final, multistep_order
from .program import H, Q, Stage, Step, Z

__all__ = ["DPMSolver", "DPMSolverPP"]


class _DPMSolverBase(ProgramSolver, register=False):
    prediction = "noise"
    requires = frozenset({"x0_eps"})
    reference_3m_default = False  # the 3M coefficient when match_reference_3m is None (measured; module docstring)

    def __init__(self, order: int = 2, multistep: bool = True, lower_order_final: bool = True,
                 match_reference_3m: bool | None = None, warmup: str = "lower_order", solver_type: str = "midpoint"):
        check_choice("order", order, (1, 2, 3))
        check_choice("warmup", warmup, ("lower_order", "singlestep"))
        check_choice("solver_type", solver_type, ("midpoint", "taylor"))
        self.warmup = warmup
        self.solver_type = solver_type
        self.multistep = bool(multistep)
        self.lower_order_final = check_lower_order_final(lower_order_final)
        if match_reference_3m is None:
            match_reference_3m = self.reference_3m_default
        self.match_reference_3m = bool(match_reference_3m)
        self._k = order  # the algorithm's order (Taylor terms kept)
        reference_3m = self.match_reference_3m and self.multistep and order == 3
        self.order = 2 if reference_3m else order  # the convergence order it achieves (measured)
        self._d2 = 1.0 if reference_3m else 2.0
        self._form = Form(self.prediction)

    @classmethod
    def variants(cls):
        return [cls(k, multistep=m, match_reference_3m=False) for k in (1, 2, 3) for m in (True, False)] + [
            cls(3, match_reference_3m=True)]

    def label(self):
        extra = [", reference 3M"] if self.match_reference_3m and self.multistep and self._k == 3 else []
        extra += [", taylor"] if self.solver_type == "taylor" else []
        extra += [", singlestep warm-up"] if self.warmup == "singlestep" else []
        extra += {True: [], False: [", no lower-order final"], "always": [", lower-order final always"]}[self.lower_order_final]
        return f"{type(self).__name__}({self._k}{'M' if self.multistep else 'S'}{''.join(extra)})"

    @property
    def nfe_per_step(self):  # type: ignore[override]
        return 1 if self.multistep else self._k

    def _singlestep_at(self, i: int, grid=None) -> bool:
        """Singlestep at step i: always, or as multistep DPM-Solver-3's first step (warmup="singlestep"),
        except out of alpha = 0, where the intermediate log-SNRs are -inf (a first-order step instead)."""
        if grid is not None and self.multistep and grid.alpha[i] == 0.0:
            return False
        return not self.multistep or (self.warmup == "singlestep" and self._k == 3 and i == 0)

    def check_grid(self, grid):
        if grid.alpha[0] == 0.0 and not self.multistep and self._k > 1:
            # the intermediate points sit at lambda_s + r h, which is -inf for every r
            raise ValueError(
                f"singlestep {type(self).__name__}({self._k}) places its intermediate points between the log-SNRs of "
                f"a step, and the first is -inf (alpha = 0 at t={grid.times[0]:g}); use multistep=True or a smaller t_start"
            )

    def prepare(self, grid):
        """The intermediate nodes of every singlestep step, in one vectorised pass."""
        last = grid.n - 1 if grid.ends_at_zero else grid.n
        points = []
        for i in range(last):
            if self._singlestep_at(i, grid):
                k = multistep_order(grid, i, self._k if not self.multistep else 2, self.lower_order_final, history=False)
                points += [(i, r, 2.0 * (grid.lam_dpm[i] + r * grid.h(i))) for r in {2: (0.5,), 3: (1 / 3, 2 / 3)}.get(k, ())]
        nodes = grid.node_at_log_snr([lam for _, _, lam in points])
        inter: dict = {}
        for (i, r, _), node in zip(points, nodes):
            inter.setdefault(i, []).append((r, node))
        return inter

    def step_program(self, grid, i, pre):
        q = self._form.quantity
        m0 = Q(0, q)
        here = Stage(grid.node(i), Z)
        if not self._form.data and grid.alpha[i] == 0.0:
            # out of pure noise the noise form's A = alpha_t/alpha_s is infinite; its limit is DDIM
            return Step((here,), grid.alpha[i + 1] * Q(0, "x0") + grid.sigma[i + 1] * Q(0, "eps"), store=(m0,))
        h = grid.h(i)
        A, B, hh = self._form.coefs(grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1], h)
        if self._singlestep_at(i, grid):
            return self._singlestep(grid, i, pre.get(i, []), A, B, hh, h, q)
        k = multistep_order(grid, i, self._k, self.lower_order_final)
        p1, p2, p3 = psi(1, hh), psi(2, hh), psi(3, hh)
        if k == 1:
            update = A * Z - B * p1 * m0
        elif k == 2:
            m1, r0 = H(0), grid.h(i - 1, i) / h
            if self.solver_type == "taylor":
                update = A * Z - B * (p1 * m0 + p2 * (m0 - m1) / r0)
            else:
                update = A * Z - B * p1 * (m0 + (m0 - m1) / (2 * r0))
        else:
            m1, m2 = H(0), H(1)
            r0, r1 = grid.h(i - 1, i) / h, grid.h(i - 2, i - 1) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            update = A * Z - B * (p1 * m0 + p2 * d1 + self._d2 * p3 * d2)
        return Step((here,), update, store=(m0,))

    def _singlestep(self, grid, i, inter, A, B, hh, h, q):
        """Singlestep DPM-Solver-2 (r1 = 1/2) or -3 (r1 = 1/3, r2 = 2/3): intermediate points u_k."""
        m0 = Q(0, q)
        here = Stage(grid.node(i), Z)
        store = (m0,) if self.multistep else ()  # a singlestep warm-up feeds the multistep steps after it
        base = A * Z - B * psi(1, hh) * m0
        if not inter:
            return Step((here,), base, store)
        (r1, node1), *rest = inter
        A1, B1, _ = self._form.coefs(grid.alpha[i], grid.sigma[i], node1.alpha, node1.sigma, r1 * h)
        u1 = A1 * Z - B1 * psi(1, r1 * hh) * m0
        d1 = Q(1, q) - m0
        if not rest:
            return Step((here, Stage(node1, u1)), base - B * psi(1, hh) / (2 * r1) * d1, store)
        r2, node2 = rest[0]
        A2, B2, _ = self._form.coefs(grid.alpha[i], grid.sigma[i], node2.alpha, node2.sigma, r2 * h)
        u2 = A2 * Z - B2 * psi(1, r2 * hh) * m0 - B2 * (r2 / r1) * psi(2, r2 * hh) * d1
        d2 = Q(2, q) - m0
        return Step((here, Stage(node1, u1), Stage(node2, u2)), base - B * psi(2, hh) / r2 * d2, store)


class DPMSolver(_DPMSolverBase):
    """DPM-Solver: exponential integrator of the noise-prediction form (Lu et al. 2022a)."""

    prediction = "noise"

    @classmethod
    def variants(cls):
        return super().variants() + [cls(2, solver_type="taylor", match_reference_3m=False)]


class DPMSolverPP(_DPMSolverBase):
    """DPM-Solver++: exponential integrator of the data-prediction form (Lu et al. 2022b).

    Third-order multistep uses the published 3M coefficient by default (measured lower error
    at NFE 4-20; module docstring); ``match_reference_3m=False`` gives the corrected, third-order one."""

    prediction = "data"
    reference_3m_default = True
