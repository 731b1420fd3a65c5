#!/usr/bin/env python
r"""Which options of the multistep solvers win at low NFE: the evidence for their defaults.

On the exact Gaussian-mixture oracles (``unigen.bench.gmm_problem``: 2-D, 16-D and 64-D under
VP, flow matching and a 1000-step DDPM table) every configuration of a solver family runs on
the problem's default grid from the same held-out float64 noise, at NFE 4, 5, 6, 8, 10, 12, 15
and 20 (NFE = steps for these one-call-per-step solvers; a singlestep warm-up, one extra call on
step 0, runs one step fewer, so every comparison is at equal NFE, checked against ``info.nfe``).
Metric: endpoint RMSE against the dopri5 (rtol 1e-10) solve of the same PF-ODE from the same
noise, as in ``nfe_quality.py``.

Families and their options (the first value of each is the library default)::

    DPMSolverPP(3), DPMSolver(3):  match_reference_3m False/True (the corrected 2 psi_3 D2 vs the
                                   published psi_3 D2), warmup lower_order/singlestep,
                                   lower_order_final True/False/"always"
    DPMSolverPP(2):                lower_order_final True/False/"always"
    UniPC(2), UniPC(3):            variant bh2/bh1, corrector True/False, lower_order_final

Every combination of a family's options runs (a full factorial; it is cheap). The summary
compares one option at a time with the others at their defaults (per problem: the winner at
each NFE; overall: wins at NFE 4-10 and 12-20, and the geometric mean of the RMSE ratio to the
default), lists the best combination per family at NFE 4-10, and recommends per family the
option values with the smallest geometric-mean low-NFE error.

Note: with ``lower_order_final=True`` the final-order cap applies below 15 steps only, so True
and "always" coincide below NFE 15 and True and False from NFE 15 on. The singlestep warm-up is
inactive out of zero SNR (flow matching's default grid starts at alpha = 0): there it equals
the lower-order warm-up. ``match_reference_3m`` and ``warmup`` only act on third order.

Usage (from the repository root)::

    python -m benchmarks.low_nfe_defaults --quick     # 2-D vp/fm, NFE 4/6/10/20, 256 samples (~10 s)
    python -m benchmarks.low_nfe_defaults             # 2/16/64-D x vp/fm/ddpm, 8 NFEs, 1024 samples (~6 min, 2 cores)
    python -m benchmarks.low_nfe_defaults --resummarize benchmarks/results/low_nfe_defaults.json  # summary only

Writes ``benchmarks/results/low_nfe_defaults.json`` (``--quick``: ``low_nfe_defaults_quick.json``;
or ``--out``): every record (problem, family, solver label, options, steps, nfe, rmse), the
comparisons, the win counts and the recommendation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import platform
import sys
import time

import torch

import unigen as ug
from unigen.bench import endpoint_rmse, gmm_problem
from unigen.schedules import sample_range
from unigen.solvers import REGISTRY

ROOT = pathlib.Path(__file__).resolve().parents[1]
NFES = [4, 5, 6, 8, 10, 12, 15, 20]
LOW, HIGH = (4, 10), (12, 20)  # the two NFE bands of the win counts (inclusive)
TIE_RTOL = 1e-9  # RMSEs this close (relative) tie: e.g. lower_order_final True vs "always" below 15 steps
LOF = [True, False, "always"]

# family -> (registry name, fixed options, {option: values, the library default first})
FAMILIES: dict[str, tuple[str, dict, dict]] = {
    "DPMSolverPP(3)": ("DPMSolverPP", {"order": 3},
                       {"match_reference_3m": [False, True], "warmup": ["lower_order", "singlestep"],
                        "lower_order_final": LOF}),
    "DPMSolverPP(2)": ("DPMSolverPP", {"order": 2}, {"lower_order_final": LOF}),
    "DPMSolver(3)": ("DPMSolver", {"order": 3},
                     {"match_reference_3m": [False, True], "warmup": ["lower_order", "singlestep"],
                      "lower_order_final": LOF}),
    "UniPC(3)": ("UniPC", {"order": 3}, {"variant": ["bh2", "bh1"], "corrector": [True, False], "lower_order_final": LOF}),
    "UniPC(2)": ("UniPC", {"order": 2}, {"variant": ["bh2", "bh1"], "corrector": [True, False], "lower_order_final": LOF}),
}
# comparisons across families: (title, [(option label, family, options)])
CROSS = [
    ("UniPC order (bh2, corrector)", [("order=3", "UniPC(3)", {}), ("order=2", "UniPC(2)", {})]),
    ("UniPC order (bh1, corrector)",
     [("order=3", "UniPC(3)", {"variant": "bh1"}), ("order=2", "UniPC(2)", {"variant": "bh1"})]),
    ("DPMSolverPP order", [("order=3", "DPMSolverPP(3)", {}), ("order=2", "DPMSolverPP(2)", {})]),
]


def defaults(family: str) -> dict:
    return {k: v[0] for k, v in FAMILIES[family][2].items()}


def configs(family: str) -> list[dict]:
    """Every combination of the family's options (defaults first)."""
    factors = FAMILIES[family][2]
    return [dict(zip(factors, combo)) for combo in itertools.product(*factors.values())]


