"""Section 1 of the speed benchmark: per-step solver overhead, and the first-call setup.

Per-step overhead: every case (``benchmarks.speed.cases``) runs a full sampling loop at 10,
``--steps`` and 110 steps; the model's own time (its recorded calls replayed) is subtracted and
a least-squares line through the three overheads splits them into setup and per-step cost.

First-call setup (``run_first_call``): what the first ``ug.sample`` call with a NEW model object
costs beyond its steps, next to what a peer pays on every call (diffusers:
``scheduler.set_timesteps(n)``; k-diffusion: ``get_sigmas_karras`` and the sampler's preamble).
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import statistics
import time
from dataclasses import dataclass, field

import torch

from benchmarks.speed import common
from benchmarks.speed.cases import Spec
from benchmarks.speed.common import (
    DIM,
    STEP_COUNTS_EXTRA,
    TARGETS,
    calibrate,
    fmt_num,
    interleaved,
    ratio_of,
    replay_fn,
    say,
    sync,
)


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------
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
# report
# ---------------------------------------------------------------------------------------
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
        ratio = ratio_of(u.overhead_us_per_step, r.overhead_us_per_step)
        ratio_m = ratio_of(u.marginal_overhead_us_per_step, r.marginal_overhead_us_per_step)
        out.append({
            "algorithm": r.algorithm, "peer": r.library, "peer_config": r.config, "unigen_config": u.config,
            "batch": r.batch, "model": r.model,
            "unigen_us_per_step": u.us_per_step, "peer_us_per_step": r.us_per_step,
            "ratio_total": ratio_of(u.us_per_step, r.us_per_step),
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
        rr = (fmt_num(c["ratio_overhead"], 2), fmt_num(c["ratio_marginal_overhead"], 2)) if c else ("", "")
        flag = "" if r.finite else " (non-finite output)"
        lines.append(
            f"| {r.algorithm} | {r.library} | {r.config}{flag} | {r.batch} | {r.nfe} | {fmt_num(r.us_per_step)} "
            f"| {fmt_num(r.model_us_per_step)} | {fmt_num(r.overhead_us_per_step)} | {fmt_num(r.marginal_overhead_us_per_step)} "
            f"| {fmt_num(r.setup_us, 0)} | {rr[0]} | {rr[1]} |"
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
            f"| {r.algorithm} | {r.library} | {r.config} | {r.batch} | {r.nfe} | {fmt_num(r.us_per_step)} "
            f"| {fmt_num(r.model_us_per_step)} | {fmt_num(100 * share, 0)} % | {fmt_num(c['ratio_total'], 2) if c else ''} |"
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
            f"| {c['algorithm']} | {c['peer']} | {c['batch']} | {fmt_num(c['ratio_overhead'], 2)} "
            f"| {fmt_num(c['ratio_marginal_overhead'], 2)} | ≤ {c['target']} "
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


# ---------------------------------------------------------------------------------------
# section 1: per-step overhead
# ---------------------------------------------------------------------------------------
def run_overhead(args, all_specs: list[Spec]) -> dict:
    """The per-step overhead of every case, then the first-call setup row (``--first-call-only``: the row alone)."""
    repeats = args.repeats or (3 if args.quick else 9)
    min_time = 0.004 if args.quick else 0.015
    if args.first_call_only:
        return {"first_call": run_first_call(args, all_specs)}
    models = (args.models or ("trivial" if args.quick or common.DEVICE.type != "cpu" else "trivial,oracle")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    say("overhead", f"{common.DEVICE}, dim {DIM}, steps {args.steps} (+{STEP_COUNTS_EXTRA} for the split), {repeats} "
         f"repeats, models {models}, batches {batches}, {len(all_specs)} cases")
    results: list[Result] = []
    for kind in models:
        for batch in batches:
            base = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch)).to(common.DEVICE)
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
                    say("overhead", f"{kind:7s} b={batch:<5d} {spec.library:11s} {algorithm:9s} {status}")
                results.extend(group_results)

    comps = comparisons(results)
    trivial = [r for r in results if r.model == "trivial"]
    oracle = [r for r in results if r.model == "oracle"]
    if trivial:
        print(f"\n## 1. Per-step overhead, trivial model 0.5*z (µs; {common.DEVICE}, float32, dim {DIM}, "
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
            "results": [vars(r) for r in results], "comparisons": comps,
            "first_call": run_first_call(args, all_specs)}


# ---------------------------------------------------------------------------------------
# section 1, last row: the first call's setup
# ---------------------------------------------------------------------------------------
# the multistep solvers whose peers rebuild their grid (and state) on every call
FC_ALGORITHMS = ("DPM++(2M)", "UniPC(2)")
# the unigen cases configured like those peers (used alone under --no-peers)
FC_UNIGEN_KEYS = ("ug-dpmpp-edm", "ug-dpmpp-ddpm", "ug-unipc-ddpm")
FC_DEFINITION = (
    "first call = one ug.sample call on a new process, ug.Model and solver (diffusers: a new scheduler; k-diffusion "
    "keeps no state), built outside the timing, trivial model; calls timed in loops of >= min_time s, median of "
    "--fc-repeats repeats, after two untimed first calls; warm call = the same runner called again, its loop timed "
    "right before the first calls' loop; first - warm = median of the paired differences (unigen also with a new "
    "model and solver on the process already used, which hits what is cached per process); per step = "
    "least-squares slope of the warm call's median time over the row's step counts (and 110 steps if only one is "
    "given); first-call setup = first call - steps x per step; warm-call setup = warm call - steps x per step; grid "
    "alone = scheduler.set_timesteps(steps) (diffusers) or get_sigmas_karras(steps) (k-diffusion) timed by itself; "
    "ratio = unigen's first-call setup / the peer's, unigen configured like the peer, in the same run, same steps"
)


def first_call_cases(all_specs: list[Spec]) -> list[Spec]:
    """The peer cases of ``FC_ALGORITHMS`` and the unigen case configured like each."""
    peers = [s for s in all_specs if s.pair and s.algorithm in FC_ALGORITHMS]
    keys = {s.pair for s in peers} or set(FC_UNIGEN_KEYS)
    mine = [s for s in all_specs if s.library == "unigen" and s.key in keys]
    return mine + peers


def measure_first_call(cases: list[Spec], batch: int, step_counts: list[int], repeats: int, min_time: float,
                       first_repeats: int) -> list[dict]:
    """One row per (case, steps): the first call on new objects against the warm per-step cost.

    Every repeat times, for each case in turn, a loop of warm calls (the runner called again)
    at each step count (and at 110 steps if there is only one), then a loop of as many first
    calls, each on objects built for it before the clock starts (unigen: then a loop with a new
    model and solver on the runner's process), with the garbage collector off: first and warm
    calls are paired in time, so a change of background load hits both. Before timing, every
    case makes two untimed first calls and one warm call per step count, so what is left is
    the cost of a new model, not the process's own first use of a code path. The grid alone
    (peers) is timed by ``interleaved``.
    """
    base = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(batch)).to(common.DEVICE)
    # the per-step cost over the row's own step counts: some peers' cost per step grows with the
    # number of steps, so a line through 110 steps would misplace the intercept at 10-20 steps
    counts = sorted(set(step_counts) if len(set(step_counts)) > 1 else set(step_counts) | {STEP_COUNTS_EXTRA[1]})
    live, rows = [], []
    for spec in cases:
        row0 = {"algorithm": spec.algorithm, "library": spec.library, "config": spec.config, "key": spec.key,
                "pair": spec.pair, "batch": batch, "model": "trivial"}
        try:
            runner = spec.build("trivial", base)
            for _ in range(2):
                runner.first_call(step_counts[0])()
            for n in counts:
                runner.run(n)
        except Exception as e:  # noqa: BLE001 - a failing case is reported, not fatal
            rows.append(row0 | {"error": f"{type(e).__name__}: {e}"})
            continue
        live.append((spec, runner, row0))
    grids = {(spec.key, n): g for spec, runner, _ in live for n in step_counts if (g := runner.grid_fn(n)) is not None}
    grid_times = interleaved(grids, repeats, min_time) if grids else {}
    # calls per timed loop (>= min_time), one number per (case, steps) for warm and first calls alike
    numbers = {(spec.key, n): calibrate(lambda r=runner, n=n: r.run(n), min_time, warmup=1)
               for spec, runner, _ in live for n in counts}

    def loop(calls):
        """Seconds per call of a timed loop over ``calls`` (each built before the clock starts)."""
        sync()
        t0 = time.perf_counter()
        for call in calls:
            call()
        sync()
        return (time.perf_counter() - t0) / len(calls)

    warm: dict = {(spec.key, n): [] for spec, _, _ in live for n in counts}
    firsts: dict = {(spec.key, n): [] for spec, _, _ in live for n in step_counts}
    same_process: dict = {(spec.key, n): [] for spec, _, _ in live for n in step_counts}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(first_repeats):
            for spec, runner, _ in live:
                for n in counts:
                    number = numbers[(spec.key, n)]
                    warm[(spec.key, n)].append(loop([lambda r=runner, n=n: r.run(n)] * number))
                    if n not in step_counts:
                        continue
                    # new objects for every call of the loop, built untimed
                    firsts[(spec.key, n)].append(loop([runner.first_call(n) for _ in range(number)]))
                    if spec.library == "unigen":
                        same_process[(spec.key, n)].append(
                            loop([runner.first_call(n, new_process=False) for _ in range(number)]))
    finally:
        if gc_was:
            gc.enable()

    def slope_of(stat, key):
        """Least-squares slope of the warm call's time (``stat`` over the repeats) against steps."""
        xs = [float(n) for n in counts]
        ys = [stat(warm[(key, n)]) for n in counts]
        xm, ym = statistics.fmean(xs), statistics.fmean(ys)
        return sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sum((x - xm) ** 2 for x in xs)

    for spec, _, row0 in live:
        slope, slope_min = slope_of(statistics.median, spec.key), slope_of(min, spec.key)
        for n in step_counts:
            first, w = firsts[(spec.key, n)], warm[(spec.key, n)]
            f_s, w_s = statistics.median(first), statistics.median(w)
            grid = grid_times.get((spec.key, n))
            rows.append(row0 | {
                "steps": n, "first_call_us": 1e6 * f_s, "first_call_min_us": 1e6 * min(first),
                "first_call_max_us": 1e6 * max(first), "warm_call_us": 1e6 * w_s, "warm_call_min_us": 1e6 * min(w),
                "first_minus_warm_us": 1e6 * statistics.median(a - b for a, b in zip(first, w, strict=True)),
                # unigen: a new model and solver on the process already used (what is cached per process is hit)
                "new_model_same_process_minus_warm_us": 1e6 * statistics.median(
                    a - b for a, b in zip(same_process[(spec.key, n)], w, strict=True)) if spec.library == "unigen"
                else None,
                "per_step_us": 1e6 * slope, "first_call_setup_us": 1e6 * (f_s - n * slope),
                "warm_call_setup_us": 1e6 * (w_s - n * slope),
                # the same from the fastest repeats (less exposed to other processes on a loaded machine)
                "per_step_min_us": 1e6 * slope_min, "first_call_setup_min_us": 1e6 * (min(first) - n * slope_min),
                "warm_call_setup_min_us": 1e6 * (min(w) - n * slope_min),
                "grid_alone_us": None if grid is None else 1e6 * grid["median"],
            })
    return rows


def first_call_comparisons(rows: list[dict]) -> list[dict]:
    """unigen (configured like the peer) against each peer, per step count: setup ratios."""
    by_key = {(r["key"], r["steps"]): r for r in rows if "error" not in r}
    out = []
    for r in rows:
        u = by_key.get((r["pair"], r.get("steps"))) if r["pair"] and "error" not in r else None
        if u is None:
            continue
        out.append({
            "algorithm": r["algorithm"], "peer": r["library"], "peer_config": r["config"], "unigen_config": u["config"],
            "batch": r["batch"], "steps": r["steps"],
            "unigen_first_call_setup_us": u["first_call_setup_us"], "peer_first_call_setup_us": r["first_call_setup_us"],
            "ratio_first_call_setup": ratio_of(u["first_call_setup_us"], r["first_call_setup_us"]),
            "unigen_warm_call_setup_us": u["warm_call_setup_us"], "peer_warm_call_setup_us": r["warm_call_setup_us"],
            "ratio_warm_call_setup": ratio_of(u["warm_call_setup_us"], r["warm_call_setup_us"]),
            "unigen_first_minus_warm_us": u["first_minus_warm_us"], "peer_first_minus_warm_us": r["first_minus_warm_us"],
        })
    return out


def first_call_table(rows: list[dict], comps: list[dict]) -> str:
    ratio = {(c["peer_config"], c["steps"]): c for c in comps}
    lines = [("| algorithm | library | config | steps | first call µs | warm call µs | first − warm µs "
              "| new model, same process − warm µs | per step µs | first-call setup µs | warm-call setup µs "
              "| grid alone µs | ratio unigen/peer (first-call setup) | ratio (warm-call setup) |"), "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['algorithm']} | {r['library']} | {r['config']} | | error: {r['error']} |" + " |" * 9)
            continue
        c = ratio.get((r["config"], r["steps"]))
        rr = (fmt_num(c["ratio_first_call_setup"], 2), fmt_num(c["ratio_warm_call_setup"], 2)) if c else ("", "")
        lines.append(
            f"| {r['algorithm']} | {r['library']} | {r['config']} | {r['steps']} | {fmt_num(r['first_call_us'], 0)} "
            f"| {fmt_num(r['warm_call_us'], 0)} | {fmt_num(r['first_minus_warm_us'], 0)} "
            f"| {fmt_num(r['new_model_same_process_minus_warm_us'], 0)} | {fmt_num(r['per_step_us'])} "
            f"| {fmt_num(r['first_call_setup_us'], 0)} "
            f"| {fmt_num(r['warm_call_setup_us'], 0)} | {fmt_num(r['grid_alone_us'])} | {rr[0]} | {rr[1]} |"
        )
    return "\n".join(lines)


def run_first_call(args, all_specs: list[Spec]) -> dict:
    """The first-call setup row: ``FC_ALGORITHMS`` (or ``--only``'s), batch ``--fc-batch``, ``--fc-steps``."""
    cases = first_call_cases(all_specs)
    steps = sorted({int(n) for n in args.fc_steps.split(",")})
    repeats = args.repeats or (3 if args.quick else 9)
    first_repeats = args.fc_repeats or (7 if args.quick else 21)
    min_time = 0.004 if args.quick else 0.015
    t0 = time.perf_counter()
    say("overhead", f"first call: {common.DEVICE}, batch {args.fc_batch}, steps {steps}, {first_repeats} repeats, "
        f"{repeats} warm repeats, {len(cases)} cases")
    rows = measure_first_call(cases, args.fc_batch, steps, repeats, min_time, first_repeats) if cases else []
    comps = first_call_comparisons(rows)
    for r in rows:
        status = r.get("error") or (f"first call {r['first_call_us']:8.0f} us, setup {r['first_call_setup_us']:7.0f} us "
                                    f"(warm {r['warm_call_setup_us']:6.0f})")
        say("overhead", f"first call b={args.fc_batch:<4d} n={r.get('steps', '-')!s:<3s} {r['library']:11s} "
            f"{r['algorithm']:9s} {status}")
    print(f"\n## 1d. First-call setup, trivial model (µs; {common.DEVICE}, float32, dim {DIM}, batch {args.fc_batch}): "
          "a call on a new model (peers: a new scheduler) minus steps × the warm per-step cost\n")
    print(first_call_table(rows, comps) if rows else f"(no case: --only leaves none of {', '.join(FC_ALGORITHMS)})")
    return {"batch": args.fc_batch, "steps": steps, "first_call_repeats": first_repeats, "repeats": repeats,
            "min_time_per_repeat_s": min_time, "definition": FC_DEFINITION, "rows": rows, "comparisons": comps,
            "elapsed_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------
def profile_unigen(all_specs: list[Spec], steps: int, top: int = 18) -> str:
    """cProfile of unigen's loops (batch 64, trivial model, ``steps`` steps, 20 runs each)."""
    buf = io.StringIO()
    base = torch.randn(64, DIM, generator=torch.Generator().manual_seed(0)).to(common.DEVICE)
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
