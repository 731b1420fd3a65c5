"""``python -m benchmarks.speed [options]``: the command line of the speed benchmark (see ``benchmarks.speed``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import unigen as ug
from benchmarks import speed
from benchmarks.peer_samplers import load_diffusers, load_kdiffusion
from benchmarks.speed import common
from benchmarks.speed.cases import specs
from benchmarks.speed.common import STEP_COUNTS_EXTRA, loadavg, say
from benchmarks.speed.compiled import COMPILE_SOLVERS, compile_module, run_compile
from benchmarks.speed.model_share import run_model_fraction
from benchmarks.speed.overhead import profile_unigen, run_overhead
from benchmarks.speed.throughput import run_throughput

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------
# the record of a run
# ---------------------------------------------------------------------------------------
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
    """The run's machine, versions and arguments (the JSON's ``meta``)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(common.DEVICE) if common.DEVICE.type == "cuda" else None
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "unigen": ug.__version__,
        "platform": platform.platform(), "cpu": cpu, "gpu": gpu, "torch_threads": torch.get_num_threads(),
        "peers": versions, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "dtype": "float32", "device": str(common.DEVICE), "git": _git_state(),
        "loop_compilable": compile_module() is not None,
    }


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
SECTIONS = ("overhead", "throughput", "compile", "model-fraction")


def main(argv=None) -> int:
    """Run the sections asked for and write the JSON (``argv``: the command line, default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=speed.__doc__.split("\n\n")[0],
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
    g.add_argument("--fc-steps", default="10,20", help="first-call setup row: comma-separated step counts (default 10,20)")
    g.add_argument("--fc-batch", type=int, default=64, help="first-call setup row: batch size (default 64)")
    g.add_argument("--fc-repeats", type=int, default=None, help="first-call setup row: timed repeats, each a loop of "
                   "first calls and one of warm calls per case and step count (default 21; quick 7)")
    g.add_argument("--first-call-only", action="store_true", help="run only the first-call setup row of the overhead "
                   "section (with --update: replaces only that row in --out)")
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

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    common.set_device(args.device)
    torch.set_num_threads(args.threads)
    for m in (args.models or "trivial").split(","):
        if m not in ("trivial", "oracle"):
            p.error(f"unknown model {m!r}; valid: trivial, oracle")
    for m in args.tp_models.split(","):
        if m not in ("trivial", "mlp"):
            p.error(f"unknown throughput model {m!r}; valid: trivial, mlp")
    if args.steps <= STEP_COUNTS_EXTRA[0] or args.steps >= STEP_COUNTS_EXTRA[1]:
        p.error(f"--steps must lie strictly between {STEP_COUNTS_EXTRA[0]} and {STEP_COUNTS_EXTRA[1]}")
    try:
        fc_steps = [int(n) for n in args.fc_steps.split(",")]
    except ValueError:
        fc_steps = []
    if not fc_steps or not all(0 < n < STEP_COUNTS_EXTRA[1] for n in fc_steps):
        p.error(f"--fc-steps must be comma-separated step counts between 1 and {STEP_COUNTS_EXTRA[1] - 1}")
    if args.first_call_only and "overhead" not in args.sections:
        p.error("--first-call-only is a part of the overhead section: add --sections overhead")

    versions: dict = {}
    K = D = None
    if args.no_peers:
        versions = {"k-diffusion": "skipped (--no-peers)", "diffusers": "skipped (--no-peers)"}
    else:  # loaded for the record even when the sections run need no peer
        K, versions["k-diffusion"] = load_kdiffusion()
        D, versions["diffusers"] = load_diffusers()
        for name, mod in (("k-diffusion", K), ("diffusers", D)):
            if mod is None:
                say("peers", f"skipping {name}: {versions[name]}")
    keep = set(args.only.split(",")) if args.only else None
    all_specs = [s for s in specs(K, D) if keep is None or s.algorithm in keep]
    algorithms = [a for a in COMPILE_SOLVERS if keep is None or a in keep]

    load_before = loadavg()
    if load_before and load_before[0] > max(1.0, (os.cpu_count() or 1) - 1.0):
        say("load", f"warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs; other processes will "
             "inflate absolute times (ratios are timed round-robin and suffer less)")
    t_start = time.perf_counter()
    out: dict = {}
    runners = {"overhead": lambda: run_overhead(args, all_specs), "throughput": lambda: run_throughput(args, all_specs),
               "compile": lambda: run_compile(args, algorithms),
               "model-fraction": lambda: run_model_fraction(args, algorithms)}
    for section in SECTIONS:
        if section in args.sections:
            t0, load0 = time.perf_counter(), loadavg()
            res = runners[section]()
            run = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "elapsed_s": time.perf_counter() - t0,
                   "loadavg_before": load0, "loadavg_after": loadavg(), "argv": sys.argv[1:] if argv is None
                   else list(argv)}
            if section == "overhead" and args.first_call_only:  # the row alone: its own run record
                res["first_call"]["run"] = run
            else:
                res["run"] = run
            out[section.replace("-", "_")] = res
    elapsed = time.perf_counter() - t_start

    path = Path(args.out)
    if args.update and path.is_file():  # keep the sections not run this time
        old = {k: v for k, v in json.loads(path.read_text()).items() if k != "meta"}
        if args.first_call_only and "overhead" in out:  # and the rest of the overhead section
            out["overhead"] = old.get("overhead", {}) | out["overhead"]
        out = old | out
        out = {k: out[k] for k in (s.replace("-", "_") for s in SECTIONS) if k in out}
    definitions = speed.__doc__.split("What is measured")[1].split("Usage")[0].strip()
    meta = environment(args, versions) | {
        "sections": [k for k in (s.replace("-", "_") for s in SECTIONS) if k in out], "elapsed_s": elapsed,
        "loadavg_before": load_before, "loadavg_after": loadavg(), "definitions": definitions,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta} | out, indent=1, default=str) + "\n")
    say("done", f"wrote {path} in {elapsed:.1f} s")

    if args.profile:
        text = profile_unigen(all_specs, 110)
        prof_path = path.with_name(path.stem + "_profile.txt")
        prof_path.write_text(text)
        say("done", f"wrote {prof_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
