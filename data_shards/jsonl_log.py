"""Append-only JSON-lines logs on local disk or object storage: the one writer behind every `*.jsonl` we keep
(the trainer's RUN/logs/train.jsonl, its debug key logs, the eval workers' RUN/eval/log/{worker}.jsonl).

An object store has no append: rewriting the whole object per line costs O(size) bytes per record (quadratic
over a run) and loses lines when two writers meet. So the log is stored two ways, read back as one:

    local path      LOG                         one file, appended and flushed per record (`tail -f` works)
    object store    LOG.parts/{seq:08d}-{w}.jsonl  one small object per flush; `seq` continues from the parts
                                                 already there, `w` is a per-writer token (no two writers
                                                 ever write the same object)

`read_jsonl(LOG)` returns the records of LOG (if it exists) followed by those of its parts in name order, i.e.
in the order they were flushed. A flush happens every `flush_every` records (on object stores, with
`remote_seconds` > 0, once that many seconds have passed instead) and at `close()`, so on an object store each
append costs at most one PUT of the records since the last flush: O(1) objects and O(record) bytes.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from data_shards.storage import is_local, join, list_folder, makedirs, open_uri, read_bytes, write_bytes

PARTS_SUFFIX = ".parts"
REMOTE_FLUSH_SECONDS = 10.0  # what a training loop's logs use on object stores: a part per 10 s, not a PUT per step
_PART_RE = re.compile(r"^(\d{8})-[0-9a-f]+\.jsonl$")


def parts_folder(uri: str) -> str:
    """Where an object-store log keeps its parts."""
    return uri.rstrip("/") + PARTS_SUFFIX


def _part_names(uri: str) -> list[str]:
    return sorted(n for n in list_folder(parts_folder(uri)) if _PART_RE.match(n))


class JsonlLog:
    """Append-only JSON lines at a local path or object URI (see the module docstring for the layout)."""

    def __init__(self, uri: str, flush_every: int = 1, remote_seconds: float = 0.0) -> None:
        """`remote_seconds` > 0: on object stores, gather records into one part per that many seconds (and at
        close) instead of one per `flush_every` records, so a fast loop does not wait for a PUT each time."""
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.uri, self.flush_every, self.remote_seconds = uri, flush_every, remote_seconds
        self._last_flush = time.monotonic()
        self.local = is_local(uri)
        self._pending: list[bytes] = []
        self._file: Any = None
        self._token = uuid.uuid4().hex[:12]
        self._seq = -1  # next part number, found lazily (one listing per writer)

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append((json.dumps(record, default=str) + "\n").encode("utf-8"))
        if not self.local and self.remote_seconds > 0:
            due = time.monotonic() - self._last_flush >= self.remote_seconds
        else:
            due = len(self._pending) >= self.flush_every
        if due:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        self._last_flush = time.monotonic()
        if self.local:
            self._local_file().write(data)
            self._file.flush()
            return
        if self._seq < 0:
            names = _part_names(self.uri)
            self._seq = int(names[-1][:8]) + 1 if names else 0
        write_bytes(join(parts_folder(self.uri), f"{self._seq:08d}-{self._token}.jsonl"), data)
        self._seq += 1

    def _local_file(self) -> Any:
        if self._file is None:
            makedirs(self.uri.rstrip("/").rsplit("/", 1)[0] if "/" in self.uri else ".")
            self._file = open_uri(self.uri, "ab").open()
        return self._file

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.uri)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    """Every record of a log, in write order: the single file (local, or written by older versions), then the
    parts of an object-store log. A missing log is an empty list."""
    records: list[dict[str, Any]] = []
    try:
        records += _records(read_bytes(uri))
    except (FileNotFoundError, IsADirectoryError):
        pass
    if not is_local(uri):
        folder = parts_folder(uri)
        for name in _part_names(uri):
            records += _records(read_bytes(join(folder, name)))
    return records


__all__ = ["JsonlLog", "read_jsonl", "parts_folder", "PARTS_SUFFIX", "REMOTE_FLUSH_SECONDS"]
