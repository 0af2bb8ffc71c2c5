"""End to end: `cityscale train` runs the real deepspeed launcher with 2 CPU ranks on shards from a real S3 API.

- ZeRO-2, bf16, 30 steps, run folder on S3: the loss falls, checkpoints are published (the last two kept) and
  load with open_clip.create_model + safetensors, both ranks' /metrics answer with the counters (real HTTP
  scrapes while the run is going), corrupt samples are skipped and counted, never fatal.
- ZeRO-1, same data and batch: killed (SIGKILL to its process group) after its first checkpoint, resumed with
  the same command; the sample keys of every step on every rank equal those of the uninterrupted run.
- ZeRO-3: a short run publishes a checkpoint whose DeepSpeed files load with weights_only=True.

Each launch pays for the launcher and two ranks importing torch, DeepSpeed and open_clip (tens of seconds on
2 cores), so there are four launches in all and the runs are tiny (32 px, 2-layer towers, global batch 32).
"""

from __future__ import annotations

import glob
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import open_clip
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from data_shards.jsonl_log import read_jsonl
from tests.shard_fixtures import break_sample, into_shards, make_samples, write_shard_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/train/tiny-cpu.yaml")
STEPS, EVERY = 30, 10
CLI = [sys.executable, "-m", "launcher.cli", "train"]


def _free_port_pair() -> int:
    """A base port with base and base + 1 free (rank 0 and rank 1 endpoints)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (150, 30, 180), "cyan": (30, 210, 210), "white": (240, 240, 240), "black": (15, 15, 15)}


def _learnable(samples: list[dict]) -> list[dict]:
    """Tiles of 8 colours captioned by their colour, so a few dozen steps visibly lower the loss."""
    for i, sample in enumerate(samples):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        image = PIL.Image.new("RGB", (40, 40), rgb)
        image.putpixel((i % 40, 3), (128, 128, 128))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        sample.update(jpg=buf.getvalue(), txt=f"a {name} tile".encode())
    return samples


@pytest.fixture(scope="module")
def s3_shards(s3_server, tmp_path_factory) -> str:
    """320 tiles in 5 shards on the S3 server, 2 of them corrupt (one bad JPEG, one bad JSON)."""
    samples = _learnable(make_samples(320, size=40))
    samples[5] = break_sample(samples[5], "bad_jpg")
    samples[70] = break_sample(samples[70], "bad_json")
    local = tmp_path_factory.mktemp("shards")
    write_shard_folder(local, {"train": into_shards(samples, [64] * 5)})
    uri = s3_server.uri("train-e2e-shards")
    s3_server.fs().put(f"{local}/", uri, recursive=True)
    return uri


def _train_args(shards: str, run: str, stage: int, port_base: int, steps: int = STEPS, every: int = EVERY) -> list[str]:
    return [*CLI, "--config", CONFIG, "--shards", shards, "--run", run, "--steps", str(steps), "--nproc", "2",
            "--set", f"deepspeed.zero_stage={stage}", "--set", f"checkpoint.every_steps={every}",
            "--set", f"metrics.port_base={port_base}", "--set", "debug.log_sample_keys=true",
            "--set", "metrics.progress=false"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert code == 0, f"training exited with {code}:\n{log.read_text()[-4000:]}"


class Scraper(threading.Thread):
    """Scrapes both ranks' /metrics while a run goes; keeps the last successful body per rank."""

    def __init__(self, port_base: int) -> None:
        super().__init__(daemon=True)
        self.port_base, self.bodies, self.stop = port_base, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for rank in (0, 1):
                try:
                    url = f"http://127.0.0.1:{self.port_base + rank}/metrics"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        self.bodies[rank] = r.read().decode()
                except OSError:
                    pass
            self.stop.wait(0.3)


