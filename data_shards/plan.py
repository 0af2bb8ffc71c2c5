"""The build plan: which tiles go into which Ray task, and whether a published result can be kept.

Design (deterministic, one code path for fresh builds, re-runs and resumed crashes):

1. The driver sorts each split's tiles by key and cuts them into *chunks* of `output.max_samples_per_shard`
   tiles. A chunk is the unit of work of one Ray task.
2. A task writes its chunk as one shard, or as several when the byte cap `output.max_bytes_per_shard` would
   be exceeded (it knows exact tar sizes while writing). Files go to temporary names.
3. The driver publishes chunks of a split strictly in chunk order, naming the parts `{split}-{n:06d}.tar` from
   a running counter, so names stay contiguous whatever the part counts. After publishing a chunk's parts it
   writes the chunk's record `OUT/.build/{split}-{chunk:06d}.json`: fingerprint, part names, sizes, sha256.
4. A chunk's fingerprint hashes everything that shapes its bytes: the schema version, Pillow's version, the
   output/split settings and, per tile, its metadata and its image's size and version (mtime or ETag), not
   the image bytes, so planning never reads images. On a re-run, a chunk whose record has the same fingerprint
   is handed to its task as `reuse`: the task checks the published parts' sha256 and, if they still match,
   writes nothing. Changed inputs or settings change the fingerprint and rebuild the chunk.

Because chunks are cut from sorted keys, inserting one tile early in a split shifts the chunks after it, which
then rebuild: the price of simple fixed-size chunking.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import PIL

from configs.shards import ShardsConfig
from data_shards.format import SCHEMA_VERSION, SPLITS, STATE_DIR, TMP_PREFIX, dumps
from data_shards.records import Tile
from data_shards.storage import join, list_folder, read_many


@dataclass(frozen=True)
class Chunk:
    split: str
    index: int
    tiles: tuple[Tile, ...]
    fingerprint: str

    @property
    def record_name(self) -> str:
        return record_name(self.split, self.index)


def record_name(split: str, index: int) -> str:
    """File name of a chunk's publication record inside OUT/.build/."""
    return f"{split}-{index:06d}.json"


def byte_settings(cfg: ShardsConfig) -> dict[str, Any]:
    """Every setting that shapes shard bytes (not the output location, not Ray or report settings)."""
    out = cfg.output
    return {"schema_version": SCHEMA_VERSION, "pillow": PIL.__version__, "image_size": out.image_size,
            "jpeg_quality": out.jpeg_quality, "max_samples_per_shard": out.max_samples_per_shard,
            "max_bytes_per_shard": out.max_bytes_per_shard, "caption_source": cfg.source.label(),
            "split": {"block_size": cfg.split.block_size, "ratios": dict(cfg.split.ratios), "seed": cfg.split.seed}}


def plan_chunks(tiles: list[Tile], cfg: ShardsConfig) -> list[Chunk]:
    """Chunks of every split, in (split order, chunk index) order; tiles must carry their split."""
    settings = dumps(byte_settings(cfg))
    size = cfg.output.max_samples_per_shard
    chunks = []
    for split in SPLITS:
        members = sorted((t for t in tiles if t.split == split), key=lambda t: t.key)
        for index, start in enumerate(range(0, len(members), size)):
            part = tuple(members[start:start + size])
            chunks.append(Chunk(split=split, index=index, tiles=part, fingerprint=_fingerprint(settings, part)))
    return chunks


def _fingerprint(settings: bytes, tiles: tuple[Tile, ...]) -> str:
    sha = hashlib.sha256(settings)
    for t in tiles:  # repr of plain values: deterministic and ~5x cheaper than JSON, which matters per tile
        sha.update(repr((t.key, t.city, t.z, t.x, t.y, t.lat, t.lon, t.bounds, t.image, t.image_stat, t.sentences,
                         t.indicators, t.null_reasons, t.poi, t.split, t.image_name)).encode("utf-8"))
    return sha.hexdigest()


def state_uri(out: str) -> str:
    return join(out, STATE_DIR)


def load_records(out: str) -> dict[str, dict[str, Any]]:
    """Chunk records of earlier builds into `out` (record file name -> record); unreadable ones are ignored."""
    folder = state_uri(out)
    names = sorted(n for n in list_folder(folder) if n.endswith(".json") and not n.startswith(TMP_PREFIX))
    records = {}
    for name, data in zip(names, read_many([join(folder, n) for n in names])):
        try:
            records[name] = json.loads(data)
        except (TypeError, ValueError):  # an exception object from read_many, or a damaged file
            continue
    return records


def matching_record(chunk: Chunk, records: dict[str, Any]) -> dict[str, Any] | None:
    """The previous build's record of this chunk when its fingerprint is unchanged, else None."""
    record = records.get(chunk.record_name)
    if isinstance(record, dict) and record.get("fingerprint") == chunk.fingerprint:
        return record
    return None


__all__ = ["Chunk", "record_name", "byte_settings", "plan_chunks", "state_uri", "load_records",
           "matching_record"]
