r"""Exactness and local-error order of every fixed-grid solver (issue 12, "guard first").

Global order tests cannot see a coefficient that is off by 0.1%: the error moves but the slope
stays inside its window. Two sharper guards:

1. **Exactness.** A model whose expanded quantity m does not depend on z and is a polynomial
   of degree d in the solver's clock variable x makes the probability-flow ODE a quadrature,
   z_t = S(t) [z_s / S(s) + F(x_t) - F(x_s)], with F an antiderivative in closed form:

       data form   x = lambda = log(alpha/sigma), S = sigma, m = x0_hat:  F = e^x sum_j (-1)^j m^(j)
       noise form  x = lambda,                    S = alpha, m = eps_hat: F = e^-x sum_j m^(j)
       clock "t"   x = t,                         S = 1,     m = velocity: F = int m dt
       clock "sigma" x = sigma/alpha,             S = alpha, m = eps_hat:  F = int m dx

   Each step output (from the solver's own previous state) and each off-grid model input (a
   singlestep/Runge-Kutta stage, UniPC's predicted point) is then exact, to rounding, for every
   d up to that item's *exactness degree*, and wrong at degree + 1. The degrees are derived
   below from each method's formula (``SPECS``); the test checks both directions, so it pins
   every weight, every stage coefficient and the warm-up / lower-order-final policy.
   Exactness degree is not always order - 1: the "midpoint" forms (DPM-Solver-2S/2M with
   solver_type="midpoint", UniP-2 and UniC-1 with their fixed rho = 1/2) replace psi_2 by an
   O(h^3)-accurate stand-in and are exact for constants only; singlestep DPM-Solver-3 is exact
   for degree 1 (its last stage uses psi_2, not psi_3).

2. **Local error.** One step from the exact solution has error C h^(order+1). On a
   z-independent smooth oracle (m = sin(a x + b), closed-form flow) the steady step of every
   multistep method is measured with exact history, at step sizes small enough that a 0.1%
   change of an O(h^2) coefficient (the midpoint forms above, UniPC's B(h)) turns the slope
   towards order; on a nonlinear Gaussian-mixture oracle the one-step methods are measured
   against a dopri5 reference.
"""

import functools
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import Polynomial

import unigen as ug

PROCESS = ug.VP.linear()
DIM = 3
Z0 = torch.randn(4, DIM, generator=torch.Generator().manual_seed(7))
F64 = torch.float64


# ---- clocks: the variable x in which a solver integrates, and the scale S ---------------------
def _np(t):
    return torch.as_tensor(t, dtype=F64)


CLOCKS = {
    # name: (parametrization of the model, x(t), S(t))
    "data": ("x0", lambda t: 0.5 * PROCESS.log_snr(_np(t)), lambda t: PROCESS.sigma(_np(t))),
    "noise": ("eps", lambda t: 0.5 * PROCESS.log_snr(_np(t)), lambda t: PROCESS.alpha(_np(t))),
    "t": ("velocity", lambda t: _np(t), lambda t: torch.ones_like(_np(t))),
    "sigma": ("eps", lambda t: PROCESS.sigma(_np(t)) / PROCESS.alpha(_np(t)), lambda t: PROCESS.alpha(_np(t))),
}


class PolyOracle:
    """m(x) = P_c(x) per coordinate c, with its closed-form antiderivative in the clock's weight."""

    def __init__(self, clock, degree, x_lo, x_hi, seed=0):
        rng = np.random.default_rng(seed + 17 * degree)
        c, w = 0.5 * (x_lo + x_hi), 0.5 * (x_hi - x_lo)
        u = Polynomial([-c / w, 1.0 / w])  # u = (x - c)/w in [-1, 1] on the grid
        self.polys = [Polynomial(rng.standard_normal(degree + 1))(u) for _ in range(DIM)]
        self.clock = clock

    def value(self, x: float) -> np.ndarray:
        return np.array([p(x) for p in self.polys])

    def F(self, x: float) -> np.ndarray:
        out = []
        for p in self.polys:
            if self.clock in ("t", "sigma"):
                out.append(p.integ()(x))
                continue
            derivs = [p.deriv(j)(x) for j in range(p.degree() + 1)]
            if self.clock == "data":
                out.append(math.exp(x) * sum((-1) ** j * v for j, v in enumerate(derivs)))
            else:
                out.append(math.exp(-x) * sum(derivs))
        return np.array(out)


