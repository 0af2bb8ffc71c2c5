"""Train/val/test assignment by spatial blocks, so neighbouring tiles do not straddle train and test.

A block is a square of `block_size` x `block_size` tile indices of one city; the whole block goes to one split,
picked by a hash of (city, block, seed) mapped to [0, 1) against the cumulative ratios. The hash is sha256 (not
Python's salted `hash`), so the assignment is the same on every machine and run, and independent of which other
tiles exist: adding tiles never moves an existing tile to another split.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from configs.shards import SplitConfig


def block_of(x: int, y: int, block_size: int) -> tuple[int, int]:
    """The block holding tile (x, y) (floor division, so negative indices work too)."""
    return x // block_size, y // block_size


@functools.lru_cache(maxsize=65536)
def block_unit(city: str, block: tuple[int, int], seed: int) -> float:
    """A uniform number in [0, 1) that is a pure function of (city, block, seed)."""
    digest = hashlib.sha256(f"{city}|{block[0]}|{block[1]}|{seed}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(city: str, x: int, y: int, cfg: SplitConfig) -> str:
    """The split of tile (x, y) of `city` (city as in the sample key, i.e. lower-case slug)."""
    u = block_unit(city, block_of(x, y, cfg.block_size), cfg.seed)
    cumulative = cfg.cumulative()
    for name, upper in cumulative:
        if u < upper:
            return name
    return next(name for name, _ in reversed(cumulative) if cfg.ratios.get(name, 0.0) > 0)  # float round-off


def split_rule(cfg: SplitConfig) -> dict[str, Any]:
    """The rule as recorded in manifest.json."""
    return {"kind": "spatial_block", "block_size": cfg.block_size, "ratios": dict(cfg.ratios), "seed": cfg.seed,
            "hash": "sha256('{city_slug}|{bx}|{by}|{seed}')[:8] / 2**64 against cumulative ratios train, val, test"}


__all__ = ["block_of", "block_unit", "assign_split", "split_rule"]
