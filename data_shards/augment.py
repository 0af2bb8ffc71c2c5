"""Image transforms for map tiles: PIL tile -> normalised float tensor [3, H, W].

Tiles are top-down views with no canonical orientation, so besides the random resized crop CLIP uses we flip both
ways and rotate by multiples of 90 degrees (exact, no interpolation, no black corners). Evaluation resizes and
centre-crops only. The transforms run in DataLoader workers, so they are module-level and picklable; their
randomness comes from torch's RNG, which the DataLoader seeds per worker.
"""

from __future__ import annotations

from collections.abc import Callable

import PIL.Image
import torch
import torchvision.transforms.v2 as v2

from configs.data import AugmentConfig


class RandomRot90:
    """Rotate an image tensor [..., H, W] by k * 90 degrees, k uniform in 0..3."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img

    def __repr__(self) -> str:
        return "RandomRot90()"


def tile_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
                   augment: AugmentConfig) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """The tile transform for training (`train=True`, augmented) or evaluation (resize + centre crop)."""
    whole_tile = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train:
        crop = tuple(augment.random_resized_crop_scale) != (1.0, 1.0)  # scale [1, 1]: the whole tile, as UrbanCLIP
        geometry: list[Callable] = ([v2.RandomResizedCrop(image_size, scale=augment.random_resized_crop_scale,
                                                          antialias=True)] if crop else whole_tile)
        geometry += [v2.RandomHorizontalFlip()] if augment.hflip else []
        geometry += [v2.RandomVerticalFlip()] if augment.vflip else []
    else:
        geometry = whole_tile
    # geometry runs on PIL (uint8, fast resampling); rotation and normalisation on the tensor
    rotation = [RandomRot90()] if train and augment.rot90 else []
    return v2.Compose([*geometry, v2.PILToTensor(), *rotation, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(mean), std=list(std))])


__all__ = ["tile_transform", "RandomRot90"]
