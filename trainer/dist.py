"""Rank, world size and the few collectives the trainer uses, each behind one small function.

The environment is read in exactly one place (`env_info`), set by the deepspeed launcher (RANK, LOCAL_RANK,
WORLD_SIZE); everything else gets rank and world size passed in. Each collective is a tiny function so a
test can replace it, and every call site is a sync point between ranks (marked with a comment there).
Without an initialised process group (one rank, or unit tests) the collectives degrade to identities.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

# torch 2.14 marks these as deprecated in favour of private/experimental APIs; they still do what we need
# (all_gather with autograd on gloo and nccl), so keep the log free of one warning per step.
warnings.filterwarnings("ignore", message=r".*all_gather.* is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank / local rank / world size from the launcher's environment (1 rank when absent)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    world_size=int(os.environ.get("WORLD_SIZE", 1)))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0; gradients flow back to every rank's slice.

    Collective (all_gather forward, all-reduce/reduce-scatter backward): every rank must call it in step.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def barrier() -> None:
    """Wait for all ranks (no-op on one rank)."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks, in place (identity on one rank)."""
    if is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
