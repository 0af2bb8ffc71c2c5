"""The Ray part of the shard builder: joining or starting Ray, and running one plain task per chunk.

Plain Ray tasks rather than Ray Data (shared KNOWN_PITFALLS.md #6: Ray Data needs pyarrow for this, names files
with uuids, caps no shard sizes and publishes nothing atomically). Each task reads its chunk's images itself
through fsspec and writes its shard(s) to temporary names; results are small dicts. The driver keeps at most
`ray.num_workers` tasks in flight, submitting the largest chunks first so the last wave stays short, and hands
every result to a callback that publishes it (and may ask for a chunk to be run again).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from configs.shards import RayConfig
from data_shards.writer import ChunkJob, run_chunk


def connect(cfg: RayConfig) -> bool:
    """Join `cfg.address` (or $RAY_ADDRESS, which `ray job submit` sets for its entrypoint), else start a local
    Ray with `num_workers` CPUs. True when this call connected (the caller then calls shutdown). An already
    initialised Ray (tests, notebooks) is used as it is."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=cfg.num_workers, include_dashboard=False, logging_level=logging.WARNING)
    return True


def shutdown() -> None:
    ray.shutdown()


@ray.remote(num_cpus=1)
def _chunk_task(job: ChunkJob) -> dict[str, Any]:
    return run_chunk(job)


def run_jobs(jobs: list[ChunkJob], num_workers: int,
             on_result: Callable[[ChunkJob, dict[str, Any]], list[ChunkJob]]) -> None:
    """Run every job (largest first, <= num_workers in flight); `on_result` returns jobs to run again."""
    queue = deque(sorted(jobs, key=lambda j: (-len(j.tiles), j.split, j.index)))
    in_flight: dict[ray.ObjectRef, ChunkJob] = {}
    while queue or in_flight:
        while queue and len(in_flight) < num_workers:
            job = queue.popleft()
            in_flight[_chunk_task.remote(job)] = job
        # sync point: block until at least one task has finished
        done, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in done:
            job = in_flight.pop(ref)
            queue.extendleft(on_result(job, ray.get(ref)))


__all__ = ["connect", "shutdown", "run_jobs"]
