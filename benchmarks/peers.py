r"""unigen side by side with diffusers, k-diffusion and flow_matching on exact oracles.

Every library samples the SAME problem from the SAME starting noise, in float64:
``unigen.bench.gmm_problem(dim, process)`` (an exact Gaussian-mixture model, so every gap is
solver error) with ``problem.noise(n, generator)`` as z at the run's first time.

Peers and how they are driven
-----------------------------
* diffusers schedulers on "ddpm" (``VP.discrete`` over diffusers' default 1000-step linear
  beta table, the table ``from_diffusers`` reads from the default config): the pipeline loop
  ``set_timesteps(n)`` -> ``scale_model_input`` -> model -> ``step``, with the scheduler's
  defaults except ``clip_sample=False`` (DDIM/DDPM clip x0 to [-1, 1] by default, which is an
  image prior, not a solver). diffusers builds its beta table in float32 (cumprod error ~1e-6)
  and rounds its sigmas to float32 in ``set_timesteps``; the scheduler gets the same table
  rebuilt in float64 and, on integer timesteps, the same sigmas in float64. What remains is
  diffusers' own float32 state: EulerDiscrete, FlowMatchEuler and DPMSolverMultistep cast the sample to float32
  in ``step`` (~1e-7 relative per step). The network is the oracle's eps at diffusers' timestep convention: timestep tau has the VE level
  ``np.interp(tau, arange(N), sqrt((1 - abar)/abar))`` (integer tau: the table entry).
  ``FlowMatchEulerDiscreteScheduler`` runs on "fm": its sigma is unigen's FM time t
  (alpha = 1 - t, sigma = t), its timestep 1000 t, and its model output ``noise - x`` is
  unigen's velocity dz/dt.
* k-diffusion samplers (its ``sampling.py`` only, loaded by ``benchmarks.peer_samplers``) on every
  problem, with ``to_kdiffusion_denoiser(problem.model)``; k-diffusion's state is x = z/alpha
  and its sigmas the VE levels sigma/alpha of a unigen grid with the trailing 0: k-diffusion's
  own ``get_sigmas_karras`` (rho 7) between the denoiser's sigma_min and sigma_max, and the
  problem's default unigen grid. Flow matching has sigma/alpha = inf at t = 1; its runs start
  at VE level 80 (EDM's sigma_max, t = 80/81). Stochastic samplers get a seeded
  ``noise_sampler`` of i.i.d. normals (the Brownian-tree increments over disjoint intervals
  have the same law), so SDE-DPM-Solver++(2M) can be compared with unigen draw for draw.
* flow_matching's ``ODESolver`` (euler, midpoint; dopri5 as a sanity check) on "fm" with the
  oracle velocity, their time tau = 1 - t (tau = 0 noise) and velocity -dz/dt, over the
  unigen grid given as ``time_grid`` (``step_size=None``: the grid is the step sequence); on
  "vp" through ``problem.model.to(FlowMatching(), "velocity")`` at the equal-log-SNR FM times
  with the noise scaled by ``ug.time_change`` (DDIM on VP == Euler on FM). dopri5 runs on "fm"
  only: without torchdiffeq's ``step_t`` it steps past the last time and interpolates back, and
  past the VP end the FM view is undefined (t_fm < 0).

unigen twin and agreement
-------------------------
Every peer run is repeated by unigen running the same algorithm on the same grid (same time
points, same end, same start) and ``agreement = max|x_peer - x_unigen| / max|x_peer|`` is
recorded; it must be <= 1e-6 or the row gives the reason (each reason is pinned by a test in
``tests/test_peers.py``).

Metrics per run: real NFE (counted model calls), endpoint RMSE against ``problem.reference``
from the same noise over the run's own (t_start, t_end) for deterministic samplers, SW2 and
MMD^2 (``unigen.bench.metrics``) against exact samples with the exact-vs-exact floor.

Usage (repository root, in an environment with the peers)::

    python -m benchmarks.peers            # dims 2 16, all processes, budgets 4..50, n = 500
    python -m benchmarks.peers --quick    # dim 2, budgets 8 10, a few samplers, n = 200 (< 1 min)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import unigen as ug
from benchmarks.peer_samplers import load_diffusers, load_flow_matching, load_kdiffusion
from unigen.bench import gmm_problem
from unigen.bench.metrics import (
    endpoint_rmse,
    median_bandwidth,
    rbf_mmd2,
    sliced_wasserstein2,
)
from unigen.interop import diffusers_betas, to_kdiffusion_denoiser
from unigen.schedules import default_schedule, make_grid, sample_range
from unigen.solvers import Dynamics, Grid

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
FULL_BUDGETS = (4, 6, 8, 10, 15, 20, 50)
QUICK_BUDGETS = (8, 10)
AGREE_TOL = 1e-6
KD_FM_SIGMA_MAX = 80.0  # k-diffusion start on flow matching (VE level; sigma/alpha is inf at t = 1)
FM_DOPRI_TOL = 1e-5

__all__ = ["Peer", "PeerRun", "best_peer", "main", "peers", "run_problem"]


# ---------------------------------------------------------------------------------------
# runs and specs
# ---------------------------------------------------------------------------------------
@dataclass
class PeerRun:
    """A peer's result in the problem's variable: ``x`` at ``ts[-1]`` from ``z`` at ``ts[0]``;
    ``ts`` is the grid in the problem's times (float64), ``nfe`` the counted model calls."""

    x: torch.Tensor
    nfe: int
    ts: torch.Tensor
    z: torch.Tensor


