#!/usr/bin/env python
r"""Per-step solver overhead of unigen against k-diffusion and diffusers (a speed benchmark).

What is measured
----------------
A sampler's wall time with a nearly free model is the bookkeeping it adds to every step:
computing coefficients, converting parametrizations, indexing schedules, allocating
temporaries. Each case runs a full sampling loop (grid construction included, as a user
sees it) on float32 data of shape [batch, 2] on the CPU, with ``torch.set_num_threads(1)``
so that numbers are stable and comparable across machines with different core counts.

Two models:

* ``trivial``: ``out = 0.5 * z``, one elementwise multiply, so solver bookkeeping dominates;
* ``oracle``:  the exact 8-component Gaussian-mixture posterior mean in 2-D
  (:class:`unigen.analytic.GaussianMixture`), a realistic but still cheap model.

For every case and batch size the loop is timed at 10, ``--steps`` (50) and 110 steps
(median of ``--repeats`` repeats after warm-up, ``time.perf_counter``, garbage collector
off while timing, as ``timeit`` does). The model's own cost is measured by replaying the exact
calls a run made (same tensors, same time arguments) in a tight loop, so

    us/step            = T(50) / 50
    overhead us/step   = (T(50) - M(50)) / 50                       (what a 50-step run pays)
    marginal overhead  = ((T(110) - M(110)) - (T(10) - M(10))) / 100 (per extra step)
    setup us           = one-off cost (intercept of overhead against steps)

with T the run time and M the model time of the same run. "Steps" are solver steps: Heun
makes about two model calls per step in every library. The ratio column is unigen's
overhead divided by the peer's, with unigen configured like the peer (same process,
parametrization and grid family); the target is <= 0.5 against k-diffusion and <= 0.2
against diffusers. A sanity column checks that the paired runs compute the same thing:
unigen is run on the peer's exact grid and the relative max difference of the outputs is
reported.

Peers are imported lazily and skipped cleanly when absent. k-diffusion's package
``__init__`` imports a training stack (accelerate, wandb, torchvision, ...); only its
``sampling.py`` is loaded here, with a stub for the one helper it takes from ``utils``.
The diffusers loop is the standard pipeline loop (``set_timesteps``, then per timestep
``scale_model_input`` -> model -> ``step(...).prev_sample``, under ``torch.no_grad()``);
``DDIMScheduler`` is built with ``clip_sample=False`` so it runs plain DDIM.

Usage (from the repository root)::

    python benchmarks/overhead.py                  # full run, writes benchmarks/results/overhead.json
    python benchmarks/overhead.py --quick          # fewer repeats, trivial model only (< 60 s)
    python benchmarks/overhead.py --quick --no-peers
    python benchmarks/overhead.py --profile        # also cProfile unigen's loops (top functions)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import unigen as ug
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(ROOT))
    import unigen as ug

DIM = 2
N_TRAIN = 1000  # DDPM table length shared by diffusers and ug.VP.discrete
BETA_START, BETA_END = 1e-4, 0.02
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0
STEP_COUNTS_EXTRA = (10, 110)  # for the one-off / per-step split
TARGETS = {"k-diffusion": 0.5, "diffusers": 0.2}


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def trivial_fn(z, t):
    """The nearly free model: one elementwise multiply, whatever the time argument."""
    return 0.5 * z


def make_mixture() -> "ug.GaussianMixture":
    """Eight Gaussians on a ring of radius 2, std 0.1 (a standard 2-D toy target)."""
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return ug.GaussianMixture(means, 0.1)


class Recorder:
    """Wraps a model function; counts calls and keeps their arguments for replay timing."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list = []

    def __call__(self, *args):
        self.calls.append(args)
        return self.fn(*args)


def _vp_table_coefs(alphas_cumprod_log: torch.Tensor, t: torch.Tensor, like: torch.Tensor):
    """alpha, sigma of the DDPM table at a (possibly fractional) diffusers timestep."""
    tf = t.to(torch.float32)
    lo = torch.clamp(tf.floor().long(), 0, N_TRAIN - 2)
    w = tf - lo
    la = alphas_cumprod_log[lo] * (1 - w) + alphas_cumprod_log[lo + 1] * w
    return torch.exp(0.5 * la).to(like.dtype), torch.sqrt(-torch.expm1(la)).to(like.dtype)


