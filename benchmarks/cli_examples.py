#!/usr/bin/env python
r"""Do the ``unigen sample`` examples of the CLI's own ``--help`` produce samples that look like the data?

Every ``unigen sample ...`` line of ``unigen --help`` and ``unigen sample --help``
(``unigen.cli.help_examples``) is run as a user would run it, through ``unigen.cli.main``, with
an empty model cache (so a trained example pays for its training) and its PNG written to a
temporary folder. Its samples (the same arguments, the same seed, the model now loaded from
the cache: ``unigen.cli.draw_samples``) are then compared with held-out data:

    sw2    = sliced Wasserstein-2 (``unigen.bench.metrics.sliced_wasserstein2``, 1024 random
             directions) between the N samples and N fresh data points, averaged over
             ``--repeats`` independent data draws;
    floor  = the same SW2 between two independent data draws of size N (averaged the same way):
             what a perfect sampler would score at this N;
    ratio  = sw2 / floor; the target is ratio <= 2 for every example.

"Data" is the exact oracle's samples for ``--data gmm`` and fresh draws of the training
distribution (``unigen.train.DATASETS``) for the trained toy sets; none of these draws uses the
seed the model was trained or sampled with.

Wall times: ``cold_s`` is the whole command with an empty cache (training, sampling, plot),
``warm_s`` the samples again with the model cached (load and sample only). CPU, one thread for
the 2-D toy models (what the CLI uses for them); other engineers' jobs on a shared machine
slow both down.

    python -m benchmarks.cli_examples                 # writes benchmarks/results/cli_examples.json
    python -m benchmarks.cli_examples --only moons    # examples whose command line contains "moons"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import torch

from unigen import cli, train
from unigen.bench.metrics import sliced_wasserstein2

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = 2.0


def data_draw(args, n: int, seed: int) -> torch.Tensor:
    """n points of the distribution the example should reproduce, from a generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    if args.data == "gmm":
        return cli._gmm().sample(n, generator=gen).to(torch.float32)
    name = "two_moons" if args.data == "moons" else args.data
    return train.DATASETS[name](n, gen, dtype=torch.float32)


def sw2(a, b, seed: int) -> float:
    return sliced_wasserstein2(a, b, n_projections=1024, generator=torch.Generator().manual_seed(seed))


def run_example(line: str, work: pathlib.Path, repeats: int) -> dict:
    argv = shlex.split(line)[1:]
    out, cache = work / "example.png", work / "cache"
    argv_run = argv + ["--out", str(out), "--cache", str(cache), "--no-progress"]  # later options win
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as said:
        rc = cli.main(argv_run)
    cold = time.perf_counter() - t0
    if rc != 0:
        return {"command": line, "exit_status": rc, "output": said.getvalue()[-500:]}
    args = cli.build_parser().parse_args(argv_run)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        x, info, schedule = cli.draw_samples(args)
    warm = time.perf_counter() - t0
    n = x.shape[0]
    base = 7_000_000  # far from every seed the CLI uses
    fits = [sw2(x, data_draw(args, n, base + 2 * r), seed=r) for r in range(repeats)]
    floors = [sw2(data_draw(args, n, base + 2 * r), data_draw(args, n, base + 2 * r + 1), seed=r) for r in range(repeats)]
    fit, floor = sum(fits) / repeats, sum(floors) / repeats
    return {
        "command": line,
        "data": args.data, "process": cli.PROCESSES[args.process], "param": args.param, "solver": args.solver,
        "schedule": schedule, "steps": args.steps, "nfe": info.nfe, "n": n,
        "train_steps": None if args.data == "gmm" else args.train_steps,
        "sw2": round(fit, 5), "floor": round(floor, 5), "ratio": round(fit / floor, 3),
        "within_target": fit <= TARGET * floor,
        "cold_s": round(cold, 1), "warm_s": round(warm, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="run only the examples whose command line contains this text")
    ap.add_argument("--repeats", type=int, default=5, help="independent data draws averaged in sw2 and floor")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_examples.json"))
    a = ap.parse_args(argv)
    lines = [ln for ln in cli.help_examples("sample") if a.only is None or a.only in ln]
    records = []
    for line in lines:
        with tempfile.TemporaryDirectory() as tmp:
            rec = run_example(line, pathlib.Path(tmp), a.repeats)
        records.append(rec)
        if "ratio" in rec:
            print(f"{rec['ratio']:5.2f}x floor  sw2 {rec['sw2']:.4f}  floor {rec['floor']:.4f}  "
                  f"cold {rec['cold_s']:6.1f} s  warm {rec['warm_s']:5.2f} s  {line}", flush=True)
        else:
            print(f"FAILED (exit {rec['exit_status']})  {line}", flush=True)
    result = {
        "what": "unigen sample examples of the CLI's --help: sliced W2 of the samples to held-out data vs the "
                "data-vs-data floor at the same N (target: ratio <= 2)",
        "target_ratio": TARGET,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()},
        "records": records,
    }
    pathlib.Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0 if records and all(r.get("within_target") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
