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
re-evaluated at the corrected point) and the corrector is skipped on the last step, so
UniPC costs exactly one call per step. The corrector raises the order by one:
``order = p + 1`` with the corrector, ``p`` without. UniP-1 without corrector is DDIM,
and UniP-2 with bh2 is DPM-Solver++(2M).
"""

from __future__ import annotations

import math

from .._utils import check_choice
from ._expint import Form, psi
from .base import Solver, affine, cached_plan

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


class UniPC(Solver):
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
        self.lower_order_final = bool(lower_order_final)
        self._form = Form(prediction)
        self.order = order + 1 if self.corrector else order

    def _order_at(self, i, n):
        k = min(self.p, i + 1)
        if self.lower_order_final and n < 15:
            k = min(k, n - i)
        return k

    def init(self, dyn, z, grid):
        return {"plans": self._plan(dyn, grid), "hist": [], "pred": None}

    @cached_plan
    def _plan(self, dyn, grid):
        if not self._form.data and grid.alpha[0] == 0.0:
            raise ValueError("UniPC noise form divides by alpha, which is 0 at the grid start; use prediction='data'")
        plans = []
        for i in range(grid.n - 1 if grid.ends_at_zero else grid.n):  # the step onto sigma = 0 is final_step's
            k = self._order_at(i, grid.n)
            while k > 1 and math.isinf(grid.lam_dpm[i - k + 1]):
                k -= 1  # no divided differences through a zero-SNR point (lambda = -inf)
            h = grid.h(i)
            A, B, hh = self._form.coefs(grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1], h)
            rks = [(grid.lam_dpm[i - m] - grid.lam_dpm[i]) / h for m in range(1, k)] + [1.0]
            b, B_h = _unipc_coefs(rks, hh, self.variant)
            if k == 1:
                rho_p = []
            elif k == 2:
                rho_p = [0.5]
            else:
                rho_p = _solve(rks[:-1], b[:-1])
            rho_c = [0.5] if k == 1 else _solve(rks, b)
            # expand D_m = (m_{-m} - m_0)/r_m into weights on the stored values m_0, m_-1, ...
            c1, cB, inv = B * psi(1, hh), B * B_h, [1.0 / r for r in rks[:-1]]
            pred_w = [-c1 + cB * sum(r * q for r, q in zip(rho_p, inv))] + [-cB * r * q for r, q in zip(rho_p, inv)]
            corr_w = [-c1 + cB * (sum(r * q for r, q in zip(rho_c[:-1], inv)) + rho_c[-1])]
            corr_w += [-cB * r * q for r, q in zip(rho_c[:-1], inv)] + [-cB * rho_c[-1]]
            plans.append((A, pred_w, corr_w))
        it = iter(grid.tensors([v for A, pw, cw in plans for v in [A, *pw, *cw]]))
        return [(next(it), [next(it) for _ in pw], [next(it) for _ in cw]) for _, pw, cw in plans]

    def step(self, dyn, z, i, grid, state, noise):
        """Predictor z_t = A z + sum_j w_j m_-j; corrector adds the model value at the prediction."""
        pred = state["pred"] if state["pred"] is not None else dyn.predict(z, grid.t[i], grid.coefs(i))
        hist = state["hist"]
        hist.append(self._form.target(pred))
        del hist[:-3]
        A, pred_w, corr_w = state["plans"][i]
        z_t = affine(z, A, [(w, hist[-1 - j]) for j, w in enumerate(pred_w)])
        state["pred"] = None
        if self.corrector and i < grid.n - 1:
            pred_t = dyn.predict(z_t, grid.t[i + 1], grid.coefs(i + 1))
            terms = [(w, hist[-1 - j]) for j, w in enumerate(corr_w[:-1])] + [(corr_w[-1], self._form.target(pred_t))]
            z_t = affine(z, A, terms)
            state["pred"] = pred_t
        return z_t, state

    def final_step(self, dyn, z, i, grid, state, noise):
        pred = state["pred"] if state["pred"] is not None else dyn.predict(z, grid.t[i], grid.coefs(i))
        return pred.x0, state
