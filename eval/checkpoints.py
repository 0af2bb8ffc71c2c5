"""Loading a published checkpoint's exported model for the eval workers. The run layout (folder and marker
names, listing complete checkpoints) is the trainer's and eval's shared contract in data_shards/run_layout.py.

Loading copies the two exported files to a local temporary folder (works the same for local runs and `s3://`,
and a checkpoint pruned by the trainer mid-eval no longer matters), then builds the model with open_clip's own
loader (`create_model("local-dir:...")`, strict state-dict loading). Anything that goes wrong is a
`CheckpointError` whose message says what is missing or mismatched; the worker reports it and moves on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import open_clip
import torch

from data_shards.run_layout import EXPORT_CONFIG, EXPORT_WEIGHTS, CheckpointRef
from data_shards.storage import url_to_fs


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be evaluated; the message is the reason written into its failed report."""


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


__all__ = ["CheckpointError", "LoadedModel", "fetch", "load_model", "local_workdir"]