@dataclass
class Peer:
    """One peer configuration.

    ``run(problem, z, steps, seed) -> PeerRun``; ``nfe_of(steps)`` its model calls (to pick the
    step count of a budget; the real count is checked); ``twin(problem, run, seed) -> x`` is
    unigen's run of the same algorithm on ``run.ts`` (None: unigen has no counterpart);
    ``reason`` explains an expected disagreement (or the missing twin).
    """

    library: str
    sampler: str
    grid: str
    kinds: tuple
    run: Callable
    nfe_of: Callable
    twin: Callable | None
    twin_label: str
    reason: str | None = None
    stochastic: bool = False
    quick: bool = False
    budgets: tuple | None = None  # None: the sweep's budgets; () : one unbudgeted run

    def applies(self, problem) -> bool:
        return problem.kind in self.kinds


class Counted:
    """A callable that counts its calls (the real NFE)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _iid_noise_sampler(x: torch.Tensor, seed: int):
    """k-diffusion noise_sampler(sigma, sigma_next): i.i.d. N(0, I) draws from one seeded stream
    (the same stream unigen's ``Noise`` draws from with ``generator=_gen(seed)``)."""
    g = _gen(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)


def _unigen_twin(solver_fn, model_fn=None):
    """unigen's run of ``solver_fn()`` on the peer's grid and start (generator seeded as the peer's)."""

    def twin(problem, run: PeerRun, seed: int):
        model = problem.model if model_fn is None else model_fn(problem)
        return ug.sample(model, solver_fn(), schedule=run.ts, noise=run.z, generator=_gen(seed))[0]

    return twin


# ---------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------
def float64_table(scheduler) -> None:
    """Give a beta-table scheduler its table in float64 (diffusers builds it in float32)."""
    betas = diffusers_betas(dict(scheduler.config))
    ac = torch.cumprod(1.0 - betas, 0)
    scheduler.betas, scheduler.alphas, scheduler.alphas_cumprod = betas, 1.0 - betas, ac
    if hasattr(scheduler, "lambda_t"):
        scheduler.alpha_t, scheduler.sigma_t = ac.sqrt(), (1.0 - ac).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0 if scheduler.config.set_alpha_to_one else float(ac[0]), dtype=F64)


def float64_sigmas(scheduler) -> None:
    """Undo set_timesteps' float32 rounding of the sigmas of a scheduler on integer timesteps: the
    same VE levels (table entries at its timesteps, then its final 0 or sigma_min) in float64."""
    ac = scheduler.alphas_cumprod.to(F64)
    table = ((1.0 - ac) / ac).sqrt()
    old = scheduler.sigmas.to(F64)
    last = torch.zeros(1, dtype=F64) if float(old[-1]) == 0.0 else table[:1]
    new = torch.cat([table[scheduler.timesteps.long()], last])
    if new.shape != old.shape or not torch.allclose(new, old, rtol=1e-6, atol=0.0):
        raise ValueError(f"{type(scheduler).__name__}: sigmas are not the table at its timesteps")
    scheduler.sigmas = new


def diffusers_eps(problem, scheduler):
    """The oracle as a diffusers network ``eps(z, timestep)``: timestep tau has VE level
    interp(tau, arange(N), sqrt((1 - abar)/abar)) (integer tau: the table entry)."""
    ac = scheduler.alphas_cumprod.to(F64)
    table = ((1.0 - ac) / ac).sqrt().numpy()
    knots = np.arange(table.shape[0], dtype=np.float64)
    proc = problem.process

    def eps(z, tau):
        tau = np.atleast_1d(torch.as_tensor(tau).to(F64).numpy())
        s = torch.from_numpy(np.interp(tau, knots, table))
        t = proc.t_from_log_snr(-2.0 * torch.log(s)).clamp(proc.t_min, proc.t_max)
        return problem.model.predict(z, t.expand(z.shape[0])).eps

    return eps