def key(family: str, options: dict) -> str:
    return family + json.dumps({k: options[k] for k in sorted(options)}, sort_keys=True)


def build(family: str, options: dict):
    name, fixed, _ = FAMILIES[family]
    return REGISTRY[name](**fixed, **options)


def run_one(problem, family, options, nfe, z, ref) -> dict:
    """One configuration at NFE ``nfe``: the most steps whose real call count is <= nfe (a
    singlestep warm-up costs one call more on step 0, except out of zero SNR)."""
    solver = build(family, options)
    steps = nfe
    while True:
        x, info = ug.sample(problem.model, solver, steps=steps, noise=z)
        used = int(info.nfe)
        if used <= nfe or steps == 1:
            break
        steps -= used - nfe
    err = endpoint_rmse(x, ref)
    return {"problem": problem.name, "family": family, "solver": solver.label(),
            "options": {**FAMILIES[family][1], **options}, "config": key(family, options),
            "nfe": used, "budget": nfe, "steps": steps, "rmse": err if math.isfinite(err) else None}


def run_problem(problem, families, nfes, n, seed, say) -> tuple[list[dict], dict]:
    t_start, t_end = sample_range(problem.process)
    z = problem.noise(n, torch.Generator().manual_seed(seed * 1000 + 1))
    t0 = time.perf_counter()
    ref, ref_nfe = problem.reference(z, t_start, t_end)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = [run_one(problem, fam, opts, nfe, z, ref) for fam in families for opts in configs(fam) for nfe in nfes]
    secs = time.perf_counter() - t0
    bad = [r for r in records if r["nfe"] != r["budget"]]
    say(f"[{problem.name}] n={n}: reference {ref_nfe} NFE in {ref_s:.1f} s, {len(records)} runs in {secs:.1f} s"
        + (f"; {len(bad)} runs below their NFE budget" if bad else ""))
    meta = {"n_samples": n, "reference_nfe": ref_nfe, "reference_seconds": ref_s, "runs_seconds": secs,
            "t_start": t_start, "t_end": t_end, "schedule": str(problem.schedule)}
    return records, meta


# ----------------------------------------------------------------------------- summary


def _fmt(v) -> str:
    return "-" if v is None else "True" if v is True else "False" if v is False else str(v)


def comparisons(families: list[str]) -> list[dict]:
    """One option varied at a time, the others at the family default; plus the cross-family ones."""
    out = []
    for fam in families:
        base = defaults(fam)
        for opt, values in FAMILIES[fam][2].items():
            if len(values) > 1:
                out.append({"title": f"{fam}: {opt}", "family": fam, "option": opt,
                            "variants": [(f"{opt}={_fmt(v)}", fam, {**base, opt: v}) for v in values]})
        if fam.startswith("UniPC") and "lower_order_final" in FAMILIES[fam][2]:  # bh1 beside bh2 on the final-order choice
            out.append({"title": f"{fam}, bh1: lower_order_final", "family": fam, "option": "lower_order_final",
                        "variants": [(f"lower_order_final={_fmt(v)}", fam, {**base, "variant": "bh1", "lower_order_final": v})
                                     for v in LOF]})
    for title, variants in CROSS:
        if all(f in families for _, f, _ in variants):
            out.append({"title": title, "family": None, "option": None,
                        "variants": [(lab, f, {**defaults(f), **o}) for lab, f, o in variants]})
    return out


