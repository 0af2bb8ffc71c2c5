"""Claims with a lease, on the run's own storage: several eval workers split checkpoints without duplicates.

Why not a database or Ray: the workers already share exactly one thing, the run folder (a local disk or an S3
bucket), and storage offers one atomic primitive everywhere: create-if-absent. `fs.open(path, "xb")` is
`O_CREAT | O_EXCL` on a local disk and an `If-None-Match: *` conditional PUT on S3 (s3fs; AWS S3 since 2024,
MinIO, moto); both raise FileExistsError for the loser.

Layout: `RUN/eval/claims/{checkpoint}/lease-{generation:06d}.json` = {owner, token, generation, expires_at}.

- Acquire: no lease yet -> create generation 0. The newest lease expired -> create generation g+1 (a take-over).
  Either create is conditional, so of two workers racing for the same generation exactly one wins.
- Renew (the holder's heartbeat thread, every lease/4): rewrite its own lease with a later expiry, then look for
  a newer generation; one exists only if the holder failed to renew for a whole lease (paused, partitioned) and
  someone took over: the holder then knows it lost and must drop its work.
- Release: delete the claim folder after the report is written. A worker that acquires a claim must check for
  the report afterwards (a claim can be released just before it acquires it): `Worker` does.

Guarantee, stated honestly: no two workers hold the same generation, and a lease is taken over only after it
expired. A holder that stalls longer than the lease between its last `held()` check and its report write can
still produce a second report of the same checkpoint (same content, the later one overwrites). Expiry compares
the holder's wall clock with the reader's: clocks must agree to well within the lease (NTP does). moto, the
test S3 server, checks the PUT precondition without a lock, so only real S3/MinIO make racing creates atomic.
A worker killed mid-probe stops renewing; another takes the checkpoint over once the lease expired.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from data_shards.storage import join, modified_time, url_to_fs

LEASE_RE = re.compile(r"^lease-(\d{6})\.json$")


class LeaseLost(RuntimeError):
    """Another worker took the checkpoint over (this worker's lease had expired): drop the work."""


def _lease_name(generation: int) -> str:
    return f"lease-{generation:06d}.json"


@dataclass
class Lease:
    """A held claim on one checkpoint; renew it, check it, release it."""

    claims: Claims
    name: str
    generation: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def path(self) -> str:
        return f"{self.claims.folder(self.name)}/{_lease_name(self.generation)}"

    def body(self) -> bytes:
        return json.dumps({"owner": self.claims.owner, "token": self.token, "generation": self.generation,
                           "expires_at": self.claims.clock() + self.claims.lease_seconds}).encode()

    def renew(self) -> bool:
        """Push the expiry forward; False when a newer generation exists (this worker lost the claim)."""
        if not self.held():
            return False
        self.claims.fs.pipe_file(self.path, self.body())
        return self.held()

    def held(self) -> bool:
        """True while no worker has taken the checkpoint over."""
        return self.claims.newest(self.name)[0] == self.generation

    def release(self) -> None:
        """Remove the claim (call after the report is written)."""
        try:
            self.claims.fs.rm(self.claims.folder(self.name), recursive=True)
        except FileNotFoundError:
            pass


class Claims:
    """The claim folder of one run, seen by one worker (`owner`)."""

    def __init__(self, root_uri: str, owner: str, lease_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.fs, self.root = url_to_fs(root_uri)
        self.root = self.root.rstrip("/")
        self.owner, self.lease_seconds, self.clock = owner, lease_seconds, clock

    def folder(self, name: str) -> str:
        return f"{self.root}/{name}"

    def newest(self, name: str) -> tuple[int | None, dict | None]:
        """(generation, fsspec info) of the newest lease of a checkpoint, or (None, None)."""
        try:
            entries = self.fs.ls(self.folder(name), detail=True)
        except FileNotFoundError:
            return None, None
        leases = [(int(m.group(1)), e) for e in entries
                  if (m := LEASE_RE.match(e["name"].rstrip("/").rsplit("/", 1)[-1]))]
        return max(leases, key=lambda t: t[0]) if leases else (None, None)

    def _expired(self, info: dict) -> bool:
        try:
            expires = float(json.loads(self.fs.cat_file(info["name"]))["expires_at"])
        except FileNotFoundError:
            return True  # released meanwhile
        except (ValueError, KeyError, TypeError):  # being written (local create, then write) or damaged
            expires = (modified_time(info) or self.clock()) + self.lease_seconds
        return expires < self.clock()

    def try_acquire(self, name: str) -> Lease | None:
        """A new lease on `name`, or None while another worker's lease is live or another worker won the race."""
        generation, info = self.newest(name)
        if generation is not None and not self._expired(info):
            return None
        lease = Lease(self, name, 0 if generation is None else generation + 1)
        self.fs.makedirs(self.folder(name), exist_ok=True)  # local disks need the folder; S3 has none
        try:
            with self.fs.open(lease.path, "xb") as f:  # atomic create-if-absent: the claim itself
                f.write(lease.body())
        except FileExistsError:
            return None
        return lease


class Heartbeat:
    """Renews a lease every `every` seconds on a daemon thread while the work runs; `lost` is set when the
    lease was taken over. Use as a context manager around the work."""

    def __init__(self, lease: Lease, every: float) -> None:
        self.lease, self.every = lease, every
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not self.lease.renew():
                    self.lost.set()
                    return
            except OSError:  # storage hiccup: try again next beat; the lease covers three missed beats
                continue

    def check(self) -> None:
        """Raise LeaseLost if the claim is gone; call right before publishing results."""
        if self.lost.is_set() or not self.lease.held():
            raise LeaseLost(f"{self.lease.name}: lease taken over by another worker")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def claims_root(run_uri: str) -> str:
    return join(run_uri, "eval", "claims")


__all__ = ["Claims", "Lease", "LeaseLost", "Heartbeat", "claims_root", "LEASE_RE"]
