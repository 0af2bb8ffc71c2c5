"""Object storage for every service, and the only module that imports fsspec: one code path for local folders
and S3, and one place to add endpoint options, caching or retries (tests/test_layering.py keeps it the only one).

URIs are plain `str` (a `Path` would mangle `s3://`). S3 goes through s3fs with the endpoint taken from the
standard `AWS_ENDPOINT_URL` (MinIO, Ceph, moto in tests, or real S3 when unset).

Publication is atomic for readers: a file is written under a temporary name in the same folder and then moved
to its final name. Locally the move is a rename (atomic); on S3 it is a server-side copy followed by a delete,
and an S3 object only ever appears complete, so a final name never shows a partial file either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import defaultdict
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem
from fsspec.utils import get_protocol

from data_shards.format import TMP_PREFIX

_UNLISTABLE = ("http", "https")  # protocols whose folders cannot be listed reliably: stat file by file
_READ_BATCH = 64  # images read at once by read_many (bounds memory for large source images)


def url_to_fs(uri: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path) for a local path, file:// URI or any fsspec URI (s3:// with AWS_ENDPOINT_URL)."""
    return fsspec.core.url_to_fs(uri, **_options(uri))


def _options(uri: str) -> dict[str, Any]:
    if get_protocol(uri) not in ("s3", "s3a"):
        return {}
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def is_local(uri: str) -> bool:
    """True for local paths and file:// URIs (renames are atomic there, appends are cheap)."""
    return get_protocol(uri) == "file"


def is_local_fs(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> Any:
    """`fsspec.open(uri, mode)` with this module's endpoint options: a context manager giving a file object."""
    return fsspec.open(uri, mode, **_options(uri), **kwargs)


def open_stream(uri: str, mode: str = "rb", block_size: int | None = None) -> IO[bytes]:
    """An open binary stream (the caller closes it): what webdataset's gopen handlers return."""
    extra = {"default_block_size": block_size} if block_size and get_protocol(uri) in ("s3", "s3a") else {}
    return fsspec.open(uri, mode, **_options(uri), **extra).open()


def read_bytes(uri: str) -> bytes:
    """The whole object; FileNotFoundError when it does not exist."""
    fs, path = url_to_fs(uri)
    return fs.cat_file(path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def write_text(uri: str, text: str) -> None:
    """A small text file (config copy, target list), published atomically like every other small file."""
    write_bytes_atomic(uri, text.encode("utf-8"))


def absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers may run elsewhere than the driver's cwd); URIs unchanged."""
    if get_protocol(uri) != "file" or not uri:
        return uri
    return os.path.abspath(uri.removeprefix("file://"))


def join(uri: str, *names: str) -> str:
    """`uri/name/...` for folders given as local paths or URIs."""
    return "/".join([uri.rstrip("/"), *names])


def tmp_name(final_name: str) -> str:
    """A temporary sibling name for a file about to be published (unique per attempt)."""
    return f"{TMP_PREFIX}{final_name}.{uuid.uuid4().hex[:12]}"


def publish(fs: AbstractFileSystem, tmp_path: str, final_path: str) -> None:
    """Move a fully written temporary file to its final name (rename locally, copy + delete on S3)."""
    fs.mv(tmp_path, final_path)


def write_bytes(uri: str, data: bytes) -> None:
    """One PUT of a whole object (atomic on object stores; locally readers may see a partial file)."""
    fs, path = url_to_fs(uri)
    if is_local_fs(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a small file (report, manifest, records) under a temporary name, then publish it."""
    fs, path = url_to_fs(uri)
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/{tmp_name(name)}"
    fs.makedirs(folder, exist_ok=True)
    fs.pipe_file(tmp, data)
    publish(fs, tmp, path)


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def sha256_file(fs: AbstractFileSystem, path: str, block: int = 4 * 2**20) -> str:
    sha = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(block):
            sha.update(chunk)
    return sha.hexdigest()


def list_folder(uri: str) -> dict[str, dict[str, Any]]:
    """File name -> fsspec info of the files directly inside a folder ({} when it does not exist)."""
    fs, path = url_to_fs(uri)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries if e.get("type") != "directory"}


def makedirs(uri: str) -> None:
    fs, path = url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)


def remove(uri: str, names: list[str]) -> None:
    """Delete the named files of a folder (missing ones are ignored)."""
    fs, path = url_to_fs(uri)
    for name in names:
        try:
            fs.rm_file(f"{path}/{name}")
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------- many files at once

def stat_many(uris: list[str]) -> dict[str, dict[str, Any] | None]:
    """URI -> {"size", "version"} or None when missing: one listing per folder (one request per file for
    http(s), whose folders cannot be listed)."""
    out: dict[str, dict[str, Any] | None] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        if get_protocol(uri) in _UNLISTABLE:
            out[uri] = _info_one(*url_to_fs(uri))
        else:
            by_folder[uri.rsplit("/", 1)[0] if "/" in uri else "."].append(uri)
    for folder, members in by_folder.items():
        listing = list_folder(folder)
        for uri in members:
            info = listing.get(uri.rsplit("/", 1)[-1])
            out[uri] = None if info is None else file_stat(info)
    return out


def _info_one(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return file_stat(fs.info(path))
    except (FileNotFoundError, OSError):
        return None


def modified_time(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec info dict: `mtime` locally, `LastModified` on S3."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else None


def file_stat(info: dict[str, Any]) -> dict[str, Any]:
    """{"size", "version"} of an fsspec info dict: what a shard fingerprint records instead of the bytes."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return {"size": int(info.get("size") or 0), "version": str(version)}


def read_many(uris: list[str]) -> list[bytes | Exception]:
    """Contents of many files (concurrent on S3), with the exception in place of each unreadable one."""
    out: list[bytes | Exception] = [b""] * len(uris)
    by_protocol: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        by_protocol[get_protocol(uri)].append(i)
    for idx in by_protocol.values():
        fs, _ = url_to_fs(uris[idx[0]])
        for start in range(0, len(idx), _READ_BATCH):
            batch = idx[start:start + _READ_BATCH]
            paths = [fs._strip_protocol(uris[i]) for i in batch]
            for i, data in zip(batch, fs.cat_ranges(paths, None, None, on_error="return")):
                out[i] = data
    return out


__all__ = ["url_to_fs", "is_local", "is_local_fs", "open_uri", "open_stream", "read_bytes", "read_text", "exists",
           "write_text", "write_bytes", "absolute", "join", "tmp_name", "publish", "write_bytes_atomic",
           "write_json_atomic", "sha256_file", "list_folder", "makedirs", "remove", "stat_many", "file_stat",
           "modified_time", "read_many"]
