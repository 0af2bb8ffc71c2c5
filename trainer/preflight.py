"""Checks that must fail before any process starts: config sanity, data present, model name known.

Light on purpose (no torch model, no open_clip import): the launcher runs them before building the deepspeed
command and `trainer.main` runs them again on each rank before the process group starts. Model names are
found the way open_clip finds them (a JSON file per architecture with embed_dim, vision_cfg and text_cfg),
in open_clip's bundled folder and in ours (`configs/models/`, registered by `trainer/model.py`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import configs
from configs.loader import ConfigError
from configs.train import TrainConfig
from data_shards.reader import Manifest, read_manifest

OUR_MODELS = Path(configs.__file__).resolve().parent / "models"


def model_configs() -> dict[str, dict]:
    """Architectures open_clip can build here (bundled + configs/models) by name, without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    found = {}
    for path in [p for folder in [*folders, OUR_MODELS] for p in folder.glob("*.json")]:
        cfg = json.loads(path.read_text())
        if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            found[path.stem] = cfg
    return found


def model_names() -> list[str]:
    return sorted(model_configs())


def check_model_name(name: str, path: str = "model.name") -> None:
    known = model_names()
    if name not in known:
        close = [n for n in known if n.lower().startswith(name.lower()[:4])][:6]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"config key {path!r}: unknown model {name!r}{hint}: use an open_clip.list_models() name "
                          f"or add a JSON to {OUR_MODELS}")


def check(cfg: TrainConfig, world_size: int) -> Manifest:
    """All launch-time checks; returns the manifest. Raises ConfigError (one line, naming the key)."""
    cfg.check_runnable(world_size)
    check_model_name(cfg.model.name)
    if "multimodal_cfg" in model_configs()[cfg.model.name] and cfg.loss.kind == "siglip":
        raise ConfigError(f"config key 'loss.kind': {cfg.model.name} is a CoCa model, trained with InfoNCE plus "
                          f"captioning (open_clip's CoCaLoss) or image-only simclr; {cfg.loss.kind!r} is not "
                          "supported: set loss.kind=infonce")
    if cfg.metrics.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'metrics.tensorboard' is true but tensorboard is not installed: "
                          "`pip install tensorboard` or set it to false")
    manifest = read_manifest(cfg.run.shards)
    samples = manifest.samples(cfg.data.split)
    if samples < cfg.batch.global_batch:
        raise ConfigError(f"config key 'batch.global_batch': {cfg.batch.global_batch} exceeds the {samples} "
                          f"{cfg.data.split} samples of {manifest.uri}: lower it or build more shards")
    return manifest


__all__ = ["check", "check_model_name", "model_names"]
