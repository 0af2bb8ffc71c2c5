"""What one Ray task does with one chunk: read, hash and re-encode its images and write tar shards under
temporary names, capping each at the byte limit; or, for an unchanged chunk, check that its published shards
are intact. Publishing the temporary files under final names is the driver's job (data_shards/build.py), since
only it knows the next free shard index.

Plain Python (no Ray here), so tests and the benchmark can call it directly. Tar members are written in key
order as USTAR entries with fixed mtime, owner and mode (the layout tarfile writes, headers built from a
template), so equal inputs give equal bytes.

Division of work, chosen so that a task costs little more than the plain decode-resize-encode loop
(docs/benchmarks.md, "Shard builder"):
- `prepare` (on the driver, when the chunk is submitted) turns each tile into a `SampleSpec`: all of the
  sample's tar bytes that do not depend on the pixels (metadata JSON up to and after the image's sha256,
  caption text, their tar headers) and the text of its source digest. The driver already holds these values,
  and shipping a few bytes objects per tile is cheaper to pickle and unpickle than the `Tile` records.
- The task reads its images in batches through fsspec, decode-resize-encodes and sha256s each, and assembles
  its sample (JPEG header + JPEG + the spec's bytes around the sha256). Samples are joined into blocks of
  ~256 KiB, each hashed and written in one call: a few large writes cost the kernel about half of many
  per-sample writes, and the shard's sha256 comes from the buffer being written (no read-back).
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from data_shards.encode import CorruptImage, encode_tile
from data_shards.format import caption_text, dumps, sample_metadata
from data_shards.records import Tile
from data_shards.storage import read_many, sha256_file, tmp_name, url_to_fs

_BLOCK, _RECORD = 512, 10240  # tar block size; tarfile pads an archive to a multiple of 20 blocks
_BATCH = 64  # tiles read and encoded together (bounds the memory held for large source images)
_FLUSH = 256 * 1024  # bytes of samples hashed and written at once (a block that stays in the CPU's L2 cache)
_PADS = tuple(bytes(-n % _BLOCK) for n in range(_BLOCK))  # zero padding after a member of n (mod 512) bytes
_SHA_SLOT = "0" * 64  # stands for the image's sha256 while the driver builds the metadata JSON
_SHA_FIELD = b'"image_sha256":"'


@dataclass(frozen=True)
class ChunkJob:
    """A chunk as the driver plans it: its tiles, the encode settings and the previous record when reusable."""

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


class SampleSpec(NamedTuple):
    """One sample's bytes apart from its JPEG member and its image's sha256 (64 hex digits, which go between
    `head` and `tail`), and what the task needs besides."""

    image: str  # URI of the source image
    jpg_name: bytes  # the jpg member's header up to its size field (name and fixed fields)
    jpg_checksum: int  # the part of that header's checksum that does not depend on the size
    head: bytes  # json member header, metadata JSON up to the image's sha256
    tail: bytes  # rest of the JSON, padding, txt member (header, caption text, padding)
    digest_head: bytes  # what sample_digest hashes before the image's sha256 ...
    digest_tail: bytes  # ... and after it
    null_reasons: tuple[str, ...]


@dataclass(frozen=True)
class ChunkTask:
    """What a Ray task receives for a ChunkJob (see `prepare`); `samples` is empty when `reuse` is set."""

    out: str
    stem: str  # temporary part names are derived from it: {split}-chunk{index:06d}-{part}.tar
    samples: tuple[SampleSpec, ...]
    image_size: int
    jpeg_quality: int
    max_bytes: int
    reuse: dict[str, Any] | None


def prepare(job: ChunkJob) -> ChunkTask:
    """The task for `job`, with each tile turned into a SampleSpec, unless the job only checks a kept chunk."""
    samples = () if job.reuse is not None else tuple(sample_spec(t, job.caption_source) for t in job.tiles)
    return ChunkTask(out=job.out, stem=f"{job.split}-chunk{job.index:06d}", samples=samples,
                     image_size=job.image_size, jpeg_quality=job.jpeg_quality, max_bytes=job.max_bytes,
                     reuse=job.reuse)


def sample_spec(tile: Tile, caption_source: str) -> SampleSpec:
    """The pixel-independent bytes of a tile's sample: format.sample_metadata serialised by format.dumps with
    a placeholder sha256, cut around it, and the caption text, with their tar headers and padding."""
    sentences = list(tile.sentences)
    meta = dumps(sample_metadata(city=tile.city, z=tile.z, x=tile.x, y=tile.y, lat=tile.lat, lon=tile.lon,
                                 bounds=tile.bounds, indicators=tile.indicators, sentences=sentences,
                                 caption_source=caption_source, poi=tile.poi, image_sha256=_SHA_SLOT,
                                 split=tile.split, image=tile.image_name))
    # an unescaped `"image_sha256":"` followed by the placeholder can only be the top-level field
    before, slot, after = meta.partition(_SHA_FIELD + _SHA_SLOT.encode("ascii"))
    if not slot:
        raise RuntimeError("format.sample_metadata has no image_sha256 string field: update writer.sample_spec")
    text = caption_text(sentences).encode("utf-8")
    stem = tile.key.encode("ascii")  # keys are [a-z0-9_-] and at most ~50 characters (format.sample_key)
    if len(stem) > 95:
        raise ValueError(f"tar member names of key {tile.key!r} would be longer than USTAR's 100 bytes")
    tail = (after, _PADS[len(meta) % _BLOCK], _header(stem + b".txt", len(text)), text, _PADS[len(text) % _BLOCK])
    return SampleSpec(image=tile.image, jpg_name=_name_field(stem + b".jpg"),
                      jpg_checksum=_TEMPLATE_SUM + sum(stem + b".jpg"),
                      head=_header(stem + b".json", len(meta)) + before + _SHA_FIELD, tail=b"".join(tail),
                      digest_head=stem + b"|", digest_tail=f"|{tile.sentences}|{tile.indicators}|{tile.poi}".encode(),
                      null_reasons=tile.null_reasons)


def sample_digest(spec: SampleSpec, image_sha: bytes) -> int:
    """sha256 (as an int) of `"{key}|{image_sha256}|{sentences}|{indicators}|{poi}"` (Python reprs), what
    identifies a sample's source content; XOR-combined over samples into the manifest's source_fingerprint, so
    it is independent of splits and shard sizes (docs/shard-format.md)."""
    return int.from_bytes(hashlib.sha256(spec.digest_head + image_sha + spec.digest_tail).digest(), "big")


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
_MIDDLE, _TAIL = _TEMPLATE[136:148], _TEMPLATE[156:]  # the fixed fields around the checksum


def _name_field(name: bytes) -> bytes:
    """A header's first 124 bytes: the member name, then the template's fixed fields up to the size field."""
    return name + _TEMPLATE[len(name):124]


def _header_pieces(name_field: bytes, checksum_base: int, size: int) -> tuple[bytes, ...]:
    """A regular-file member's header, in pieces: the template with name, size and checksum filled in
    (tarfile's per-member code costs about a tenth of a tile's encode time). `checksum_base` is the byte sum
    of the template (checksum field as spaces) and the name."""
    size_field = b"%011o\0" % size
    return name_field, size_field, _MIDDLE, b"%06o\0 " % (checksum_base + sum(size_field)), _TAIL


def _header(name: bytes, size: int) -> bytes:
    return b"".join(_header_pieces(_name_field(name), _TEMPLATE_SUM + sum(name), size))


def _closed_size(size: int) -> int:
    """Bytes of a closed archive whose members take `size` bytes: tarfile's layout, i.e. two zero blocks as end
    marker, then zero padding to a multiple of 20 blocks."""
    return -(-(size + 2 * _BLOCK) // _RECORD) * _RECORD


# ----------------------------------------------------------------------------- the task

def run_chunk(task: ChunkTask) -> dict[str, Any]:
    """{"reused", "parts": [{name|tmp, samples, bytes, sha256}], "stats"} for one chunk; "parts" is None when
    a kept chunk's shards are no longer intact (the driver then submits the chunk again, to be rebuilt)."""
    if task.reuse is not None:
        if published_intact(task.out, task.reuse["parts"]):
            return {"reused": True, "parts": task.reuse["parts"], "stats": task.reuse["stats"]}
        return {"reused": False, "parts": None, "stats": None}
    return write_samples(task)


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