def model_fn(kind: str, form: str, process=None, parametrization: str | None = None):
    """The model function in the call form a library uses.

    form: ``"unigen"`` (fn(z, t) inside a ug.Model of ``process``/``parametrization``),
    ``"kdiff"`` (VE denoiser D(x, sigma[B])) or ``"diffusers"`` (eps(x_VP, timestep)).
    """
    if kind == "trivial":
        return trivial_fn
    gm = make_mixture()
    if form == "unigen":
        return gm.model(process, parametrization).fn
    if form == "kdiff":

        def denoiser(x, sigma):
            return gm.posterior(x, torch.ones_like(sigma), sigma)[0]

        return denoiser
    betas = torch.linspace(BETA_START, BETA_END, N_TRAIN, dtype=torch.float64)
    log_ab = torch.cumsum(torch.log1p(-betas), 0).to(torch.float32)

    def eps_model(x, t):
        alpha, sigma = _vp_table_coefs(log_ab, t, x)
        return gm.posterior(x, alpha, sigma)[1]

    return eps_model


# ---------------------------------------------------------------------------------------
# runners: one sampling loop each, built for one (model kind, batch)
# ---------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A case of the benchmark (one library configured for one algorithm)."""

    algorithm: str
    library: str
    config: str
    key: str
    build: Callable  # (kind, base_noise) -> runner with run(steps), record(steps), times(steps)
    pair: str | None = None  # for peers: key of the unigen spec configured like this peer
    note: str = ""


class UnigenRunner:
    def __init__(self, process, parametrization, solver, schedule, t_end, kind, z):
        self.fn = model_fn(kind, "unigen", process, parametrization)
        self.process, self.parametrization = process, parametrization
        self.model = ug.Model(self.fn, process, parametrization)
        self.solver, self.schedule, self.t_end, self.z = solver, schedule, t_end, z

    def run(self, steps):
        return ug.sample(self.model, self.solver, steps=steps, schedule=self.schedule, t_end=self.t_end,
                         noise=self.z)[0]

    def record(self, steps):
        rec = Recorder(self.fn)
        model = ug.Model(rec, self.process, self.parametrization)
        out = ug.sample(model, self.solver, steps=steps, schedule=self.schedule, t_end=self.t_end, noise=self.z)[0]
        return rec, out

    def run_on_grid(self, ts, z):
        return ug.sample(self.model, self.solver, schedule=ts, noise=z)[0]


def unigen_spec(algorithm, config, key, process_fn, parametrization, solver_fn, schedule=None, t_end=None,
                noise_scale=1.0, fallback=None, note=""):
    """A unigen case; ``fallback`` = (solver_fn, schedule, t_end, note) if the primary raises."""

    def build(kind, base):
        runner = UnigenRunner(process_fn(), parametrization, solver_fn(), schedule, t_end, kind, base * noise_scale)
        runner.fallback_note = None
        if fallback is not None:
            try:
                for n in (STEP_COUNTS_EXTRA[0], 3):
                    runner.run(n)
            except Exception as e:  # noqa: BLE001 - a failing configuration is reported, not fatal
                f_solver, f_schedule, f_t_end, f_note = fallback
                runner = UnigenRunner(process_fn(), parametrization, f_solver(), f_schedule, f_t_end, kind,
                                      base * noise_scale)
                runner.fallback_note = f"{f_note} [primary raised {type(e).__name__}: {e}]"
        return runner

    return Spec(algorithm, "unigen", config, key, build, note=note)


class KDiffRunner:
    def __init__(self, K, sampler, kind, z):
        self.K, self.sampler = K, getattr(K, sampler)
        self.fn = model_fn(kind, "kdiff")
        self.z = z * EDM_SIGMA_MAX

    def sigmas(self, steps):
        return self.K.get_sigmas_karras(steps, EDM_SIGMA_MIN, EDM_SIGMA_MAX)

    def run(self, steps):
        return self.sampler(self.fn, self.z, self.sigmas(steps), disable=True)

    def record(self, steps):
        rec = Recorder(self.fn)
        return rec, self.sampler(rec, self.z, self.sigmas(steps), disable=True)

    def times(self, steps):
        """The grid as EDM times (t = sigma)."""
        return self.sigmas(steps).to(torch.float64)

    def start_for_unigen(self, steps):
        return self.z