class SineOracle:
    """m(x) = sin(a x + b) per coordinate (data or noise clock), antiderivative in closed form."""

    a = np.array([0.7, 1.3, 2.1])
    b = np.array([0.3, -1.1, 2.0])

    def __init__(self, clock):
        self.clock = clock

    def value(self, x):
        return np.sin(self.a * x + self.b)

    def F(self, x):
        s, c = np.sin(self.a * x + self.b), np.cos(self.a * x + self.b)
        if self.clock == "data":  # int e^x sin = e^x (sin - a cos)/(1 + a^2)
            return math.exp(x) * (s - self.a * c) / (1 + self.a**2)
        return math.exp(-x) * (s + self.a * c) / (1 + self.a**2)  # int -e^-x sin


def oracle_model(clock, oracle, record):
    param, x_of, _ = CLOCKS[clock]

    def fn(z, t):
        record.append((float(t), z.detach().clone()))
        m = torch.as_tensor(oracle.value(float(x_of(t.detach()))), dtype=z.dtype)
        return torch.zeros_like(z) + m

    return ug.Model(fn, PROCESS, param)


def flow(clock, oracle, z_s, t_s, t_e):
    """Exact solution at t_e of the PF-ODE through (t_s, z_s) for a z-independent oracle."""
    _, x_of, S = CLOCKS[clock]
    xs, xe = float(x_of(t_s)), float(x_of(t_e))
    inc = torch.as_tensor(oracle.F(xe) - oracle.F(xs), dtype=F64)
    return float(S(t_e)) * (z_s / float(S(t_s)) + inc)


# ---- exactness degrees of every step output and every model call, from each method's formula --
def _lof(on, n, i, k):
    """Lower-order final steps (DPM-Solver's, UniPC's, DEIS's policy): for fewer than 15 steps."""
    return min(k, n - i) if on and n < 15 else k


def _single(k):
    # DPM-Solver-kS: u1 (r = 1/2 or 1/3) is a DDIM step (degree 0); u2 (r = 2/3) uses psi_2 D1
    # (degree 1); the 2S output replaces psi_2 by psi_1/2 (degree 0), the 3S output keeps psi_2
    # but approximates psi_3 (degree 1)
    return {1: (0, ["start"]), 2: (0, ["start", 0]), 3: (1, ["start", 0, 1])}[k]


def dpm_spec(K, multistep=True, taylor=False, ref3m=False, single_warmup=False, lof=True):
    def spec(n):
        out = []
        for i in range(n):
            if not multistep or (single_warmup and K == 3 and i == 0):
                out.append(_single(_lof(lof, n, i, K if not multistep else 2)))
                continue
            k = _lof(lof, n, i, min(K, i + 1))
            # 2M: taylor psi_2 D1 is exact for lines, midpoint psi_1 D1/2 only for constants;
            # 3M: psi_1 m + psi_2 D1 + 2 psi_3 D2 with exact divided differences (degree 2), the
            # published psi_3 D2 only degree 1
            out.append(({1: 0, 2: 1 if taylor else 0, 3: 1 if ref3m else 2}[k], ["start"]))
        return out

    return spec


def unipc_spec(p, corrector, lof=True):
    def spec(n):
        out = []
        for i in range(n):
            k = _lof(lof, n, i, min(p, i + 1))
            pred = {1: 0, 2: 0, 3: 2}[k]  # UniP-2 has rho = 1/2 (degree 0); UniP-3 solves for 2 nodes
            if not corrector:
                out.append((pred, ["start"]))
            elif i == n - 1:  # no corrector on the last step; its model value was the previous prediction
                out.append((pred, []))
            else:  # UniC-1 has rho = 1/2 (degree 0); UniC-k solves for k nodes (degree k)
                out.append((0 if k == 1 else k, (["start"] if i == 0 else []) + [pred]))
        return out

    return spec


