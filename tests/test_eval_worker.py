"""Eval workers as separate processes on a run folder on the S3 API server (moto on 127.0.0.1), on checkpoints
the test writes itself and beside a real 2-rank CPU training run.

One scenario, in order: checkpoints 10, 20, 30 published, 15 published but of another architecture, 40 still
partial (no COMPLETE marker). Worker A claims one and is killed (SIGKILL) mid-evaluation; workers B and C then
run side by side with --once. Afterwards every published checkpoint has exactly one report (A's checkpoint taken
over once its lease expired), the broken one a failed report, the partial one none; no checkpoint was claimed
twice under the same lease generation and no two workers reported the same checkpoint. Then 40 is completed and
a restarted worker evaluates it and nothing else (it skips what is reported).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data_shards.storage import url_to_fs
from data_shards.run_layout import list_complete
from eval.report_schema import problems
from tests.eval_fixtures import FAST, log_events, mark_complete, synthetic_shards, wait_for, write_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_shards(s3_server, ray_local, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("worker-synth")
    return synthetic_shards(s3_server.uri("eval-shards"), str(work), {"Gammaburg": 100})


def start_worker(run: str, shards: str, worker_id: str, log: Path, *, once: bool = True) -> subprocess.Popen:
    settings = [a for s in FAST for a in ("--set", f"eval.{s}")]
    cmd = [sys.executable, "-m", "eval.worker", "--run", run, "--shards", shards, "--worker-id", worker_id,
           "--no-progress", "--set", "lease_seconds=3", "--set", "poll_seconds=0.5", "--set", "threads=1",
           *settings, *(["--once"] if once else [])]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, log.read_text()[-3000:]


def reports(run: str) -> dict[str, dict]:
    fs, root = url_to_fs(f"{run}/eval")
    out = {}
    for folder in fs.ls(root, detail=False):
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{folder}/report.json"):
            out[name] = json.loads(fs.cat_file(f"{folder}/report.json"))
    return out


def test_workers_split_survive_a_kill_and_skip_reported(s3_server, s3_shards, tmp_path):
    run = s3_server.uri("runs", "watched")
    for step in (10, 20, 30):
        write_checkpoint(run, step, seed=step)
    write_checkpoint(run, 15, config_patch={"width": 32})  # another architecture than its weights
    write_checkpoint(run, 40, complete=False)

    a = start_worker(run, s3_shards, "A", tmp_path / "a.log", once=False)
    try:
        wait_for(lambda: any(e["event"] == "claim" for e in log_events(run)), 120, "worker A's first claim")
    finally:
        os.kill(a.pid, signal.SIGKILL)  # mid-evaluation: its lease stays behind until it expires
        a.wait()
    killed = next(e["checkpoint"] for e in log_events(run) if e["event"] == "claim")
    assert killed not in reports(run)

    b = start_worker(run, s3_shards, "B", tmp_path / "b.log")
    c = start_worker(run, s3_shards, "C", tmp_path / "c.log")
    finish(b, tmp_path / "b.log")
    finish(c, tmp_path / "c.log")

    got = reports(run)
    assert set(got) == {"step_10", "step_15", "step_20", "step_30"}  # none for the partial step_40
    assert got["step_15"]["status"] == "failed" and "size mismatch" in got["step_15"]["reason"]
    assert all(got[n]["status"] == "ok" for n in ("step_10", "step_20", "step_30"))
    assert all(problems(r) == [] for r in got.values())  # ok and failed reports both follow the schema
    events = log_events(run)
    claims = [(e["checkpoint"], e["generation"]) for e in events if e["event"] == "claim"]
    assert len(claims) == len(set(claims)), f"a lease generation was claimed twice: {claims}"
    reported = Counter(e["checkpoint"] for e in events if e["event"] == "report")
    assert reported == Counter({n: 1 for n in got}), reported  # every published checkpoint exactly once
    takeover = [e for e in events if e["event"] == "claim" and e["checkpoint"] == killed and e["worker"] != "A"]
    assert [e["generation"] for e in takeover] == [1]  # taken over after A's lease expired
    assert got[killed]["worker"] == takeover[0]["worker"]
    fs, root = url_to_fs(f"{run}/eval")
    assert not fs.exists(f"{root}/claims") or not fs.find(f"{root}/claims")  # every claim released
    assert "step_30/report.html" in fs.cat_file(f"{root}/index.html").decode()

    mark_complete(run, 40)
    d = start_worker(run, s3_shards, "D", tmp_path / "d.log")
    finish(d, tmp_path / "d.log")
    d_claims = [e["checkpoint"] for e in log_events(run) if e["event"] == "claim" and e["worker"] == "D"]
    assert d_claims == ["step_40"] and reports(run)["step_40"]["status"] == "ok"


def test_worker_beside_a_two_rank_training_run(s3_server, s3_shards, tmp_path):
    """`cityscale train` (deepspeed launcher, 2 CPU ranks, run folder on S3) publishes checkpoints while a
    worker watches: one ok report per published checkpoint, made from the trainer's own export."""
    run = s3_server.uri("runs", "beside")
    worker = start_worker(run, s3_shards, "W", tmp_path / "w.log", once=False)
    train_log = tmp_path / "train.log"
    train = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", "--config", str(ROOT / "configs/train/tiny-cpu.yaml"),
         "--shards", s3_shards, "--run", run, "--steps", "8", "--nproc", "2", "--set", "checkpoint.every_steps=4",
         "--set", "checkpoint.keep_last=10", "--set", "metrics.port_base=0", "--set", "metrics.progress=false"],
        cwd=ROOT, stdout=train_log.open("w"), stderr=subprocess.STDOUT, timeout=400)
    try:
        assert train.returncode == 0, train_log.read_text()[-3000:]
        published = {r.name for r in list_complete(run)}
        assert published == {"step_4", "step_8"}
        wait_for(lambda: set(reports(run)) >= published, 240, "reports of every published checkpoint")
    finally:
        worker.terminate()
        worker.wait()
    got = reports(run)
    assert set(got) == published and all(r["status"] == "ok" for r in got.values()), \
        {n: r.get("reason") for n, r in got.items()}
    assert Counter(e["checkpoint"] for e in log_events(run) if e["event"] == "report") == Counter(
        {n: 1 for n in published})
    assert all(r["lag_seconds"] > 0 and r["checkpoint"]["step"] in (4, 8) for r in got.values())
    for r in got.values():  # the trainer's run config names its shards: trained and probed on the same bytes
        assert r["checkpoint"]["trained_on"]["fingerprint"] == r["data"]["fingerprint"] and problems(r) == []
        assert any(n.startswith("trained and probed on the same shards") for n in r["notes"])
