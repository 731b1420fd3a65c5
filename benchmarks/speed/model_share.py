"""Section 4 of the speed benchmark: the share of sampling wall time spent inside the network.

A ~10M-parameter MLP, per solver: wall time of a run against the time inside the network (a
timer around it; CUDA events on GPU). Graphed (CUDA): the sampler as one graph against a graph
of exactly its model calls.
"""

from __future__ import annotations

import statistics
import time

import torch

import unigen as ug
from benchmarks.speed import common
from benchmarks.speed.common import MLP, Recorder, interleaved, say, sync
from benchmarks.speed.compiled import COMPILE_SOLVERS, compile_module

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
        if common.DEVICE.type == "cuda":
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
    """The network's share of wall time for each solver of ``algorithms`` (keys of ``COMPILE_SOLVERS``)."""
    width = args.mf_width or (512 if args.quick else 2048)
    steps = args.mf_steps or (5 if args.quick else 20)
    batch, dim, repeats = args.mf_batch, 64, args.repeats or (3 if args.quick else 5)
    net = MLP(dim, width, layers=4).to(common.DEVICE).eval()
    n_params = sum(p.numel() for p in net.parameters())
    say("model-fraction", f"{common.DEVICE}, MLP dim {dim} width {width} 4 layers ({n_params / 1e6:.2f}M parameters), "
         f"batch {batch}, {steps} steps, {repeats} repeats")
    z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0)).to(common.DEVICE)
    C = compile_module() if common.DEVICE.type == "cuda" else None
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
        say("model-fraction", " | ".join(f"{r['algorithm']} {r['mode']} {100 * r.get('fraction', float('nan')):.1f} %"
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
    out = [(f"\n## 4. Share of sampling time inside the network ({common.DEVICE}, MLP {n_params / 1e6:.1f}M parameters, "
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
