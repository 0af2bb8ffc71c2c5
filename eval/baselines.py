"""Feature extractors for the probes: the checkpoint's towers, and the two baselines every report carries.

A reader of a report needs to see what pretraining added, so beside the checkpoint's own embeddings each report
probes (1) the same architecture with random weights (open_clip's initialisation, seeded; built from the same
exported config by `eval.checkpoints.load_model(weights=False)`) and (2) plain pixel statistics: per-channel
colour histograms of the very tensors the model sees, which on map tiles already carry a lot (green parks, grey
built-up area, blue water).

Each extractor maps a batch (images [B,3,H,W] normalised, tokens [B,L]) to named feature arrays, so the
embedding pass decodes every tile once and feeds all of them.
"""

from __future__ import annotations

import numpy as np
import torch


class ClipFeatures:
    """L2-normalised image and text embeddings of an open_clip model, named `{prefix}image` / `{prefix}text`."""

    def __init__(self, module: torch.nn.Module, prefix: str = "") -> None:
        self.module, self.prefix = module.eval(), prefix

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
        image = self.module.encode_image(images, normalize=True)
        text = self.module.encode_text(tokens, normalize=True)
        return {f"{self.prefix}image": image.float().numpy(), f"{self.prefix}text": text.float().numpy()}


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


__all__ = ["ClipFeatures", "ColorHistogram", "denormalise"]
