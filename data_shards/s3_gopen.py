"""`s3://` for webdataset: a gopen handler backed by fsspec/s3fs (docs/pitfalls.md, "webdataset and s3://").

webdataset 1.x has no s3 scheme and we do not shell out to `aws`. `register()` adds one entry to
`webdataset.gopen_schemes`; `data_shards/reader.py` calls it at import time, so DataLoader workers started with
spawn or forkserver (which unpickle the pipeline and thereby import the reader) have it too.

The endpoint comes from `AWS_ENDPOINT_URL` through data_shards/storage.py like every other read (the tests point
it at a local moto server), credentials from the usual AWS variables or files.
"""

from __future__ import annotations

from typing import IO, Any

import webdataset as wds

from data_shards.storage import open_stream

# Shards are read front to back: large read-ahead blocks mean few GET requests per shard. s3fs's option is
# `default_block_size` (`block_size` raises a TypeError in the filesystem constructor).
BLOCK_SIZE = 8 * 2**20


def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    """webdataset gopen handler: open `s3://bucket/key` as a binary stream (signature of webdataset.gopen)."""
    return open_stream(url, mode, block_size=BLOCK_SIZE)


def register() -> None:
    """Make webdataset open `s3://` URLs through fsspec (idempotent)."""
    wds.gopen_schemes["s3"] = open_s3


__all__ = ["open_s3", "register", "BLOCK_SIZE"]
