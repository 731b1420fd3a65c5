"""The cases of the speed benchmark: one runner per library, and which configurations are compared.

A runner is built for one (model kind, batch) and has ``run(steps) -> x``, ``record(steps) ->
(recorder, x)`` (the model calls of a run, for replay timing), ``first_call(steps) -> (() ->
x)`` (a run on objects no call has seen yet) and ``grid_fn(steps)`` (the grid construction
alone, or None); peer runners also give ``times(steps)`` and ``start_for_unigen(steps)``, the
grid and start that unigen replays for the agreement check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import unigen as ug
from benchmarks.peer_samplers import BETA_END, BETA_START, N_TRAIN, ddpm_scheduler
from benchmarks.speed.common import EDM_SIGMA_MAX, EDM_SIGMA_MIN, STEP_COUNTS_EXTRA, Recorder, model_fn


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
    """unigen's loop: ``ug.sample`` on a ``ug.Model`` of ``process_fn()`` built once (warm calls)."""

    def __init__(self, process_fn, parametrization, solver_fn, schedule, t_end, kind, z):
        self.process_fn, self.solver_fn = process_fn, solver_fn
        process = process_fn()
        self.fn = model_fn(kind, "unigen", process, parametrization, z.shape[1])
        self.process, self.parametrization = process, parametrization
        self.model = ug.Model(self.fn, process, parametrization)
        self.solver, self.schedule, self.t_end, self.z = solver_fn(), schedule, t_end, z

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

    def first_call(self, steps, new_process=True):
        """``() -> x``: one run on objects no call has seen yet (a new process, ``ug.Model`` and
        solver, built here, outside any timing), so nothing cached per process, model or solver
        is hit: what a user's first ``ug.sample`` with a new model pays. ``new_process=False``:
        a new model and solver on the runner's process (what is cached per process is hit)."""
        model = ug.Model(self.fn, self.process_fn() if new_process else self.process, self.parametrization)
        solver = self.solver_fn()
        return lambda: ug.sample(model, solver, steps=steps, schedule=self.schedule, t_end=self.t_end,
                                 noise=self.z)[0]

    def grid_fn(self, steps):
        """unigen's grid is built inside ``sample`` (no public step of its own to time): None."""
        return None


def unigen_spec(algorithm, config, key, process_fn, parametrization, solver_fn, schedule=None, t_end=None,
                noise_scale=1.0, fallback=None, note=""):
    """A unigen case; ``fallback`` = (solver_fn, schedule, t_end, note) if the primary raises."""

    def build(kind, base):
        runner = UnigenRunner(process_fn, parametrization, solver_fn, schedule, t_end, kind, base * noise_scale)
        runner.fallback_note = None
        if fallback is not None:
            try:
                for n in (STEP_COUNTS_EXTRA[0], 3):
                    runner.run(n)
            except Exception as e:  # noqa: BLE001 - a failing configuration is reported, not fatal
                f_solver, f_schedule, f_t_end, f_note = fallback
                runner = UnigenRunner(process_fn, parametrization, f_solver, f_schedule, f_t_end, kind,
                                      base * noise_scale)
                runner.fallback_note = f"{f_note} [primary raised {type(e).__name__}: {e}]"
        return runner

    return Spec(algorithm, "unigen", config, key, build, note=note)


class KDiffRunner:
    """A k-diffusion sampler on its Karras grid (rho 7) to sigma = 0, with a VE denoiser."""

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

    def first_call(self, steps, new_process=True):
        """k-diffusion keeps no state between calls: every call is a first call."""
        return lambda: self.run(steps)

    def grid_fn(self, steps):
        """The grid alone: ``get_sigmas_karras``."""
        return lambda: self.sigmas(steps)


