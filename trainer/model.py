"""The model side of the trainer: open_clip models by name, weights, tokenizer, transforms and export.

Names resolve against open_clip's bundled configs plus ours in `configs/models/` (registered with
`open_clip.add_model_config`). `pretrained` is a local weights file, a folder holding one (an exported checkpoint, a hub
snapshot), an open_clip tag or `hf-hub:org/repo` (both through the Hugging Face cache, so they load offline
once cached); when weights cannot be found (offline machines) the error says how to point at local weights. The exported model is the pair open_clip itself loads with `create_model("local-dir:DIR")`:
`open_clip_config.json` ({model_cfg, preprocess_cfg}) and `open_clip_model.safetensors`.

Models are built with `output_dict=True`: their forward returns named outputs (image_features,
text_features, logit_scale[, logit_bias]) that the loss consumes by name, which is what lets CoCa's captioning
term (decoder `logits`, `labels`) join the loss without touching the loop.
"""

from __future__ import annotations

import json
import math
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
from data_shards.run_layout import EXPORT_CONFIG, EXPORT_WEIGHTS

MODELS_DIR = Path(configs.__file__).resolve().parent / "models"
open_clip.add_model_config(MODELS_DIR)



@dataclass(frozen=True)
class BuiltModel:
    """A fresh model plus what the data side and the exporter need to know about it."""
    module: torch.nn.Module
    model_cfg: dict[str, Any]       # the open_clip model config actually used (with extra kwargs merged)
    preprocess_cfg: dict[str, Any]  # image size, mean, std
    tokenizer: Any


WEIGHT_FILES = (EXPORT_WEIGHTS, "open_clip_pytorch_model.bin", "open_clip_model.bin")
HF_HUB_PREFIX = "hf-hub:"


def _weights_in_folder(folder: str, path: str) -> str:
    """The open_clip weights file of a folder (an exported checkpoint, a hub snapshot)."""
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ConfigError(f"config key '{path}.pretrained': folder {folder} holds none of {', '.join(WEIGHT_FILES)}: "
                      "point at the weights file itself")


def _from_hub(cfg: ModelConfig, path: str) -> str:
    """Weights of an open_clip tag or an `hf-hub:org/repo`, from the Hugging Face cache or the network."""
    repo = cfg.pretrained[len(HF_HUB_PREFIX):] if cfg.pretrained.startswith(HF_HUB_PREFIX) else None
    try:
        if repo is not None:
            return open_clip.pretrained.download_pretrained_from_hf(repo)
        return open_clip.download_pretrained(open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained))
    except Exception as e:  # noqa: BLE001 - any hub/network failure gets the same fix
        raise ConfigError(
            f"config key '{path}.pretrained': weights {repo or cfg.name + '/' + cfg.pretrained} are neither in the "
            f"Hugging Face cache nor reachable ({type(e).__name__}; offline?): download them on a connected "
            f"machine (open_clip.create_model({cfg.name!r}, pretrained={cfg.pretrained!r}) caches them under "
            f"HF_HOME) or set {path}.pretrained=/path/to/open_clip_model.safetensors") from None


def resolve_weights(cfg: ModelConfig, path: str = "model") -> str | None:
    """Local weights file for `cfg.pretrained`: '' -> None; a file; a folder holding open_clip weights; an
    open_clip tag or `hf-hub:org/repo` (through the Hugging Face cache, which works offline once filled)."""
    if not cfg.pretrained:
        return None
    if os.path.isfile(cfg.pretrained):
        return cfg.pretrained
    if os.path.isdir(cfg.pretrained):
        return _weights_in_folder(cfg.pretrained, path)
    if not cfg.pretrained.startswith(HF_HUB_PREFIX):
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        if cfg.pretrained not in tags:
            raise ConfigError(f"config key '{path}.pretrained': {cfg.pretrained!r} is neither a file, a folder, "
                              f"'hf-hub:org/repo' nor a pretrained tag of {cfg.name} (tags: {', '.join(tags) or 'none'}):"
                              " fix the tag or give a local file")
    return _from_hub(cfg, path)


def build(cfg: ModelConfig, weights: str | None, extra_kwargs: dict[str, Any]) -> BuiltModel:
    """Create the model (fp32, CPU; DeepSpeed casts and places it), loading `weights` when given."""
    module = open_clip.create_model(cfg.name, pretrained=weights, output_dict=True, **extra_kwargs)
    model_cfg = {**open_clip.get_model_config(cfg.name), **extra_kwargs}
    return BuiltModel(module=module, model_cfg=model_cfg, preprocess_cfg=dict(get_model_preprocess_cfg(module)),
                      tokenizer=open_clip.get_tokenizer(cfg.name))


def is_captioner(module: torch.nn.Module) -> bool:
    """A CoCa-style model: its forward also returns decoder `logits`, and it can `generate` captions."""
    return isinstance(module, open_clip.CoCa)


def pad_id(module: torch.nn.Module) -> int:
    """The token id the captioning loss ignores (open_clip's tokenizer pads with 0)."""
    return int(getattr(module, "pad_id", 0))


def freeze(module: torch.nn.Module, trained: tuple[str, ...]) -> None:
    """Stop the gradient of every parameter whose name starts with none of `trained` (("",) keeps all).

    Frozen parameters stay out of the optimizer (`param_groups`), so DeepSpeed never waits for a gradient
    a loss does not produce (SimCLR's unused text tower) and weight decay leaves them as they were; they are
    still in the state dict, so the export is a whole open_clip model."""
    for name, p in module.named_parameters():
        if not name.startswith(trained):
            p.requires_grad_(False)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on gains, biases, logit scale/bias (open_clip's rule)."""
    def exclude(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0}]


def train_transform(built: BuiltModel, augment: AugmentConfig):
    """The augmented tile transform at the model's input size and normalisation."""
    size = built.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    return tile_transform(int(size), tuple(built.preprocess_cfg["mean"]), tuple(built.preprocess_cfg["std"]),
                          train=True, augment=augment)


def export(state_dict: dict[str, torch.Tensor], built: BuiltModel, folder: str, logit_scale_max: float = 0.0) -> None:
    """Write the open_clip-loadable pair into local `folder` (weights as fp32 safetensors). The logit scale is
    stored clamped to ln(logit_scale_max) (the loss clamps it, trainer/loss.py), so the model scores as trained."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}
    if logit_scale_max and "logit_scale" in tensors:
        tensors["logit_scale"] = tensors["logit_scale"].clamp(0.0, math.log(logit_scale_max))
    save_file(tensors, os.path.join(folder, EXPORT_WEIGHTS))
    with open(os.path.join(folder, EXPORT_CONFIG), "w") as f:
        json.dump({"model_cfg": built.model_cfg, "preprocess_cfg": built.preprocess_cfg}, f, indent=1)


__all__ = ["BuiltModel", "MODELS_DIR", "resolve_weights", "build", "is_captioner", "pad_id", "freeze",
           "param_groups", "train_transform", "export", "EXPORT_CONFIG", "EXPORT_WEIGHTS"]
