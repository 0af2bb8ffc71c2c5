"""Image transforms for map tiles: PIL tile -> normalised float tensor [3, S, S].

Tiles are top-down views with no canonical orientation, so besides the random resized crop CLIP uses we flip both
ways and rotate by multiples of 90 degrees (exact, no interpolation, no black corners). Evaluation resizes the
central square to S x S (for square tiles: exactly torchvision's Resize(S) + CenterCrop(S)).

The transform runs once per sample in the DataLoader workers, beside the training compute on the same cores, so
it is one class doing the least work per tile (docs/benchmarks.md, "Trainer throughput"): crop and resize in
one Pillow call on uint8 pixels (Pillow's resampling is antialiased when it shrinks, as torchvision's
`antialias=True` on PIL images is the same call), flips and the rotation as Pillow transposes of the small
resized tile (exact pixel moves, cheaper than `torch.rot90` on the tensor), then the pixel bytes viewed as
a tensor (what torchvision's `pil_to_tensor` returns, without its numpy round trip) and a fused normalisation.
Its random numbers are one `torch.rand` draw per tile (torch's RNG, which the DataLoader seeds per worker)
instead of torchvision's ~10 small tensor ops per crop; the crop follows torchvision's
`RandomResizedCrop.get_params` (area fraction uniform in the scale range, log aspect ratio uniform in
[3/4, 4/3], 10 attempts, then a central crop).
"""

from __future__ import annotations

import math

import PIL.Image
import torch

from configs.data import AugmentConfig

ATTEMPTS = 10  # crop draws before the central-crop fallback (torchvision's RandomResizedCrop)
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio range of the random crop (torchvision's default)
Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels (Pillow's box)
# counter-clockwise quarter turns as Pillow transposes (torch.rot90's direction on [C, H, W])
_TURNS = (None, PIL.Image.Transpose.ROTATE_90, PIL.Image.Transpose.ROTATE_180, PIL.Image.Transpose.ROTATE_270)


def random_crop_box(width: int, height: int, scale: tuple[float, float], u: list[float]) -> Box:
    """torchvision's RandomResizedCrop.get_params, driven by 2 x ATTEMPTS + 2 uniform numbers `u` in [0, 1)."""
    area, log_lo, log_hi = width * height, math.log(RATIO[0]), math.log(RATIO[1])
    for a in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * a])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * a + 1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(u[-2] * (height - h + 1)), int(u[-1] * (width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height  # fallback: the largest central crop within the ratio range
    w, h = ((width, round(width / RATIO[0])) if ratio < RATIO[0] else
            (round(height * RATIO[1]), height) if ratio > RATIO[1] else (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_square(width: int, height: int) -> Box:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


class TileTransform:
    """PIL tile -> normalised float32 tensor [3, size, size]; augmented when `train` (a class: workers pickle it)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
                 augment: AugmentConfig) -> None:
        self.size, self.train, self.augment = size, train, augment
        self.scale = tuple(augment.random_resized_crop_scale)
        self.crop = train and self.scale != (1.0, 1.0)  # [1, 1]: the whole tile
        # x / 255 then (x - mean) / std, fused: (x - 255 mean) * 1 / (255 std)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.factor = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        crop_u, (hflip_u, vflip_u, rot_u) = _draws() if self.train else ([], (1.0, 1.0, 0.0))
        box = random_crop_box(*image.size, self.scale, crop_u) if self.crop else centre_square(*image.size)
        image = image.resize((self.size, self.size), PIL.Image.Resampling.BILINEAR, box=box)
        if self.augment.hflip and hflip_u < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if self.augment.vflip and vflip_u < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_TOP_BOTTOM)
        turns = int(rot_u * 4) if self.augment.rot90 else 0
        if turns:
            image = image.transpose(_TURNS[turns])
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)  # a writable copy: HWC bytes
        return (pixels.view(self.size, self.size, -1).permute(2, 0, 1).float() - self.shift).mul_(self.factor)


def _draws() -> tuple[list[float], tuple[float, float, float]]:
    """One tile's random numbers from torch's RNG in one call: the crop's, then horizontal flip, vertical flip
    and rotation."""
    u = torch.rand(2 * ATTEMPTS + 5).tolist()
    return u[:2 * ATTEMPTS + 2], (u[-3], u[-2], u[-1])


def tile_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
                   augment: AugmentConfig) -> TileTransform:
    """The tile transform for training (`train=True`, augmented) or evaluation (central square resized)."""
    return TileTransform(image_size, mean, std, train, augment)


__all__ = ["tile_transform", "TileTransform", "random_crop_box", "centre_square"]
