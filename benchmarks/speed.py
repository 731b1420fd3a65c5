#!/usr/bin/env python
r"""Speed of unigen's sampling loop against k-diffusion and diffusers, eager, compiled and graphed.

One module, four sections (``--sections``; default all), one JSON (``benchmarks/results/speed.json``):

1. ``overhead``: per-step solver overhead with a nearly free model, against the peers on the
   same grid (the headline: unigen's overhead <= 0.5x k-diffusion's and <= 0.2x diffusers').
2. ``throughput``: samples/s against batch size and data dimension, unigen vs the peers on the
   same algorithm (Euler, DDIM, DPM++(2M), Heun), with the trivial model and a small MLP.
3. ``compile``: the whole sampling loop under ``torch.compile`` (``unigen.compile``: one graph,
   no breaks, no host syncs) and, on CUDA, as one captured CUDA graph: per-step time eager vs
   compiled vs graphed.
4. ``model-fraction``: with a ~10M-parameter network, the share of sampling wall time spent in
   the network, per solver: what is left for solver overhead to waste.

Everything runs with ``torch.set_num_threads(1)`` (``--threads``) so numbers are stable and
comparable across machines with different core counts; ``--device cuda`` runs the CUDA paths
(CUDA graphs, ``reduce-overhead``), which are skipped on a CPU-only machine.

What is measured
----------------
Section 1 (overhead). A sampler's wall time with a nearly free model is the bookkeeping it
adds to every step: computing coefficients, converting parametrizations, indexing
schedules, allocating temporaries. Each case runs a full sampling loop (grid construction
included, as a user sees it) on float32 data of shape [batch, 2].

Two models:

* ``trivial``: ``out = 0.5 * z``, one elementwise multiply, so solver bookkeeping dominates;
* ``oracle``:  the exact 8-component Gaussian-mixture posterior mean in 2-D
  (:class:`unigen.analytic.GaussianMixture`), a realistic but still cheap model (CPU only).

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

Section 2 (throughput). samples/s = batch / T(run) for a full run of ``--tp-steps`` (10)
steps, the same pairs of cases as section 1 (unigen configured like each peer), for every
batch x dim. Models: ``trivial`` and ``mlp`` (input [z, t] -> 64 -> 64 -> dim, SiLU; the same
weights for every library, called in each library's convention). Ratio = unigen's
samples/s over the peer's (> 1: unigen is faster).

Section 3 (compile). VP.linear, eps model, log-SNR grid of ``--compile-steps`` (20) steps,
float32, trivial model. us/step = T(run)/steps for: ``ug.sample`` (the public eager call),
``eager`` (``compiled_sampler(mode="eager")``: the prepared loop without host-side setup),
``aot_eager`` (torch.compile, no code generation: dynamo's graph and guards), ``inductor``
(fused C++/Triton kernels), and on CUDA ``cuda_graph`` (one replay per run) and
``inductor+cudagraphs`` (``mode="reduce-overhead"``). "compile s" is the first call's time.
Agreement is the relative max difference to ``ug.sample``.

Section 4 (model fraction). An MLP of dim 64, width ``--mf-width`` (2048: 4 linear layers,
8.7M parameters), batch ``--mf-batch``, ``--mf-steps`` (20) steps, float32. The network is
wrapped by a timer (``time.perf_counter`` on CPU; CUDA events on GPU, summed after the run);
fraction = model time / wall time of the fastest of ``--repeats`` runs (the median is kept
too). Graphed (CUDA): the model calls of a run are captured as a graph of their own and
fraction = T(model graph) / T(sampler graph).

Peers are imported lazily and skipped cleanly when absent. k-diffusion's package
``__init__`` imports a training stack (accelerate, wandb, torchvision, ...); only its
``sampling.py`` is loaded here, with a stub for the one helper it takes from ``utils``.
The diffusers loop is the standard pipeline loop (``set_timesteps``, then per timestep
``scale_model_input`` -> model -> ``step(...).prev_sample``, under ``torch.no_grad()``);
``DDIMScheduler`` is built with ``clip_sample=False`` so it runs plain DDIM.

Usage (from the repository root)::

    python benchmarks/speed.py                          # everything, writes benchmarks/results/speed.json
    python benchmarks/speed.py --quick                  # small sizes, fewer repeats (< 60 s on one core)
    python benchmarks/speed.py --quick --no-peers
    python benchmarks/speed.py --sections overhead compile --device cuda
    python benchmarks/speed.py --sections overhead --profile   # also cProfile unigen's loops
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib
import importlib.metadata
import importlib.util
import io
import itertools
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
DEVICE = torch.device("cpu")  # set by --device


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def trivial_fn(z, t):
    """The nearly free model: one elementwise multiply, whatever the time argument."""
    return 0.5 * z


def make_mixture() -> ug.GaussianMixture:
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


class MLP(torch.nn.Module):
    """A time-conditioned MLP: [z, t] -> width -> ... -> dim with SiLU, ``layers`` linear maps.

    The time enters as one extra input feature, whatever it is (unigen's t, k-diffusion's
    sigma, diffusers' timestep): the cost, not the meaning, is what is benchmarked.
    """

    def __init__(self, dim: int, width: int, layers: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        sizes = [dim + 1] + [width] * (layers - 1) + [dim]
        mods: list = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            mods.append(torch.nn.Linear(a, b))
            if i < layers - 1:
                mods.append(torch.nn.SiLU())
        self.net = torch.nn.Sequential(*mods)
        self.requires_grad_(False)

    def forward(self, z, t):
        tt = t.to(device=z.device, dtype=z.dtype).reshape(-1, 1).expand(z.shape[0], 1)
        return self.net(torch.cat([z, tt], dim=1))


_MLPS: dict = {}


def mlp(dim: int, width: int = 64, layers: int = 3) -> MLP:
    """The shared MLP of ``dim`` (one instance per size and device, so every library calls the same weights)."""
    key = (dim, width, layers, str(DEVICE))
    if key not in _MLPS:
        _MLPS[key] = MLP(dim, width, layers).to(DEVICE).eval()
    return _MLPS[key]


def sync():
    """Wait for queued device work (a no-op on CPU): a timer must see finished kernels."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def model_fn(kind: str, form: str, process=None, parametrization: str | None = None, dim: int = DIM):
    """The model function in the call form a library uses.

    form: ``"unigen"`` (fn(z, t) inside a ug.Model of ``process``/``parametrization``),
    ``"kdiff"`` (VE denoiser D(x, sigma[B])) or ``"diffusers"`` (eps(x_VP, timestep)).
    """
    if kind == "trivial":
        return trivial_fn
    if kind == "mlp":
        return mlp(dim)
    if DEVICE.type != "cpu":
        raise ValueError("the oracle model runs on the CPU only")
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
        self.fn = model_fn(kind, "unigen", process, parametrization, z.shape[1])
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
        self.fn = model_fn(kind, "kdiff", dim=z.shape[1])
        self.z = z * EDM_SIGMA_MAX

    def sigmas(self, steps):
        return self.K.get_sigmas_karras(steps, EDM_SIGMA_MIN, EDM_SIGMA_MAX, device=self.z.device)

    def run(self, steps):
        return self.sampler(self.fn, self.z, self.sigmas(steps), disable=True)

    def record(self, steps):
        rec = Recorder(self.fn)
        return rec, self.sampler(rec, self.z, self.sigmas(steps), disable=True)

    def times(self, steps):
        """The grid as EDM times (t = sigma)."""
        return self.sigmas(steps).to(torch.float64).cpu()

    def start_for_unigen(self, steps):
        return self.z


class DiffusersRunner:
    def __init__(self, cls, kwargs, kind, z, grid_from):
        self.scheduler = cls(num_train_timesteps=N_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                             beta_schedule="linear", **kwargs)
        self.scheduler.set_timesteps(50)
        self.z = z * self.scheduler.init_noise_sigma
        self.fn = model_fn(kind, "diffusers", dim=z.shape[1])
        self.grid_from = grid_from
        self.device = None if z.device.type == "cpu" else z.device  # timesteps on the data's device

    def _loop(self, fn, steps):
        s = self.scheduler
        with torch.no_grad():
            s.set_timesteps(steps, device=self.device)
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
            ts = (s.timesteps.to(torch.float64).cpu() + 1.0) / N_TRAIN
        else:  # VE sigmas (Euler / Heun): exact times by log-SNR
            sig = torch.unique_consecutive(s.sigmas.to(torch.float64).cpu())
            sig = sig[sig > 0]
            ts = _vp_discrete().t_from_log_snr(-2.0 * torch.log(sig))
        return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])

    def start_for_unigen(self, steps):
        """The start in ug.VP.discrete's variable: Euler/Heun schedulers work in VE scale z/alpha."""
        if self.grid_from == "timesteps":
            return self.z
        self.scheduler.set_timesteps(steps, device=self.device)
        return self.z / torch.sqrt(1.0 + self.scheduler.sigmas[0].to(self.z) ** 2)


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
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
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
    with contextlib.suppress(Exception):  # older versions: keep their default verbosity
        diffusers.utils.logging.set_verbosity_error()
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
    pp2 = lambda: ug.DPMSolverPP(2)
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.linear eps, logsnr", "ug-dpmpp-vp", vp, "eps", pp2))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), EDM denoiser, karras->0", "ug-dpmpp-edm", edm, "denoiser",
                           pp2, "karras", 0.0, EDM_SIGMA_MAX))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.discrete eps, linspace->0", "ug-dpmpp-ddpm",
                           _vp_discrete, "eps", pp2, "linspace"))
    add_kd("DPM++(2M)", "sample_dpmpp_2m", "ug-dpmpp-edm")
    add_df("DPM++(2M)", "DPMSolverMultistepScheduler", {}, "timesteps", "ug-dpmpp-ddpm",
           "DPMSolverMultistepScheduler (2M, dpmsolver++), linspace")
    # UniPC
    uni2 = lambda: ug.UniPC(2)
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.linear eps, logsnr", "ug-unipc-vp", vp, "eps", uni2))
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.discrete eps, linspace->0", "ug-unipc-ddpm", _vp_discrete,
                           "eps", uni2, "linspace"))
    add_df("UniPC(2)", "UniPCMultistepScheduler", {}, "timesteps", "ug-unipc-ddpm",
           "UniPCMultistepScheduler (order 2, bh2), linspace")
    # Heun
    heun_s = lambda: ug.Heun(clock="sigma")
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
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    return max(1, math.ceil(min_time / max(one, 1e-7)))


