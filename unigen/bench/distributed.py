r"""Scale a benchmark out over ``torch.distributed`` ranks: shard the batch, gather to every rank.

Launch with ``torchrun --nproc_per_node=K benchmarks/nfe_quality.py --distributed ...``. Every
rank builds the SAME global noise (same seed) and the same per-sample generators; rank r
samples the contiguous rows [r n / K, (r + 1) n / K) (``torch.tensor_split``) on its device
(cuda:LOCAL_RANK when CUDA is available, else the CPU; backend nccl or gloo), and the shards
are gathered with ``all_gather``. Every fixed-step solver treats rows independently, so the
gathered batch equals a single-process run (bit for bit on the CPU, up to the last bits of
batch-size dependent BLAS kernels). Work whose rows are coupled (adaptive step control on a
batch norm, ``Solver.batch_coupled``) is not split: every rank runs the whole batch. Rank 0
alone computes metrics and writes results (:class:`ShardedRunner.is_main`).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

__all__ = ["ShardedRunner", "close", "init", "shard_slices"]


def shard_slices(n: int, world_size: int) -> list[slice]:
    """The contiguous row ranges of ``torch.tensor_split(range(n), world_size)`` (sizes differ by <= 1)."""
    q, r = divmod(n, world_size)
    bounds = [k * q + min(k, r) for k in range(world_size + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(world_size)]


class ShardedRunner:
    """A runner for :func:`unigen.bench.sweep` over an initialised process group.

    ``rows(fn, *args)`` slices every batch-leading argument (tensors, or lists such as per-sample
    generators) to this rank's shard, runs ``fn`` on it (tensors moved to ``device``), gathers
    the tensor result (first element of ``fn``'s ``(tensor, info)``) from every rank in order and
    returns ``(full batch on the CPU, this rank's info)`` on every rank.
    """

    def __init__(self, device: torch.device | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ShardedRunner needs an initialised torch.distributed process group (see init())")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.is_main = self.rank == 0
        self._placed = {}

    def place(self, model):
        """``model`` on this rank's device: a trained model's network is copied there (cached);
        an oracle moves its parameters to the input's device by itself."""
        if self.device.type == "cpu" or not isinstance(getattr(model, "net", None), torch.nn.Module):
            return model
        hit = self._placed.get(id(model))
        if hit is None or hit[0] is not model:
            moved = copy.deepcopy(model)
            moved.net.to(self.device)
            hit = self._placed[id(model)] = (model, moved)
        return hit[1]

    def rows(self, fn, *args, coupled: bool = False):
        if coupled or self.world_size == 1:
            return fn(*args)
        n = len(args[0])
        mine = shard_slices(n, self.world_size)[self.rank]
        local = [a[mine].to(self.device) if isinstance(a, torch.Tensor) else a[mine] for a in args]
        out, info = fn(*local)
        return self.gather(out, n), info

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's shard of an n-row tensor, in rank order (all_gather of padded shards)."""
        sizes = [s.stop - s.start for s in shard_slices(n, self.world_size)]
        width = max(sizes)
        part = part.detach().contiguous()
        pad = part.new_zeros((width - part.shape[0], *part.shape[1:]))
        buf = [torch.empty((width, *part.shape[1:]), dtype=part.dtype, device=part.device) for _ in sizes]
        dist.all_gather(buf, torch.cat([part, pad]))
        return torch.cat([b[:k] for b, k in zip(buf, sizes)]).cpu()

    def barrier(self) -> None:
        dist.barrier()


def init(backend: str | None = None) -> ShardedRunner:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    in the environment): nccl and cuda:LOCAL_RANK when CUDA is available, else gloo on the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return ShardedRunner(device)


def close() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