class DiffusersRunner:
    def __init__(self, cls, kwargs, kind, z, grid_from):
        self.scheduler = cls(num_train_timesteps=N_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                             beta_schedule="linear", **kwargs)
        self.scheduler.set_timesteps(50)
        self.z = z * self.scheduler.init_noise_sigma
        self.fn = model_fn(kind, "diffusers")
        self.grid_from = grid_from

    def _loop(self, fn, steps):
        s = self.scheduler
        with torch.no_grad():
            s.set_timesteps(steps)
            x = self.z
            for t in s.timesteps:
                out = fn(s.scale_model_input(x, t), t)
                x = s.step(out, t, x).prev_sample
        return x

    def run(self, steps):
        return self._loop(self.fn, steps)

    def record(self, steps):
        rec = Recorder(self.fn)
        return rec, self._loop(rec, steps)

    def times(self, steps):
        """The grid as times of ug.VP.discrete (t_n = (n + 1)/N; the clean end t = 0)."""
        s = self.scheduler
        s.set_timesteps(steps)
        if self.grid_from == "timesteps":
            ts = (s.timesteps.to(torch.float64) + 1.0) / N_TRAIN
        else:  # VE sigmas (Euler / Heun): exact times by log-SNR
            sig = torch.unique_consecutive(s.sigmas.to(torch.float64))
            sig = sig[sig > 0]
            ts = _vp_discrete().t_from_log_snr(-2.0 * torch.log(sig))
        return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])

    def start_for_unigen(self, steps):
        """The start in ug.VP.discrete's variable: Euler/Heun schedulers work in VE scale z/alpha."""
        if self.grid_from == "timesteps":
            return self.z
        self.scheduler.set_timesteps(steps)
        return self.z / torch.sqrt(1.0 + self.scheduler.sigmas[0].to(self.z.dtype) ** 2)


def _vp_discrete():
    return ug.VP.discrete(torch.linspace(BETA_START, BETA_END, N_TRAIN, dtype=torch.float64))