def _winners(vals: list) -> list[int]:
    """Indices of the smallest RMSE (ties within TIE_RTOL; a failed run, None, never wins)."""
    ok = [v for v in vals if v is not None]
    if not ok:
        return []
    best = min(ok)
    return [i for i, v in enumerate(vals) if v is not None and v <= best * (1 + TIE_RTOL)]


def _gmean(xs: list) -> float | None:
    if not xs or any(x is None or not x > 0 for x in xs):
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summarize(records: list[dict], comps: list[dict]) -> list[dict]:
    by = {(r["problem"], r["config"], r["budget"]): r["rmse"] for r in records}
    problems = list(dict.fromkeys(r["problem"] for r in records))
    nfes = sorted({r["budget"] for r in records})
    band = lambda b, lo_hi: lo_hi[0] <= b <= lo_hi[1]  # noqa: E731
    out = []
    for c in comps:
        labels = [lab for lab, _, _ in c["variants"]]
        keys = [key(f, o) for _, f, o in c["variants"]]
        per_problem, counts = {}, {}
        for bname, lo_hi in (("low", LOW), ("high", HIGH)):
            counts[bname] = {"sole": dict.fromkeys(labels, 0), "shared": dict.fromkeys(labels, 0), "all_tie": 0, "cases": 0,
                             "gmean_ratio_to_first": dict.fromkeys(labels)}
        ratios = {b: {lab: [] for lab in labels} for b in ("low", "high")}
        for p in problems:
            row = {}
            for b in nfes:
                vals = [by.get((p, k, b)) for k in keys]
                w = _winners(vals)
                row[str(b)] = {"rmse": dict(zip(labels, vals)), "winners": [labels[i] for i in w]}
                for bname, lo_hi in (("low", LOW), ("high", HIGH)):
                    if not band(b, lo_hi):
                        continue
                    cnt = counts[bname]
                    cnt["cases"] += 1
                    if len(w) == len(labels):
                        cnt["all_tie"] += 1
                    elif len(w) == 1:
                        cnt["sole"][labels[w[0]]] += 1
                    else:
                        for i in w:
                            cnt["shared"][labels[i]] += 1
                    for lab, v in zip(labels, vals):
                        ratios[bname][lab].append(None if v is None or vals[0] is None else v / vals[0])
            per_problem[p] = row
        for bname in ("low", "high"):
            counts[bname]["gmean_ratio_to_first"] = {lab: _gmean(ratios[bname][lab]) for lab in labels}
        out.append({"title": c["title"], "family": c["family"], "option": c["option"], "variants": labels,
                    "configs": keys, "per_problem": per_problem, "wins": counts})
    return out


def best_combinations(records: list[dict], families: list[str]) -> dict:
    """Per family: every configuration's geometric-mean RMSE ratio to the family default over all
    problems at NFE 4-10 and 12-20, sorted by the low-NFE ratio."""
    by = {(r["problem"], r["config"], r["budget"]): r["rmse"] for r in records}
    problems = list(dict.fromkeys(r["problem"] for r in records))
    nfes = sorted({r["budget"] for r in records})
    out = {}
    for fam in families:
        base = key(fam, defaults(fam))
        rows = []
        for opts in configs(fam):
            k = key(fam, opts)
            row = {"options": opts, "label": build(fam, opts).label()}
            for bname, (lo, hi) in (("low", LOW), ("high", HIGH)):
                rs = [None if by.get((p, k, b)) is None or not by.get((p, base, b)) else by[(p, k, b)] / by[(p, base, b)]
                      for p in problems for b in nfes if lo <= b <= hi]
                row[f"gmean_ratio_{bname}"] = _gmean(rs)
                row[f"worst_ratio_{bname}"] = None if not rs or None in rs else max(rs)
            rows.append(row)
        rows.sort(key=lambda r: math.inf if r["gmean_ratio_low"] is None else r["gmean_ratio_low"])
        out[fam] = rows
    return out


