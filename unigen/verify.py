"""The equivalences unigen claims, each measured against an independent reference.

``unigen verify`` runs every registered :class:`Claim` on the exact Gaussian-mixture
oracle in float64 and prints claim, setting, measured max error, tolerance, PASS/FAIL.
A claim is a function returning the maximum error it measured; the tests call the
same functions, so the command and the suite cannot drift apart.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from . import flows
from . import process as P
from . import solvers as S
from .analytic import GaussianMixture, ring_mixture
from .flow_map import integrated
from .likelihood import discrete_vlb, log_likelihood
from .losses import loss, target_mse
from .model import Model
from .parametrization import PARAMETRIZATIONS, convert
from .sample import sample
from .schedules import make_grid, sample_range
from .vae import one_step_diffusion_vae

__all__ = ["Claim", "CLAIMS", "claim", "all_claims", "solver_claims", "run_claims", "format_table"]


@dataclass
class Claim:
    """One claimed equivalence: ``fn()`` returns the measured max error, PASS when <= ``tol``."""

    name: str
    setting: str
    tol: float
    fn: Callable[[], float]


@dataclass
class Result:
    name: str
    setting: str
    error: float
    tol: float
    passed: bool
    seconds: float


CLAIMS: list[Claim] = []


def claim(name: str, setting: str, tol: float):
    """Register a function returning a max error as a claim checked by ``unigen verify``."""

    def deco(fn):
        CLAIMS.append(Claim(name, setting, tol, fn))
        return fn

    return deco


def processes() -> dict[str, P.Process]:
    """The processes the claims run over: the examples of every registered process class
    (:func:`unigen.process.process_examples`), by label, so a user's process is checked too."""
    return P.process_examples(P.REGISTRY.values())


def oracle(dim: int = 2, k: int = 8, seed: int = 0) -> GaussianMixture:
    """Seeded mixture used by the claims (8 modes on a circle in 2-D, random otherwise)."""
    if dim == 2:
        return ring_mixture(k)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, 0.2 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64))


_N = len(processes())


def _shared_times(A, B, n=8):
    lo = max(A.log_snr_range[0], B.log_snr_range[0], -12.0)
    hi = min(A.log_snr_range[1], B.log_snr_range[1], 12.0)
    lam = torch.linspace(lo, hi, n + 2, dtype=torch.float64)[1:-1]
    return B.t_from_log_snr(lam)


def _rel(a, b):
    return float(((a - b).abs() / (1 + b.abs())).max())


@claim("conversion round trips", f"{len(PARAMETRIZATIONS) ** 2} (src, dst) pairs x {_N} processes, float64", 1e-10)
def conversion_round_trips() -> float:
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for p in processes().values():
        t = p.t_min + (p.t_max - p.t_min) * torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
        z = torch.randn(8, 3, generator=g, dtype=torch.float64)
        out = torch.randn(8, 3, generator=g, dtype=torch.float64)
        for src, dst in itertools.product(PARAMETRIZATIONS, repeat=2):
            back = convert(convert(out, z, t, p, src, dst), z, t, p, dst, src)
            worst = max(worst, _rel(back, out))
    return worst