# ---------------------------------------------------------------------------------------
# peers, loaded lazily
# ---------------------------------------------------------------------------------------
def load_kdiffusion():
    """k_diffusion.sampling without the package __init__ (whose imports need a training stack)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, "k-diffusion is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    if not path.is_file():
        return None, f"k-diffusion has no sampling module at {path}"
    for dep in ("scipy.integrate", "torchdiffeq", "torchsde", "tqdm.auto"):
        try:
            importlib.import_module(dep)
        except ImportError as e:
            return None, f"k_diffusion.sampling needs {dep.split('.')[0]}: {e}"
    name = "_overhead_kdiffusion"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path.parent)]
    utils = types.ModuleType(name + ".utils")

    def append_dims(x, target_dims):  # the only helper sampling.py takes from k_diffusion.utils
        extra = target_dims - x.ndim
        if extra < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
        return x[(...,) + (None,) * extra]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules[name], sys.modules[name + ".utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location(name + ".sampling", path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mspec.name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        return None, f"loading k_diffusion/sampling.py failed: {type(e).__name__}: {e}"
    return module, importlib.metadata.version("k-diffusion")


def load_diffusers():
    try:
        import diffusers
        from diffusers import (  # noqa: F401
            DDIMScheduler,
            DPMSolverMultistepScheduler,
            EulerDiscreteScheduler,
            HeunDiscreteScheduler,
            UniPCMultistepScheduler,
        )
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken optional dependency
        return None, f"diffusers unavailable: {type(e).__name__}: {e}"
    try:
        diffusers.utils.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    return diffusers, diffusers.__version__


# ---------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------
def specs(K, D) -> list[Spec]:
    vp = ug.VP.linear
    edm = ug.EDM
    out: list[Spec] = []

    def add_kd(algorithm, sampler, pair):
        if K is not None:
            out.append(Spec(algorithm, "k-diffusion", f"{sampler}, karras(rho=7)->0, VE denoiser", f"kd-{sampler}",
                            lambda kind, base, s=sampler: KDiffRunner(K, s, kind, base), pair=pair))

    def add_df(algorithm, cls_name, kwargs, grid_from, pair, label):
        if D is not None:
            cls = getattr(D, cls_name)
            out.append(Spec(algorithm, "diffusers", label, f"df-{cls_name}",
                            lambda kind, base, c=cls, kw=kwargs, g=grid_from: DiffusersRunner(c, kw, kind, base, g),
                            pair=pair))

    # Euler
    out.append(unigen_spec("Euler", "Euler() [clock t], VP.linear eps, logsnr", "ug-euler-t-vp", vp, "eps", ug.Euler))
    out.append(unigen_spec("Euler", "Euler(clock='sigma'), VP.linear eps, logsnr", "ug-euler-s-vp", vp, "eps",
                           lambda: ug.Euler(clock="sigma")))
    out.append(unigen_spec("Euler", "Euler(clock='sigma'), EDM denoiser, karras->0", "ug-euler-s-edm", edm,
                           "denoiser", lambda: ug.Euler(clock="sigma"), "karras", 0.0, EDM_SIGMA_MAX))
    out.append(unigen_spec("Euler", "Euler(clock='sigma'), VP.discrete eps, linspace->0", "ug-euler-s-ddpm",
                           _vp_discrete, "eps", lambda: ug.Euler(clock="sigma"), "linspace"))
    add_kd("Euler", "sample_euler", "ug-euler-s-edm")
    add_df("Euler", "EulerDiscreteScheduler", {}, "sigmas", "ug-euler-s-ddpm", "EulerDiscreteScheduler, linspace")
    # DDIM
    out.append(unigen_spec("DDIM", "DDIM(), VP.linear eps, logsnr", "ug-ddim-vp", vp, "eps", ug.DDIM))
    out.append(unigen_spec("DDIM", "DDIM(), VP.discrete eps, leading->0", "ug-ddim-ddpm", _vp_discrete, "eps",
                           ug.DDIM, "leading"))
    add_df("DDIM", "DDIMScheduler", {"clip_sample": False}, "timesteps", "ug-ddim-ddpm",
           "DDIMScheduler(clip_sample=False), leading")
    # DPM-Solver++(2M)
    pp2 = lambda: ug.DPMSolverPP(2)  # noqa: E731
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.linear eps, logsnr", "ug-dpmpp-vp", vp, "eps", pp2))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), EDM denoiser, karras->0", "ug-dpmpp-edm", edm, "denoiser",
                           pp2, "karras", 0.0, EDM_SIGMA_MAX))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.discrete eps, linspace->0", "ug-dpmpp-ddpm",
                           _vp_discrete, "eps", pp2, "linspace"))
    add_kd("DPM++(2M)", "sample_dpmpp_2m", "ug-dpmpp-edm")
    add_df("DPM++(2M)", "DPMSolverMultistepScheduler", {}, "timesteps", "ug-dpmpp-ddpm",
           "DPMSolverMultistepScheduler (2M, dpmsolver++), linspace")
    # UniPC
    uni2 = lambda: ug.UniPC(2)  # noqa: E731
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.linear eps, logsnr", "ug-unipc-vp", vp, "eps", uni2))
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.discrete eps, linspace->0", "ug-unipc-ddpm", _vp_discrete,
                           "eps", uni2, "linspace"))
    add_df("UniPC(2)", "UniPCMultistepScheduler", {}, "timesteps", "ug-unipc-ddpm",
           "UniPCMultistepScheduler (order 2, bh2), linspace")
    # Heun
    heun_s = lambda: ug.Heun(clock="sigma")  # noqa: E731
    out.append(unigen_spec("Heun", "Heun(clock='sigma'), VP.linear eps, logsnr", "ug-heun-s-vp", vp, "eps", heun_s))
    out.append(unigen_spec(
        "Heun", "Heun(clock='sigma'), EDM denoiser, karras->0", "ug-heun-s-edm", edm, "denoiser", heun_s, "karras", 0.0,
        EDM_SIGMA_MAX,
        fallback=(ug.Heun, "karras", 0.0, "fallback Heun() [clock t]: on EDM (alpha=1, sigma=t) the same algorithm"),
    ))
    out.append(unigen_spec(
        "Heun", "Heun(clock='sigma'), VP.discrete eps, linspace->0", "ug-heun-s-ddpm", _vp_discrete, "eps", heun_s,
        "linspace",
        fallback=(heun_s, "logsnr", None, "fallback grid logsnr ending at t=1/N (no final step to sigma=0)"),
    ))
    add_kd("Heun", "sample_heun", "ug-heun-s-edm")
    add_df("Heun", "HeunDiscreteScheduler", {}, "sigmas", "ug-heun-s-ddpm", "HeunDiscreteScheduler, linspace")
    return out


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------
def calibrate(fn, min_time: float, warmup: int = 2) -> int:
    """Warm ``fn`` up and return how many calls make one timed repeat of >= ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, math.ceil(min_time / max(one, 1e-7)))