def _diffusers_grid(problem, scheduler, by: str) -> torch.Tensor:
    """The scheduler's grid in the problem's times: the model timesteps (``by="timesteps"``) or
    the VE sigmas (``by="sigmas"``, Euler/Heun), then the end (sigma = 0: t = 0, else by log-SNR)."""
    proc = problem.process
    if by == "timesteps":
        ts = proc.t_from_timestep(scheduler.timesteps.to(F64))
    else:
        sig = torch.unique_consecutive(scheduler.sigmas.to(F64))
        sig = sig[sig > 0] if float(scheduler.sigmas[-1]) == 0.0 else sig[:-1]
        ts = proc.t_from_log_snr(-2.0 * torch.log(sig)).clamp(proc.t_min, proc.t_max)
    last = float(scheduler.sigmas[-1]) if hasattr(scheduler, "sigmas") else 0.0
    end = 0.0 if last == 0.0 else float(proc.t_from_log_snr(torch.tensor(-2.0 * math.log(last), dtype=F64)))
    return torch.cat([ts, torch.tensor([end], dtype=F64)])


def diffusers_run(cls, kwargs: dict, by: str = "timesteps", ve_state: bool = False):
    """Drive a beta-table scheduler: set_timesteps(steps), then the pipeline loop."""

    def run(problem, z, steps, seed):
        s = cls(**kwargs)
        float64_table(s)
        s.set_timesteps(steps)
        if by == "timesteps" and hasattr(s, "sigmas"):
            float64_sigmas(s)
        ts = _diffusers_grid(problem, s, by)
        net = Counted(diffusers_eps(problem, s))
        scale = float(problem.process.alpha(ts[:1])) if ve_state else 1.0  # Euler/Heun work on z/alpha
        x = z / scale
        kw = {"generator": _gen(seed)} if "generator" in inspect.signature(s.step).parameters else {}
        with torch.no_grad():
            for tau in s.timesteps:
                out = net(s.scale_model_input(x, tau), tau)
                x = s.step(out, tau, x, **kw).prev_sample
        return PeerRun(x * float(problem.process.alpha(ts[-1:])) if ve_state else x, net.calls, ts, z)

    return run


def flowmatch_run(cls):
    def run(problem, z, steps, seed):
        s = cls()
        s.set_timesteps(steps)
        ts = s.sigmas.to(F64)  # FM time t = diffusers' sigma; ends with 0
        n = float(s.config.num_train_timesteps)
        net = Counted(lambda x, tau: problem.model.predict(x, (torch.as_tensor(tau).to(F64) / n).expand(x.shape[0])).velocity)
        x = z
        with torch.no_grad():
            for tau in s.timesteps:
                x = s.step(net(x, tau), tau, x).prev_sample
        return PeerRun(x, net.calls, ts, z)

    return run


def diffusers_peers(D) -> list[Peer]:
    if D is None:
        return []
    ddpm = ("ddpm",)
    one = lambda n: n
    out = []

    def add(sampler, cls_name, kwargs, twin_fn, twin_label, by="timesteps", ve_state=False, nfe_of=one, reason=None,
            stochastic=False, quick=False):
        cls = getattr(D, cls_name)
        grid = f"{cls_name}.set_timesteps ({cls(**kwargs).config.get('timestep_spacing', 'linspace')})"
        twin = None if twin_fn is None else _unigen_twin(twin_fn)
        out.append(Peer("diffusers", sampler, grid, ddpm, diffusers_run(cls, kwargs, by, ve_state), nfe_of, twin,
                        twin_label, reason, stochastic, quick))

    f32 = ("float32 state: the scheduler's step casts the sample to float32 every step (meant as an fp16 "
           "upcast), ~1e-7 relative per step")
    add("DDIMScheduler", "DDIMScheduler", {"clip_sample": False}, ug.DDIM, "DDIM()", quick=True)
    add("DDPMScheduler", "DDPMScheduler", {"clip_sample": False}, lambda: ug.DDPM("small"), "DDPM('small'), same draws",
        stochastic=True)
    add("EulerDiscreteScheduler", "EulerDiscreteScheduler", {}, lambda: ug.Euler(clock="sigma"), "Euler(clock='sigma')",
        by="sigmas", ve_state=True, reason=f32)
    add("HeunDiscreteScheduler", "HeunDiscreteScheduler", {}, lambda: ug.Heun(clock="sigma"), "Heun(clock='sigma')",
        by="sigmas", ve_state=True, nfe_of=lambda n: 2 * n - 1)
    add("DPMSolverMultistep(dpmsolver++, 2)", "DPMSolverMultistepScheduler", {}, lambda: ug.DPMSolverPP(2),
        "DPMSolverPP(2)", reason=f32, quick=True)
    add("DPMSolverMultistep(dpmsolver++, 3)", "DPMSolverMultistepScheduler", {"solver_order": 3},
        lambda: ug.DPMSolverPP(3, match_reference_3m=True), "DPMSolverPP(3, match_reference_3m=True)", reason=f32)
    add("DPMSolverMultistep(dpmsolver, 2)", "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, lambda: ug.DPMSolver(2), "DPMSolver(2)",
        reason=f32)
    add("DPMSolverSinglestep(dpmsolver++, 2)", "DPMSolverSinglestepScheduler", {}, None,
        "none (DPMSolverPP(2, multistep=False) places its stage at r1 = 1/2)",
        reason="diffusers' singlestep solver takes its intermediate stage on the timestep grid (r1 = h_1/h, "
               "not the log-SNR midpoint r1 = 1/2 of unigen's 2S) and spends one call per grid point")
    add("UniPCMultistep(bh2, 2)", "UniPCMultistepScheduler", {}, lambda: ug.UniPC(2), "UniPC(2)", quick=True)
    add("UniPCMultistep(bh2, 3)", "UniPCMultistepScheduler", {"solver_order": 3}, lambda: ug.UniPC(3), "UniPC(3)",
        reason="lower_order_final: diffusers' UniPC lowers the order of the last steps at every step count, unigen "
               "(like DPM-Solver's reference) only below 15 steps")
    add("DEISMultistep(2)", "DEISMultistepScheduler", {}, lambda: ug.DEIS(2), "DEIS(2)")
    out.append(Peer("diffusers", "FlowMatchEulerDiscreteScheduler", "FlowMatchEuler.set_timesteps (1 -> 1/N, then 0)",
                    ("fm",), flowmatch_run(D.FlowMatchEulerDiscreteScheduler), one, _unigen_twin(ug.DDIM),
                    "DDIM() (= Euler in t on FM)", reason=f32, quick=True))
    return out


