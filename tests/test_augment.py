"""Tile transforms (data_shards/augment.py): evaluation equals torchvision's pipeline, training draws crops as
torchvision's RandomResizedCrop does and reaches all eight flips/rotations of a tile."""

from __future__ import annotations

import math
import random

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms.v2 as v2
from torchvision.transforms import RandomResizedCrop

from configs.data import AugmentConfig
from data_shards.augment import ATTEMPTS, RATIO, random_crop_box, tile_transform

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _tile(width: int = 48, height: int = 48) -> PIL.Image.Image:
    """An asymmetric tile: no flip or rotation maps it onto itself."""
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _torchvision_eval(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(MEAN), std=list(STD))])


@pytest.mark.parametrize("size", [16, 32, 48])
def test_eval_transform_equals_torchvisions_resize_centre_crop_normalise(size):
    tile = _tile()
    ours = tile_transform(size, MEAN, STD, False, AugmentConfig())(tile)
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _torchvision_eval(size)(tile), atol=1e-5, rtol=0)


def test_whole_tile_training_without_flips_is_the_eval_transform():
    tile = _tile(40, 30)  # not square: the central square, resized
    still = AugmentConfig(random_resized_crop_scale=(1.0, 1.0), hflip=False, vflip=False, rot90=False)
    train, evaluate = (tile_transform(16, MEAN, STD, t, still) for t in (True, False))
    assert evaluate(tile).shape == (3, 16, 16) and torch.equal(train(tile), evaluate(tile))


def test_training_reaches_all_eight_orientations_and_is_seeded_by_torch():
    tile = _tile()
    no_crop = AugmentConfig(random_resized_crop_scale=(1.0, 1.0))
    train = tile_transform(16, MEAN, STD, True, no_crop)
    torch.manual_seed(0)
    outs = [train(tile) for _ in range(200)]
    assert len({o.numpy().tobytes() for o in outs}) == 8  # the dihedral group of the square
    torch.manual_seed(0)
    assert all(torch.equal(a, train(tile)) for a in outs[:20])


def test_random_crops_follow_torchvisions_distribution():
    """Every box lies inside the tile with area and aspect in range; mean area fraction matches torchvision's
    RandomResizedCrop.get_params on the same tile size."""
    scale, (w, h) = (0.3, 1.0), (64, 48)
    rnd = random.Random(0)
    ours = [random_crop_box(w, h, scale, [rnd.random() for _ in range(2 * ATTEMPTS + 2)]) for _ in range(4000)]
    for left, top, right, bottom in ours:
        cw, ch = right - left, bottom - top
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        fallback = (cw, ch) == (w, h)
        assert fallback or scale[0] - 0.05 <= cw * ch / (w * h) <= scale[1] + 0.05
        assert fallback or RATIO[0] - 0.05 <= cw / ch <= RATIO[1] + 0.05
    torch.manual_seed(0)
    image = torch.zeros(3, h, w)
    theirs = [RandomResizedCrop.get_params(image, list(scale), list(RATIO)) for _ in range(4000)]
    mean_ours = np.mean([(r - l) * (b - t) / (w * h) for l, t, r, b in ours])
    mean_theirs = np.mean([ch * cw / (w * h) for _, _, ch, cw in theirs])
    assert math.isclose(mean_ours, mean_theirs, abs_tol=0.02), (mean_ours, mean_theirs)
    centres_x = np.mean([(l + r) / 2 for l, _, r, _ in ours])
    assert math.isclose(centres_x, w / 2, abs_tol=1.0)


def test_crop_falls_back_to_the_central_crop_within_the_ratio_range():
    never = [0.999] * (2 * ATTEMPTS) + [0.5, 0.5]  # full area at the widest aspect never fits a 64 x 16 tile
    left, top, right, bottom = random_crop_box(64, 16, (1.0, 1.0), never)
    assert (bottom - top, right - left) == (16, round(16 * RATIO[1])) and left == (64 - (right - left)) // 2