def recommend(summary: list[dict], combos: dict, families: list[str]) -> dict:
    """Per family: per option the value with the smallest geometric-mean RMSE at NFE 4-10 (one
    option varied, the rest at the default), and the best full combination."""
    rec = {}
    for fam in families:
        per_option = {}
        for s in summary:
            if s["family"] != fam or s["title"] != f"{fam}: {s['option']}":
                continue
            g = s["wins"]["low"]["gmean_ratio_to_first"]
            ok = {lab: v for lab, v in g.items() if v is not None}
            best = min(ok, key=ok.get) if ok else None
            per_option[s["option"]] = {"best": best, "default": s["variants"][0],
                                       "gmean_ratio_low": g, "sole_wins_low": s["wins"]["low"]["sole"],
                                       "change": best is not None and best != s["variants"][0] and ok[best] < 1 - 1e-6}
        top = combos[fam][0] if combos.get(fam) else None
        keep = ("label", "options", "gmean_ratio_low", "gmean_ratio_high")
        rec[fam] = {"per_option": per_option, "best_combination_low": top and {k: top[k] for k in keep}}
    return rec


# ----------------------------------------------------------------------------- printing


def _short(label: str) -> str:
    return label.split("=", 1)[-1]


def print_summary(summary: list[dict], combos: dict, rec: dict, say) -> None:
    for s in summary:
        labels = s["variants"]
        say(f"\n## {s['title']}  ({' vs '.join(labels)})")
        nfes = list(next(iter(s["per_problem"].values())))
        say("| problem | " + " | ".join(f"NFE {b}" for b in nfes) + " |")
        say("|---|" + "---|" * len(nfes))
        for p, row in s["per_problem"].items():
            cells = []
            for b in nfes:
                vals = " / ".join("-" if v is None else f"{v:.2e}" for v in row[b]["rmse"].values())
                w = row[b]["winners"]
                win = "tie" if len(w) == len(labels) else "=".join(_short(x) for x in w) or "-"
                cells.append(f"{vals} **{win}**")
            say(f"| {p} | " + " | ".join(cells) + " |")
        for bname, (lo, hi) in (("low", LOW), ("high", HIGH)):
            w = s["wins"][bname]
            g = w["gmean_ratio_to_first"]
            parts = [f"{lab}: {w['sole'][lab]}" + (f" (+{w['shared'][lab]} shared)" if w["shared"][lab] else "")
                     + (f", gmean x{g[lab]:.3f}" if g[lab] is not None and lab != labels[0] else "") for lab in labels]
            say(f"wins at NFE {lo}-{hi} ({w['cases']} cases, {w['all_tie']} all tied): " + "; ".join(parts))
    say("\n## Best combination per family (geometric-mean RMSE ratio to the default; NFE 4-10 | 12-20)")
    for fam, rows in combos.items():
        say(f"{fam}:")
        for r in rows[:4]:
            say(f"   {r['label']:70s} x{_g(r['gmean_ratio_low'])} | x{_g(r['gmean_ratio_high'])}"
                f"  (worst low x{_g(r['worst_ratio_low'])})")
    say("\n## Recommendation (by geometric-mean RMSE at NFE 4-10, one option at a time)")
    for fam, r in rec.items():
        top = r["best_combination_low"]
        changes = [f"{opt}: {_short(v['default'])} -> {_short(v['best'])} (x{v['gmean_ratio_low'][v['best']]:.3f}, sole wins "
                   f"{v['sole_wins_low'][v['best']]} vs {v['sole_wins_low'][v['default']]})"
                   for opt, v in r["per_option"].items() if v["change"]]
        say(f"{fam}: " + ("; ".join(changes) if changes else "keep the defaults")
            + (f"  | best combination: {top['label']} (x{_g(top['gmean_ratio_low'])})" if top else ""))


