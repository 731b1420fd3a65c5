r"""Shared pieces of the exponential integrators (DDIM, DPM-Solver(++), UniPC, DEIS, SDE-DPM++).

The PF-ODE is semi-linear in DPM-Solver's lambda = log(alpha/sigma) (``Grid.lam_dpm``):

    data form:   z_t = (sigma_t/sigma_s) z_s + sigma_t int e^{lam} x0_hat dlam
    noise form:  z_t = (alpha_t/alpha_s) z_s - alpha_t int e^{-lam} eps_hat dlam

(Lu et al. 2022a,b; derived in docs/theory.md, section 6). Both are written once here as
``z_t = A z_s - B * sum_k psi_k(hh) * (k-th divided difference of the model)`` with
hh = -h for the data form and +h for the noise form; ``A, B`` are (sigma_t/sigma_s, alpha_t)
or (alpha_t/alpha_s, sigma_t); ``psi_k(x) = x phi_k(x)`` with the usual phi functions
phi_0 = e^x, phi_{k+1}(x) = (phi_k(x) - 1/k!)/x.
"""

from __future__ import annotations

import math

__all__ = ["phi", "psi", "Form"]


def phi(k: int, x: float) -> float:
    """phi_k(x) = sum_j x^j/(j+k)!, by series for small |x| (no cancellation), else recursion."""
    if abs(x) < 0.25:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(30):
            total += term
            term *= x / (j + k + 1)
        return total
    val = math.exp(x)
    for j in range(k):
        val = (val - 1.0 / math.factorial(j)) / x
    return val


def psi(k: int, x: float) -> float:
    """psi_k(x) = x phi_k(x): psi_1 = e^x - 1, psi_2 = (e^x-1)/x - 1, psi_3 = psi_2/x - 1/2.

    At x = -inf (a data-form step out of zero SNR, lambda_s = -inf) psi_k = -1/(k-1)!.
    """
    if x == -math.inf:
        return -1.0 / math.factorial(k - 1)
    return x * phi(k, x)


class Form:
    """Data (x0) or noise (eps) form of the semi-linear step from grid index i to j."""

    def __init__(self, name: str):
        if name not in ("data", "noise"):
            raise ValueError(f"prediction must be 'data' or 'noise', got {name!r}")
        self.data = name == "data"
        self.name = name

    @property
    def quantity(self) -> str:
        """The model quantity this form expands: "x0" (data) or "eps" (noise)."""
        return "x0" if self.data else "eps"

    def __eq__(self, other):
        return isinstance(other, Form) and other.name == self.name

    def __hash__(self):
        return hash(("Form", self.name))

    def coefs(self, a_s: float, s_s: float, a_t: float, s_t: float, h: float) -> tuple[float, float, float]:
        """(A, B, hh) of the step with lambda-increment h = lam_t - lam_s > 0."""
        if self.data:
            return s_t / s_s, a_t, -h
        return a_t / a_s, s_t, h

