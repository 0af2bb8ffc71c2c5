"""The Ray part of the shard builder: joining or starting Ray, and running one plain task per chunk.

Plain Ray tasks rather than Ray Data (shared KNOWN_PITFALLS.md #6: Ray Data needs pyarrow for this, names files
with uuids, caps no shard sizes and publishes nothing atomically). Each task reads its chunk's images itself
through fsspec and writes its shard(s) to temporary names; results are small dicts. The driver keeps at most
`ray.num_workers` tasks in flight, submitting the largest chunks first so the last wave stays short, and hands
every result to a callback that publishes it (and may ask for a chunk to be run again). It prepares each
chunk's pixel-independent sample bytes (writer.prepare) one chunk ahead, while the workers run, and puts them
in Ray's object store right away, so a worker that finishes waits neither for the preparation nor for the
~2 MB argument of a 500-tile chunk to be stored (~7 ms on the project VM).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from configs.shards import RayConfig
from data_shards.writer import ChunkJob, ChunkTask, prepare, run_chunk


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
        # a local instance serves this machine only: keep it on loopback
        ray.init(address="local", num_cpus=cfg.num_workers, include_dashboard=False, logging_level=logging.WARNING,
                 _node_ip_address="127.0.0.1")
    return True


def shutdown() -> None:
    ray.shutdown()


@ray.remote(num_cpus=1)
def _chunk_task(task: ChunkTask) -> dict[str, Any]:  # Ray resolves a stored argument before the call
    return run_chunk(task)


def run_jobs(jobs: list[ChunkJob], num_workers: int,
             on_result: Callable[[ChunkJob, dict[str, Any]], list[ChunkJob]]) -> None:
    """Run every job (largest first, <= num_workers in flight); `on_result` returns jobs to run again."""
    queue = deque(sorted(jobs, key=lambda j: (-len(j.tiles), j.split, j.index)))
    in_flight: dict[ray.ObjectRef, ChunkJob] = {}
    ahead: tuple[ChunkJob, ray.ObjectRef] | None = None  # the next job, prepared and stored while workers run
    while queue or in_flight:
        while queue and len(in_flight) < num_workers:
            job = queue.popleft()
            task = ahead[1] if ahead is not None and ahead[0] is job else prepare(job)
            in_flight[_chunk_task.remote(task)] = job
        if queue and (ahead is None or ahead[0] is not queue[0]):
            ahead = (queue[0], ray.put(prepare(queue[0])))
        # sync point: block until at least one task has finished
        done, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in done:
            job = in_flight.pop(ref)
            queue.extendleft(on_result(job, ray.get(ref)))


__all__ = ["connect", "shutdown", "run_jobs"]
