"""The run layout in code: what the trainer publishes under a run folder and the eval workers read, spelled once.

    RUN/config.yaml, RUN/deepspeed.json                  the resolved trainer config and DeepSpeed dict
    RUN/logs/train.jsonl                                 the trainer's metrics log (data_shards/jsonl_log.py)
    RUN/checkpoints/step_{N}/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}
    RUN/checkpoints/step_{N}/open_clip_model.safetensors the exported weights (fp32)
    RUN/checkpoints/step_{N}/COMPLETE                    written once every file of the folder is in place
    RUN/checkpoints/latest                               the newest complete folder name, written after COMPLETE
    RUN/eval/...                                         the eval workers' reports (eval/report.py)

A checkpoint counts as published when its COMPLETE marker exists; folders without it (being written, or `.tmp-`
staging folders) are never listed. The publish time is the marker's modification time on the storage, which is
what the publish-to-report lag is measured from. Like data_shards/format.py for shards, this module is a
contract between two services (trainer writes, eval reads) and imports nothing heavier than the storage module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from data_shards.storage import join, modified_time, read_text, url_to_fs, write_bytes_atomic

CHECKPOINTS_DIR = "checkpoints"
EVAL_DIR = "eval"
LOGS_DIR = "logs"
TRAIN_LOG = "train.jsonl"
CONFIG_FILE = "config.yaml"
DEEPSPEED_FILE = "deepspeed.json"
LATEST = "latest"
COMPLETE = "COMPLETE"
EXPORT_CONFIG = "open_clip_config.json"
EXPORT_WEIGHTS = "open_clip_model.safetensors"
STEP_PREFIX = "step_"
_NAME_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    """`step_{N}`: the folder name of the checkpoint published after optimizer step N."""
    return f"{STEP_PREFIX}{step}"


def step_of(name: str) -> int | None:
    """N for `step_N`, else None (staging folders, `latest`, anything else)."""
    m = _NAME_RE.match(name)
    return int(m.group(1)) if m else None


def checkpoints_uri(run_uri: str) -> str:
    return join(run_uri, CHECKPOINTS_DIR)


def train_log_uri(run_uri: str) -> str:
    return join(run_uri, LOGS_DIR, TRAIN_LOG)


@dataclass(frozen=True)
class CheckpointRef:
    """One published checkpoint: folder name, URI, step, and when its COMPLETE marker appeared (epoch s)."""

    name: str
    uri: str
    step: int | None
    published_at: float | None


def _marker_time(folder_uri: str) -> float | None:
    fs, path = url_to_fs(join(folder_uri, COMPLETE))
    try:
        return modified_time(fs.info(path))
    except FileNotFoundError:
        return None


def list_complete(run_uri: str) -> list[CheckpointRef]:
    """Published checkpoints of a run, by step; an absent checkpoints folder is an empty list."""
    root = checkpoints_uri(run_uri)
    fs, path = url_to_fs(root)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    refs = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        step = step_of(name)
        published = _marker_time(join(root, name)) if step is not None else None
        if published is not None:
            refs.append(CheckpointRef(name=name, uri=join(root, name), step=step, published_at=published))
    return sorted(refs, key=lambda r: r.step)


def ref_from_uri(checkpoint_uri: str) -> CheckpointRef:
    """A CheckpointRef for any checkpoint folder (`cityscale eval run`); it need not live in a run layout."""
    uri = checkpoint_uri.rstrip("/")
    name = uri.rsplit("/", 1)[-1]
    return CheckpointRef(name=name, uri=uri, step=step_of(name), published_at=_marker_time(uri))


def read_latest(run_uri: str) -> str | None:
    """The folder name `latest` points to, or None before the first checkpoint."""
    try:
        return read_text(join(checkpoints_uri(run_uri), LATEST)).strip() or None
    except FileNotFoundError:
        return None


def mark_complete(run_uri: str, name: str, marker: dict) -> None:
    """Publish checkpoint `name` whose files are all in place: COMPLETE first, then `latest` (readers follow it).
    Both are small files published atomically, so a reader never sees a partial marker."""
    root = checkpoints_uri(run_uri)
    write_bytes_atomic(join(root, name, COMPLETE), json.dumps(marker).encode())
    write_bytes_atomic(join(root, LATEST), name.encode())


__all__ = ["CHECKPOINTS_DIR", "EVAL_DIR", "LOGS_DIR", "TRAIN_LOG", "CONFIG_FILE", "DEEPSPEED_FILE", "LATEST",
           "COMPLETE", "EXPORT_CONFIG", "EXPORT_WEIGHTS", "STEP_PREFIX", "CheckpointRef", "checkpoint_name",
           "step_of", "checkpoints_uri", "train_log_uri", "list_complete", "ref_from_uri", "read_latest",
           "mark_complete"]
