"""Section 2 of the speed benchmark: samples/s against batch size and data dimension.

unigen against the peers on the same algorithm (Euler, DDIM, DPM++(2M), Heun), each unigen case
configured like its peer, with the trivial model and a small MLP; ratio = unigen's samples/s
over the peer's (> 1: unigen is faster).
"""

from __future__ import annotations

import torch

from benchmarks.speed import common
from benchmarks.speed.cases import Spec
from benchmarks.speed.common import fmt_num, fmt_sig, interleaved, say

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
    """Every case of ``throughput_cases`` at every (model, dim, batch), round-robin per algorithm."""
    cases = throughput_cases(all_specs)
    kinds = args.tp_models.split(",")
    batches = [int(b) for b in (args.tp_batches or ("1,64,1024" if args.quick else "1,64,1024,8192")).split(",")]
    dims = [int(d) for d in (args.tp_dims or ("2,64" if args.quick else "2,64,1024")).split(",")]
    steps, repeats = args.tp_steps, args.repeats or 3
    min_time = 0.004 if args.quick else 0.01
    say("throughput", f"{common.DEVICE}, {steps} steps, models {kinds}, batches {batches}, dims {dims}, "
         f"{len(cases)} cases, {repeats} repeats")
    rows = []
    for kind in kinds:
        for dim in dims:
            for batch in batches:
                base = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch + dim)).to(common.DEVICE)
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
                        say("throughput", f"{kind:7s} b={batch:<5d} d={dim:<5d} {algorithm:9s} " + ", ".join(
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
    out = [f"\n## 2. Throughput, unigen samples/s ({common.DEVICE}, float32, {steps} steps; columns: batch b, dim d)\n",
           "| model | algorithm | unigen config " + head, "|---|---|---" + sep]
    val = {(r["key"], r["model"], r["batch"], r["dim"]): r.get("samples_per_s") for r in rows}
    seen = []
    for r in rows:
        if r["library"] == "unigen" and (r["key"], r["model"]) not in seen:
            seen.append((r["key"], r["model"]))
            out.append(f"| {r['model']} | {r['algorithm']} | {r['config']} | " + " | ".join(
                fmt_sig(val.get((r["key"], r["model"], b, d))) for b, d in cells) + " |")
    if comps:
        out += ["\n## 2b. Throughput ratio unigen / peer (same algorithm and grid family; > 1: unigen faster)\n",
                "| model | algorithm | peer " + head, "|---|---|---" + sep]
        ratio = {(c["peer_config"], c["model"], c["batch"], c["dim"]): c["ratio"] for c in comps}
        seen = []
        for c in comps:
            if (c["peer_config"], c["model"]) not in seen:
                seen.append((c["peer_config"], c["model"]))
                out.append(f"| {c['model']} | {c['algorithm']} | {c['peer']}: {c['peer_config']} | " + " | ".join(
                    fmt_num(ratio.get((c["peer_config"], c["model"], b, d)), 2) for b, d in cells) + " |")
    return "\n".join(out)