def write_chunk(job: ChunkJob) -> dict[str, Any]:
    """Encode a chunk's tiles into temporary tar parts in this process (what its Ray task would do)."""
    return write_samples(prepare(replace(job, reuse=None)))


def write_samples(task: ChunkTask) -> dict[str, Any]:
    """Encode the task's samples into one or more temporary tar parts, starting a new part at the byte cap."""
    cpu_start = time.process_time()
    parts = _Parts(task.out, task.stem, task.max_bytes)
    skipped, nulls, digest, encoded = Counter(), Counter(), 0, 0
    for start in range(0, len(task.samples), _BATCH):
        batch = task.samples[start:start + _BATCH]
        for spec, image_sha, jpg in _encoded(batch, task, skipped):
            padding = _PADS[len(jpg) % _BLOCK]
            parts.add((*_header_pieces(spec.jpg_name, spec.jpg_checksum, len(jpg)), jpg, padding,
                       spec.head, image_sha, spec.tail),
                      _BLOCK + len(jpg) + len(padding) + len(spec.head) + len(image_sha) + len(spec.tail))
            digest ^= sample_digest(spec, image_sha)
            if spec.null_reasons:
                nulls.update(spec.null_reasons)
            encoded += 1
    return {"reused": False, "parts": parts.close(),
            "stats": {"encoded": encoded, "skipped": dict(skipped), "nulls": dict(nulls),
                      "digest": f"{digest:064x}", "cpu_seconds": time.process_time() - cpu_start}}


