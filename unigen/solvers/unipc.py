r"""UniPC (Zhao et al. 2023): unified predictor-corrector multistep exponential integrator.

With lambda = log(alpha/sigma), h = lambda_t - lambda_s, hh = -h (data form, default) or +h
(noise form), m the expanded model quantity and D_k = (m_{-k} - m_0)/r_k, r_k = (lambda_{-k} - lambda_0)/h:

    UniP-p:  z_t = A z_s - B psi_1(hh) m_0 - B B(h) sum_k a_k D_k
    UniC-p:  z_t^c = A z_s - B psi_1(hh) m_0 - B B(h) [sum_k rho_k D_k + rho_p (m(z_t, t) - m_0)]

where a solves R[:-1,:-1] a = b[:-1] (a = [1/2] at p = 2), rho solves R rho = b (rho = [1/2]
at p = 1), R_{k,m} = r_m^{k-1} (r_p = 1), b_k = k! g_k / B(h), g_1 = psi_1(hh)/hh - 1,
g_{k+1} = g_k/hh - 1/(k+1)! (Zhao et al. 2023; psi functions as in docs/theory.md, section 6). B(h) = hh ("bh1") or e^hh - 1 ("bh2"); a step out of zero SNR (lambda_s = -inf) uses
e^hh - 1 = -1 for both, the only finite choice there.

The model value at the predicted point z_t is reused by the next step (it is *not*
re-evaluated at the corrected point; in the program it is stored and read back as H[0]) and
the corrector is skipped on the last step, so UniPC costs exactly one call per step. The corrector raises the order by one:
``order = p + 1`` with the corrector, ``p`` without. UniP-1 without corrector is DDIM,
and UniP-2 with bh2 is DPM-Solver++(2M).
"""

from __future__ import annotations

import math

from .._utils import check_choice
from ._expint import Form, psi
from .base import ProgramSolver, check_lower_order_final, multistep_order
from .program import H, Q, Stage, Step, Z

__all__ = ["UniPC"]


def _unipc_coefs(rks: list[float], hh: float, variant: str):
    """(b, B(h)) of UniPC for nodes rks (r_1..r_{p-1}, then 1): b_k = k! g_k / B(h)."""
    # B(h) only needs B(h) = O(h) as h -> 0; out of zero SNR (hh = -inf) bh1's is infinite,
    # so that one step takes bh2's finite B = -1
    B_h = hh if variant == "bh1" and math.isfinite(hh) else math.expm1(hh)
    g = psi(1, hh) / hh - 1.0
    b, fact = [], 1.0
    for k in range(1, len(rks) + 1):
        b.append(g * fact / B_h)
        fact *= k + 1
        g = g / hh - 1.0 / fact
    return b, B_h


def _solve(rks: list[float], b: list[float]) -> list[float]:
    """Solve R rho = b, R_{k,m} = rks[m]^k (a Vandermonde system of size <= 3), by Gaussian
    elimination with partial pivoting in plain Python floats (no tensor work per step)."""
    n = len(rks)
    A = [[rks[m] ** k for m in range(n)] + [b[k]] for k in range(n)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(A[r][col]))
        A[col], A[piv] = A[piv], A[col]
        for r in range(col + 1, n):
            f = A[r][col] / A[col][col]
            A[r] = [x - f * y for x, y in zip(A[r], A[col])]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (A[r][n] - sum(A[r][m] * x[m] for m in range(r + 1, n))) / A[r][r]
    return x


class UniPC(ProgramSolver):
    """UniPC with UniP-``order`` predictor and UniC corrector (``variant`` "bh1" or "bh2")."""

    requires = frozenset({"x0_eps"})

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True, prediction: str = "data",
                 lower_order_final: bool = True):
        check_choice("order", order, (1, 2, 3))
        check_choice("variant", variant, ("bh1", "bh2"))
        self.p = order
        self.variant = variant
        self.corrector = bool(corrector)
        self.prediction = prediction
        self.lower_order_final = check_lower_order_final(lower_order_final)
        self._form = Form(prediction)
        self.order = order + 1 if self.corrector else order

    @classmethod
    def variants(cls):
        return [cls(k, variant=v) for k in (1, 2, 3) for v in ("bh1", "bh2")] + [cls(k, corrector=False) for k in (2, 3)]

    def label(self):
        extra = [", bh1"] if self.variant == "bh1" else []
        extra += [", no corrector"] if not self.corrector else []
        extra += [", noise form"] if self.prediction != "data" else []
        extra += {True: [], False: [", no lower-order final"], "always": [", lower-order final always"]}[self.lower_order_final]
        return f"UniPC({self.p}{''.join(extra)})"

    def check_grid(self, grid):
        if not self._form.data and grid.alpha[0] == 0.0:
            raise ValueError("UniPC noise form divides by alpha, which is 0 at the grid start; use prediction='data'")

    def _corrects(self, grid, i: int) -> bool:
        """The corrector runs on every step but the last (its model call would be wasted there)."""
        return self.corrector and i < grid.n - 1

    def step_program(self, grid, i, pre):
        """Predictor z_t = A z - B psi_1 m_0 - B B(h) sum_k rho^p_k D_k; the corrector replaces the sum by
        sum_k rho^c_k D_k + rho^c_p (m(z_t, t) - m_0), with m(z_t, t) evaluated at the predicted point."""
        q = self._form.quantity
        k = multistep_order(grid, i, self.p, self.lower_order_final)
        h = grid.h(i)
        A, B, hh = self._form.coefs(grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1], h)
        rks = [(grid.lam_dpm[i - m] - grid.lam_dpm[i]) / h for m in range(1, k)] + [1.0]
        b, B_h = _unipc_coefs(rks, hh, self.variant)
        # m_0 was evaluated at the previous step's predicted point (corrector) or is evaluated here
        evaluate_here = i == 0 or not self._corrects(grid, i - 1)
        stages, store = [], []
        if evaluate_here:
            stages.append(Stage(grid.node(i), Z))
            store.append(Q(0, q))
            m = [Q(0, q)] + [H(j) for j in range(k - 1)]
        else:
            m = [H(j) for j in range(k)]
        D = [(m[j] - m[0]) / rks[j - 1] for j in range(1, k)]
        rho_p = [] if k == 1 else [0.5] if k == 2 else _solve(rks[:-1], b[:-1])
        base = A * Z - B * psi(1, hh) * m[0]
        predicted = base - B * B_h * _dot(rho_p, D)
        if not self._corrects(grid, i):
            return Step(tuple(stages), predicted, tuple(store))
        rho_c = [0.5] if k == 1 else _solve(rks, b)
        c = len(stages)
        stages.append(Stage(grid.node(i + 1), predicted))
        m_t = Q(c, q)
        corrected = base - B * B_h * (_dot(rho_c[:-1], D) + rho_c[-1] * (m_t - m[0]))
        store.append(m_t)
        if grid.ends_at_zero and i == grid.n - 2 and q != "x0":
            store.append(Q(c, "x0"))  # the landing reads x0_hat at this evaluation
        return Step(tuple(stages), corrected, tuple(store))

    def landing(self, grid, pre):
        """Onto sigma = 0: x0_hat of the last evaluation (the previous step's corrector call, if any)."""
        if grid.n >= 2 and self._corrects(grid, grid.n - 2):
            return Step((), H(0))
        return super().landing(grid, pre)


def _dot(weights, lins):
    out = 0.0 * Z
    for w, lin in zip(weights, lins):
        out = out + w * lin
    return out
