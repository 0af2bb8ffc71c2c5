"""Feature extractors for the probes: the checkpoint's towers, and the baselines every report carries.

A reader of a report needs to see what pretraining added, so beside the checkpoint's own embeddings each report
probes
(1) the same architecture with random weights (open_clip's initialisation, seeded; built from the same exported
    config by `eval.checkpoints.load_model(weights=False)`);
(2) plain pixel statistics: per-channel colour histograms of the very tensors the model sees, which on map tiles
    already carry a lot (green parks, grey built-up area, blue water);
(3) an image-only SimCLR twin when `baselines.simclr_checkpoint` names one: the same encoder trained on the same
    data without text (`loss.kind: simclr`), the control for "text helps". It is just another exported open_clip
    checkpoint; its image tower is run on the same decoded batches, so it must share the checkpoint's
    preprocessing (image size, mean, std);
(4) the captions alone: a sentence encoder (all-MiniLM-L6-v2 by default) on each tile's caption sentences,
    averaged per tile, as `cityscale eval text-probe` does.

Each image extractor maps a batch (images [B,3,H,W] normalised, tokens [B,L]) to named feature arrays, so the
embedding pass decodes every tile once and feeds all of them.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from configs.eval import BaselinesConfig
from configs.loader import ConfigError
from data_shards.storage import join, url_to_fs
from data_shards.run_layout import EXPORT_CONFIG, CheckpointRef, list_complete, ref_from_uri
from eval.checkpoints import CheckpointError, LoadedModel
from eval.memo import EvalMemo
from eval.report_schema import CheckpointSource
from eval.text_encoder import SentenceEncoder, default_encoder_path


class ClipFeatures:
    """L2-normalised image and text embeddings of an open_clip model, named `{prefix}image` / `{prefix}text`
    (`text=False`: the image tower only)."""

    def __init__(self, module: torch.nn.Module, prefix: str = "", text: bool = True) -> None:
        self.module, self.prefix, self.text = module.eval(), prefix, text

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
        out = {f"{self.prefix}image": self.module.encode_image(images, normalize=True).float().numpy()}
        if self.text:
            out[f"{self.prefix}text"] = self.module.encode_text(tokens, normalize=True).float().numpy()
        return out


def denormalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised images [B,3,H,W] back to pixel values in [0, 1]."""
    return (images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0.0, 1.0)


class ColorHistogram:
    """Per-channel histograms (`bins` each, as frequencies) of the de-normalised tile: [B, 3 * bins]."""

    name = "color_hist"

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], bins: int) -> None:
        self.mean, self.std, self.bins = mean, std, bins

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
        px = denormalise(images, self.mean, self.std)
        idx = (px * self.bins).long().clamp(max=self.bins - 1)  # [B, 3, H, W] bin per pixel and channel
        idx = idx + torch.arange(3).view(1, 3, 1, 1) * self.bins  # channel c uses bins c*bins .. (c+1)*bins-1
        flat = idx.flatten(1)
        counts = torch.zeros(len(px), 3 * self.bins).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
        return {self.name: (counts / (flat.shape[1] / 3)).numpy()}


# ----------------------------------------------------------------------------- the SimCLR twin

def check_twin(uri: str) -> None:
    """Fail fast (ConfigError, one line naming the key) when the SimCLR twin's folder does not exist at all; a run
    folder still waiting for its first checkpoint is fine (each report then says the twin was not probed)."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise ConfigError(f"config key 'baselines.simclr_checkpoint': {uri} does not exist: pass RUN or "
                          "RUN/checkpoints/step_N of a `loss.kind: simclr` run, or '' for no SimCLR baseline")


def twin_checkpoint(uri: str) -> CheckpointRef:
    """The SimCLR twin to probe: the latest complete checkpoint of a run folder, or a checkpoint folder itself;
    CheckpointError when `uri` holds neither (yet)."""
    done = list_complete(uri)
    if done:
        return done[-1]
    fs, path = url_to_fs(join(uri, EXPORT_CONFIG))
    if not fs.exists(path):
        raise CheckpointError(f"{uri} is neither a run with a complete checkpoint (yet) nor a checkpoint folder "
                              f"({EXPORT_CONFIG} missing)")
    return ref_from_uri(uri)


def twin_source(ref: CheckpointRef) -> CheckpointSource:
    return {"name": ref.name, "uri": ref.uri, "step": ref.step}


def same_preprocessing(a: LoadedModel, b: LoadedModel) -> bool:
    """Whether one decoded batch can feed both models (image size and normalisation equal)."""
    return (a.image_size, tuple(a.mean), tuple(a.std)) == (b.image_size, tuple(b.mean), tuple(b.std))


# ----------------------------------------------------------------------------- the caption baseline

def sentence_encoder(path: str, cfg: BaselinesConfig, memo: EvalMemo | None = None) -> SentenceEncoder:
    """A sentence encoder ('' = bundled all-MiniLM-L6-v2) with the embedding cache of `baselines.cache_dir`;
    the memo's copy when there is a memo (loaded once per process)."""
    path = path or default_encoder_path()
    cache = cfg.cache_dir or os.path.join(tempfile.gettempdir(), "cityscale-eval-cache")
    return memo.encoder(path, cache) if memo is not None else SentenceEncoder(path, cache_dir=cache)


def caption_features(sentences: list[list[str]], encoder: SentenceEncoder, progress: bool = True) -> np.ndarray:
    """[tiles, dim]: the mean sentence embedding of each tile's captions (an empty caption for none)."""
    return encoder.embed_groups([s or [""] for s in sentences], progress)


__all__ = ["ClipFeatures", "ColorHistogram", "denormalise", "check_twin", "twin_checkpoint", "twin_source",
           "same_preprocessing", "sentence_encoder", "caption_features"]
