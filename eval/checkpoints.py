"""Published checkpoints as the eval workers see them: the run layout, listing, and loading the exported model.

The layout is defined here, once, and the trainer writes it (eval may not import the trainer, so the constants
live on the reading side):

    RUN/checkpoints/step_{N}/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}
    RUN/checkpoints/step_{N}/open_clip_model.safetensors the weights (fp32)
    RUN/checkpoints/step_{N}/COMPLETE                    written once every file above is in place
    RUN/checkpoints/latest                               the newest complete folder name, written after COMPLETE

A checkpoint counts as published when its COMPLETE marker exists; folders without it (being written, or
`.tmp-` staging folders) are never listed. The publish time is the marker's modification time on the storage,
which is what the publish-to-report lag is measured from.

Loading copies the two exported files to a local temporary folder (works the same for local runs and `s3://`,
and a checkpoint pruned by the trainer mid-eval no longer matters), then builds the model with open_clip's own
loader (`create_model("local-dir:...")`, strict state-dict loading). Anything that goes wrong is a
`CheckpointError` whose message says what is missing or mismatched; the worker reports it and moves on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import open_clip
import torch

from data_shards.storage import join, url_to_fs

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
EXPORT_CONFIG = "open_clip_config.json"
EXPORT_WEIGHTS = "open_clip_model.safetensors"
STEP_PREFIX = "step_"
_NAME_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be evaluated; the message is the reason written into its failed report."""


def checkpoint_name(step: int) -> str:
    """`step_{N}`: the folder name of the checkpoint published after optimizer step N."""
    return f"{STEP_PREFIX}{step}"


def step_of(name: str) -> int | None:
    """N for `step_N`, else None (staging folders, `latest`, anything else)."""
    m = _NAME_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CheckpointRef:
    """One published checkpoint: folder name, URI, step, and when its COMPLETE marker appeared (epoch s)."""

    name: str
    uri: str
    step: int | None
    published_at: float | None


def modified_time(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec info dict: `mtime` locally, `LastModified` on S3."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else None


def _marker_time(fs: Any, folder: str) -> float | None:
    try:
        return modified_time(fs.info(f"{folder}/{COMPLETE}"))
    except FileNotFoundError:
        return None


def list_complete(run_uri: str) -> list[CheckpointRef]:
    """Published checkpoints of a run, by step; an absent checkpoints folder is an empty list."""
    root = join(run_uri, CHECKPOINTS_DIR)
    fs, path = url_to_fs(root)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    refs = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        step = step_of(name)
        if step is None:
            continue
        published = _marker_time(fs, f"{path}/{name}")
        if published is not None:
            refs.append(CheckpointRef(name=name, uri=join(root, name), step=step, published_at=published))
    return sorted(refs, key=lambda r: r.step)


def ref_from_uri(checkpoint_uri: str) -> CheckpointRef:
    """A CheckpointRef for any checkpoint folder (`cityscale eval run`); it need not live in a run layout."""
    uri = checkpoint_uri.rstrip("/")
    fs, path = url_to_fs(uri)
    name = uri.rsplit("/", 1)[-1]
    return CheckpointRef(name=name, uri=uri, step=step_of(name), published_at=_marker_time(fs, path))


# ----------------------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    """An exported open_clip model in eval mode, with what the reader needs to feed it."""

    module: torch.nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_cfg: dict[str, Any]


def fetch(ref: CheckpointRef, local_dir: str) -> str:
    """Copy the exported config and weights into `local_dir`; CheckpointError when either is missing."""
    fs, path = url_to_fs(ref.uri)
    for name in (EXPORT_CONFIG, EXPORT_WEIGHTS):
        try:
            fs.get_file(f"{path}/{name}", os.path.join(local_dir, name))
        except FileNotFoundError:
            what = "model config" if name == EXPORT_CONFIG else "weights"
            raise CheckpointError(f"{ref.uri} has no {what} ({name}): not an exported open_clip checkpoint, "
                                  "or it was pruned before eval") from None
    return local_dir


def _read_config(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, EXPORT_CONFIG)) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{EXPORT_CONFIG} is not valid JSON ({e})") from None
    model_cfg = cfg.get("model_cfg") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise CheckpointError(f"{EXPORT_CONFIG} has no open_clip model_cfg with vision_cfg and text_cfg: "
                              "not a CLIP-style checkpoint")
    return cfg


@contextmanager
def _quiet(active: bool) -> Iterator[None]:
    """Silence open_clip's root-logger warnings while building on purpose what it warns about."""
    before = logging.root.level
    if active:
        logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(before)


def load_model(folder: str, *, weights: bool = True, seed: int = 0) -> LoadedModel:
    """Build the model of a fetched folder: its weights, or (weights=False) a seeded random init of the same
    architecture. Any construction or state-dict mismatch becomes a CheckpointError naming the cause."""
    cfg = _read_config(folder)
    torch.manual_seed(seed)
    try:
        with _quiet(not weights):  # open_clip warns that a random init is random
            module = open_clip.create_model(f"local-dir:{folder}", load_weights=weights)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = " ".join(lines[:2]) or type(e).__name__
        raise CheckpointError(f"open_clip cannot build this checkpoint ({type(e).__name__}: {first[:300]}); "
                              "config and weights are of different architectures or versions") from None
    pre = open_clip.get_model_preprocess_cfg(module)
    size = pre["size"][0] if isinstance(pre["size"], (list, tuple)) else pre["size"]
    return LoadedModel(module=module.eval(), tokenizer=tokenizer, image_size=int(size), mean=tuple(pre["mean"]),
                       std=tuple(pre["std"]), model_cfg=cfg["model_cfg"])


def local_workdir() -> tempfile.TemporaryDirectory:
    """A local scratch folder for one checkpoint's files (removed when the context ends)."""
    return tempfile.TemporaryDirectory(prefix="cityscale-eval-")


__all__ = ["CHECKPOINTS_DIR", "LATEST", "COMPLETE", "EXPORT_CONFIG", "EXPORT_WEIGHTS", "STEP_PREFIX",
           "CheckpointError", "CheckpointRef", "LoadedModel", "checkpoint_name", "step_of", "modified_time",
           "list_complete", "ref_from_uri", "fetch", "load_model", "local_workdir"]
