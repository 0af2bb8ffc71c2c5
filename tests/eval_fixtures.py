"""Inputs for the eval tests, made with the project's real writers: synthetic cities through the shard builder,
and checkpoint folders exported by the trainer's own `trainer.model.export` in the layout of eval/checkpoints.py
(config + safetensors, then the COMPLETE marker last), on local disk or the test S3 server."""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch

from configs.train import ModelConfig
from data_shards import build
from data_shards.jsonl_log import PARTS_SUFFIX, read_jsonl
from data_shards.run_layout import CHECKPOINTS_DIR, COMPLETE, EXPORT_CONFIG, checkpoint_name
from data_shards.storage import url_to_fs
from data_shards.synth import synthesize
from trainer import model as trainer_model

TINY_MODEL = "cityscale-nano-32"
# a fast probe for tests: one seed, few epochs; no caption baseline (loading and running its sentence encoder
# takes tens of seconds: tests/test_eval_report.py turns it on)
FAST = ["probe.seeds=[0]", "probe.max_epochs=25", "probe.patience=5", "loader_workers=0", "batch_size=64",
        "retrieval.examples=3", "baselines.caption=false"]


def synthetic_shards(out: str, workdir: str, cities: dict[str, int], *, size: int = 32, seed: int = 3,
                     extra: list[str] = ()) -> str:
    """Synthetic cities (name -> tiles) built into shards at `out` with 60/20/20 spatial splits (2x2 blocks)."""
    captions, indicators = [], []
    for i, (city, tiles) in enumerate(cities.items()):
        paths = synthesize(workdir, city, tiles, seed=seed + i, size=size, progress=False)["paths"]
        captions.append(paths["captions"])
        indicators.append(paths["downstream_task"])
    code = build.main(["--captions", *captions, "--images", os.path.join(workdir, "images"),
                       "--indicators", *indicators, "--out", out, "--image-size", str(size), "--block-size", "2",
                       "--set", "split.ratios={train: 0.6, val: 0.2, test: 0.2}", "--no-progress", *extra])
    assert code == 0
    return out


def write_checkpoint(run: str, step: int, *, seed: int = 0, complete: bool = True, model: str = TINY_MODEL,
                     config_patch: dict | None = None, state_dict: dict | None = None) -> str:
    """Publish RUN/checkpoints/step_{step}/ as the trainer does; `complete=False` leaves it partial (no marker).
    `config_patch` edits vision_cfg after export (a config of another architecture than the weights)."""
    torch.manual_seed(seed)
    built = trainer_model.build(ModelConfig(name=model), None, {})
    folder = f"{run.rstrip('/')}/{CHECKPOINTS_DIR}/{checkpoint_name(step)}"
    fs, path = url_to_fs(folder)
    with tempfile.TemporaryDirectory() as tmp:
        trainer_model.export(state_dict or built.module.state_dict(), built, tmp)
        if config_patch:
            cfg = json.load(open(os.path.join(tmp, EXPORT_CONFIG)))
            cfg["model_cfg"]["vision_cfg"].update(config_patch)
            json.dump(cfg, open(os.path.join(tmp, EXPORT_CONFIG), "w"))
        fs.makedirs(path, exist_ok=True)
        for name in os.listdir(tmp):
            fs.put_file(os.path.join(tmp, name), f"{path}/{name}")
    if complete:
        mark_complete(run, step)
    return folder


def mark_complete(run: str, step: int) -> None:
    fs, path = url_to_fs(f"{run.rstrip('/')}/{CHECKPOINTS_DIR}/{checkpoint_name(step)}/{COMPLETE}")
    fs.pipe_file(path, json.dumps({"step": step, "world_size": 1}).encode())


def log_events(run: str) -> list[dict]:
    """Every JSONL event of every eval worker of a run."""
    fs, root = url_to_fs(f"{run.rstrip('/')}/eval/log")
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    logs = sorted({n.rsplit("/", 1)[-1].removesuffix(PARTS_SUFFIX) for n in names})
    return [e for n in logs for e in read_jsonl(f"{run.rstrip('/')}/eval/log/{n}")]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5) -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds (a liveness bound, not a timing
    assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout:.0f} s"
        time.sleep(every)