# ---------------------------------------------------------------------------------------
# k-diffusion
# ---------------------------------------------------------------------------------------
def _kd_start(problem) -> float:
    """The first time of a k-diffusion run: t_max, or VE level 80 where sigma/alpha(t_max) = inf."""
    proc = problem.process
    t = torch.tensor([proc.t_max], dtype=F64)
    if math.isfinite(float(proc.ve_sigma(t))):
        return float(proc.t_max)
    return float(proc.t_from_log_snr(torch.tensor(-2.0 * math.log(KD_FM_SIGMA_MAX), dtype=F64)))


def kd_sigmas(K, problem, grid: str, steps: int) -> torch.Tensor:
    """``steps + 1`` VE levels ending in 0: k-diffusion's karras(rho 7), or the problem's default
    unigen grid ending at sigma = 0 (log-SNR spacing to the finite end, then the step to 0)."""
    proc, t0 = problem.process, _kd_start(problem)
    if grid == "karras":
        D = to_kdiffusion_denoiser(problem.model)
        s_max = float(proc.ve_sigma(torch.tensor([t0], dtype=F64)))
        return K.get_sigmas_karras(steps, D.sigma_min, s_max, rho=7.0).to(F64)
    ts = make_grid(proc, default_schedule(proc), steps, t_start=t0, t_end=proc.t_min)
    return proc.ve_sigma(ts)


def kd_run(K, name: str, grid: str, stochastic: bool, **kw):
    sampler = getattr(K, name)

    def run(problem, z, steps, seed):
        proc = problem.process
        sig = kd_sigmas(K, problem, grid, steps)
        ts = torch.cat([proc.t_from_log_snr(-2.0 * torch.log(sig[:-1])).clamp(proc.t_min, proc.t_max),
                        torch.zeros(1, dtype=F64)])
        sig = proc.ve_sigma(ts)  # the levels of those times: k-diffusion's float32 karras values to ~1e-9
        D = Counted(to_kdiffusion_denoiser(problem.model))
        x0 = z / float(proc.alpha(ts[:1]))
        extra = dict(kw, noise_sampler=_iid_noise_sampler(x0, seed)) if stochastic else kw
        x = sampler(D, x0, sig, disable=True, **extra)
        return PeerRun(x * float(proc.alpha(ts[-1:])), D.calls, ts, z)

    return run