def interleaved(fns: dict, repeats: int, min_time: float) -> dict:
    """Median seconds per call of each function in ``fns``, timed round-robin.

    Every repeat times each function once (``number`` calls, garbage collector off), so a
    change of background load during the run hits all the cases of a comparison alike.
    """
    numbers = {k: calibrate(f, min_time) for k, f in fns.items()}
    samples: dict = {k: [] for k in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for k, f in fns.items():
                number = numbers[k]
                t0 = time.perf_counter()
                for _ in range(number):
                    f()
                samples[k].append((time.perf_counter() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "number": numbers[k]}
            for k, v in samples.items()}


def replay_fn(rec: Recorder):
    fn, calls = rec.fn, rec.calls

    def replay():
        for args in calls:
            fn(*args)

    return replay


@dataclass
class Result:
    algorithm: str
    library: str
    config: str
    key: str
    pair: str | None
    batch: int
    model: str
    steps: int
    nfe: int = 0
    us_per_step: float = float("nan")
    model_us_per_step: float = float("nan")
    overhead_us_per_step: float = float("nan")
    marginal_overhead_us_per_step: float = float("nan")
    setup_us: float = float("nan")
    finite: bool = True
    runs: dict = field(default_factory=dict)  # steps -> {"run_s", "model_s", "nfe", spread}
    agreement: float | str | None = None  # relative max |unigen - peer| on the peer's grid (peers only)
    note: str = ""
    error: str | None = None


def measure_group(group: list[Spec], kind: str, batch: int, steps: int, repeats: int, min_time: float, base,
                  split: bool = True):
    """Time every case of one algorithm at ``steps`` (and 10 and 110 steps if ``split``).

    Returns (results, runners). The split into one-off and per-step cost is a least-squares
    line through the overheads at the three step counts.
    """
    counts = sorted({STEP_COUNTS_EXTRA[0], steps, STEP_COUNTS_EXTRA[1]}) if split else [steps]
    results, runners, live = {}, {}, []
    for spec in group:
        res = Result(spec.algorithm, spec.library, spec.config, spec.key, spec.pair, batch, kind, steps, note=spec.note)
        results[spec.key] = res
        try:
            runner = spec.build(kind, base)
            if getattr(runner, "fallback_note", None):
                res.note = (res.note + " " + runner.fallback_note).strip()
            recs = {}
            for n in counts:  # one untimed run per step count: checks it works, records the model calls
                recs[n], out = runner.record(n)
                if n == steps:
                    res.finite = bool(torch.isfinite(out).all())
        except Exception as e:  # noqa: BLE001 - a failing case is reported, not fatal
            res.error = f"{type(e).__name__}: {e}"
            continue
        runners[spec.key] = runner
        live.append((spec, runner, recs))
    for n in counts:
        fns = {}
        for spec, runner, recs in live:
            fns[(spec.key, "run")] = lambda r=runner, n=n: r.run(n)
            fns[(spec.key, "model")] = replay_fn(recs[n])
        timings = interleaved(fns, repeats, min_time)
        for spec, _, recs in live:
            t_run, t_model = timings[(spec.key, "run")], timings[(spec.key, "model")]
            results[spec.key].runs[n] = {
                "run_s": t_run["median"], "run_min_s": t_run["min"], "run_max_s": t_run["max"],
                "model_s": t_model["median"], "nfe": len(recs[n].calls), "loops_per_repeat": t_run["number"],
            }
    for spec, _, _ in live:
        res = results[spec.key]
        r = res.runs[steps]
        res.nfe = r["nfe"]
        res.us_per_step = 1e6 * r["run_s"] / steps
        res.model_us_per_step = 1e6 * r["model_s"] / steps
        res.overhead_us_per_step = 1e6 * (r["run_s"] - r["model_s"]) / steps
        if len(counts) > 1:
            xs = [float(n) for n in counts]
            ys = [res.runs[n]["run_s"] - res.runs[n]["model_s"] for n in counts]
            xm, ym = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sum((x - xm) ** 2 for x in xs)
            res.marginal_overhead_us_per_step = 1e6 * slope
            res.setup_us = 1e6 * (ym - slope * xm)
    return [results[s.key] for s in group], runners


def agreement(peer_runner, ug_runner, steps: int) -> float | str:
    """Relative max difference between the peer and unigen run on the peer's exact grid."""
    try:
        ts = peer_runner.times(steps)
        x_peer = peer_runner.run(steps)
        x_ug = ug_runner.run_on_grid(ts, peer_runner.start_for_unigen(steps))
        return float((x_ug - x_peer).abs().max() / x_peer.abs().max().clamp_min(1e-30))
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------
def profile_unigen(all_specs: list[Spec], steps: int, top: int = 18) -> str:
    """cProfile of unigen's loops (batch 64, trivial model, ``steps`` steps, 20 runs each)."""
    buf = io.StringIO()
    base = torch.randn(64, DIM, generator=torch.Generator().manual_seed(0))
    for spec in all_specs:
        if spec.library != "unigen":
            continue
        runner = spec.build("trivial", base)
        runner.run(steps)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            runner.run(steps)
        prof.disable()
        s = io.StringIO()
        stats = pstats.Stats(prof, stream=s)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)
        buf.write(f"\n===== {spec.algorithm}: unigen {spec.config} (20 runs x {steps} steps, batch 64) =====\n")
        buf.write(_trim_pstats(s.getvalue()))
    return buf.getvalue()