@claim("Tweedie: oracle score == autograd grad log p_t", f"GMM 2-D, {_N} processes", 1e-8)
def tweedie() -> float:
    gm = oracle()
    worst = 0.0
    for p in processes().values():
        t = p.t_min + (p.t_max - p.t_min) * torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
        z = (2 * torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
        (grad,) = torch.autograd.grad(gm.marginal_log_prob(z, t, p).sum(), z)
        score = gm.posterior(z.detach(), p.alpha(t), p.sigma(t))[2]
        worst = max(worst, _rel(score, grad))
    return worst


@claim("Model.to(B, P) == oracle built for B in P", f"{_N} x {_N} process pairs x {len(PARAMETRIZATIONS)} parametrizations", 1e-10)
def model_to_exact() -> float:
    gm = oracle()
    procs = processes()
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    worst = 0.0
    for A, B in itertools.product(procs.values(), repeat=2):
        t = _shared_times(A, B)
        base = gm.model(A, "eps")
        for dst in PARAMETRIZATIONS:
            worst = max(worst, _rel(base.to(B, dst)(z, t).out, gm.model(B, dst)(z, t).out))
    return worst



# ---- flow maps (two-time models) ---------------------------------------------------------------
def _flow_processes() -> dict[str, P.Process]:
    return {"FlowMatching": P.FlowMatching(), "VP.linear": P.VP.linear(), "EDM": P.EDM()}


def _exact_flow_map(process: P.Process, tol: float = 1e-10):
    """The oracle's flow map by an accurate solve (float64), with its one-time model."""
    model = oracle().model(process, "x0")
    return integrated(model, tol), model


def _flow_times(process: P.Process) -> tuple[float, float, float]:
    """A start t, a middle u and an end s of the process's sampling range (t > u > s)."""
    start, end = sample_range(process)
    lam = process.log_snr(torch.tensor([start, end], dtype=torch.float64)).clamp(-8.0, 8.0)
    t, u, s = (float(process.t_from_log_snr(lam[0] + f * (lam[1] - lam[0]))) for f in (0.1, 0.5, 0.9))
    return t, u, s


@claim("flow map: X_{t->t} = id, semigroup X_{u->s}(X_{t->u}) == X_{t->s}", "oracle, dopri5 1e-10; FlowMatching, VP.linear, EDM", 1e-8)
def flow_map_semigroup() -> float:
    z = 2 * _noise(16, 2, 11)
    worst = 0.0
    for p in _flow_processes().values():
        X, _ = _exact_flow_map(p)
        t, u, s = _flow_times(p)
        zt = z * float(p.sigma(torch.tensor(t, dtype=torch.float64)))
        worst = max(worst, _max_err(X(zt, t, t), zt), _rel(X(X(zt, t, u), u, s), X(zt, t, s)))
    return worst


@claim("flow map tangent: d/ds X_{t->s}(z) at s = t == PF-ODE velocity", "oracle, central difference h = 1e-5 (relative to 1 + |v|)", 1e-8)
def flow_map_tangent() -> float:
    z = _noise(16, 2, 12)
    worst = 0.0
    for p in _flow_processes().values():
        X, model = _exact_flow_map(p)
        t, _, _ = _flow_times(p)
        t = 0.5 * t  # away from the end of the domain, so t + h exists
        h = 1e-5 * max(1.0, t)
        zt = z * float(p.sigma(torch.tensor(t, dtype=torch.float64)))
        diff = (X(zt, t, t + h) - X(zt, t, t - h)) / (2 * h)
        worst = max(worst, _rel(diff, model(zt, t).velocity))
    return worst


@claim("MeanFlow identity u = v + (s - t) du/dt for the exact average velocity", "oracle; du/dt along trajectories, 4th-order differences", 1e-8)
def meanflow_identity() -> float:
    z = _noise(16, 2, 13)
    worst = 0.0
    for p in _flow_processes().values():
        X, model = _exact_flow_map(p)
        t, _, s = _flow_times(p)
        t = 0.5 * t
        h = 1e-3 * max(1.0, t)
        zt = z * float(p.sigma(torch.tensor(t, dtype=torch.float64)))
        # u(z_tau, tau, s) along the trajectory through (zt, t), at tau = t + k h
        xs = X(zt, t, s)
        u = {k: (xs - X(zt, t, t + k * h)) / (s - t - k * h) for k in (-2, -1, 1, 2)}
        du = (u[-2] - 8 * u[-1] + 8 * u[1] - u[2]) / (12 * h)
        u0 = (xs - zt) / (s - t)
        worst = max(worst, _rel(u0, model(zt, t).velocity + (s - t) * du))
    return worst


@claim("consistency function f(z_t, t) = X_{t->t_end}(z_t) is constant along trajectories", "oracle; f at 3 times of one trajectory", 1e-8)
def consistency_along_trajectories() -> float:
    z = _noise(16, 2, 14)
    worst = 0.0
    for p in _flow_processes().values():
        X, _ = _exact_flow_map(p)
        t, u, s = _flow_times(p)
        zt = z * float(p.sigma(torch.tensor(t, dtype=torch.float64)))
        f_t = X.consistency(zt, t)
        for tau in (u, s):
            worst = max(worst, _rel(X.consistency(X(zt, t, tau), tau), f_t))
    return worst


@claim("FlowMap.to(B) == the flow map computed on B", "oracle; FlowMatching <-> VP.linear, FlowMatching -> EDM", 1e-10)
def flow_map_to_exact() -> float:
    z = _noise(16, 2, 15)
    maps = {name: _exact_flow_map(p)[0] for name, p in _flow_processes().items()}
    worst = 0.0
    for a, b in (("FlowMatching", "VP.linear"), ("VP.linear", "FlowMatching"), ("FlowMatching", "EDM")):
        XA, XB = maps[a], maps[b]
        t, _, s = _flow_times(XB.process)
        zt = z * float(XB.process.sigma(torch.tensor(t, dtype=torch.float64)))
        worst = max(worst, _rel(XA.to(XB.process)(zt, t, s), XB(zt, t, s)))
    return worst


# ---- solver engine -----------------------------------------------------------------------------
def _noise(n=16, d=2, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _max_err(a, b):
    return float((a - b).detach().abs().max())


@claim("DDIM == DPM-Solver-1 == DPM-Solver++-1 == UniP-1 == Euler(sigma clock) == DEIS-1", "VP.linear, eps, 20 logsnr steps", 1e-10)
def first_order_family() -> float:
    model, z = oracle().model(P.VP.linear(), "eps"), _noise()
    ref = sample(model, S.DDIM(), steps=20, noise=z)[0]
    others = [S.DPMSolver(1), S.DPMSolverPP(1), S.UniPC(1, corrector=False), S.Euler(clock="sigma"), S.DEIS(1)]
    return max(_max_err(sample(model, s, steps=20, noise=z)[0], ref) for s in others)


@claim("UniP-2 (B(h) = e^h - 1) == DPM-Solver++(2M)", "VP.linear, eps, 20 logsnr steps", 1e-10)
def unip2_is_dpmpp2m() -> float:
    model, z = oracle().model(P.VP.linear(), "eps"), _noise()
    a = sample(model, S.UniPC(2, variant="bh2", corrector=False), steps=20, noise=z)[0]
    return _max_err(a, sample(model, S.DPMSolverPP(2), steps=20, noise=z)[0])


@claim("DDIM on VP == Euler on flow matching (Model.to)", "VP.linear eps -> FlowMatching velocity, 30 steps", 1e-10)
def ddim_is_euler_fm() -> float:
    vp, fm = P.VP.linear(), P.FlowMatching()
    model, z = oracle().model(vp, "eps"), _noise()
    ts = make_grid(vp, "logsnr", 30)
    t_fm, c = P.time_change(vp, fm, ts)
    x_vp = sample(model, S.DDIM(), schedule=ts, noise=z)[0]
    x_fm = sample(model.to(fm, "velocity"), S.Euler(), schedule=t_fm, noise=z * c[0])[0]
    return _max_err(x_fm / c[-1], x_vp)


@claim("DDIM invariant to (alpha, sigma) -> c(t)(alpha, sigma)", "VP.linear vs c(t) = 1 + 2t^2, 25 steps", 1e-10)
def ddim_scale_invariant() -> float:
    vp = P.VP.linear()
    c = lambda t: 1.0 + 2.0 * t**2  # noqa: E731
    scaled = P.Affine(alpha=lambda t: c(t) * vp.alpha(t), sigma=lambda t: c(t) * vp.sigma(t))
    ts, gm, z = make_grid(vp, "logsnr", 25), oracle(), _noise()
    x = sample(gm.model(vp, "eps"), S.DDIM(), schedule=ts, noise=z)[0]
    xs = sample(gm.model(scaled, "eps"), S.DDIM(), schedule=ts, noise=z * c(ts[0]))[0]
    return _max_err(xs / c(ts[-1]), x)


@claim("EDM Heun == Heun on the sigma clock", "EDM x0-model vs VP.linear eps-model, 15 steps", 1e-10)
def edm_heun() -> float:
    edm, vp, gm, z = P.EDM(), P.VP.linear(), oracle(), _noise()
    lam = torch.linspace(-2 * math.log(70.0), 8.0, 16, dtype=torch.float64)
    t_vp, t_edm = vp.t_from_log_snr(lam), edm.t_from_log_snr(lam)
    x_edm = sample(gm.model(edm, "x0"), S.Heun(), schedule=t_edm, noise=z * t_edm[0])[0]
    x_vp = sample(gm.model(vp, "eps"), S.Heun(clock="sigma"), schedule=t_vp, noise=z * t_edm[0] * vp.alpha(t_vp[0]))[0]
    return _max_err(x_vp / vp.alpha(t_vp[-1]), x_edm)


@claim("same samples from eps-, x0-, v- and velocity-form models", "DPM-Solver++(3M), UniPC-2, Heun; VP.linear", 1e-10)
def parametrization_invariance() -> float:
    gm, vp, z = oracle(), P.VP.linear(), _noise()
    worst = 0.0
    for solver in (S.DPMSolverPP(3), S.UniPC(2), S.Heun()):
        ref = sample(gm.model(vp, "eps"), solver, steps=12, noise=z)[0]
        for param in ("x0", "v", "velocity", "score"):
            worst = max(worst, _max_err(sample(gm.model(vp, param), solver, steps=12, noise=z)[0], ref))
    return worst


@claim("DDPM ancestral (small variance) == DDIM(eta=1); SDE-DPM-Solver++-1 == DDPM", "VP.linear, eps, 20 steps, same generator", 1e-10)
def ancestral_family() -> float:
    model, z = oracle().model(P.VP.linear(), "eps"), _noise()
    run = lambda s: sample(model, s, steps=20, noise=z, generator=torch.Generator().manual_seed(7))[0]  # noqa: E731
    ref = run(S.DDPM("small"))
    return max(_max_err(run(S.DDIM(eta=1.0)), ref), _max_err(run(S.SDEDPMSolverPP(order=1)), ref))


@claim("eta = 0 ends of the SDE samplers: EM == Euler, EDM churn 0 == Heun(sigma), SDE-DPM++ == DPM++(2M)", "VP.linear, eps, 20 steps", 1e-10)
def sde_ode_limits() -> float:
    model, z = oracle().model(P.VP.linear(), "eps"), _noise()
    run = lambda s: sample(model, s, steps=20, noise=z, generator=torch.Generator().manual_seed(7))[0]  # noqa: E731
    pairs = [(S.EulerMaruyama(eta=0.0), S.Euler()), (S.EDMStochastic(churn=0.0), S.Heun(clock="sigma")),
             (S.SDEDPMSolverPP(eta=0.0), S.DPMSolverPP(2))]
    return max(_max_err(run(a), run(b)) for a, b in pairs)


@claim("DEIS-k == DPM-Solver-kM Taylor form (k = 2, 3)", "VP.linear, VE, EDM; 30 steps; two independent derivations", 1e-10)
def deis_is_dpm_taylor() -> float:
    gm, worst = oracle(), 0.0
    for p in (P.VP.linear(), P.VE(), P.EDM()):
        z = _noise() * p.prior_std()
        for k in (2, 3):
            a = sample(gm.model(p, "x0"), S.DEIS(k), steps=30, noise=z)[0]
            b = sample(gm.model(p, "x0"), S.DPMSolver(k, solver_type="taylor"), steps=30, noise=z)[0]
            worst = max(worst, _max_err(a, b) / p.prior_std())
    return worst


@claim("PF-ODE log-likelihood == closed-form log p_t0 of the oracle", "exact divergence, dopri5 1e-10; VP, VE, EDM, FM; 2-D", 1e-4)
def likelihood_closed_form() -> float:
    gm, worst = oracle(), 0.0
    x = gm.sample(8, generator=torch.Generator().manual_seed(11))
    for p, param in ((P.VP.linear(), "eps"), (P.VE(), "x0"), (P.EDM(), "denoiser"), (P.FlowMatching(), "velocity")):
        T = torch.tensor(sample_range(p)[0], dtype=torch.float64)
        lp, info = log_likelihood(gm.model(p, param), x, rtol=1e-10, atol=1e-10, return_info=True,
                                  prior=lambda z: gm.marginal_log_prob(z, T, p))
        worst = max(worst, _max_err(lp, gm.marginal_log_prob(x, info.t0, p)))
    return worst


@claim("every training target is a weighted eps-MSE: loss(weighting=P) == ||P_hat - P||^2", f"6 targets x {_N} processes, per sample", 1e-10)
def losses_are_weighted_eps_mse() -> float:
    gm, worst = oracle(), 0.0
    g = torch.Generator().manual_seed(12)
    x = gm.sample(16, generator=g)
    eps = torch.randn(16, 2, generator=g, dtype=torch.float64)
    for p in processes().values():
        t = p.t_min + (p.t_max - p.t_min) * (0.05 + 0.9 * torch.rand(16, generator=g, dtype=torch.float64))
        model = gm.model(p, "eps")
        for target in ("eps", "x0", "v", "velocity", "score"):
            a = loss(model, x, t=t, eps=eps, weighting=target, reduction="none")
            b = target_mse(model, x, t, eps, target)
            worst = max(worst, float(((a - b).abs() / (1 + b.abs())).max()))
    return worst


@claim("normalizing-flow log-determinants == autograd slogdet; inverse(forward(x)) == x", "ActNorm, InvertibleLinear, AffineCoupling (vectors and 1x1-conv images), random parameters", 1e-8)
def bijector_logdets() -> float:
    worst = 0.0
    g = torch.Generator().manual_seed(13)
    for image in (False, True):
        shape = (3, 4, 2, 3) if image else (3, 4)
        for layer in (flows.ActNorm(4), flows.InvertibleLinear(4, generator=g), flows.AffineCoupling(4, hidden=8, conv=image)):
            layer = layer.double()
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            layer(x)  # ActNorm's data-dependent initialisation
            with torch.no_grad():
                for prm in layer.parameters():
                    prm.add_(0.3 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
            y, logdet = layer(x)
            d = x[0].numel()
            jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x).reshape(3, d, 3, d)
            ref = torch.linalg.slogdet(torch.stack([jac[i, :, i, :] for i in range(3)]))[1]
            worst = max(worst, _max_err(logdet, ref), _max_err(layer.inverse(y)[0], x))
    return worst


@claim("VAE ELBO == minus the T = 1 diffusion VLB (one-step VP.discrete)", "linear-Gaussian encoder, tanh decoder, beta_1 = 0.02, same noise", 1e-10)
def vae_is_one_step_diffusion() -> float:
    b1, b, d = 0.02, 7, 3
    net = lambda z, t: torch.tanh(1.3 * z) + 0.05 * t[:, None]  # noqa: E731  any x0 network
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    p1 = P.VP.discrete([b1, 0.02, 0.4])  # the decoder term uses only the first step
    c = 1.0 - (1.0 - b1) ** (1.0 / 3.0)
    p2 = P.VP.discrete([c, c, c])  # the prior term uses only abar_T = 1 - beta_1
    model = Model(net, p1, "x0")
    res1 = discrete_vlb(model, x, generator=torch.Generator().manual_seed(5))
    res2 = discrete_vlb(Model(net, p2, "x0"), x, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(5)  # replay discrete_vlb's draws to share its z_1 noise
    torch.randn((2 * b, d), generator=g, dtype=torch.float64)
    eps = torch.randn((b, d), generator=g, dtype=torch.float64)
    terms = one_step_diffusion_vae(model).terms(x, eps=eps)
    return _max_err(terms.elbo, -(res2.prior + res1.decoder))


def convergence_slope(solver, steps=(64, 128, 256)) -> float:
    """Measured order: slope of log2(error) vs log2(steps) against the exact Gaussian flow."""
    vp = P.VP.linear()
    gauss = GaussianMixture(torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.6, 1.3, 0.2]], dtype=torch.float64))
    z = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gauss.exact_ode_solution(z, 1.0, 1e-2, vp)
    errs = [_max_err(sample(gauss.model(vp, "eps"), solver, steps=n, noise=z, t_end=1e-2)[0], exact) for n in steps]
    return math.log2(errs[0] / errs[-1]) / (len(errs) - 1)