def kdiffusion_peers(K) -> list[Peer]:
    if K is None:
        return []
    allk = ("vp", "fm", "ddpm")
    one, two = (lambda n: n), (lambda n: 2 * n - 1)
    table = [
        # name, kwargs, nfe, stochastic, twin, twin label, reason, quick
        ("sample_euler", {}, one, False, lambda: ug.Euler(clock="sigma"), "Euler(clock='sigma')", None, True),
        ("sample_heun", {}, two, False, lambda: ug.Heun(clock="sigma"), "Heun(clock='sigma')", None, True),
        ("sample_dpm_2", {}, two, False, None, "none (Midpoint(clock='sigma') evaluates at the arithmetic mean)",
         ("DPM-2 evaluates its stage at the geometric mean sqrt(sigma_i sigma_i+1); unigen's Midpoint(clock='sigma') "
          "at the arithmetic mean"), False),
        ("sample_lms", {}, one, False, None, "none (no linear multistep solver in unigen)",
         "LMS (order-4 Adams-Bashforth in sigma) has no unigen counterpart; at order 1 it is Euler(clock='sigma')",
         False),
        ("sample_dpmpp_2m", {}, one, False, lambda: ug.DPMSolverPP(2, lower_order_final=False),
         "DPMSolverPP(2, lower_order_final=False)", None, True),
        ("sample_dpmpp_2s_ancestral", {}, two, True, None, "none (no ancestral 2S in unigen)",
         ("stochastic: ancestral DPM-Solver++(2S) has no unigen counterpart; at eta=0 it is "
          "DPMSolverPP(2, multistep=False)"), False),
        ("sample_dpmpp_sde", {}, two, True, None, "none (no SDE 2S in unigen)",
         ("stochastic: SDE-DPM-Solver++(2S, r=1/2) has no unigen counterpart; at eta=0 it is "
          "DPMSolverPP(2, multistep=False)"), False),
        ("sample_dpmpp_2m_sde", {}, one, True, lambda: ug.SDEDPMSolverPP(2, eta=1.0, lower_order_final=False),
         "SDEDPMSolverPP(2, eta=1, lower_order_final=False), same draws", None, True),
        ("sample_dpmpp_3m_sde", {}, one, True, None, "none (SDEDPMSolverPP has orders 1-2)",
         ("stochastic: no third-order SDE-DPM-Solver++ in unigen; at eta=0 it is "
          "DPMSolverPP(3, match_reference_3m=True, solver_type='taylor', lower_order_final=False)"), False),
        ("sample_dpmpp_3m_sde", {"eta": 0.0}, one, False,
         lambda: ug.DPMSolverPP(3, match_reference_3m=True, solver_type="taylor", lower_order_final=False),
         "DPMSolverPP(3, match_reference_3m=True, solver_type='taylor', lower_order_final=False)", None, False),
    ]
    out = []
    for name, kw, nfe, sto, twin_fn, label, reason, quick in table:
        short = name.replace("sample_", "") + ("(eta=0)" if kw.get("eta") == 0.0 else "")
        for grid in ("karras", "default"):
            twin = None if twin_fn is None else _unigen_twin(twin_fn)
            glabel = "karras(rho=7)->0 [k-diffusion]" if grid == "karras" else "unigen default grid ->0"
            out.append(Peer("k-diffusion", short, glabel, allk, kd_run(K, name, grid, sto, **kw), nfe, twin, label,
                            reason, sto, quick and grid == "karras"))
    return out


# ---------------------------------------------------------------------------------------
# flow_matching (Meta)
# ---------------------------------------------------------------------------------------
def _fm_view(problem):
    """(FM model, grid map): on "fm" the problem itself; on "vp" ``model.to(FlowMatching())`` at the
    equal-log-SNR times, z_fm = c z (``ug.time_change``)."""
    if problem.kind == "fm":
        return problem.model, lambda ts: (ts, torch.ones_like(ts))
    fm = ug.FlowMatching()
    return problem.model.to(fm, "velocity"), lambda ts: ug.time_change(problem.process, fm, ts)


def fm_run(ODESolver, method: str):
    """flow_matching's ODESolver over the unigen grid (their tau = 1 - t, velocity -dz/dt)."""

    def run(problem, z, steps, seed):
        model, tmap = _fm_view(problem)
        if steps is None:  # adaptive: one interval, their own steps
            ts = torch.tensor(sample_range(problem.process), dtype=F64)
        else:
            ts = make_grid(problem.process, default_schedule(problem.process), steps)
        t_fm, c = tmap(ts)
        u = Counted(lambda x, t: -model.predict(x, (1.0 - t).to(F64).expand(x.shape[0])).velocity)
        opts = {"atol": FM_DOPRI_TOL, "rtol": FM_DOPRI_TOL} if steps is None else {}
        x = ODESolver(velocity_model=u).sample(x_init=z * c[0], step_size=None, method=method,
                                               time_grid=1.0 - t_fm, **opts)
        return PeerRun(x / c[-1], u.calls, ts, z)

    return run