def _trim_pstats(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "function calls" in line:
            return "\n".join(lines[i:]) + "\n"
    return text


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def _f(x, nd=1):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else float("nan")


def comparisons(results: list[Result]) -> list[dict]:
    """unigen (configured like the peer) against each peer: overhead and total-time ratios.

    Targets apply to the trivial model only: with the oracle the overhead is a small
    difference of two large, noisy times, so only the total-time ratio is meaningful there.
    """
    by_key = {(r.key, r.batch, r.model): r for r in results}
    out = []
    for r in results:
        if r.pair is None or r.error:
            continue
        u = by_key.get((r.pair, r.batch, r.model))
        if u is None or u.error:
            continue
        target = TARGETS.get(r.library) if r.model == "trivial" else None
        ratio = _ratio(u.overhead_us_per_step, r.overhead_us_per_step)
        ratio_m = _ratio(u.marginal_overhead_us_per_step, r.marginal_overhead_us_per_step)
        out.append({
            "algorithm": r.algorithm, "peer": r.library, "peer_config": r.config, "unigen_config": u.config,
            "batch": r.batch, "model": r.model,
            "unigen_us_per_step": u.us_per_step, "peer_us_per_step": r.us_per_step,
            "ratio_total": _ratio(u.us_per_step, r.us_per_step),
            "unigen_overhead_us_per_step": u.overhead_us_per_step, "peer_overhead_us_per_step": r.overhead_us_per_step,
            "ratio_overhead": ratio,
            "unigen_marginal_overhead_us_per_step": u.marginal_overhead_us_per_step,
            "peer_marginal_overhead_us_per_step": r.marginal_overhead_us_per_step,
            "ratio_marginal_overhead": ratio_m,
            "target": target,
            "met": None if target is None else bool(ratio <= target),
            "met_marginal": None if target is None else bool(ratio_m <= target),
            "agreement_rel_max_diff": r.agreement,
            "unigen_note": u.note,
        })
    return out


def _error_row(r: Result, ncols: int) -> str:
    return f"| {r.algorithm} | {r.library} | {r.config} | {r.batch} | error: {r.error} |" + " |" * (ncols - 5)


def table(results: list[Result], comps: list[dict]) -> str:
    """The trivial-model table: time, model time, overhead, per-step split, ratios."""
    ratio = {(c["peer_config"], c["batch"], c["model"]): c for c in comps}
    head = ("| algorithm | library | config | batch | NFE | µs/step | model µs/step | overhead µs/step "
            "| marginal overhead µs/step | setup µs | ratio unigen/peer (overhead) | ratio (marginal) |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        if r.error:
            lines.append(_error_row(r, 12))
            continue
        c = ratio.get((r.config, r.batch, r.model))
        rr = (_f(c["ratio_overhead"], 2), _f(c["ratio_marginal_overhead"], 2)) if c else ("", "")
        flag = "" if r.finite else " (non-finite output)"
        lines.append(
            f"| {r.algorithm} | {r.library} | {r.config}{flag} | {r.batch} | {r.nfe} | {_f(r.us_per_step)} "
            f"| {_f(r.model_us_per_step)} | {_f(r.overhead_us_per_step)} | {_f(r.marginal_overhead_us_per_step)} "
            f"| {_f(r.setup_us, 0)} | {rr[0]} | {rr[1]} |"
        )
    return "\n".join(lines)


def oracle_table(results: list[Result], comps: list[dict]) -> str:
    """The oracle-model table: total time, the model's share, total-time ratio."""
    ratio = {(c["peer_config"], c["batch"], c["model"]): c for c in comps}
    lines = ["| algorithm | library | config | batch | NFE | µs/step | model µs/step | model share "
             "| ratio unigen/peer (total time) |", "|" + "---|" * 9]
    for r in results:
        if r.error:
            lines.append(_error_row(r, 9))
            continue
        c = ratio.get((r.config, r.batch, r.model))
        share = r.model_us_per_step / r.us_per_step if r.us_per_step > 0 else float("nan")
        lines.append(
            f"| {r.algorithm} | {r.library} | {r.config} | {r.batch} | {r.nfe} | {_f(r.us_per_step)} "
            f"| {_f(r.model_us_per_step)} | {_f(100 * share, 0)} % | {_f(c['ratio_total'], 2) if c else ''} |"
        )
    return "\n".join(lines)


def target_table(comps: list[dict]) -> str:
    lines = ["| algorithm | peer | batch | unigen / peer overhead | marginal | target | met (overhead / marginal) "
             "| agreement (rel. max diff) |", "|" + "---|" * 8]
    for c in comps:
        if c["target"] is None:
            continue
        ag = c["agreement_rel_max_diff"]
        ag = f"{ag:.1e}" if isinstance(ag, float) else ("—" if ag is None else f"n/a ({ag.split(':')[0]})")
        lines.append(
            f"| {c['algorithm']} | {c['peer']} | {c['batch']} | {_f(c['ratio_overhead'], 2)} "
            f"| {_f(c['ratio_marginal_overhead'], 2)} | ≤ {c['target']} "
            f"| {'yes' if c['met'] else 'no'} / {'yes' if c['met_marginal'] else 'no'} | {ag} |"
        )
    return "\n".join(lines)


def notes(results: list[Result]) -> str:
    seen, lines = set(), []
    for r in results:
        for text in (r.note, r.error):
            if text and (r.key, text) not in seen:
                seen.add((r.key, text))
                lines.append(f"- {r.library} `{r.config}`: {text}")
    for r in results:
        if isinstance(r.agreement, str) and (r.key, "agreement") not in seen:
            seen.add((r.key, "agreement"))
            lines.append(f"- agreement check for {r.library} `{r.config}` not possible: {r.agreement}")
    return "\n".join(lines)


def _loadavg():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def _git_state() -> dict:
    """Commit and uncommitted changes under unigen/: the numbers describe the working tree."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "unigen").splitlines()
        return {"commit": git("rev-parse", "HEAD"), "dirty_unigen": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def environment(args, versions: dict) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "unigen": ug.__version__,
        "platform": platform.platform(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
        "peers": versions, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "dtype": "float32", "device": "cpu", "dim": DIM, "git": _git_state(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats, short timing windows, trivial model only (< 60 s)")
    p.add_argument("--no-peers", action="store_true", help="unigen only; do not import diffusers or k-diffusion")
    p.add_argument("--steps", type=int, default=50, help="solver steps of the headline run (default 50)")
    p.add_argument("--batches", default="64,4096", help="comma-separated batch sizes (default 64,4096)")
    p.add_argument("--models", default=None, help="trivial,oracle (default: both; --quick: trivial)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 9; quick 3)")
    p.add_argument("--only", default=None, help="comma-separated algorithms to run, e.g. 'Euler,Heun'")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"), help="JSON output path")
    p.add_argument("--profile", action="store_true", help="also cProfile every unigen case (batch 64, trivial model)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    repeats = args.repeats or (3 if args.quick else 9)
    min_time = 0.004 if args.quick else 0.015
    models = (args.models or ("trivial" if args.quick else "trivial,oracle")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    for m in models:
        if m not in ("trivial", "oracle"):
            p.error(f"unknown model {m!r}; valid: trivial, oracle")
    if args.steps <= STEP_COUNTS_EXTRA[0] or args.steps >= STEP_COUNTS_EXTRA[1]:
        p.error(f"--steps must lie strictly between {STEP_COUNTS_EXTRA[0]} and {STEP_COUNTS_EXTRA[1]}")

    versions: dict = {}
    K = D = None
    if args.no_peers:
        versions = {"k-diffusion": "skipped (--no-peers)", "diffusers": "skipped (--no-peers)"}
    else:
        K, versions["k-diffusion"] = load_kdiffusion()
        D, versions["diffusers"] = load_diffusers()
        for name, mod in (("k-diffusion", K), ("diffusers", D)):
            if mod is None:
                print(f"[overhead] skipping {name}: {versions[name]}", file=sys.stderr)

    all_specs = specs(K, D)
    if args.only:
        keep = set(args.only.split(","))
        all_specs = [s for s in all_specs if s.algorithm in keep]
    print(f"[overhead] torch {torch.__version__}, {torch.get_num_threads()} thread, float32 CPU, dim {DIM}, "
          f"steps {args.steps} (+{STEP_COUNTS_EXTRA} for the split), {repeats} repeats, models {models}, "
          f"batches {batches}, {len(all_specs)} cases", file=sys.stderr)

    load_before = _loadavg()
    if load_before and load_before[0] > max(1.0, (os.cpu_count() or 1) - 1.0):
        print(f"[overhead] warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs; other processes "
              "will inflate absolute times (ratios are timed round-robin and suffer less)", file=sys.stderr)
    t_start = time.perf_counter()
    results: list[Result] = []
    for kind in models:
        for batch in batches:
            base = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch))
            groups: dict = {}
            for spec in all_specs:
                groups.setdefault(spec.algorithm, []).append(spec)
            for algorithm, group in groups.items():
                group_results, runners = measure_group(group, kind, batch, args.steps, repeats, min_time, base,
                                                       split=kind == "trivial")
                for spec, res in zip(group, group_results, strict=True):
                    if kind == "trivial" and spec.pair is not None and spec.key in runners and spec.pair in runners:
                        res.agreement = agreement(runners[spec.key], runners[spec.pair], args.steps)
                    status = res.error or f"{res.us_per_step:8.1f} us/step, overhead {res.overhead_us_per_step:8.1f}"
                    print(f"  {kind:7s} b={batch:<5d} {spec.library:11s} {algorithm:9s} {status}", file=sys.stderr)
                results.extend(group_results)

    comps = comparisons(results)
    trivial = [r for r in results if r.model == "trivial"]
    oracle = [r for r in results if r.model == "oracle"]
    if trivial:
        print("\n## Per-step overhead, trivial model 0.5*z (µs; CPU, float32, dim 2, 1 thread)\n")
        print(table(trivial, comps))
    if oracle:
        print(f"\n## Gaussian-mixture oracle model, {args.steps} steps (µs; the model dominates, so only the "
              "total-time ratio is shown)\n")
        print(oracle_table(oracle, comps))
    if notes(results):
        print("\nNotes:\n" + notes(results))
    if any(c["target"] is not None for c in comps):
        print("\n## Targets on the trivial model (unigen overhead ≤ 0.5× k-diffusion's, ≤ 0.2× diffusers')\n")
        print(target_table(comps))
    elapsed = time.perf_counter() - t_start

    definitions = __doc__.split("What is measured")[1].split("Usage")[0].strip()
    meta = environment(args, versions) | {
        "repeats": repeats, "min_time_per_repeat_s": min_time, "elapsed_s": elapsed, "targets": TARGETS,
        "loadavg_before": load_before, "loadavg_after": _loadavg(), "definitions": definitions,
    }
    out = {
        "meta": meta,
        "results": [vars(r) for r in results],
        "comparisons": comps,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\n[overhead] wrote {path} in {elapsed:.1f} s", file=sys.stderr)

    if args.profile:
        text = profile_unigen(all_specs, 110)
        prof_path = path.with_name(path.stem + "_profile.txt")
        prof_path.write_text(text)
        print(f"[overhead] wrote {prof_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
