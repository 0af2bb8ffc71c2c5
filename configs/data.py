"""Config sections of the shard reader (`data_shards/reader.py`): how the trainer and the eval workers stream
shards. One frozen dataclass per section (shared STYLE.md habit 4); the batch size, rank and world size are not
here: they belong to the trainer and are passed to the loader by its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from configs.loader import ConfigError, doc
from configs.shards import SPLITS


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Training-time augmentations of map tiles (tiles have no canonical orientation, so flips and 90-degree
    rotations keep them realistic)."""

    random_resized_crop_scale: tuple[float, float] = doc(
        "area fraction range of the random resized crop, 0 < low <= high <= 1; [1.0, 1.0] = no crop (resize "
        "and centre-crop the whole tile, UrbanCLIP's transform)", default=(0.6, 1.0))
    hflip: bool = doc("random horizontal flip (p=0.5)", default=True)
    vflip: bool = doc("random vertical flip (p=0.5)", default=True)
    rot90: bool = doc("random rotation by a multiple of 90 degrees", default=True)

    def validate(self, path: str) -> None:
        key = f"{path}.random_resized_crop_scale" if path else "random_resized_crop_scale"
        scale = self.random_resized_crop_scale
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"config key {key!r}: {list(scale)} must be [low, high] with 0 < low <= high <= 1")


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How one rank streams one split of a shard folder."""

    split: str = doc("which split to read: train, val or test", default="train")
    workers: int = doc("DataLoader worker processes (decode, augment and tokenize run there); 0 = in-process",
                       default=2)
    shuffle_buffer: int = doc("sample shuffle buffer per worker (0 = off); training only", default=1000)
    resampled: bool = doc("sample shards with replacement instead of a shuffled pass over all shards",
                          default=False)
    seed: int = doc("common seed: the same shard order on every rank for a given epoch", default=0)
    caption: Literal["join", "random_sentence", "fixed_sentence"] = doc(
        "text of a tile: join = all its sentences (the shard's txt); random_sentence = one sentence, drawn "
        "anew every epoch; fixed_sentence = one sentence per tile for the whole run (UrbanCLIP's loader)",
        default="join")
    augment: AugmentConfig = doc("training augmentations", default=AugmentConfig())
    views: int = doc("augmented views of each tile: 1 = images [B, 3, H, W]; V >= 2 = images [B, V, 3, H, W], "
                     "each view an independent draw of the same augmentations (two-view losses such as "
                     "loss.kind simclr; the trainer checks that this matches its loss)", default=1)

    def validate(self, path: str) -> None:
        def key(name: str) -> str:
            return f"{path}.{name}" if path else name

        if self.split not in SPLITS:
            raise ConfigError(f"config key {key('split')!r}: {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.workers < 0:
            raise ConfigError(f"config key {key('workers')!r}: {self.workers} must be >= 0")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"config key {key('shuffle_buffer')!r}: {self.shuffle_buffer} must be >= 0 (0 = off)")
        if self.views < 1:
            raise ConfigError(f"config key {key('views')!r}: {self.views} must be >= 1")
        self.augment.validate(key("augment"))


__all__ = ["AugmentConfig", "LoaderConfig"]