def deis_spec(K, lof=True):
    return lambda n: [(_lof(lof, n, i, min(K, i + 1)) - 1, ["start"]) for i in range(n)]


def rk_spec(out_degree, stage_degrees):
    # Heun: trapezoid (1), stage 2 an Euler step (0); midpoint: (1), stage Euler (0);
    # RK4: Simpson (3), stages 2-3 Euler-type (0), stage 4 a midpoint step (1)
    return lambda n: [(out_degree, ["start", *stage_degrees])] * n


PP, DP = functools.partial(ug.DPMSolverPP, match_reference_3m=False), ug.DPMSolver  # the corrected 3M unless asked
CASES = [
    ("data", ug.DDIM(), lambda n: [(0, ["start"])] * n),
    ("noise", ug.DDIM(), lambda n: [(0, ["start"])] * n),
]
for clock, cls in (("data", PP), ("noise", DP)):
    for k in (1, 2, 3):
        CASES += [(clock, cls(k), dpm_spec(k)), (clock, cls(k, multistep=False), dpm_spec(k, multistep=False))]
        CASES += [(clock, cls(k, lower_order_final=False), dpm_spec(k, lof=False))]
    CASES += [
        (clock, cls(2, solver_type="taylor"), dpm_spec(2, taylor=True)),
        (clock, cls(3, solver_type="taylor"), dpm_spec(3, taylor=True)),
        (clock, cls(3, match_reference_3m=True), dpm_spec(3, ref3m=True)),
        (clock, cls(3, warmup="singlestep"), dpm_spec(3, single_warmup=True)),
    ]
for p in (1, 2, 3):
    for v in ("bh1", "bh2"):
        for c in (True, False):
            CASES.append(("data", ug.UniPC(p, variant=v, corrector=c), unipc_spec(p, c)))
    CASES.append(("noise", ug.UniPC(p, prediction="noise"), unipc_spec(p, True)))
CASES.append(("data", ug.UniPC(3, lower_order_final=False), unipc_spec(3, True, lof=False)))
for k in (1, 2, 3):
    CASES += [("noise", ug.DEIS(k), deis_spec(k)), ("noise", ug.DEIS(k, lower_order_final=False), deis_spec(k, lof=False))]
for clock in ("t", "sigma"):
    CASES += [
        (clock, ug.Euler(clock=clock), rk_spec(0, [])),
        (clock, ug.Heun(clock=clock), rk_spec(1, [0])),
        (clock, ug.Midpoint(clock=clock), rk_spec(1, [0])),
        (clock, ug.RK4(clock=clock), rk_spec(3, [0, 0, 1])),
    ]


def _grid(n, jitter):
    """Times whose lambda = log(alpha/sigma) runs from -3 to 2.5; jittered grids have step
    ratios r far from 1 (0.5-1.6), so no formula is tested only at r = 1."""
    u = torch.arange(n + 1, dtype=F64) / n
    if jitter:
        u[1:-1] += 0.3 / n * torch.sin(2.3 * torch.arange(1, n, dtype=F64))
    return PROCESS.t_from_log_snr(2 * (-3.0 + 5.5 * u))


GRIDS = {"n6": _grid(6, True), "n17": _grid(17, True), "n16_uniform": _grid(16, False)}
# largest error of an item at or below its exactness degree, over all cases, grids and
# degrees: 2.8e-14 (measured; noise-form 3M on n17)
EXACT_TOL = 3e-12
# smallest, over all cases, of the largest error among the items of one role (step output or
# k-th call of a step) and degree, one degree above it: 8.9e-7 (measured; RK4 in t, degree 4)
INEXACT_MIN = 1e-9


