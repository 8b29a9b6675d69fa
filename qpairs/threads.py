"""Row shards on the CPU: independent pieces of one inference call, each in its own Python thread.

Small models (a BiLSTM, a matching head) keep two cores busier as two single-threaded runs at once than
as one run whose every op splits over both: torch releases the GIL inside its kernels. A row's result does
not depend on which shard holds it, as long as each op's result for a row does not depend on its batch-mates
(the inference paths keep that property; tests/test_threads.py checks it).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def shard_count(device) -> int:
    """How many threads `run_shards` uses on `device`: torch's intra-op threads on a CPU, else 1."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def split(items: list, parts: int) -> list[list]:
    """`items` dealt into `parts` interleaved shards (similar lengths when `items` are length-sorted)."""
    return [items[i::parts] for i in range(parts)] if parts > 1 else [items]


def run_shards(fn, shards: list, threads: int) -> list:
    """[fn(shard) for shard in shards]: with `threads` > 1 (see `shard_count`), that many Python threads at a
    time, every torch op single-threaded, each thread under the caller's inference mode and CPU autocast (both
    are thread-local). Ops stay single-threaded with one shard too, so a call's numerics never depend on its
    size. Restores torch's thread count after."""
    if threads <= 1:
        return [fn(shard) for shard in shards]
    inference = torch.is_inference_mode_enabled()
    autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def one(shard):
        with torch.inference_mode(inference), torch.autocast("cpu", dtype=dtype, enabled=autocast):
            return fn(shard)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if len(shards) == 1:
            return [one(shards[0])]
        return list(_pool(threads).map(one, shards))
    finally:
        torch.set_num_threads(before)


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool of `threads` workers per size, kept for the process (starting threads on every call costs more
    than a small batch's work)."""
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="qpairs-shard")
    return _pools[threads]
