"""What one Ray task does with one chunk: read, hash and re-encode its images, write tar shards under temporary
names, capping each at the byte limit; or, for an unchanged chunk, check that its published shards are intact.

Plain Python (no Ray here), so tests and the benchmark can call it directly. Tar members are written in key
order as USTAR entries with fixed mtime, owner and mode (the layout tarfile writes, headers built from a
template for speed), so equal inputs give equal bytes. Each shard's sha256 is computed while it is written
(no read-back). Publishing the temporary files under final names is the driver's job (data_shards/build.py),
since only it knows the next free shard index.
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from data_shards.encode import CorruptImage, encode_tile
from data_shards.format import caption_text, dumps, sample_metadata
from data_shards.records import Tile
from data_shards.storage import HashingWriter, read_many, sha256_file, tmp_name, url_to_fs

_BLOCK, _RECORD = 512, 10240  # tar block size; tarfile pads an archive to a multiple of 20 blocks
_READ_AHEAD = 64  # images read per batch


@dataclass(frozen=True)
class ChunkJob:
    """Everything a task needs: the chunk, the encode settings and the previous record when reusable."""

    out: str
    split: str
    index: int
    tiles: tuple[Tile, ...]
    image_size: int
    jpeg_quality: int
    max_bytes: int
    caption_source: str
    fingerprint: str
    reuse: dict[str, Any] | None = None


def run_chunk(job: ChunkJob) -> dict[str, Any]:
    """{"reused", "parts": [{name|tmp, samples, bytes, sha256}], "stats"} for one chunk."""
    if job.reuse is not None and published_intact(job.out, job.reuse["parts"]):
        return {"reused": True, "parts": job.reuse["parts"], "stats": job.reuse["stats"]}
    return write_chunk(job)


def published_intact(out: str, parts: list[dict[str, Any]]) -> bool:
    """True when every recorded part exists under its name with the recorded size and sha256."""
    fs, folder = url_to_fs(out)
    for part in parts:
        path = f"{folder}/{part['name']}"
        try:
            if fs.info(path)["size"] != part["bytes"] or sha256_file(fs, path) != part["sha256"]:
                return False
        except FileNotFoundError:
            return False
    return True


# ----------------------------------------------------------------------------- tar members

def _ustar_template() -> bytes:
    """A USTAR header with our fixed fields (mode 0444, owner cityscale, mtime 0), blank name and size, and
    spaces in the checksum field (the checksum is the byte sum with that field as spaces)."""
    info = tarfile.TarInfo("x")
    info.mode, info.mtime, info.uname, info.gname = 0o444, 0, "cityscale", "cityscale"
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
    header[0:100] = bytes(100)
    header[124:136] = bytes(12)
    header[148:156] = b" " * 8
    return bytes(header)


_TEMPLATE = _ustar_template()
_TEMPLATE_SUM = sum(_TEMPLATE)


def tar_member(name: str, data: bytes) -> list[bytes]:
    """One regular-file tar member as [header, data, padding]. Built from a template because tarfile's
    per-member header code costs about a tenth of a tile's whole encode time (bench/shards.py)."""
    encoded = name.encode("ascii")  # keys are [a-z0-9_-] and at most ~70 characters (format.sample_key)
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than USTAR's 100 bytes")
    size = b"%011o\0" % len(data)
    checksum = b"%06o\0 " % (_TEMPLATE_SUM + sum(encoded) + sum(size))
    header = b"".join((encoded, _TEMPLATE[len(encoded):124], size, _TEMPLATE[136:148], checksum, _TEMPLATE[156:]))
    return [header, data, bytes(-len(data) % _BLOCK)]


def _sample_bytes(tile: Tile, jpg: bytes, image_sha: str, caption_source: str) -> bytes:
    """The sample's three members in extension order (jpg, json, txt), as webdataset groups them by key."""
    sentences = list(tile.sentences)
    meta = sample_metadata(city=tile.city, z=tile.z, x=tile.x, y=tile.y, lat=tile.lat, lon=tile.lon,
                           bounds=tile.bounds, indicators=tile.indicators, sentences=sentences,
                           caption_source=caption_source, poi=tile.poi, image_sha256=image_sha, split=tile.split)
    text = caption_text(sentences).encode("utf-8")
    return b"".join([*tar_member(f"{tile.key}.jpg", jpg), *tar_member(f"{tile.key}.json", dumps(meta)),
                     *tar_member(f"{tile.key}.txt", text)])