def exactness_errors(clock, solver, ts, oracle):
    """(step output errors, [(step, degree-or-'start', error)] for model calls) for one run."""
    record = []
    _, info = ug.sample(oracle_model(clock, oracle, record), solver, schedule=ts, noise=Z0, return_trajectory=True)
    traj, times = info.trajectory, ts.tolist()
    outs = [float((traj[i + 1] - flow(clock, oracle, traj[i], times[i], times[i + 1])).abs().max()) for i in range(len(ts) - 1)]
    return outs, traj, times, record


@pytest.mark.parametrize("clock,solver,spec", CASES, ids=[f"{c}-{s!r}".replace(" ", "") for c, s, _ in CASES])
def test_exact_for_polynomials_of_its_degree(clock, solver, spec):
    """Every step output and stage input is exact up to its degree and inexact one degree above."""
    _, x_of, _ = CLOCKS[clock]
    for name, ts in GRIDS.items():
        n = len(ts) - 1
        plan = spec(n)
        x0, x1 = float(x_of(ts[0])), float(x_of(ts[-1]))
        top = max([d for d, calls in plan for d in [d, *[c for c in calls if c != "start"]]])
        for degree in range(top + 2):
            oracle = PolyOracle(clock, degree, min(x0, x1), max(x0, x1))
            outs, traj, times, record = exactness_errors(clock, solver, ts, oracle)
            items = [(f"step {i} output", "output", d, e) for i, ((d, _), e) in enumerate(zip(plan, outs))]
            calls = iter(record)
            for i, (_, kinds) in enumerate(plan):
                for j, kind in enumerate(kinds):
                    t_c, z_c = next(calls)
                    if kind == "start":
                        assert t_c == times[i] and torch.equal(z_c, traj[i]), f"{name}: call {kind} of step {i} misplaced"
                    else:
                        err = float((z_c - flow(clock, oracle, traj[i], times[i], t_c)).abs().max())
                        items.append((f"step {i} call {j} (t={t_c:.4f})", f"call {j}", kind, err))
            assert next(calls, None) is None, f"{name}: more model calls than the method's formula makes"
            above = {}  # (role, degree) -> largest error of such items one degree above their degree
            for what, role, d, err in items:
                if degree <= d:
                    assert err <= EXACT_TOL, f"{name}, degree {degree}: {what} (exact to degree {d}) has error {err:.3g}"
                elif degree == d + 1:
                    above[role, d] = max(above.get((role, d), 0.0), err)
            for (role, d), err in above.items():
                assert err >= INEXACT_MIN, f"{name}: every {role} of degree {d} is exact at degree {degree} too ({err:.3g})"


# ---- local error: one step with exact history, smooth z-independent oracle ------------------
LOCAL_OFFSETS = [0.0, 1.0, 1.6, 3.0, 4.0, 4.8]  # lambda offsets / h: step ratios 0.6, 1.4, 1.0, 0.8


def local_error(clock, solver, h, lam0=-0.5):
    """Error of step 3 (steady: full order, history exact since the oracle ignores z) of size h."""
    oracle = SineOracle(clock)
    ts = PROCESS.t_from_log_snr(2 * torch.tensor([lam0 + h * u for u in LOCAL_OFFSETS], dtype=F64))
    _, info = ug.sample(oracle_model(clock, oracle, []), solver, schedule=ts, noise=Z0, return_trajectory=True)
    traj, times = info.trajectory, ts.tolist()
    return float((traj[4] - flow(clock, oracle, traj[3], times[3], times[4])).abs().max())


# ---- local error on a nonlinear oracle (one-step methods: no history to supply) --------------
MIXTURE = ug.GaussianMixture(torch.tensor([[1.0, -1.0, 0.5], [-1.5, 0.5, 0.0]]), torch.tensor([0.5, 0.8]), [0.3, 0.7])
_NL_REFS = {}


def nonlinear_local_error(solver, h, lam0=-0.5):
    ts = PROCESS.t_from_log_snr(2 * torch.tensor([lam0, lam0 + h], dtype=F64))
    z0 = Z0 * float(PROCESS.sigma(ts[0])) + float(PROCESS.alpha(ts[0])) * torch.tensor([0.3, -0.2, 0.1])
    if h not in _NL_REFS:
        ref = ug.Adaptive("dopri5", rtol=1e-13, atol=1e-13)
        _NL_REFS[h] = ug.sample(MIXTURE.model(PROCESS, "x0"), ref, schedule=ts, noise=z0)[0]
    x, _ = ug.sample(MIXTURE.model(PROCESS, "eps"), solver, schedule=ts, noise=z0)
    return float((x - _NL_REFS[h]).abs().max())