def interleaved(fns: dict, repeats: int, min_time: float, warmup: int = 2) -> dict:
    """Median seconds per call of each function in ``fns``, timed round-robin.

    Every repeat times each function once (``number`` calls, garbage collector off), so a
    change of background load during the run hits all the cases of a comparison alike.
    """
    numbers = {k: calibrate(f, min_time, warmup) for k, f in fns.items()}
    samples: dict = {k: [] for k in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for k, f in fns.items():
                number = numbers[k]
                sync()
                t0 = time.perf_counter()
                for _ in range(number):
                    f()
                sync()
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
    base = torch.randn(64, DIM, generator=torch.Generator().manual_seed(0)).to(DEVICE)
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
    lines = [("| algorithm | library | config | batch | NFE | µs/step | model µs/step | model share "
              "| ratio unigen/peer (total time) |"), "|" + "---|" * 9]
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
    lines = [("| algorithm | peer | batch | unigen / peer overhead | marginal | target | met (overhead / marginal) "
              "| agreement (rel. max diff) |"), "|" + "---|" * 8]
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
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()

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
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "unigen": ug.__version__,
        "platform": platform.platform(), "cpu": cpu, "gpu": gpu, "torch_threads": torch.get_num_threads(),
        "peers": versions, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "dtype": "float32", "device": str(DEVICE), "git": _git_state(),
        "loop_compilable": _compile_module() is not None,
    }


