"""unigen.bench.distributed: a 2-process gloo sweep gathers exactly the single-process samples and metrics."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unigen.bench import gmm_problem, sweep
from unigen.bench.distributed import ShardedRunner, shard_slices
from unigen.bench.harness import LocalRunner, SolverSpec, item_generators
from unigen.sample import sample
from unigen.solvers import DDIM, DDPM, DPMSolverPP

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

N = 37  # odd: the two shards differ in size (19 + 18)
BUDGETS = (4, 8)


def _specs():
    return [SolverSpec("DDIM", DDIM), SolverSpec("DPMSolverPP(2M)", lambda: DPMSolverPP(order=2)), SolverSpec("DDPM", DDPM)]


def _direct(runner):
    """A stochastic sampler's raw output through the runner (per-sample generators, sharded noise)."""
    p = gmm_problem(2, "vp")
    z = p.noise(N, torch.Generator().manual_seed(5))
    solver = DDPM()

    def fn(zs, gs):
        x, info = sample(p.model, solver, steps=6, noise=zs, generator=gs)
        return x, info.nfe

    return runner.rows(fn, z, item_generators(N, 3))


def _worker(rank, world, port, out_dir):
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        runner = ShardedRunner()
        recs = sweep(gmm_problem(2, "vp"), _specs(), nfe_budgets=BUDGETS, n_samples=N, seed=1,
                     nll_samples=9, nll_methods=("euler", "rk4"), runner=runner)
        x, nfe = _direct(runner)
        torch.save({"records": recs, "x": x, "nfe": nfe, "world": runner.world_size}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_slices_cover_the_batch_like_tensor_split():
    for n, k in [(37, 2), (5, 3), (8, 4), (2, 3)]:
        got = [list(range(n))[s] for s in shard_slices(n, k)]
        want = [t.tolist() for t in torch.tensor_split(torch.arange(n), k)]
        assert got == want


def test_two_process_sweep_equals_single_process(tmp_path):
    # forked workers (separate processes, their own gloo ranks) where the platform has fork: spawned
    # ones each paid a fresh interpreter's ~4.5 s import of torch and unigen, 70% of this test's time
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method=method)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == 2 and r1["records"] == []  # only rank 0 gets (and would write) results

    # the single-process run on the same seeds
    recs = sweep(gmm_problem(2, "vp"), _specs(), nfe_budgets=BUDGETS, n_samples=N, seed=1,
                 nll_samples=9, nll_methods=("euler", "rk4"))
    x, nfe = _direct(LocalRunner())
    for got in (r0["x"], r1["x"]):  # all_gather: every rank holds the whole batch
        assert got.dtype == torch.float64 and got.shape == x.shape
        assert torch.allclose(got, x, rtol=0, atol=1e-12)
    assert r0["nfe"] == nfe
    # a different seed gives different samples: the comparison can fail
    assert (r0["x"] - sample(gmm_problem(2, "vp").model, DDPM(), steps=6, noise=torch.zeros_like(x),
                             generator=item_generators(N, 4))[0]).abs().max() > 1e-3

    assert len(r0["records"]) == len(recs) > 2 * len(BUDGETS)
    keys = ("rmse", "sw2", "mmd2", "sw2_floor", "mmd2_floor", "nll", "nll_err", "nll_exact")
    for a, b in zip(r0["records"], recs):
        assert (a["solver"], a["budget"], a["steps"], a["nfe"]) == (b["solver"], b["budget"], b["steps"], b["nfe"])
        for k in keys:
            va, vb = a.get(k), b.get(k)
            assert (va is None) == (vb is None), (a["solver"], k)
            if va is not None:
                assert math.isfinite(va) and abs(va - vb) <= 1e-12 * max(1.0, abs(vb)), (a["solver"], a["budget"], k, va, vb)