def _slope(errs):
    return math.log2(errs[0] / errs[-1]) / (len(errs) - 1)


PP, DP = functools.partial(ug.DPMSolverPP, match_reference_3m=False), ug.DPMSolver  # the corrected 3M unless asked
LOCAL_CASES = [("data", ug.DDIM()), ("noise", ug.DDIM())]
for clock, cls in (("data", PP), ("noise", DP)):
    LOCAL_CASES += [(clock, cls(k, multistep=m, lower_order_final=False)) for k in (1, 2, 3) for m in (True, False)]
    LOCAL_CASES += [(clock, cls(2, solver_type="taylor", lower_order_final=False)),
                    (clock, cls(3, match_reference_3m=True, lower_order_final=False))]
for p in (1, 2, 3):
    LOCAL_CASES += [("data", ug.UniPC(p, variant=v, corrector=c, lower_order_final=False)) for v in ("bh1", "bh2") for c in (True, False)]
    LOCAL_CASES += [("noise", ug.UniPC(p, prediction="noise", lower_order_final=False))]
LOCAL_CASES += [("noise", ug.DEIS(k, lower_order_final=False)) for k in (1, 2, 3)]
# first log2(1/h) of five halvings per local order (order + 1), chosen where the slope is asymptotic
# and the error stays above rounding (smallest errors 1e-12 to 1e-14)
SMOOTH_LADDER = {2: 8, 3: 8, 4: 6, 5: 5}


@pytest.mark.parametrize("clock,solver", LOCAL_CASES, ids=[f"{c}-{s!r}".replace(" ", "") for c, s in LOCAL_CASES])
def test_local_error_order_with_exact_history(clock, solver):
    """The steady step's local error is O(h^(order+1)): measured slopes 2.00-4.09 for orders 1-3
    and 5.06 for order 4 (UniPC-3 with corrector), all within 0.09 of order + 1. A 0.1% change
    of an O(h^2) term (a midpoint-form coefficient, UniPC's B(h)) drops the slope by more than 0.5."""
    j0 = SMOOTH_LADDER[solver.order + 1]
    errs = [local_error(clock, solver, 2.0**-j) for j in range(j0, j0 + 5)]
    slope = _slope(errs)
    assert abs(slope - (solver.order + 1)) <= 0.15, f"local order {solver.order + 1}, measured {slope:.3f}, errors {errs}"


NL_CASES = [ug.DDIM()] + [c(k, multistep=False, lower_order_final=False) for c in (DP, PP) for k in (2, 3)]
NL_CASES += [cls(clock=clock) for clock in ("t", "sigma") for cls in (ug.Euler, ug.Heun, ug.Midpoint, ug.RK4)]
NL_LADDER = {2: 4, 3: 4, 4: 4, 5: 3}  # RK4 reaches the dopri5 reference's floor (1e-14) below h = 2^-7


@pytest.mark.parametrize("solver", NL_CASES, ids=lambda s: repr(s).replace(" ", ""))
def test_local_error_order_on_a_nonlinear_oracle(solver):
    """One step from (t, z) on a two-Gaussian mixture (x0_hat nonlinear in z): the stage couplings
    count. Measured slopes 2.01-2.05 (order 1), 3.01-3.04 (2), 4.03-4.06 (3), 5.03-5.04 (4)."""
    j0 = NL_LADDER[solver.order + 1]
    errs = [nonlinear_local_error(solver, 2.0**-j) for j in range(j0, j0 + 5)]
    slope = _slope(errs)
    assert abs(slope - (solver.order + 1)) <= 0.15, f"local order {solver.order + 1}, measured {slope:.3f}, errors {errs}"