def fm_twin(solver_fn, through: bool = False):
    """unigen's run on the FM view of the problem (the same grid, the same scaled noise).

    ``through``: step the solver over the whole grid as written, including a last step onto
    sigma = 0 (``sample`` would replace it by the jump to x0_hat), as an adaptive solve needs.
    """

    def twin(problem, run, seed):
        model, tmap = _fm_view(problem)
        t_fm, c = tmap(run.ts)
        if not through:
            return ug.sample(model, solver_fn(), schedule=t_fm, noise=run.z * c[0])[0] / c[-1]
        solver, z = solver_fn(), run.z * c[0]
        dyn = Dynamics(model, F64)
        grid = Grid(model.process, t_fm, F64, z.device, model.parametrization)
        with torch.no_grad():
            for i in range(len(t_fm) - 1):
                z, _ = solver.step(dyn, z, i, grid, None, None)
        return z / c[-1]

    return twin


def flow_matching_peers(ODESolver) -> list[Peer]:
    if ODESolver is None:
        return []
    kinds = ("fm", "vp")
    grid = "unigen default grid (time_grid, tau = 1 - t)"
    return [
        Peer("flow_matching", "ODESolver(euler)", grid, kinds, fm_run(ODESolver, "euler"), lambda n: n,
             _unigen_twin(ug.DDIM), "DDIM() on the problem (= Euler on FM via Model.to)", quick=True),
        Peer("flow_matching", "ODESolver(midpoint)", grid, kinds, fm_run(ODESolver, "midpoint"), lambda n: 2 * n,
             fm_twin(ug.Midpoint), "Midpoint() on the FM view", quick=True,
             reason="first-order final step: a unigen grid ending at sigma = 0 (flow matching's) takes its last "
                    "step as the jump to x0_hat (1 call), flow_matching a full midpoint step (2 calls)"),
        # "fm" only: torchdiffeq's dopri5 (no step_t) steps past the end of time_grid and interpolates back,
        # evaluating the model beyond the last time; on the VP view that is t_fm < 0 (NaN) for some batches
        Peer("flow_matching", f"ODESolver(dopri5, tol {FM_DOPRI_TOL:g})", "adaptive (their steps)", ("fm",),
             fm_run(ODESolver, "dopri5"), lambda n: 0,
             fm_twin(lambda: ug.Adaptive("dopri5", rtol=FM_DOPRI_TOL, atol=FM_DOPRI_TOL, options={"step_t": None}),
                     through=True),
             f"Adaptive('dopri5', tol {FM_DOPRI_TOL:g}, step_t=None) on the FM view", budgets=(),
             reason="adaptive step control: the two runs integrate mirrored times (t vs 1 - t), so accept/reject "
                    "decisions can differ; both are within the tolerance of the exact solution"),
    ]


def peers(quick: bool = False, K=None, D=None, ODESolver=None) -> list[Peer]:
    """Every peer configuration for the available libraries (``quick``: the short list)."""
    out = diffusers_peers(D) + kdiffusion_peers(K) + flow_matching_peers(ODESolver)
    return [p for p in out if p.quick] if quick else out


# ---------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------