# ----------------------------------------------------------------------------- writing

class _Part:
    """One tar being written to a temporary file, with its exact final size known at every step."""

    def __init__(self, out: str, stem: str) -> None:
        self.fs, folder = url_to_fs(out)
        self.tmp = tmp_name(stem)
        self._file = self.fs.open(f"{folder}/{self.tmp}", "wb")
        self._hash = HashingWriter(self._file)
        self.samples = 0

    def size_with(self, extra: int) -> int:
        """Bytes of the closed archive if `extra` more member bytes were added: tarfile's layout, i.e. two
        zero blocks as end marker, then zero padding to a multiple of 20 blocks."""
        total = self._hash.size + extra + 2 * _BLOCK
        return -(-total // _RECORD) * _RECORD

    def add(self, sample: bytes) -> None:
        self._hash.write(sample)
        self.samples += 1

    def close(self) -> dict[str, Any]:
        self._hash.write(bytes(self.size_with(0) - self._hash.size))
        self._file.close()
        return {"tmp": self.tmp, "samples": self.samples, "bytes": self._hash.size, "sha256": self._hash.hexdigest()}


def write_chunk(job: ChunkJob) -> dict[str, Any]:
    """Encode the chunk's tiles into one or more temporary tar parts, starting a new part at the byte cap."""
    cpu_start = time.process_time()
    stats = {"encoded": 0, "skipped": Counter(), "nulls": Counter(), "digest": 0}
    parts: list[dict[str, Any]] = []
    current: _Part | None = None
    stem = f"{job.split}-chunk{job.index:06d}"
    for tile, sample in _samples(job, stats):
        if current is not None and current.samples and current.size_with(len(sample)) > job.max_bytes:
            parts.append(current.close())
            current = None
        if current is None:
            current = _Part(job.out, f"{stem}-{len(parts)}.tar")
        current.add(sample)
        if tile.null_reasons:
            stats["nulls"].update(tile.null_reasons)
    if current is not None:
        parts.append(current.close())
    return {"reused": False, "parts": parts,
            "stats": {"encoded": stats["encoded"], "skipped": dict(stats["skipped"]), "nulls": dict(stats["nulls"]),
                      "digest": f"{stats['digest']:064x}", "cpu_seconds": time.process_time() - cpu_start}}


def _samples(job: ChunkJob, stats: dict[str, Any]) -> Iterator[tuple[Tile, bytes]]:
    """(tile, sample tar bytes) for each readable, decodable tile, in the chunk's key order."""
    for start in range(0, len(job.tiles), _READ_AHEAD):
        batch = job.tiles[start:start + _READ_AHEAD]
        for tile, data in zip(batch, read_many([t.image for t in batch])):
            if isinstance(data, Exception):
                stats["skipped"]["missing_image"] += 1  # vanished or unreadable since planning
                continue
            try:
                jpg = encode_tile(data, job.image_size, job.jpeg_quality)
            except CorruptImage:
                stats["skipped"]["corrupt_image"] += 1
                continue
            stats["encoded"] += 1
            image_sha = hashlib.sha256(data).hexdigest()
            stats["digest"] ^= sample_digest(tile, image_sha)
            yield tile, _sample_bytes(tile, jpg, image_sha, job.caption_source)


def sample_digest(tile: Tile, image_sha: str) -> int:
    """sha256 (as an int) of what identifies a sample's source content (key, image bytes, sentences,
    indicators, POI); XOR-combined over samples into the manifest's source_fingerprint, so it is independent
    of splits and shard sizes. A plain string rather than JSON: this runs once per tile."""
    text = f"{tile.key}|{image_sha}|{tile.sentences}|{tile.indicators}|{tile.poi}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")


__all__ = ["ChunkJob", "run_chunk", "published_intact", "write_chunk", "sample_digest"]