def _say(section: str, msg: str) -> None:
    print(f"[speed:{section}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# section 1: per-step overhead
# ---------------------------------------------------------------------------------------
def run_overhead(args, all_specs: list[Spec]) -> dict:
    repeats = args.repeats or (3 if args.quick else 9)
    min_time = 0.004 if args.quick else 0.015
    models = (args.models or ("trivial" if args.quick or DEVICE.type != "cpu" else "trivial,oracle")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    _say("overhead", f"{DEVICE}, dim {DIM}, steps {args.steps} (+{STEP_COUNTS_EXTRA} for the split), {repeats} "
         f"repeats, models {models}, batches {batches}, {len(all_specs)} cases")
    results: list[Result] = []
    for kind in models:
        for batch in batches:
            base = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
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
                    _say("overhead", f"{kind:7s} b={batch:<5d} {spec.library:11s} {algorithm:9s} {status}")
                results.extend(group_results)

    comps = comparisons(results)
    trivial = [r for r in results if r.model == "trivial"]
    oracle = [r for r in results if r.model == "oracle"]
    if trivial:
        print(f"\n## 1. Per-step overhead, trivial model 0.5*z (µs; {DEVICE}, float32, dim {DIM}, "
              f"{torch.get_num_threads()} thread)\n")
        print(table(trivial, comps))
    if oracle:
        print(f"\n## 1b. Gaussian-mixture oracle model, {args.steps} steps (µs; the model dominates, so only the "
              "total-time ratio is shown)\n")
        print(oracle_table(oracle, comps))
    if notes(results):
        print("\nNotes:\n" + notes(results))
    if any(c["target"] is not None for c in comps):
        print("\n## 1c. Targets on the trivial model (unigen overhead ≤ 0.5× k-diffusion's, ≤ 0.2× diffusers')\n")
        print(target_table(comps))
    return {"steps": args.steps, "repeats": repeats, "min_time_per_repeat_s": min_time, "targets": TARGETS,
            "results": [vars(r) for r in results], "comparisons": comps}


# ---------------------------------------------------------------------------------------
# section 2: throughput against batch and dimension
# ---------------------------------------------------------------------------------------
TP_ALGORITHMS = ("Euler", "DDIM", "DPM++(2M)", "Heun")
# the unigen cases configured like a peer (used alone under --no-peers)
TP_UNIGEN_KEYS = ("ug-euler-s-edm", "ug-euler-s-ddpm", "ug-ddim-ddpm", "ug-dpmpp-edm", "ug-dpmpp-ddpm",
                  "ug-heun-s-edm", "ug-heun-s-ddpm")


def throughput_cases(all_specs: list[Spec]) -> list[Spec]:
    """Every peer case of the section's algorithms and the unigen case configured like it."""
    peers = [s for s in all_specs if s.pair and s.algorithm in TP_ALGORITHMS]
    keys = {s.pair for s in peers} or set(TP_UNIGEN_KEYS)
    mine = [s for s in all_specs if s.library == "unigen" and s.key in keys and s.algorithm in TP_ALGORITHMS]
    return mine + peers


def run_throughput(args, all_specs: list[Spec]) -> dict:
    cases = throughput_cases(all_specs)
    kinds = args.tp_models.split(",")
    batches = [int(b) for b in (args.tp_batches or ("1,64,1024" if args.quick else "1,64,1024,8192")).split(",")]
    dims = [int(d) for d in (args.tp_dims or ("2,64" if args.quick else "2,64,1024")).split(",")]
    steps, repeats = args.tp_steps, args.repeats or 3
    min_time = 0.004 if args.quick else 0.01
    _say("throughput", f"{DEVICE}, {steps} steps, models {kinds}, batches {batches}, dims {dims}, "
         f"{len(cases)} cases, {repeats} repeats")
    rows = []
    for kind in kinds:
        for dim in dims:
            for batch in batches:
                base = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch + dim)).to(DEVICE)
                for algorithm in TP_ALGORITHMS:
                    fns, live = {}, []
                    for spec in (s for s in cases if s.algorithm == algorithm):
                        row = {"model": kind, "algorithm": algorithm, "library": spec.library, "config": spec.config,
                               "key": spec.key, "pair": spec.pair, "batch": batch, "dim": dim, "steps": steps}
                        rows.append(row)
                        try:
                            runner = spec.build(kind, base)
                            row["finite"] = bool(torch.isfinite(runner.run(steps)).all())
                        except Exception as e:  # noqa: BLE001 - reported, not fatal
                            row["error"] = f"{type(e).__name__}: {e}"
                            continue
                        fns[spec.key] = lambda r=runner: r.run(steps)
                        live.append(row)
                    timings = interleaved(fns, repeats, min_time, warmup=1) if fns else {}
                    for row in live:
                        t = timings[row["key"]]
                        row |= {"run_s": t["median"], "run_min_s": t["min"], "samples_per_s": batch / t["median"]}
                    if live:
                        _say("throughput", f"{kind:7s} b={batch:<5d} d={dim:<5d} {algorithm:9s} " + ", ".join(
                            f"{r['library']} {r['samples_per_s']:.3g}/s" for r in live))
    comps = []
    index = {(r["key"], r["model"], r["batch"], r["dim"]): r for r in rows}
    for r in rows:
        u = index.get((r["pair"], r["model"], r["batch"], r["dim"])) if r["pair"] else None
        if u is not None and "samples_per_s" in u and "samples_per_s" in r:
            comps.append({"model": r["model"], "algorithm": r["algorithm"], "peer": r["library"],
                          "peer_config": r["config"], "unigen_config": u["config"], "batch": r["batch"],
                          "dim": r["dim"], "unigen_samples_per_s": u["samples_per_s"],
                          "peer_samples_per_s": r["samples_per_s"],
                          "ratio": u["samples_per_s"] / r["samples_per_s"]})
    print(throughput_tables(rows, comps, kinds, batches, dims, steps))
    return {"steps": steps, "repeats": repeats, "batches": batches, "dims": dims, "models": kinds, "rows": rows,
            "comparisons": comps}


