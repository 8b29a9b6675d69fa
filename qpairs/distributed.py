"""Multi-process training helpers (torchrun + DistributedDataParallel).

`torchrun --nproc_per_node N -m qpairs train ...` starts N processes with the ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` variables set; `setup`
reads them and joins the process group (nccl on GPUs, gloo on CPUs). Without them every
helper here is a no-op for one process, so the training loop has a single code path.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_owned = False  # True when `setup` created the process group (and `cleanup` should end it)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the only process that writes files, logs and shows progress."""
    return rank() == 0


def setup(device: str = "auto") -> torch.device:
    """Join the torchrun process group if the environment asks for one; return this process's device.

    nccl with one GPU per process (``cuda:LOCAL_RANK``) when the device is CUDA, gloo otherwise.
    """
    global _owned
    from .detector import resolve_device

    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        _owned = True
    elif is_distributed() and dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def cleanup() -> None:
    """Leave the process group if `setup` joined it (a group made by the caller is left alone)."""
    global _owned
    if _owned and is_distributed():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first():
    """Run the block on rank 0 first, then on the other ranks (e.g. fill a cache the others then read)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# ---------------------------------------------------------------- data sharding

def shard_size(n: int) -> int:
    """Items per rank when `n` items are sharded with `shard` (padded up to a multiple of the world size)."""
    return -(-n // world_size())


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's share of `indices`, as `torch.utils.data.DistributedSampler` does it.

    Every rank passes the same (same-seed) permutation; it is padded by wrapping around to a
    multiple of the world size, and rank r takes every world-th item from position r. All ranks
    thus get the same number of items (so the same number of steps), and step k on all ranks
    together covers the same items as step k of one process with a world-times larger batch.
    """
    world = world_size()
    if world == 1:
        return indices
    padded = np.resize(indices, shard_size(len(indices)) * world)  # np.resize repeats from the start
    return padded[rank() :: world]


# ---------------------------------------------------------------- DDP

class ForwardVia(nn.Module):
    """`wrapper(fn, *args)` runs ``fn(model, *args)`` as this module's forward pass.

    DistributedDataParallel synchronises gradients only for work done inside its own
    ``forward``; the Siamese training step calls sub-modules (``model.encoder(...)``)
    directly, so it is routed through this shim, which DDP wraps.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def wrap_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """`ForwardVia(model)`, wrapped in DistributedDataParallel when there are several processes."""
    net = ForwardVia(model)
    if world_size() == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, output_device=ids[0] if ids else None)


def parameters_in_sync(model: nn.Module) -> bool:
    """True when every rank holds the same parameters (compares a per-tensor checksum across ranks)."""
    if world_size() == 1:
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu().numpy()
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, sums)
    return all(np.array_equal(gathered[0], g) for g in gathered[1:])


# ---------------------------------------------------------------- collectives

class _GatherRows(torch.autograd.Function):
    """all_gather of equal-shaped tensors whose backward hands each rank the summed gradient of its rows."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's rows
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (dim 0) from every rank, in rank order, keeping the gradient.

    For in-batch losses (InfoNCE, triplet mining over the global batch): the backward pass
    gives each rank the gradient of its own rows summed over all ranks' losses (as
    `torch.distributed.nn.functional.all_gather` does), so with DDP's gradient averaging the
    update equals that of one process seeing the whole global batch. Ranks may hold
    different numbers of rows.
    """
    world = world_size()
    if world == 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    if tensor.shape[0] < longest:  # all_gather needs equal shapes: pad, gather, trim
        tensor = torch.cat([tensor, tensor.new_zeros(longest - tensor.shape[0], *tensor.shape[1:])])
    gathered = _GatherRows.apply(tensor)
    return torch.cat([gathered[r * longest : r * longest + s] for r, s in enumerate(sizes)])


def all_sum(*values: float) -> list[float]:
    """Sum of each value over all ranks (every rank gets the result)."""
    if world_size() == 1:
        return list(values)
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, list(values))
    return [float(sum(col)) for col in zip(*gathered)]


def gather_strided(local: np.ndarray) -> np.ndarray:
    """Reassemble per-rank results computed on the rows ``rank::world`` of a frame, in frame order."""
    if world_size() == 1:
        return local
    parts = [None] * world_size()
    dist.all_gather_object(parts, np.asarray(local))
    return interleave(parts)


def interleave(parts: list) -> np.ndarray:
    """Results of the rows ``r::len(parts)`` of a frame, one array per r, in frame order."""
    out = np.empty(sum(len(p) for p in parts), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r :: len(parts)] = p
    return out
