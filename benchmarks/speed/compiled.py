"""Section 3 of the speed benchmark: the whole sampling loop compiled and as one CUDA graph.

VP.linear, eps model, log-SNR grid, trivial model: per-step time of ``ug.sample`` against
``unigen.compile.compiled_sampler`` in its modes (eager, aot_eager, inductor; on CUDA also the
captured graph and inductor's ``reduce-overhead``), with each mode's first-call (compile) time
and its agreement with ``ug.sample``.
"""

from __future__ import annotations

import importlib
import time

import torch

import unigen as ug
from benchmarks.speed import common
from benchmarks.speed.common import DIM, Recorder, fmt_num, interleaved, replay_fn, say, sync, trivial_fn

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


def compile_module():
    """``unigen.compile``, or None where the library cannot compile its loop (an older checkout)."""
    try:
        module = importlib.import_module("unigen.compile")
    except ImportError:
        return None
    return module if hasattr(importlib.import_module("unigen.sample"), "integrate") else None


def compile_modes(quick: bool) -> list[str]:
    """The modes timed: the public call, the prepared eager loop, dynamo without and with code generation (+ CUDA)."""
    modes = ["ug.sample", "eager", "aot_eager"] + ([] if quick else ["inductor"])
    if common.DEVICE.type == "cuda":
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
    """Every mode of ``compile_modes`` for every algorithm and batch (``algorithms``: keys of ``COMPILE_SOLVERS``)."""
    C = compile_module()
    if C is None:
        say("compile", "skipped: unigen.compile is not importable in this checkout")
        return {"skipped": "unigen.compile not importable"}
    steps = args.compile_steps or (10 if args.quick else 20)
    batches = [int(b) for b in (args.compile_batches or ("64" if args.quick else "64,4096")).split(",")]
    modes = compile_modes(args.quick)
    repeats, min_time = args.repeats or (3 if args.quick else 7), 0.004 if args.quick else 0.015
    say("compile", f"{common.DEVICE}, VP.linear eps logsnr, {steps} steps, batches {batches}, modes {modes}")
    rows = []
    for batch in batches:
        z = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch)).to(common.DEVICE)
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
            say("compile", f"b={batch:<5d} {name:9s} " + ", ".join(
                f"{r['mode']} {r.get('us_per_step', float('nan')):.1f}" for r in rows if r["algorithm"] == name
                and r["batch"] == batch) + " us/step")
    print(compile_table(rows, steps))
    return {"steps": steps, "batches": batches, "modes": modes, "repeats": repeats, "rows": rows}


def compile_table(rows, steps) -> str:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = [(f"\n## 3. Whole-loop compile / CUDA graph: µs per step ({common.DEVICE}, float32, dim {DIM}, trivial model, "
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
        out.append(f"| {alg} | {batch} | " + " | ".join(cells) + f" | {fmt_num(model_us)} |")
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
