"""The Ray part of the shard builder: joining or starting Ray, and running one plain task per chunk.

Plain Ray tasks rather than Ray Data (docs/pitfalls.md, "Ray Data for writing shards": Ray Data needs pyarrow
for this, names files with uuids, caps no shard sizes and publishes nothing atomically). Each task reads its
chunk's images itself through the storage module and writes its shard(s) to temporary names; results are small dicts. The driver hands every
result to a callback that publishes it (and may ask for a chunk to be run again).

Workers never wait for the driver. A build reserves `ray.num_workers` CPUs in a placement group, so at most
that many chunks run at once on any cluster, and keeps twice as many tasks submitted: the extra ones wait in
Ray's queue with their arguments already stored, and a worker that finishes a chunk starts the next at once.
With one task in flight per worker, each chunk left its worker idle for Ray's round trip through the driver
(~35-45 ms on the project VM, ~9% of a 500-tile chunk; docs/benchmarks.md, "Shard builder"). Chunks are
submitted largest first, so the last wave stays short.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from configs.loader import ConfigError
from configs.shards import RayConfig
from data_shards.writer import ChunkJob, ChunkTask, prepare, run_chunk

OnResult = Callable[[ChunkJob, dict[str, Any]], list[ChunkJob]]  # a finished job -> the jobs to run again
RESERVE_TIMEOUT = 120.0  # seconds to wait for the cluster to grant the workers' CPUs
QUEUED_PER_WORKER = 1  # tasks waiting in Ray's queue per worker, besides the running one


# Ray rewrites a node address of 127.0.0.1 (or localhost) to the machine's non-loopback address, and keeps other
# loopback addresses (docs/pitfalls.md, "Ray multi-node on one machine"); on Linux all of 127/8 is loopback.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"

def connect(cfg: RayConfig) -> bool:
    """Join `cfg.address` (or $RAY_ADDRESS, which `ray job submit` sets for its entrypoint), else start a local
    Ray with `num_workers` CPUs. True when this call connected (`session` then shuts it down). An already
    initialised Ray (tests, notebooks) is used as it is."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # a local instance serves this machine only: keep it on loopback
        ray.init(address="local", num_cpus=cfg.num_workers, include_dashboard=False, logging_level=logging.WARNING,
                 _node_ip_address=LOCAL_NODE_IP)
    return True


@contextmanager
def session(cfg: RayConfig) -> Iterator[Callable[[list[ChunkJob], OnResult], None]]:
    """Ray joined or started (and shut down at the end if started here) with `cfg.num_workers` CPUs reserved;
    yields `run_jobs` bound to them."""
    started = connect(cfg)
    try:
        with reserved_cpus(cfg.num_workers) as strategy:
            yield partial(run_jobs, num_workers=cfg.num_workers, strategy=strategy)
    finally:
        if started:
            ray.shutdown()


@ray.remote(num_cpus=1)
def _chunk_task(task: ChunkTask) -> dict[str, Any]:  # Ray resolves a stored argument before the call
    return run_chunk(task)


@contextmanager
def reserved_cpus(num_workers: int) -> Iterator[PlacementGroupSchedulingStrategy]:
    """A placement group of `num_workers` one-CPU bundles for the build's tasks, removed afterwards."""
    group = placement_group([{"CPU": 1}] * num_workers, strategy="SPREAD")
    try:
        ray.get(group.ready(), timeout=RESERVE_TIMEOUT)  # sync point: the cluster has granted the CPUs
    except GetTimeoutError:
        remove_placement_group(group)
        total = int(ray.cluster_resources().get("CPU", 0))
        raise ConfigError(f"config key 'ray.num_workers': the Ray cluster could not reserve {num_workers} CPUs "
                          f"within {RESERVE_TIMEOUT:.0f} s (it has {total}): lower ray.num_workers") from None
    try:
        yield PlacementGroupSchedulingStrategy(group)
    finally:
        remove_placement_group(group)


def run_jobs(jobs: list[ChunkJob], on_result: OnResult, *, num_workers: int,
             strategy: PlacementGroupSchedulingStrategy) -> None:
    """Run every job (largest first) on the reserved CPUs; `on_result` returns jobs to run again."""
    queue = deque(sorted(jobs, key=lambda j: (-len(j.tiles), j.split, j.index)))
    in_flight: dict[ray.ObjectRef, ChunkJob] = {}
    chunk_task = _chunk_task.options(scheduling_strategy=strategy)
    while queue or in_flight:
        while queue and len(in_flight) < num_workers * (1 + QUEUED_PER_WORKER):
            job = queue.popleft()
            in_flight[chunk_task.remote(ray.put(prepare(job)))] = job
        # sync point: block until at least one task has finished
        done, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in done:
            job = in_flight.pop(ref)
            queue.extendleft(on_result(job, ray.get(ref)))


__all__ = ["connect", "session", "reserved_cpus", "run_jobs"]