class DiffusersRunner:
    """A diffusers scheduler in the standard pipeline loop, on the shared DDPM table."""

    def __init__(self, cls, kwargs, kind, z, grid_from):
        self.cls, self.kwargs = cls, kwargs
        self.scheduler = ddpm_scheduler(cls, **kwargs)
        self.scheduler.set_timesteps(50)
        self.z = z * self.scheduler.init_noise_sigma
        self.fn = model_fn(kind, "diffusers", dim=z.shape[1])
        self.grid_from = grid_from
        self.device = None if z.device.type == "cpu" else z.device  # timesteps on the data's device

    def _loop(self, fn, steps, scheduler=None):
        s = self.scheduler if scheduler is None else scheduler
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

    def first_call(self, steps, new_process=True):
        """``() -> x``: one run on a new scheduler (built here, outside any timing; it holds the table)."""
        scheduler = ddpm_scheduler(self.cls, **self.kwargs)
        return lambda: self._loop(self.fn, steps, scheduler)

    def grid_fn(self, steps):
        """The grid alone: ``scheduler.set_timesteps(steps)``."""
        return lambda: self.scheduler.set_timesteps(steps, device=self.device)

    def times(self, steps):
        """The grid as times of ug.VP.discrete (t_n = (n + 1)/N; the clean end t = 0)."""
        s = self.scheduler
        s.set_timesteps(steps)
        if self.grid_from == "timesteps":
            ts = (s.timesteps.to(torch.float64).cpu() + 1.0) / N_TRAIN
        else:  # VE sigmas (Euler / Heun): exact times by log-SNR
            sig = torch.unique_consecutive(s.sigmas.to(torch.float64).cpu())
            sig = sig[sig > 0]
            ts = vp_discrete().t_from_log_snr(-2.0 * torch.log(sig))
        return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])

    def start_for_unigen(self, steps):
        """The start in ug.VP.discrete's variable: Euler/Heun schedulers work in VE scale z/alpha."""
        if self.grid_from == "timesteps":
            return self.z
        self.scheduler.set_timesteps(steps, device=self.device)
        return self.z / torch.sqrt(1.0 + self.scheduler.sigmas[0].to(self.z) ** 2)


def vp_discrete():
    """``ug.VP.discrete`` over the shared DDPM table (diffusers' default)."""
    return ug.VP.discrete(torch.linspace(BETA_START, BETA_END, N_TRAIN, dtype=torch.float64))


# ---------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------
def specs(K, D) -> list[Spec]:
    """Every case: unigen configurations, and each peer's (``K``: k_diffusion.sampling, ``D``:
    diffusers; None skips that peer) paired with the unigen case configured like it."""
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
                           vp_discrete, "eps", lambda: ug.Euler(clock="sigma"), "linspace"))
    add_kd("Euler", "sample_euler", "ug-euler-s-edm")
    add_df("Euler", "EulerDiscreteScheduler", {}, "sigmas", "ug-euler-s-ddpm", "EulerDiscreteScheduler, linspace")
    # DDIM
    out.append(unigen_spec("DDIM", "DDIM(), VP.linear eps, logsnr", "ug-ddim-vp", vp, "eps", ug.DDIM))
    out.append(unigen_spec("DDIM", "DDIM(), VP.discrete eps, leading->0", "ug-ddim-ddpm", vp_discrete, "eps",
                           ug.DDIM, "leading"))
    add_df("DDIM", "DDIMScheduler", {"clip_sample": False}, "timesteps", "ug-ddim-ddpm",
           "DDIMScheduler(clip_sample=False), leading")
    # DPM-Solver++(2M)
    pp2 = lambda: ug.DPMSolverPP(2)
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.linear eps, logsnr", "ug-dpmpp-vp", vp, "eps", pp2))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), EDM denoiser, karras->0", "ug-dpmpp-edm", edm, "denoiser",
                           pp2, "karras", 0.0, EDM_SIGMA_MAX))
    out.append(unigen_spec("DPM++(2M)", "DPMSolverPP(2), VP.discrete eps, linspace->0", "ug-dpmpp-ddpm",
                           vp_discrete, "eps", pp2, "linspace"))
    add_kd("DPM++(2M)", "sample_dpmpp_2m", "ug-dpmpp-edm")
    add_df("DPM++(2M)", "DPMSolverMultistepScheduler", {}, "timesteps", "ug-dpmpp-ddpm",
           "DPMSolverMultistepScheduler (2M, dpmsolver++), linspace")
    # UniPC
    uni2 = lambda: ug.UniPC(2)
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.linear eps, logsnr", "ug-unipc-vp", vp, "eps", uni2))
    out.append(unigen_spec("UniPC(2)", "UniPC(2), VP.discrete eps, linspace->0", "ug-unipc-ddpm", vp_discrete,
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
        "Heun", "Heun(clock='sigma'), VP.discrete eps, linspace->0", "ug-heun-s-ddpm", vp_discrete, "eps", heun_s,
        "linspace",
        fallback=(heun_s, "logsnr", None, "fallback grid logsnr ending at t=1/N (no final step to sigma=0)"),
    ))
    add_kd("Heun", "sample_heun", "ug-heun-s-edm")
    add_df("Heun", "HeunDiscreteScheduler", {}, "sigmas", "ug-heun-s-ddpm", "HeunDiscreteScheduler, linspace")
    return out