def throughput_tables(rows, comps, kinds, batches, dims, steps) -> str:
    cells = [(b, d) for d in dims for b in batches]
    head = "| " + " | ".join(f"b{b} d{d}" for b, d in cells) + " |"
    sep = "|" + "---|" * len(cells)
    out = [f"\n## 2. Throughput, unigen samples/s ({DEVICE}, float32, {steps} steps; columns: batch b, dim d)\n",
           "| model | algorithm | unigen config " + head, "|---|---|---" + sep]
    val = {(r["key"], r["model"], r["batch"], r["dim"]): r.get("samples_per_s") for r in rows}
    seen = []
    for r in rows:
        if r["library"] == "unigen" and (r["key"], r["model"]) not in seen:
            seen.append((r["key"], r["model"]))
            out.append(f"| {r['model']} | {r['algorithm']} | {r['config']} | " + " | ".join(
                _sig(val.get((r["key"], r["model"], b, d))) for b, d in cells) + " |")
    if comps:
        out += ["\n## 2b. Throughput ratio unigen / peer (same algorithm and grid family; > 1: unigen faster)\n",
                "| model | algorithm | peer " + head, "|---|---|---" + sep]
        ratio = {(c["peer_config"], c["model"], c["batch"], c["dim"]): c["ratio"] for c in comps}
        seen = []
        for c in comps:
            if (c["peer_config"], c["model"]) not in seen:
                seen.append((c["peer_config"], c["model"]))
                out.append(f"| {c['model']} | {c['algorithm']} | {c['peer']}: {c['peer_config']} | " + " | ".join(
                    _f(ratio.get((c["peer_config"], c["model"], b, d)), 2) for b, d in cells) + " |")
    return "\n".join(out)