def _g(v) -> str:
    return "-" if v is None else f"{v:.3f}"


# ----------------------------------------------------------------------------- main


def _dumps(data: dict) -> str:
    """JSON with one line per record / comparison / combination row (a readable, smaller file)."""
    parts = []
    for k, v in data.items():
        if isinstance(v, list):
            body = "[\n" + ",\n".join(json.dumps(x) for x in v) + "\n]"
        elif k in ("comparisons", "combinations"):
            body = "{\n" + ",\n".join(f"{json.dumps(f)}: {json.dumps(x)}" for f, x in v.items()) + "\n}"
        else:
            body = json.dumps(v, indent=1)
        parts.append(f"{json.dumps(k)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true", help="2-D vp/fm, NFE 4/6/10/20, 256 samples (seconds)")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    ap.add_argument("--processes", nargs="+", default=["vp", "fm", "ddpm"])
    ap.add_argument("--nfe", type=int, nargs="+", default=NFES)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--samples", type=int, default=1024, help="held-out noise draws per problem")
    ap.add_argument("--samples-64", type=int, default=None, help="held-out draws for dim >= 64 (default: --samples)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    ap.add_argument("--quiet", action="store_true", help="no summary tables on stdout")
    ap.add_argument("--resummarize", type=pathlib.Path, default=None,
                    help="no runs: read the records (and meta) of an earlier output and rebuild the summary")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.dims, args.processes, args.nfe, args.samples = [2], ["vp", "fm"], [4, 6, 10, 20], 256
    name = "low_nfe_defaults_quick.json" if args.quick else "low_nfe_defaults.json"
    out = args.out or ROOT / "benchmarks" / "results" / name
    say = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))

    t0 = time.perf_counter()
    records, problems = [], {}
    earlier = json.loads(args.resummarize.read_text()) if args.resummarize else None
    if earlier:
        records, args.families = earlier["records"], list(dict.fromkeys(r["family"] for r in earlier["records"]))
    for dim in [] if earlier else args.dims:
        for kind in args.processes:
            n = args.samples_64 if dim >= 64 and args.samples_64 else args.samples
            recs, meta = run_problem(gmm_problem(dim, kind), args.families, sorted(args.nfe), n, args.seed, say)
            records += recs
            problems[f"gmm{dim}-{kind}"] = meta
    comps = comparisons(args.families)
    summary = summarize(records, comps)
    combos = best_combinations(records, args.families)
    rec = recommend(summary, combos, args.families)
    wall = time.perf_counter() - t0
    print_summary(summary, combos, rec, say)
    say(f"\nwall time {wall:.0f} s" + (" (summary only; the runs' time is meta.wall_seconds)" if earlier else ""))
    families = {f: {"registry": FAMILIES[f][0], "fixed": FAMILIES[f][1], "options": FAMILIES[f][2]} for f in args.families}
    meta = dict(earlier["meta"]) if earlier else {
            "argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick, "dims": args.dims,
            "processes": args.processes, "nfes": sorted(args.nfe), "families": families, "samples": args.samples,
            "samples_64": args.samples_64 or args.samples, "seed": args.seed,
            "metric": "endpoint RMSE vs dopri5 rtol=atol=1e-10 from the same float64 noise, default grid",
            "low_band": LOW, "high_band": HIGH, "tie_rtol": TIE_RTOL, "wall_seconds": wall,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "problems": problems}
    n64 = meta["samples_64"]
    meta.setdefault("notes", [
        f"64-D problems ran on {n64} noise draws" + (" (the full batch, not cut: their dopri5 reference takes seconds)"
                                                     if n64 == meta["samples"] else f" (cut from {meta['samples']})"),
        "NFE = info.nfe of every run (checked); the singlestep warm-up runs steps = NFE - 1 where it is active",
        "lower_order_final True equals 'always' below 15 steps and False from 15 steps on",
        "warmup='singlestep' is inactive on flow matching's default grid (alpha = 0 at its start): ties there",
    ])
    data = {"meta": meta, "records": records, "comparisons": summary, "combinations": combos, "recommendation": rec}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dumps(data))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
