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

from . import process as P
from .analytic import GaussianMixture
from .parametrization import PARAMETRIZATIONS, convert

__all__ = ["Claim", "CLAIMS", "claim", "run_claims", "format_table"]


@dataclass
class Claim:
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
    return {
        "VP.linear": P.VP.linear(),
        "VP.cosine": P.VP.cosine(),
        "VP.discrete": P.VP.discrete(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)),
        "SubVP": P.SubVP(),
        "VE": P.VE(),
        "EDM": P.EDM(),
        "FlowMatching": P.FlowMatching(),
        "Cosine": P.Cosine(),
    }


def oracle(dim: int = 2, k: int = 8, seed: int = 0) -> GaussianMixture:
    """Seeded mixture used by the claims (8 modes on a circle in 2-D, random otherwise)."""
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return GaussianMixture(means, torch.full((k,), 0.3, dtype=torch.float64))
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, 0.2 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64))


def _shared_times(A, B, n=8):
    lo = max(A.log_snr_range[0], B.log_snr_range[0], -12.0)
    hi = min(A.log_snr_range[1], B.log_snr_range[1], 12.0)
    lam = torch.linspace(lo, hi, n + 2, dtype=torch.float64)[1:-1]
    return B.t_from_log_snr(lam)


def _rel(a, b):
    return float(((a - b).abs() / (1 + b.abs())).max())


@claim("conversion round trips", "36 (src, dst) pairs x 8 processes, float64", 1e-10)
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


@claim("Tweedie: oracle score == autograd grad log p_t", "GMM 2-D, 8 processes", 1e-8)
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


@claim("Model.to(B, P) == oracle built for B in P", "8 x 8 process pairs x 6 parametrizations", 1e-10)
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


def run_claims(claims: list[Claim] | None = None) -> list[Result]:
    results = []
    for c in CLAIMS if claims is None else claims:
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
    rows = [("claim", "setting", "max error", "tolerance", "result")]
    rows += [(r.name, r.setting, f"{r.error:.2e}", f"{r.tol:.0e}", "PASS" if r.passed else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