def solver_claims() -> list[Claim]:
    """One order claim per deterministic fixed-grid configuration of every registered solver
    (``Solver.variants()``), built when asked, so a solver registered after import is checked
    too: the slope measured against the exact Gaussian flow is at least the declared order
    (less 0.3). Some third-order multisteps converge faster than third order at these step
    counts (warm-up constants); the suite's order tests pin their exact slopes."""
    out = []
    for _, cls in sorted(S.REGISTRY.items()):
        for s in cls.variants():
            if not isinstance(s, S.ProgramSolver) or s.stochastic or not s.order:
                continue
            fn = lambda s=s: max(0.0, s.order - convergence_slope(s))  # noqa: E731
            out.append(Claim(f"convergence order of {s.label()} ({s.order})",
                             "declared order - measured slope (>= 0), exact Gaussian PF-ODE flow, VP", 0.3, fn))
    return out


def all_claims() -> list[Claim]:
    """``CLAIMS`` and the solver order claims of the registry as it is now."""
    return CLAIMS + solver_claims()


def run_claims(claims: list[Claim] | None = None) -> list[Result]:
    """Measure every claim (default: :func:`all_claims`); a claim that raises is a FAIL with its reason."""
    results = []
    for c in all_claims() if claims is None else claims:
        start = time.perf_counter()
        try:
            err = float(c.fn())
        except Exception as exc:  # a claim that crashes is a FAIL, reported with its reason
            err = math.inf
            c = Claim(c.name, f"{c.setting} [raised {type(exc).__name__}: {exc}]", c.tol, c.fn)
        ok = math.isfinite(err) and err <= c.tol
        results.append(Result(c.name, c.setting, err, c.tol, ok, time.perf_counter() - start))
    return results


def format_table(results: list[Result]) -> str:
    """The aligned text table ``unigen verify`` prints: claim, setting, max error, tolerance, PASS/FAIL."""
    rows = [("claim", "setting", "max error", "tolerance", "result")]
    rows += [(r.name, r.setting, f"{r.error:.2e}", f"{r.tol:.0e}", "PASS" if r.passed else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