def reference(problem, z: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    """The exact PF-ODE solution from z at t_start to t_end (dopri5, rtol = atol = 1e-10):
    ``Problem.reference``, which solves on the flow-matching view of the model
    (``unigen.reference.ode_endpoint``), so runs ending at sigma = 0 on VP are exact too."""
    return problem.reference(z, t_start, t_end)[0]


def steps_for(peer: Peer, budget: int) -> int | None:
    """The most steps (>= 2) whose ``peer.nfe_of`` fits ``budget`` model calls (None: none fits)."""
    best = None
    for n in range(2, budget + 1):
        if peer.nfe_of(n) <= budget:
            best = n
    return best


def _agreement(peer: Peer, problem, run: PeerRun, seed: int):
    """(relative max difference to unigen's twin or None, the note)."""
    if peer.twin is None:
        return None, peer.reason
    x_ug = peer.twin(problem, run, seed)
    rel = float((run.x - x_ug).abs().max() / run.x.abs().max().clamp_min(1e-300))
    if rel <= AGREE_TOL:
        return rel, "agrees"
    return rel, peer.reason or "UNEXPLAINED disagreement"


def run_problem(problem, peer_list, budgets, n_samples: int, seed: int = 0, n_projections: int = 256, log=print):
    """Every applicable peer at every budget on ``problem``; one record per run."""
    gen = lambda k: _gen(seed * 1000 + k)
    z = problem.noise(n_samples, gen(1))
    exact_a, exact_b = problem.exact(n_samples, gen(2)), problem.exact(n_samples, gen(3))
    med = median_bandwidth(exact_a)
    bws = tuple(med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0))

    def sw(x):
        return sliced_wasserstein2(x, exact_a, n_projections=n_projections, generator=gen(4))

    base = {"problem": problem.name, "dim": problem.dim, "process": problem.kind, "n_samples": n_samples,
            "sw2_floor": sw(exact_b), "mmd2_floor": rbf_mmd2(exact_b, exact_a, bws)}
    records = []
    for peer in [p for p in peer_list if p.applies(problem)]:
        t_peer = time.perf_counter()
        plan = [(None, None)] if peer.budgets == () else [(b, steps_for(peer, b)) for b in budgets]
        for budget, steps in plan:
            rec = dict(base, library=peer.library, sampler=peer.sampler, grid=peer.grid, budget=budget,
                       stochastic=peer.stochastic, unigen_twin=peer.twin_label)
            if budget is not None and steps is None:
                continue
            try:
                t0 = time.perf_counter()
                run = peer.run(problem, z, steps, seed * 1000 + 5)
                while budget is not None and run.nfe > budget and steps > 2:
                    steps -= 1
                    run = peer.run(problem, z, steps, seed * 1000 + 5)
                sec = time.perf_counter() - t0
                if budget is not None and run.nfe > budget:
                    continue
                ok = bool(torch.isfinite(run.x).all())
                t_start, t_end = float(run.ts[0]), float(run.ts[-1])
                rmse = None
                if not peer.stochastic and ok:
                    rmse = endpoint_rmse(run.x, reference(problem, z, t_start, t_end))
                agree, note = _agreement(peer, problem, run, seed * 1000 + 5)
                rec.update(steps=steps if steps is not None else len(run.ts) - 1, nfe=run.nfe, t_start=t_start,
                           t_end=t_end, rmse=rmse if ok else math.inf, sw2=sw(run.x) if ok else math.inf,
                           mmd2=rbf_mmd2(run.x, exact_a, bws) if ok else math.inf, agreement=agree, note=note,
                           seconds=sec)
            except Exception as e:  # noqa: BLE001 - a configuration that cannot run is reported
                rec.update(steps=steps, nfe=None, rmse=None, sw2=None, mmd2=None, agreement=None,
                           note=f"error: {type(e).__name__}: {e}")
                log(f"[{problem.name}] {peer.library} {peer.sampler}: {rec['note']}")
            records.append(rec)
        log(f"  [{problem.name}] {peer.library} {peer.sampler} / {peer.grid}: {time.perf_counter() - t_peer:.1f} s")
    return records


def best_peer(records: list[dict], nfe: int) -> dict:
    """For each problem, the deterministic peer run of lowest endpoint RMSE at budget ``nfe``:
    ``{problem: {"library", "sampler", "grid", "steps", "nfe", "rmse"}}``."""
    out = {}
    for r in records:
        if r.get("budget") != nfe or r.get("stochastic") or r.get("rmse") is None or not math.isfinite(r["rmse"]):
            continue
        cur = out.get(r["problem"])
        if cur is None or r["rmse"] < cur["rmse"]:
            out[r["problem"]] = {k: r[k] for k in ("library", "sampler", "grid", "steps", "nfe", "rmse")}
    return out


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def _f(x, fmt=".3g"):
    if x is None:
        return "-"
    return "inf" if isinstance(x, float) and math.isinf(x) else format(x, fmt)


def _agree_cell(r: dict) -> str:
    a = r.get("agreement")
    if r.get("note") == "agrees":
        return f"{a:.1e}"
    return (f"{a:.1e}: " if a is not None else "") + str(r.get("note"))


def table(records: list[dict]) -> str:
    lines = []
    for prob in dict.fromkeys(r["problem"] for r in records):
        rs = [r for r in records if r["problem"] == prob]
        r0 = rs[0]
        lines += [f"\n### {prob} (n = {r0['n_samples']}; floor SW2 {r0['sw2_floor']:.4f}, MMD2 {r0['mmd2_floor']:.2e})\n",
                  "| problem | library | sampler | grid | steps | NFE | RMSE | SW2 | MMD2 | unigen twin | agreement / reason |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {prob} | {r['library']} | {r['sampler']} | {r['grid']} | {_f(r.get('steps'), 'd')} | "
                         f"{_f(r.get('nfe'), 'd')} | {_f(r.get('rmse'))} | {_f(r.get('sw2'), '.4f')} | "
                         f"{_f(r.get('mmd2'), '.2e')} | {r['unigen_twin']} | {_agree_cell(r)} |")
    return "\n".join(lines)


