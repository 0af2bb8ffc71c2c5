"""`cityscale eval watch --run URL --shards URL [--once] [--workers N]` (also `python -m eval.worker`).

Watches RUN/checkpoints/ (local disk or s3://) beside training, in its own process, so training never waits
for it. Each poll lists the published checkpoints (COMPLETE marker present; partial folders are invisible),
skips those with a report, and for the others, oldest first:

    claim (eval/claims.py: a lease on the run's storage) -> re-check for a report -> evaluate (a heartbeat
    thread renews the lease) -> check the lease is still ours -> write the report -> release -> index.html

So several workers split the checkpoints between them; a worker killed mid-probe stops renewing and another
takes its checkpoint over once the lease expired; a restarted worker skips what is already reported. Nothing
an evaluation raises stops the loop: the checkpoint gets a failed report with the reason instead, except storage
errors (OSError), which are logged and retried (the lease expires, the checkpoint is claimed again).

`--once` exits as soon as every checkpoint published so far has a report (waiting for other workers' live
claims, and taking over expired ones). `--workers N` starts N worker processes on this host.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import traceback

import torch

from configs.eval import WorkerConfig
from configs.loader import ConfigError, load, run_module
from data_shards.reader import read_manifest
from data_shards.storage import join
from data_shards.run_layout import CheckpointRef, list_complete
from eval.claims import Claims, Heartbeat, Lease, LeaseLost, claims_root
from eval.metrics import EvalMetrics, log_uri
from eval.report import EVAL_DIR, has_report, write_index, write_report
from eval.memo import EvalMemo
from eval.report_schema import HEADLINE, Report, is_ok, margin_rows, probe_rows
from eval.run import base_report, check_baselines, check_shards, evaluate, finish


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _headline(report: Report) -> str:
    if not is_ok(report):
        return f"failed: {report.get('reason')}"
    margin = {(c, i): m for c, i, m in margin_rows(report)}
    r2 = [f"{r.city}/{r.indicator} R2 {r.result['mlp']['r2']:.2f}"
          + (f" ({m['margin']:+.2f} vs {m['best']})" if (m := margin.get((r.city, r.indicator))) else "")
          for r in probe_rows(report) if r.features == HEADLINE]
    return ", ".join(r2[:4]) or "no regression probes"


class Worker:
    """One eval worker: polls a run, claims checkpoints, evaluates and reports them."""

    def __init__(self, run_uri: str, shards_uri: str, cfg: WorkerConfig, *, worker_id: str,
                 metrics: EvalMetrics, progress: bool = False) -> None:
        self.run_uri, self.shards_uri, self.cfg = run_uri.rstrip("/"), shards_uri, cfg
        self.worker_id, self.metrics, self.progress = worker_id, metrics, progress
        self.eval_root = join(self.run_uri, EVAL_DIR)
        self.claims = Claims(claims_root(self.run_uri), worker_id, cfg.lease_seconds)
        self.memo = EvalMemo()  # baseline probe results and sentence encoders, reused from checkpoint to checkpoint

    def say(self, text: str) -> None:
        print(f"eval worker {self.worker_id}: {text}", file=sys.stderr, flush=True)

    def metrics_safe(self, **record: object) -> None:
        """A log event that may itself fail when storage is down (the log lives there too)."""
        try:
            self.metrics.event(**record)
        except OSError:
            pass

    def pending(self) -> list[CheckpointRef]:
        """Published checkpoints without a report, oldest first."""
        return [r for r in list_complete(self.run_uri) if not has_report(self.eval_root, r.name)]

    def poll(self) -> tuple[int, int]:
        """One pass over the pending checkpoints; (reports written, checkpoints still pending after it)."""
        written = 0
        for ref in self.pending():
            lease = self.claims.try_acquire(ref.name)
            if lease is None:
                continue  # another worker holds a live claim
            if has_report(self.eval_root, ref.name):  # reported and released just before we claimed it
                lease.release()
                continue
            written += self._evaluate(ref, lease)
        return written, len(self.pending())

    def _evaluate(self, ref: CheckpointRef, lease: Lease) -> int:
        self.metrics.event(event="claim", worker=self.worker_id, checkpoint=ref.name, generation=lease.generation)
        self.say(f"evaluating {ref.name} (claim generation {lease.generation})")
        out = join(self.eval_root, ref.name)
        with Heartbeat(lease, self.cfg.heartbeat_seconds()) as beat:
            report, thumbs = self._safe_evaluate(ref)
            try:
                beat.check()  # never publish over a worker that took over
            except LeaseLost as e:
                self.metrics.event(event="lease_lost", worker=self.worker_id, checkpoint=ref.name)
                self.say(f"{e}; results dropped")
                return 0
            report["worker"] = self.worker_id
            write_report(out, report, thumbs)
        lease.release()
        write_index(self.eval_root)
        self.metrics.report(report)
        self.say(f"{ref.name}: {_headline(report)} (lag {report.get('lag_seconds') or 0:.1f} s)")
        return 1

    def _safe_evaluate(self, ref: CheckpointRef) -> tuple[Report, dict]:
        """evaluate(), with any exception but a storage error turned into a failed report: the loop must survive
        bad input. Storage errors propagate to `run`, which logs them and polls again."""
        started = time.time()
        try:
            return evaluate(ref, self.shards_uri, self.cfg.eval, progress=self.progress, memo=self.memo)
        except OSError:  # storage trouble is not the checkpoint's fault: retried once the lease expires
            raise
        except Exception as e:  # noqa: BLE001 - reported, not raised: one bad checkpoint must not stop the worker
            where = traceback.extract_tb(e.__traceback__)[-1]
            reason = (f"eval error {type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno}); "
                      f"delete {ref.name}/report.json under RUN/eval to retry")
            return finish(base_report(ref, self.shards_uri, self.cfg.eval), started, "failed", reason), {}

    def run(self, once: bool) -> int:
        """Poll until stopped (or, with `once`, until every published checkpoint has a report)."""
        self.say(f"watching {self.run_uri}/checkpoints (shards {self.shards_uri})")
        while True:
            try:
                written, pending = self.poll()
            except OSError as e:  # storage unreachable: our lease (if any) expires and the work is retried
                self.metrics_safe(event="storage_error", worker=self.worker_id, error=str(e))
                self.say(f"storage error, retrying after a poll interval: {e}")
                written, pending = 0, 1
            if once and pending == 0:
                self.say("every published checkpoint has a report")
                return 0
            if not written:
                time.sleep(self.cfg.poll_seconds)


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscale eval watch", description="Evaluate every published checkpoint "
                                "of a run, beside training; several workers split the checkpoints by claims.")
    p.add_argument("--run", required=True, help="run folder holding checkpoints/ (local path or s3://)")
    p.add_argument("--shards", required=True, help="shard folder holding manifest.json")
    p.add_argument("--once", action="store_true", help="exit when every published checkpoint has a report")
    p.add_argument("--workers", type=int, default=1, help="worker processes to start on this host")
    p.add_argument("--worker-id", default=None, help="name in claims and logs (default: host-pid)")
    p.add_argument("--config", default=None, help="YAML with WorkerConfig fields (configs/eval.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)  # i-th worker of --workers N
    return p.parse_args(argv)


def _child_argv(argv: list[str], index: int, threads: int) -> list[str]:
    """The command line of the i-th child: without --workers, with its index and its share of the cores."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--workers" or a.startswith("--workers="):
            skip = a == "--workers"
            continue
        out.append(a)
    return out + ["--index", str(index), "--set", f"threads={threads}"]


def _spawn(argv: list[str], workers: int, threads: int) -> int:
    """Start `workers` single-worker children and wait for all of them; the worst exit code wins."""
    procs = [subprocess.Popen([sys.executable, "-m", "eval.worker", *_child_argv(argv, i, threads)])
             for i in range(workers)]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = load(WorkerConfig, args.config, args.set)
    check_shards(read_manifest(args.shards))  # fail fast (exit 2) before any work
    check_baselines(cfg.eval)
    if args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    if args.workers > 1:
        return _spawn(argv, args.workers, cfg.threads or max(1, (os.cpu_count() or 1) // args.workers))
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    worker_id = args.worker_id or default_worker_id()
    metrics = EvalMetrics(log_uri(args.run, worker_id), port=cfg.metrics_port + args.index if cfg.metrics_port else 0)
    try:
        return Worker(args.run, args.shards, cfg, worker_id=worker_id, metrics=metrics,
                      progress=not args.no_progress).run(args.once)
    finally:
        metrics.close()


if __name__ == "__main__":
    run_module(main, "cityscale eval watch")