def _encoded(batch: tuple[SampleSpec, ...], task: ChunkTask, skipped: Counter) -> list[tuple[SampleSpec, bytes, bytes]]:
    """(spec, sha256 hex of the source bytes, re-encoded JPEG) for each readable, decodable image of a batch."""
    out = []
    for spec, data in zip(batch, read_many([s.image for s in batch])):
        if isinstance(data, Exception):
            skipped["missing_image"] += 1  # vanished or unreadable since planning
            continue
        try:
            jpg = encode_tile(data, task.image_size, task.jpeg_quality)
        except CorruptImage:
            skipped["corrupt_image"] += 1
            continue
        out.append((spec, hashlib.sha256(data).hexdigest().encode("ascii"), jpg))  # hashed while still in cache
    return out


class _Parts:
    """The chunk's tar parts, written one after the other to temporary files. Samples are buffered up to
    _FLUSH bytes, then joined, hashed and written in one call each; a new part starts when the next sample
    would take the closed archive past `max_bytes` (exact tar sizes are known before writing)."""

    def __init__(self, out: str, stem: str, max_bytes: int) -> None:
        self.fs, self.folder = url_to_fs(out)
        self.stem, self.max_bytes = stem, max_bytes
        self.done: list[dict[str, Any]] = []
        self._file: Any = None
        self._pending: list[bytes] = []

    def add(self, pieces: tuple[bytes, ...], size: int) -> None:
        if self._file is not None and self.samples and _closed_size(self.size + size) > self.max_bytes:
            self._close()
        if self._file is None:
            self.tmp = tmp_name(f"{self.stem}-{len(self.done)}.tar")
            self._file = self.fs.open(f"{self.folder}/{self.tmp}", "wb")
            self._sha, self.size, self.samples, self._written = hashlib.sha256(), 0, 0, 0
        self._pending += pieces
        self.size += size
        self.samples += 1
        if self.size - self._written >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        block = b"".join(self._pending)
        self._pending.clear()
        self._sha.update(block)
        self._file.write(block)
        self._written += len(block)

    def _close(self) -> None:
        self._pending.append(bytes(_closed_size(self.size) - self.size))  # end marker and record padding
        self._flush()
        self._file.close()
        self._file = None
        self.done.append({"tmp": self.tmp, "samples": self.samples, "bytes": _closed_size(self.size),
                          "sha256": self._sha.hexdigest()})

    def close(self) -> list[dict[str, Any]]:
        if self._file is not None:
            self._close()
        return self.done


__all__ = ["ChunkJob", "SampleSpec", "ChunkTask", "prepare", "sample_spec", "sample_digest", "run_chunk",
           "published_intact", "write_chunk", "write_samples"]
