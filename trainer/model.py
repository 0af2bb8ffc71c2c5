"""The model side of the trainer: open_clip models by name, weights, tokenizer, transforms and export.

Names resolve against open_clip's bundled configs plus ours in `configs/models/` (registered with
`open_clip.add_model_config`). `pretrained` is an open_clip tag (downloaded through open_clip's cache) or a
local weights file; when a tag cannot be fetched (offline machines) the error says how to point at local
weights. The exported model is the pair open_clip itself loads with `create_model("local-dir:DIR")`:
`open_clip_config.json` ({model_cfg, preprocess_cfg}) and `open_clip_model.safetensors`.

Models are built with `output_dict=True`: their forward returns named outputs (image_features,
text_features, logit_scale[, logit_bias]) that the loss consumes by name, which is what lets a CoCa
captioning term be added later without touching the loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from safetensors.torch import save_file

import configs
from configs.data import AugmentConfig
from configs.loader import ConfigError
from configs.train import ModelConfig
from data_shards.augment import tile_transform
from eval.checkpoints import EXPORT_CONFIG, EXPORT_WEIGHTS

MODELS_DIR = Path(configs.__file__).resolve().parent / "models"
open_clip.add_model_config(MODELS_DIR)



@dataclass(frozen=True)
class BuiltModel:
    """A fresh model plus what the data side and the exporter need to know about it."""
    module: torch.nn.Module
    model_cfg: dict[str, Any]       # the open_clip model config actually used (with extra kwargs merged)
    preprocess_cfg: dict[str, Any]  # image size, mean, std
    tokenizer: Any


def resolve_weights(cfg: ModelConfig, path: str = "model") -> str | None:
    """Local weights file for `cfg.pretrained` ('' -> None); downloads a tag through open_clip's cache."""
    if not cfg.pretrained:
        return None
    if os.path.isfile(cfg.pretrained):
        return cfg.pretrained
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if cfg.pretrained not in tags:
        raise ConfigError(f"config key '{path}.pretrained': {cfg.pretrained!r} is neither a file nor a pretrained tag "
                          f"of {cfg.name} (tags: {', '.join(tags) or 'none'}): fix the tag or give a local file")
    try:
        return open_clip.download_pretrained(open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained))
    except Exception as e:  # noqa: BLE001 - any hub/network failure gets the same fix
        raise ConfigError(
            f"config key '{path}.pretrained': weights {cfg.name}/{cfg.pretrained} could not be fetched "
            f"({type(e).__name__}; offline?): download them on a connected machine "
            f"(open_clip.create_model({cfg.name!r}, pretrained={cfg.pretrained!r}) caches them) and set "
            f"{path}.pretrained=/path/to/open_clip_model.safetensors") from None


def build(cfg: ModelConfig, weights: str | None, extra_kwargs: dict[str, Any]) -> BuiltModel:
    """Create the model (fp32, CPU; DeepSpeed casts and places it), loading `weights` when given."""
    module = open_clip.create_model(cfg.name, pretrained=weights, output_dict=True, **extra_kwargs)
    model_cfg = {**open_clip.get_model_config(cfg.name), **extra_kwargs}
    return BuiltModel(module=module, model_cfg=model_cfg, preprocess_cfg=dict(get_model_preprocess_cfg(module)),
                      tokenizer=open_clip.get_tokenizer(cfg.name))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on gains, biases, logit scale/bias (open_clip's rule)."""
    def exclude(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0}]


class CaptionTokenizer:
    """One caption -> 1-D LongTensor [context_length]; truncates long captions (open_clip's default).

    A class, not a lambda, because DataLoader workers pickle it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, caption: str) -> torch.Tensor:
        return self.tokenizer([caption])[0]


def train_transform(built: BuiltModel, augment: AugmentConfig):
    """The augmented tile transform at the model's input size and normalisation."""
    size = built.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    return tile_transform(int(size), tuple(built.preprocess_cfg["mean"]), tuple(built.preprocess_cfg["std"]),
                          train=True, augment=augment)


def export(state_dict: dict[str, torch.Tensor], built: BuiltModel, folder: str) -> None:
    """Write the open_clip-loadable pair into local `folder` (weights as fp32 safetensors)."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(folder, EXPORT_WEIGHTS))
    with open(os.path.join(folder, EXPORT_CONFIG), "w") as f:
        json.dump({"model_cfg": built.model_cfg, "preprocess_cfg": built.preprocess_cfg}, f, indent=1)


__all__ = ["BuiltModel", "MODELS_DIR", "resolve_weights", "build", "param_groups", "CaptionTokenizer",
           "train_transform", "export", "EXPORT_CONFIG", "EXPORT_WEIGHTS"]
