"""What every section of the speed benchmark shares: device, models, timing, formatting.

``DEVICE`` is set once by ``python -m benchmarks.speed --device``; the section modules read it
as ``common.DEVICE`` so that they see the value set at run time.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import statistics
import sys
import time

import torch

import unigen as ug
from benchmarks.peer_samplers import BETA_END, BETA_START, N_TRAIN

DIM = 2
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0
STEP_COUNTS_EXTRA = (10, 110)  # for the one-off / per-step split
TARGETS = {"k-diffusion": 0.5, "diffusers": 0.2}
DEVICE = torch.device("cpu")  # set by --device (set_device); read it as common.DEVICE, never import the name


def set_device(device) -> torch.device:
    """Where every section puts its tensors (the ``--device`` option)."""
    global DEVICE
    DEVICE = torch.device(device)
    return DEVICE


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
    """A function that replays the model calls ``rec`` recorded (the model's own time in a run)."""
    fn, calls = rec.fn, rec.calls

    def replay():
        for args in calls:
            fn(*args)

    return replay


# ---------------------------------------------------------------------------------------
# formatting and reporting
# ---------------------------------------------------------------------------------------
def fmt_num(x, nd=1):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def ratio_of(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else float("nan")


def loadavg():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def say(section: str, msg: str) -> None:
    print(f"[speed:{section}] {msg}", file=sys.stderr, flush=True)


def fmt_sig(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"

