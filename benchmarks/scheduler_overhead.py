"""``python -m benchmarks.scheduler_overhead``: what a pipeline's loop pays per network call for
running unigen's solver through ``UnigenScheduler`` instead of diffusers' own scheduler.

The loop is a pipeline's (``set_timesteps``, then ``step`` once per listed timestep) around a
trivial network (``0.1 z``), so the times are the schedulers' own work. Each row runs the
same algorithm on the same grid both ways (DPM-Solver++(2M) and UniPC(2) on Stable Diffusion's
table, Euler on flow matching), alternating the two, and reports the median time per call
and the ratio unigen / diffusers, measured in one process. Writes
``benchmarks/results/scheduler_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import unigen as ug

ROOT = Path(__file__).resolve().parents[1]
SD_TABLE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
            "set_alpha_to_one": False, "clip_sample": False}


def _loop(scheduler, steps: int, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(0.1 * x, t, x).prev_sample
    return (time.perf_counter() - t0) / len(scheduler.timesteps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shape", type=int, nargs="+", default=[2, 4, 64, 64], help="latent shape (SD at 512x512)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scheduler_overhead.json"))
    args = parser.parse_args(argv)

    import diffusers as D  # a peer: imported only by this benchmark

    from unigen.interop.diffusers_scheduler import UnigenScheduler

    cases = [
        ("DPM-Solver++(2M), SD table", D.DPMSolverMultistepScheduler.from_config(SD_TABLE), ug.DPMSolverPP(2)),
        ("UniPC(2), SD table", D.UniPCMultistepScheduler.from_config(SD_TABLE), ug.UniPC(2)),
        ("Euler, flow matching (shift 3)", D.FlowMatchEulerDiscreteScheduler(shift=3.0), ug.Euler()),
    ]
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for label, theirs, solver in cases:
        ours = UnigenScheduler.from_config(theirs.config, solver=solver)
        times = {"diffusers": [], "unigen": []}
        for _ in range(args.repeats):
            times["diffusers"].append(_loop(theirs, args.steps, x))
            times["unigen"].append(_loop(ours, args.steps, x))
        d, u = statistics.median(times["diffusers"]), statistics.median(times["unigen"])
        rows.append({"case": label, "diffusers_us_per_call": d * 1e6, "unigen_us_per_call": u * 1e6, "ratio": u / d})
        print(f"{label:34s} diffusers {d * 1e6:8.1f} us/call  unigen {u * 1e6:8.1f} us/call  ratio {u / d:5.2f}")
    result = {
        "what": "per-call time of a pipeline loop around a trivial network (0.1 z): the scheduler's own work",
        "steps": args.steps, "repeats": args.repeats, "shape": args.shape, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": D.__version__, "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