def _metric(body: str, name: str, **labels: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def _skipped(body: str, reason: str) -> float:
    try:
        return _metric(body, "cityscale_train_skipped_samples_total", reason=reason)
    except AssertionError:
        return 0.0


def _keys_by_step(uri: str) -> dict[int, list[str]]:
    out = {}
    for record in read_jsonl(uri):
        out[record["step"]] = record["keys"]  # a resumed run overwrites the steps the killed run logged last
    return out


@pytest.fixture(scope="module")
def zero2_run(s3_server, s3_shards, tmp_path_factory) -> dict:
    """The uninterrupted reference run: ZeRO-2, bf16, run folder on S3, scraped while it trains."""
    port_base = _free_port_pair()
    run = s3_server.uri("runs", "zero2")
    log = tmp_path_factory.mktemp("zero2") / "log.txt"
    scraper = Scraper(port_base)
    scraper.start()
    proc = _start(_train_args(s3_shards, run, 2, port_base), log)
    try:
        _finish(proc, log)
    finally:
        scraper.stop.set()
        scraper.join()
    return {"run": run, "log": log, "scrapes": scraper.bodies, "fs": s3_server.fs(), "port_base": port_base}


def test_zero2_bf16_loss_falls_and_metrics_answer(zero2_run):
    fs, run = zero2_run["fs"], zero2_run["run"]
    records = read_jsonl(f"{run}/logs/train.jsonl")  # an object-store log: one part object per record
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"zero2 loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last < first - 0.5, losses
    assert sum(r.get("skipped/bad_jpg", 0) + r.get("skipped/bad_json", 0) for r in records) >= 1
    ds = json.loads(fs.cat_file(f"{run}/deepspeed.json"))
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_accumulation_steps"] == 2
    scrapes = zero2_run["scrapes"]
    assert set(scrapes) == {0, 1}, "both ranks' endpoints must have answered"
    for rank, body in scrapes.items():
        labels = {"run": "zero2", "rank": str(rank)}
        assert _metric(body, "cityscale_train_samples_total", **labels) > 0
        assert _metric(body, "cityscale_train_steps_total", **labels) >= 1
        assert _metric(body, "cityscale_train_tokens_total", **labels) > 0
        for gauge in ("samples_per_second", "step_seconds", "data_wait_share", "loss", "learning_rate",
                      "logit_scale", "grad_norm", "process_memory_bytes"):
            _metric(body, f"cityscale_train_{gauge}", **labels)
        assert "# TYPE cityscale_train_skipped_samples_total counter" in body
    for reason in ("bad_jpg", "bad_json"):  # each corrupt sample was read by some rank in the first epoch
        assert sum(_skipped(body, reason) for body in scrapes.values()) >= 1, reason
    targets = json.loads(fs.cat_file(f"{run}/prometheus_targets.json"))
    base = zero2_run["port_base"]
    assert targets[0]["targets"] == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]


def test_zero2_checkpoints_published_and_loadable(zero2_run, tmp_path):
    fs, run = zero2_run["fs"], zero2_run["run"]
    assert fs.cat_file(f"{run}/checkpoints/latest").decode() == f"step_{STEPS}"
    kept = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{run}/checkpoints", detail=False) if "step_" in p)
    assert kept == [f"step_{STEPS - EVERY}", f"step_{STEPS}"]  # keep_last: 2
    folder = tmp_path / "step"
    fs.get(f"{run}/checkpoints/step_{STEPS}/", str(folder), recursive=True)
    assert json.loads((folder / "COMPLETE").read_text())["step"] == STEPS
    model = open_clip.create_model(f"local-dir:{folder}")
    weights = load_file(str(folder / "open_clip_model.safetensors"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])
    fresh = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    assert not torch.equal(fresh.visual.conv1.weight, model.visual.conv1.weight), "weights were not trained/loaded"
    assert sorted(os.listdir(folder / "ds")) == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                 "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                                 "mp_rank_00_model_states.pt"]


def test_zero1_killed_after_checkpoint_resumes_with_the_next_unseen_samples(zero2_run, s3_shards, tmp_path):
    run = tmp_path / "zero1"
    args = _train_args(s3_shards, str(run), 1, _free_port_pair())
    proc = _start(args, tmp_path / "killed.txt")
    latest, keys = run / "checkpoints" / "latest", run / "debug/keys-rank0.jsonl"
    while proc.poll() is None and not (latest.exists() and max(_keys_by_step(str(keys))) > EVERY + 1):
        time.sleep(0.1)  # kill a couple of steps past the checkpoint: the resume must rewind to it
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.txt").read_text()[-3000:]
    assert latest.read_text() == f"step_{EVERY}"
    killed_at = max(_keys_by_step(str(keys)))
    assert EVERY < killed_at < STEPS, "the run was not killed between its checkpoint and its end"

    log = tmp_path / "resumed.txt"
    _finish(_start(args, log), log)
    assert f"resumed from step {EVERY}" in log.read_text()
    for rank in (0, 1):
        reference = _keys_by_step(f"{zero2_run['run']}/debug/keys-rank{rank}.jsonl")
        resumed = _keys_by_step(str(run / f"debug/keys-rank{rank}.jsonl"))
        assert sorted(resumed) == list(range(1, STEPS + 1))
        assert resumed == reference, f"rank {rank}: sample keys differ from the uninterrupted run"
    print(f"zero1 killed after step {killed_at}, resumed from step {EVERY}: keys of {STEPS} steps x 2 ranks equal")


def test_zero3_runs_and_its_checkpoint_loads_weights_only(s3_shards, tmp_path):
    from trainer.engine import SafeLoadCheckpointEngine  # deepspeed: only this test needs it in-process

    run = tmp_path / "zero3"
    log = tmp_path / "log.txt"
    _finish(_start(_train_args(s3_shards, str(run), 3, _free_port_pair(), steps=6, every=0), log), log)
    folder = run / "checkpoints/step_6"
    assert (folder / "COMPLETE").exists()
    for path in sorted(glob.glob(str(folder / "ds/*.pt"))):
        assert SafeLoadCheckpointEngine().load(path, map_location="cpu")
    model = open_clip.create_model(f"local-dir:{folder}")
    assert model.logit_scale.item() > 0
    records = [json.loads(line) for line in (run / "logs/train.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["loss"] == r["loss"] for r in records)
