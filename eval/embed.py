"""The embedding pass: stream one split of a shard folder once and keep everything the probes need.

One pass per split feeds every feature extractor (checkpoint towers, random-init towers, colour histograms) from
the same decoded batch, and keeps the sample metadata (city, tile x/y, indicators, sentences) plus a few
thumbnails for the report. Reading goes through the project's reader (`data_shards.reader.ShardLoader` in
evaluation mode: manifest order, no augmentation, every sample once), so a corrupt sample is skipped and
counted exactly as in training.

Bounded cost: `max_rows` (the train split's cap) keeps whole shards spread evenly over the split's shard list
until the cap is reached, rather than the first shards only: shards are key-sorted, so the first ones would be
one strip of one city.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from configs.data import AugmentConfig, LoaderConfig
from configs.eval import EvalConfig
from data_shards.augment import tile_transform
from data_shards.reader import Manifest, ShardLoader
from data_shards.tokenize import CaptionTokenizer
from eval.baselines import denormalise
from eval.checkpoints import LoadedModel

Extractor = Callable[[torch.Tensor, torch.Tensor], dict[str, np.ndarray]]


@dataclass
class SplitData:
    """One split's tiles in reading order: metadata, features by name, and thumbnails of a few rows."""

    split: str
    keys: list[str] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)
    xy: list[tuple[int, int]] = field(default_factory=list)
    indicators: dict[str, list[float]] = field(default_factory=dict)
    sentences: list[list[str]] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    thumbs: dict[int, np.ndarray] = field(default_factory=dict)  # row -> uint8 [H, W, 3]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.keys)

    def rows_of(self, city: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.cities) == city)

    def values(self, indicator: str) -> np.ndarray:
        return np.asarray(self.indicators.get(indicator, [np.nan] * len(self)), dtype=float)


def spread_shards(manifest: Manifest, split: str, max_rows: int) -> Manifest:
    """The manifest restricted to the split's shards, every k-th one, just enough to hold `max_rows` samples."""
    shards = manifest.split_shards(split)
    total = sum(s["samples"] for s in shards)
    if total <= max_rows:
        return replace(manifest, shards=shards)
    keep = max(1, int(np.ceil(len(shards) * max_rows / total)))
    picked = [shards[int(i)] for i in np.unique(np.linspace(0, len(shards) - 1, keep).round().astype(int))]
    return replace(manifest, shards=picked)


def _append_meta(data: SplitData, keys: list[str], metas: list[dict], names: list[str]) -> None:
    for key, meta in zip(keys, metas):
        data.keys.append(key)
        data.cities.append(str(meta.get("city", "")))
        data.xy.append((int(meta.get("x", 0)), int(meta.get("y", 0))))
        data.sentences.append(list(meta.get("sentences") or []))
        values = meta.get("indicators") or {}
        for name in names:
            v = values.get(name)
            data.indicators.setdefault(name, []).append(np.nan if v is None else float(v))


def embed_split(manifest: Manifest, split: str, extractors: list[Extractor], model: LoadedModel, cfg: EvalConfig,
                *, thumbs: int = 0, max_rows: int | None = None, progress: bool = True) -> SplitData:
    """Stream `split` once through every extractor; keep `thumbs` evenly spaced thumbnails."""
    start = time.perf_counter()
    source = spread_shards(manifest, split, max_rows) if max_rows else manifest
    expected = source.samples(split)
    want = set(np.linspace(0, expected - 1, thumbs).round().astype(int).tolist()) if thumbs else set()
    loader = ShardLoader(LoaderConfig(split=split, workers=cfg.loader_workers, shuffle_buffer=0), source,
                         batch_size=cfg.batch_size, rank=0, world_size=1,
                         image_transform=tile_transform(model.image_size, model.mean, model.std, train=False,
                                                        augment=AugmentConfig()),
                         tokenize=CaptionTokenizer(model.tokenizer), train=False, with_meta=True)
    data = SplitData(split=split)
    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=expected, desc=f"embed {split}", unit="tile", disable=not progress, leave=False) as bar:
        for batch in loader:
            first = len(data)
            _append_meta(data, batch.keys, batch.meta or [], manifest.indicators)
            for extract in extractors:
                for name, arr in extract(batch.images, batch.texts).items():
                    parts.setdefault(name, []).append(arr)
            for row in sorted(r for r in want if first <= r < len(data)):
                px = denormalise(batch.images[row - first:row - first + 1], model.mean, model.std)[0]
                data.thumbs[row] = (px.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            bar.update(len(batch.keys))
    data.features = {name: np.concatenate(arrs) for name, arrs in parts.items()}
    data.skipped, data.seconds = dict(loader.skipped_total), time.perf_counter() - start
    return data


def embed_splits(manifest: Manifest, extractors: list[Extractor], model: LoadedModel, cfg: EvalConfig, *,
                 progress: bool = True) -> dict[str, SplitData]:
    """train (capped at `cfg.max_train_rows`), val (when the shards have one) and test (with the retrieval
    examples' thumbnails), each streamed once through every extractor, as a report embeds them."""
    splits = {"train": embed_split(manifest, "train", extractors, model, cfg, max_rows=cfg.max_train_rows,
                                   progress=progress)}
    if any(s["split"] == "val" for s in manifest.shards):
        splits["val"] = embed_split(manifest, "val", extractors, model, cfg, progress=progress)
    splits["test"] = embed_split(manifest, "test", extractors, model, cfg, thumbs=cfg.retrieval.examples,
                                 progress=progress)
    return splits


__all__ = ["SplitData", "spread_shards", "embed_split", "embed_splits"]