def _sig(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


# ---------------------------------------------------------------------------------------
# section 3: the loop compiled (torch.compile) and captured (CUDA graph)
# ---------------------------------------------------------------------------------------
COMPILE_SOLVERS = {
    "DDIM": ug.DDIM,
    "Euler": ug.Euler,
    "Heun": ug.Heun,
    "DPM++(2M)": lambda: ug.DPMSolverPP(2),
    "UniPC(2)": lambda: ug.UniPC(2),
}


def _compile_module():
    """``unigen.compile``, or None where the library cannot compile its loop (an older checkout)."""
    try:
        module = importlib.import_module("unigen.compile")
    except ImportError:
        return None
    return module if hasattr(importlib.import_module("unigen.sample"), "integrate") else None


def compile_modes(quick: bool) -> list[str]:
    modes = ["ug.sample", "eager", "aot_eager"] + ([] if quick else ["inductor"])
    if DEVICE.type == "cuda":
        modes += ["cuda_graph", "inductor+cudagraphs"]
    return modes


def _build_compiled(C, mode: str, model, solver, steps: int, z):
    """A callable ``() -> x`` running ``mode`` on noise ``z`` (built, not yet called)."""
    if mode == "ug.sample":
        return lambda: ug.sample(model, solver, steps=steps, noise=z)[0]
    kw = {"eager": {"mode": "eager"}, "aot_eager": {"backend": "aot_eager"}, "inductor": {},
          "cuda_graph": {"mode": "cuda_graph"}, "inductor+cudagraphs": {"compile_mode": "reduce-overhead"}}[mode]
    run = C.compiled_sampler(model, solver, steps, shape=z.shape, dtype=z.dtype, device=z.device, **kw)
    return lambda: run(z)


def run_compile(args, algorithms: list[str]) -> dict:
    C = _compile_module()
    if C is None:
        _say("compile", "skipped: unigen.compile is not importable in this checkout")
        return {"skipped": "unigen.compile not importable"}
    steps = args.compile_steps or (10 if args.quick else 20)
    batches = [int(b) for b in (args.compile_batches or ("64" if args.quick else "64,4096")).split(",")]
    modes = compile_modes(args.quick)
    repeats, min_time = args.repeats or (3 if args.quick else 7), 0.004 if args.quick else 0.015
    _say("compile", f"{DEVICE}, VP.linear eps logsnr, {steps} steps, batches {batches}, modes {modes}")
    rows = []
    for batch in batches:
        z = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
        for name in algorithms:
            rec = Recorder(trivial_fn)
            ref = ug.sample(ug.Model(rec, ug.VP.linear(), "eps"), COMPILE_SOLVERS[name](), steps=steps, noise=z)[0]
            model = ug.Model(trivial_fn, ug.VP.linear(), "eps")
            fns, group = {"model": replay_fn(rec)}, []
            for mode in modes:
                row = {"algorithm": name, "mode": mode, "batch": batch, "steps": steps, "nfe": len(rec.calls)}
                rows.append(row)
                try:
                    sync()
                    t0 = time.perf_counter()
                    fn = _build_compiled(C, mode, model, COMPILE_SOLVERS[name](), steps, z)
                    out = fn()
                    sync()
                    row["compile_s"] = time.perf_counter() - t0
                    row["agreement_rel_max_diff"] = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                except Exception as e:  # noqa: BLE001 - a mode that cannot run is reported
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    continue
                fns[mode] = fn
                group.append(row)
            timings = interleaved(fns, repeats, min_time)
            model_us = 1e6 * timings["model"]["median"] / steps
            base_us = 1e6 * timings["ug.sample"]["median"] / steps if "ug.sample" in timings else float("nan")
            for row in group:
                us = 1e6 * timings[row["mode"]]["median"] / steps
                row |= {"us_per_step": us, "us_per_step_min": 1e6 * timings[row["mode"]]["min"] / steps,
                        "model_us_per_step_eager": model_us, "speedup_vs_ug_sample": base_us / us}
            _say("compile", f"b={batch:<5d} {name:9s} " + ", ".join(
                f"{r['mode']} {r.get('us_per_step', float('nan')):.1f}" for r in rows if r["algorithm"] == name
                and r["batch"] == batch) + " us/step")
    print(compile_table(rows, steps))
    return {"steps": steps, "batches": batches, "modes": modes, "repeats": repeats, "rows": rows}


def compile_table(rows, steps) -> str:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = [(f"\n## 3. Whole-loop compile / CUDA graph: µs per step ({DEVICE}, float32, dim {DIM}, trivial model, "
            f"{steps} steps; speed-up vs ug.sample in brackets; model alone, eager: last column)\n"),
           "| algorithm | batch | " + " | ".join(modes) + " | model µs/step |",
           "|---|---|" + "---|" * (len(modes) + 1)]
    keyed = {(r["algorithm"], r["batch"], r["mode"]): r for r in rows}
    for alg, batch in dict.fromkeys((r["algorithm"], r["batch"]) for r in rows):
        cells, model_us = [], None
        for m in modes:
            r = keyed.get((alg, batch, m), {})
            if "us_per_step" in r:
                model_us = r["model_us_per_step_eager"]
                cells.append(f"{r['us_per_step']:.1f} ({r['speedup_vs_ug_sample']:.1f}×)")
            else:
                cells.append("error" if "error" in r else "—")
        out.append(f"| {alg} | {batch} | " + " | ".join(cells) + f" | {_f(model_us)} |")
    comp = [r for r in rows if "compile_s" in r and r["mode"] not in ("ug.sample", "eager")]
    if comp:
        out.append("\nFirst call (compile / capture) seconds: " + ", ".join(
            f"{r['algorithm']} b{r['batch']} {r['mode']} {r['compile_s']:.1f}" for r in comp))
        worst = max(r["agreement_rel_max_diff"] for r in rows if "agreement_rel_max_diff" in r)
        out.append(f"Largest relative difference to ug.sample over all modes: {worst:.1e}")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        out.append(f"- {r['algorithm']} b{r['batch']} {r['mode']}: {r['error']}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# section 4: how much of the wall time is the network
# ---------------------------------------------------------------------------------------
class TimedNet:
    """Wraps a network and accumulates the time spent inside it (CUDA: events, read after the run)."""

    def __init__(self, net):
        self.net = net
        self.reset()

    def reset(self):
        self.seconds, self.events, self.calls = 0.0, [], 0

    def __call__(self, z, t):
        self.calls += 1
        if DEVICE.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.net(z, t)
            end.record()
            self.events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.net(z, t)
        self.seconds += time.perf_counter() - t0
        return out

    def total(self) -> float:
        sync()
        return self.seconds + sum(a.elapsed_time(b) for a, b in self.events) / 1000.0


def _graph_of(fn):
    """``fn`` (no arguments, static tensors) captured as a CUDA graph after a side-stream warm-up."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def run_model_fraction(args, algorithms: list[str]) -> dict:
    width = args.mf_width or (512 if args.quick else 2048)
    steps = args.mf_steps or (5 if args.quick else 20)
    batch, dim, repeats = args.mf_batch, 64, args.repeats or (3 if args.quick else 5)
    net = MLP(dim, width, layers=4).to(DEVICE).eval()
    n_params = sum(p.numel() for p in net.parameters())
    _say("model-fraction", f"{DEVICE}, MLP dim {dim} width {width} 4 layers ({n_params / 1e6:.2f}M parameters), "
         f"batch {batch}, {steps} steps, {repeats} repeats")
    z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    C = _compile_module() if DEVICE.type == "cuda" else None
    rows = []
    for name in algorithms:
        timed = TimedNet(net)
        model = ug.Model(timed, ug.VP.linear(), "eps")
        ug.sample(model, COMPILE_SOLVERS[name](), steps=steps, noise=z)  # warm: grid, plan, allocator
        walls, inside = [], []
        for _ in range(repeats):
            timed.reset()
            sync()
            t0 = time.perf_counter()
            ug.sample(model, COMPILE_SOLVERS[name](), steps=steps, noise=z)
            sync()
            walls.append(time.perf_counter() - t0)
            inside.append(timed.total())
        best = min(range(repeats), key=walls.__getitem__)  # the least disturbed run
        wall, model_s = walls[best], inside[best]
        row = {"algorithm": name, "mode": "eager", "batch": batch, "steps": steps, "nfe": timed.calls,
               "wall_ms": 1e3 * wall, "model_ms": 1e3 * model_s, "fraction": model_s / wall,
               "fraction_median": statistics.median(m / w for m, w in zip(inside, walls, strict=True)),
               "overhead_us_per_step": 1e6 * (wall - model_s) / steps}
        rows.append(row)
        if C is not None:
            rows.append(_graphed_fraction(C, net, name, steps, z, repeats))
        _say("model-fraction", " | ".join(f"{r['algorithm']} {r['mode']} {100 * r.get('fraction', float('nan')):.1f} %"
                                          for r in rows if r["algorithm"] == name))
    print(fraction_table(rows, n_params, width, batch, steps))
    return {"params": n_params, "width": width, "dim": dim, "layers": 4, "batch": batch, "steps": steps,
            "repeats": repeats, "rows": rows}


def _graphed_fraction(C, net, name, steps, z, repeats) -> dict:
    """CUDA: the sampler as one graph against a graph of exactly its model calls."""
    row = {"algorithm": name, "mode": "cuda_graph", "batch": z.shape[0], "steps": steps}
    try:
        rec = Recorder(net)
        ug.sample(ug.Model(rec, ug.VP.linear(), "eps"), COMPILE_SOLVERS[name](), steps=steps, noise=z)
        sampler = C.compiled_sampler(ug.Model(net, ug.VP.linear(), "eps"), COMPILE_SOLVERS[name](), steps,
                                     shape=z.shape, dtype=z.dtype, device=z.device, mode="cuda_graph")
        calls = rec.calls
        model_graph = _graph_of(lambda: [net(*a) for a in calls])
        t = interleaved({"sampler": lambda: sampler(z), "model": model_graph.replay}, repeats, 0.02)
        wall, model_s = t["sampler"]["median"], t["model"]["median"]
        row |= {"nfe": len(calls), "wall_ms": 1e3 * wall, "model_ms": 1e3 * model_s, "fraction": model_s / wall,
                "overhead_us_per_step": 1e6 * (wall - model_s) / steps}
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def fraction_table(rows, n_params, width, batch, steps) -> str:
    out = [(f"\n## 4. Share of sampling time inside the network ({DEVICE}, MLP {n_params / 1e6:.1f}M parameters, "
            f"width {width}, batch {batch}, {steps} steps, float32)\n"),
           "| algorithm | mode | NFE | wall ms | model ms | model share | overhead µs/step |", "|---" * 7 + "|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['algorithm']} | {r['mode']} | error: {r['error']} | | | | |")
            continue
        out.append(f"| {r['algorithm']} | {r['mode']} | {r.get('nfe', '—')} | {r['wall_ms']:.2f} "
                   f"| {r['model_ms']:.2f} "
                   f"| {100 * r['fraction']:.1f} % | {r['overhead_us_per_step']:.1f} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
SECTIONS = ("overhead", "throughput", "compile", "model-fraction")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="which sections to run")
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats, short timing windows (< 60 s)")
    p.add_argument("--no-peers", action="store_true", help="unigen only; do not import diffusers or k-diffusion")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where tensors live (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"), help="JSON output path")
    p.add_argument("--update", action="store_true", help="replace only the sections run in an existing --out JSON")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default per section)")
    p.add_argument("--only", default=None, help="comma-separated algorithms, e.g. 'Euler,Heun' (every section)")
    g = p.add_argument_group("overhead")
    g.add_argument("--steps", type=int, default=50, help="solver steps of the headline run (default 50)")
    g.add_argument("--batches", default="64,4096", help="comma-separated batch sizes (default 64,4096)")
    g.add_argument("--models", default=None, help="trivial,oracle (default: both; --quick or CUDA: trivial)")
    g.add_argument("--profile", action="store_true", help="also cProfile every unigen case (batch 64, trivial model)")
    g = p.add_argument_group("throughput")
    g.add_argument("--tp-steps", type=int, default=10, help="solver steps per run (default 10)")
    g.add_argument("--tp-batches", default=None, help="default 1,64,1024,8192 (quick 1,64,1024)")
    g.add_argument("--tp-dims", default=None, help="default 2,64,1024 (quick 2,64)")
    g.add_argument("--tp-models", default="trivial,mlp", help="trivial,mlp (default both)")
    g = p.add_argument_group("compile")
    g.add_argument("--compile-steps", type=int, default=None, help="default 20 (quick 10)")
    g.add_argument("--compile-batches", default=None, help="default 64,4096 (quick 64)")
    g = p.add_argument_group("model fraction")
    g.add_argument("--mf-width", type=int, default=None, help="MLP width (default 2048: 8.7M parameters; quick 512)")
    g.add_argument("--mf-steps", type=int, default=None, help="default 20 (quick 5)")
    g.add_argument("--mf-batch", type=int, default=64, help="default 64")
    args = p.parse_args(argv)

    global DEVICE
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    for m in (args.models or "trivial").split(","):
        if m not in ("trivial", "oracle"):
            p.error(f"unknown model {m!r}; valid: trivial, oracle")
    for m in args.tp_models.split(","):
        if m not in ("trivial", "mlp"):
            p.error(f"unknown throughput model {m!r}; valid: trivial, mlp")
    if args.steps <= STEP_COUNTS_EXTRA[0] or args.steps >= STEP_COUNTS_EXTRA[1]:
        p.error(f"--steps must lie strictly between {STEP_COUNTS_EXTRA[0]} and {STEP_COUNTS_EXTRA[1]}")

    versions: dict = {}
    K = D = None
    if args.no_peers:
        versions = {"k-diffusion": "skipped (--no-peers)", "diffusers": "skipped (--no-peers)"}
    else:  # loaded for the record even when the sections run need no peer
        K, versions["k-diffusion"] = load_kdiffusion()
        D, versions["diffusers"] = load_diffusers()
        for name, mod in (("k-diffusion", K), ("diffusers", D)):
            if mod is None:
                _say("peers", f"skipping {name}: {versions[name]}")
    keep = set(args.only.split(",")) if args.only else None
    all_specs = [s for s in specs(K, D) if keep is None or s.algorithm in keep]
    algorithms = [a for a in COMPILE_SOLVERS if keep is None or a in keep]

    load_before = _loadavg()
    if load_before and load_before[0] > max(1.0, (os.cpu_count() or 1) - 1.0):
        _say("load", f"warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs; other processes will "
             "inflate absolute times (ratios are timed round-robin and suffer less)")
    t_start = time.perf_counter()
    out: dict = {}
    runners = {"overhead": lambda: run_overhead(args, all_specs), "throughput": lambda: run_throughput(args, all_specs),
               "compile": lambda: run_compile(args, algorithms),
               "model-fraction": lambda: run_model_fraction(args, algorithms)}
    for section in SECTIONS:
        if section in args.sections:
            t0, load0 = time.perf_counter(), _loadavg()
            res = runners[section]()
            res["run"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "elapsed_s": time.perf_counter() - t0,
                          "loadavg_before": load0, "loadavg_after": _loadavg(), "argv": sys.argv[1:] if argv is None
                          else list(argv)}
            out[section.replace("-", "_")] = res
    elapsed = time.perf_counter() - t_start

    path = Path(args.out)
    if args.update and path.is_file():  # keep the sections not run this time
        out = {k: v for k, v in json.loads(path.read_text()).items() if k != "meta"} | out
        out = {k: out[k] for k in (s.replace("-", "_") for s in SECTIONS) if k in out}
    definitions = __doc__.split("What is measured")[1].split("Usage")[0].strip()
    meta = environment(args, versions) | {
        "sections": [k for k in (s.replace("-", "_") for s in SECTIONS) if k in out], "elapsed_s": elapsed,
        "loadavg_before": load_before, "loadavg_after": _loadavg(), "definitions": definitions,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta} | out, indent=1, default=str) + "\n")
    _say("done", f"wrote {path} in {elapsed:.1f} s")

    if args.profile:
        text = profile_unigen(all_specs, 110)
        prof_path = path.with_name(path.stem + "_profile.txt")
        prof_path.write_text(text)
        _say("done", f"wrote {prof_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