def agreement_summary(records: list[dict]) -> list[dict]:
    """Per peer configuration (library, sampler, grid): the runs, the worst relative difference to
    unigen's twin among the runs that agree, and the stated reason for those that do not."""
    groups: dict = {}
    for r in records:
        if r.get("nfe") is None:
            continue
        g = groups.setdefault((r["library"], r["sampler"], r["grid"]), {
            "library": r["library"], "sampler": r["sampler"], "grid": r["grid"], "unigen_twin": r["unigen_twin"],
            "runs": 0, "agree": 0, "max_agreeing": None, "differ_range": None, "reason": None})
        g["runs"] += 1
        a = r.get("agreement")
        if r.get("note") == "agrees":
            g["agree"] += 1
            g["max_agreeing"] = a if g["max_agreeing"] is None else max(g["max_agreeing"], a)
        else:
            g["reason"] = r.get("note")
            if a is not None:
                lo, hi = g["differ_range"] or (a, a)
                g["differ_range"] = (min(lo, a), max(hi, a))
    return list(groups.values())


def agreement_table(summary: list[dict]) -> str:
    lines = ["| library | sampler | grid | unigen twin | runs agreeing (<= 1e-6) | worst agreeing | others: rel. diff, reason |",
             "|---|---|---|---|---|---|---|"]
    for g in summary:
        rng = g["differ_range"]
        other = "" if g["agree"] == g["runs"] else ((f"{rng[0]:.1e}..{rng[1]:.1e}: " if rng else "") + str(g["reason"]))
        lines.append(f"| {g['library']} | {g['sampler']} | {g['grid']} | {g['unigen_twin']} | {g['agree']}/{g['runs']} | "
                     f"{_f(g['max_agreeing'], '.1e')} | {other} |")
    return "\n".join(lines)


def best_table(best: dict) -> str:
    lines = ["| problem | NFE | best peer (deterministic) | grid | steps | RMSE |", "|---|---|---|---|---|---|"]
    for prob, by in best.items():
        for nfe, b in by.items():
            lines.append(f"| {prob} | {nfe} | {b['library']} {b['sampler']} | {b['grid']} | {b['steps']} | "
                         f"{b['rmse']:.3g} |")
    return "\n".join(lines)


def dump_json(data: dict) -> str:
    """The results as JSON: the summary blocks indented, one line per record."""
    head = json.dumps({k: v for k, v in data.items() if k != "records"}, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(r) for r in data["records"])
    return f'{head},\n "records": [\n{rows}\n ]\n}}\n'


def _version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="dim 2, budgets 8 10, a few samplers, n = 200")
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--processes", nargs="+", default=["vp", "fm", "ddpm"], choices=["vp", "fm", "ddpm"])
    ap.add_argument("--budgets", type=int, nargs="+", default=None)
    ap.add_argument("--n", type=int, default=None, help="samples per run (500; quick 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dims = args.dims or ([2] if args.quick else [2, 16])
    budgets = tuple(args.budgets or (QUICK_BUDGETS if args.quick else FULL_BUDGETS))
    n = args.n or (200 if args.quick else 500)
    out = args.out or ROOT / "benchmarks" / "results" / ("peers_quick.json" if args.quick else "peers.json")

    K, kver = load_kdiffusion()
    D, dver = load_diffusers()
    S, fver = load_flow_matching()
    versions = {"k-diffusion": kver, "diffusers": dver, "flow_matching": fver, "torch": torch.__version__,
                "unigen": _version("unigen"), "torchdiffeq": _version("torchdiffeq")}
    for name, v in versions.items():
        print(f"{name}: {v}")
    plist = peers(args.quick, K, D, S)
    if not plist:
        print("no peer library is installed; nothing to compare")
    t0 = time.perf_counter()
    records = []
    for dim in dims:
        for kind in args.processes:
            problem = gmm_problem(dim, kind)
            t1 = time.perf_counter()
            recs = run_problem(problem, plist, budgets, n, seed=args.seed)
            print(f"[{problem.name}] {len(recs)} runs in {time.perf_counter() - t1:.1f} s", flush=True)
            records += recs
    best = {}
    for nfe in (10, 20):
        for prob, b in best_peer(records, nfe).items():
            best.setdefault(prob, {})[str(nfe)] = b
    print(table(records))
    summary = agreement_summary(records)
    print("\n## agreement with unigen (same algorithm, same grid, same noise)\n")
    print(agreement_table(summary))
    print("\n## best peer deterministic RMSE\n")
    print(best_table(best))
    bad = [r for r in records if str(r.get("note", "")).startswith(("UNEXPLAINED", "error"))]
    print(f"\n{len(records)} runs in {time.perf_counter() - t0:.1f} s; {len(bad)} unexplained disagreements or errors")
    meta = {"versions": versions, "dims": dims, "processes": args.processes, "budgets": list(budgets), "n_samples": n,
            "seed": args.seed, "quick": args.quick, "dtype": "float64", "threads": torch.get_num_threads(),
            "agreement_tol": AGREE_TOL, "platform": platform.platform(), "python": platform.python_version(),
            "seconds": time.perf_counter() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_json({"meta": meta, "best_peer": best, "agreement": summary, "records": records}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
