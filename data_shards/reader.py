"""Streaming reader of shard folders (docs/shard-format.md) for the trainer and the eval workers.

Each DataLoader worker runs one webdataset pipeline of small stages (shared STYLE.md habit 10):

    shard list, shuffled with (seed, epoch, pass)       same order on every rank (docs/pitfalls.md)
    -> split by node (rank, world_size passed in)      then by worker: slot = rank + world_size * worker
    -> tarfile_to_samples(handler=our counter)          unreadable shards are counted, not fatal
    -> only samples (drop webdataset's `{}` end-of-shard markers, docs/pitfalls.md)
    -> sample shuffle buffer, seeded with (seed, epoch, rank, worker, pass)
    -> skip the samples consumed before a resume (read, not decoded)
    -> decode + transform + tokenize, skipping corrupt samples by reason (docs/pitfalls.md)
    -> batch, stop after this worker's share of `batches_per_epoch`

Equal batches per rank. Training gives every rank exactly `batches_per_epoch = samples // (batch_size *
world_size)` batches, so collectives never wait for a rank that ran dry. Batch i of an epoch comes from worker
i % workers (the DataLoader takes workers round robin), so each worker knows how many batches it owes and stops
there: the job of webdataset's `with_epoch`, done per worker by our batch stage, which also lets the resume skip
sit inside the pipeline. A worker whose shards hold fewer samples than that keeps going with another pass over
the shard list (reshuffled, split the same way; the shuffle buffer drains at the end of each pass); a shard
list shorter than ranks x workers is repeated within a pass so every worker gets one. If every sample count
divides evenly, the first pass is exactly one epoch: each sample once across all ranks; else
a few samples are seen twice and a few not at all in that epoch (the open_clip trade-off, without its hangs).
Resampled mode draws shards with replacement (webdataset's ResampledShards, deterministic seeds) instead.

Exact resume. The position is (epoch, batches_done) plus, per worker, how many raw samples left its shuffle
buffer up to its last delivered batch (`consumed`, which counts samples later dropped as corrupt). A resumed
pipeline reproduces the same stream and skips those samples without decoding them. The worker serving
batch i must stay i % workers, so after n batches physical worker w plays the role of worker (w + n) % workers.
Same world size and worker count required; the state is per rank (each rank saves its own).

Caption policy (`LoaderConfig.caption`): the tokenized text is the shard's `txt` (all sentences joined), or one
sentence of the json's `sentences`, chosen by a hash of (seed, key[, epoch]): the same on every rank and after
a resume, redrawn each epoch (`random_sentence`) or fixed for the run (`fixed_sentence`, UrbanCLIP's loader).

Views (`LoaderConfig.views`): with V >= 2 each decoded tile goes through the image transform V times, so a sample
carries V independently augmented views ([V, 3, H, W], a batch [B, V, 3, H, W]) for two-view losses (SimCLR).
The draws come one after the other from the worker's torch RNG, which the loader seeds per iteration from
(seed, epoch, rank, batches_done) (with `workers: 0`, the main process's RNG, seeded by the trainer's run.seed):
the views are reproducible for a seed and for a resumed position, as the single view is (a resumed run draws
anew from its position; it does not replay the interrupted run's draws).

Evaluation (`train=False`): shards in manifest order, no shuffle, no augmentation, no repetition, every sample
exactly once across ranks; the last batch of a worker may be short.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import PIL.Image
import torch
import webdataset as wds
from torch.utils.data import DataLoader, default_collate, get_worker_info

from configs.data import LoaderConfig
from configs.loader import ConfigError
from data_shards import s3_gopen
from data_shards.format import MANIFEST_NAME, SCHEMA_VERSION
from data_shards.storage import read_bytes

s3_gopen.register()  # at import time: spawned workers import this module when they unpickle the pipeline

log = logging.getLogger(__name__)
BUILD_HINT = "run `cityscale shards build` first"


# ----------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class Manifest:
    """The parsed `manifest.json` of a shard folder at `uri`."""
    uri: str
    shards: list[dict]
    indicators: list[str]
    cities: list[str]
    raw: dict

    def split_shards(self, split: str) -> list[dict]:
        found = [s for s in self.shards if s["split"] == split]
        if not found:
            raise ConfigError(f"manifest {self.uri}/{MANIFEST_NAME} lists no {split!r} shards: {BUILD_HINT} "
                              f"with a non-zero {split} ratio")
        return found

    def shard_urls(self, split: str) -> list[str]:
        return [f"{self.uri}/{s['name']}" for s in self.split_shards(split)]

    def samples(self, split: str) -> int:
        return sum(s["samples"] for s in self.split_shards(split))


def read_manifest(shards_uri: str) -> Manifest:
    """Read `{shards_uri}/manifest.json` (local path, file:// or s3://). Raises ConfigError naming the path."""
    uri = shards_uri.rstrip("/")
    path = f"{uri}/{MANIFEST_NAME}"
    try:
        raw = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise ConfigError(f"no manifest at {path}: {BUILD_HINT} (it is written last, when a build is complete)"
                          ) from None
    except ValueError as e:
        raise ConfigError(f"manifest {path} is not valid JSON ({e}): {BUILD_HINT} again") from None
    if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
        found = raw.get("schema_version") if isinstance(raw, dict) else None
        raise ConfigError(f"manifest {path} has schema_version {found!r}, this reader reads {SCHEMA_VERSION}: "
                          f"{BUILD_HINT} with this version of cityscale")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not all(_is_shard_entry(s) for s in shards):
        raise ConfigError(f"manifest {path}: 'shards' must be a list of {{name, split, samples, ...}}: {BUILD_HINT}")
    return Manifest(uri=uri, shards=shards, indicators=list(raw.get("indicators", [])),
                    cities=list(raw.get("cities", [])), raw=raw)


def _is_shard_entry(s: Any) -> bool:
    return (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("split"), str)
            and isinstance(s.get("samples"), int) and s["samples"] >= 0)


# ----------------------------------------------------------------------------- what travels from workers

@dataclass
class Batch:
    images: torch.Tensor        # [B, 3, H, W] float32 as returned by image_transform; [B, V, 3, H, W] with V views
    texts: torch.Tensor         # [B, L] int64 token ids
    keys: list[str]
    meta: list[dict] | None     # the sample json dicts, only with with_meta=True
    skipped: dict[str, int]     # samples skipped by reason since this worker's previous batch


class _Delivery(NamedTuple):
    """A batch (None: only skip counts, at the end of an evaluation stream) plus the position of the logical
    worker that made it, for the loader's state."""
    batch: Batch | None
    worker: int
    consumed: int
    skipped: dict[str, int]


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to build its part of one epoch (pickled into each worker)."""
    urls: tuple[str, ...]
    rank: int
    world_size: int
    workers: int                        # logical workers (>= 1; 1 when the DataLoader runs in-process)
    epoch: int
    seed: int
    train: bool
    resampled: bool
    shuffle_buffer: int
    batch_size: int
    offset: int                         # batches already delivered this epoch: rotates worker roles
    skip: tuple[int, ...]               # raw samples each logical worker consumed before this iteration
    remaining: tuple[int, ...] | None   # batches each logical worker still owes (None: until its data ends)
    with_meta: bool
    caption: str                        # LoaderConfig.caption: join | random_sentence | fixed_sentence
    views: int                          # LoaderConfig.views: transformed views per tile
    image_transform: Callable[[PIL.Image.Image], torch.Tensor]
    tokenize: Callable[[str], torch.Tensor]


class _Stats:
    """Per-worker counters shared by the stages of one pipeline."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.usable = 0         # samples decoded or skipped for a resume (progress guard)
        self.consumed = 0       # samples out of the shuffle buffer, skipped ones included (resume position)

    def read_error(self, exn: Exception) -> bool:
        """webdataset handler for shard-level errors: count, log, continue with the next member or shard."""
        if isinstance(exn, FileNotFoundError):
            reason = "missing_shard"
        elif isinstance(exn, ValueError) and "duplicate" in str(exn):
            reason = "duplicate_member"
        else:
            reason = "bad_tar"
        self.skipped[reason] += 1
        log.warning("skipping unreadable shard data (%s): %s", reason, exn)
        return True

    def take_skipped(self) -> dict[str, int]:
        out = dict(self.skipped)
        self.skipped.clear()
        return out


# ----------------------------------------------------------------------------- stages (run in the workers)

def _seed(*parts: Any) -> int:
    """A 63-bit seed from the parts, the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _logical_worker(plan: _Plan) -> int:
    info = get_worker_info()
    return ((info.id if info is not None else 0) + plan.offset) % plan.workers


def _split(src: Iterable, part: int, parts: int) -> Iterator:
    """Every `parts`-th item starting at `part` (webdataset's split_by_node/worker, with explicit ids)."""
    return itertools.islice(src, part, None, parts)


def _cover_slots(src: Iterable[dict], slots: int) -> Iterator[dict]:
    """Repeat a shard list shorter than the number of (rank, worker) slots so that every slot gets a shard."""
    items = list(src)
    yield from items * -(-slots // len(items))


def _only_samples(src: Iterable[dict]) -> Iterator[dict]:
    """Drop webdataset's end-of-shard markers `{}` (and anything else that is not a sample)."""
    return (sample for sample in src if "__key__" in sample)


def _pass_pipeline(plan: _Plan, worker: int, pass_index: int, stats: _Stats) -> wds.DataPipeline:
    """One pass of this worker over its shards, as raw (undecoded) samples."""
    urls = list(plan.urls)
    if plan.resampled:
        per_slot = -(-len(urls) // (plan.world_size * plan.workers))
        seed = _seed(plan.seed, plan.epoch, plan.rank, pass_index)
        shards = [wds.ResampledShards(urls, nshards=per_slot, seed=seed, worker_seed=lambda: worker,
                                      deterministic=True)]
    else:
        order = _seed(plan.seed, plan.epoch, pass_index) if plan.train else None  # common to all ranks
        cover = [partial(_cover_slots, slots=plan.world_size * plan.workers)] if plan.train else []
        shards = [wds.SimpleShardList(urls, seed=order), *cover,
                  partial(_split, part=plan.rank, parts=plan.world_size),  # by node first,
                  partial(_split, part=worker, parts=plan.workers)]        # then by worker
    shuffle = []
    if plan.train and plan.shuffle_buffer:
        rng = random.Random(_seed(plan.seed, plan.epoch, plan.rank, worker, pass_index))
        shuffle = [wds.shuffle(plan.shuffle_buffer, initial=plan.shuffle_buffer, rng=rng)]
    return wds.DataPipeline(shards, wds.tarfile_to_samples(handler=stats.read_error), _only_samples, shuffle)


def _worker_samples(plan: _Plan, stats: _Stats) -> Iterator[dict]:
    """This worker's raw samples: one pass (eval) or pass after pass (train, until the batch stage stops)."""
    worker = _logical_worker(plan)
    empty_passes = 0
    for pass_index in itertools.count() if plan.train else range(1):
        before = stats.usable
        yield from _pass_pipeline(plan, worker, pass_index, stats)  # drained downstream before it returns
        empty_passes = empty_passes + 1 if stats.usable == before else 0
        if empty_passes > len(plan.urls):  # otherwise an all-corrupt shard set would spin forever
            raise RuntimeError(f"rank {plan.rank} worker {worker}: no readable sample in {empty_passes} passes "
                               f"over {len(plan.urls)} shards (skipped: {dict(stats.skipped)}): rebuild the shards")


def _skip_consumed(src: Iterable[dict], plan: _Plan, stats: _Stats) -> Iterator[dict]:
    """Drop the samples this worker consumed before the resume point, undecoded; track the position."""
    stats.consumed = plan.skip[_logical_worker(plan)]
    for position, sample in enumerate(src, start=1):
        if position > stats.consumed:
            stats.consumed = position
            yield sample
        else:
            stats.usable += 1


def _caption(joined: str, meta: dict, key: str, plan: _Plan) -> str:
    """The text of a sample under the caption policy: all sentences, or one drawn by a seeded hash of the key
    (and, for random_sentence, of the epoch), so that a resumed run picks the same sentence again."""
    sentences = [s for s in meta.get("sentences") or [] if isinstance(s, str) and s.strip()]
    if plan.caption == "join" or not sentences:
        return joined
    epoch = () if plan.caption == "fixed_sentence" else (plan.epoch,)
    return sentences[_seed("caption", plan.seed, key, *epoch) % len(sentences)].strip()


def _decode_sample(sample: dict, plan: _Plan) -> tuple | str:
    """(key, image, tokens, meta) or the reason why the sample is skipped."""
    for ext in ("jpg", "txt", "json"):
        if ext not in sample:
            return f"missing_{ext}"
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return "bad_json"
    if not isinstance(meta, dict):
        return "bad_json"
    try:
        caption = sample["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "bad_txt"
    if not caption:
        return "empty_txt"
    try:
        image = PIL.Image.open(io.BytesIO(sample["jpg"]))  # in memory: nothing to close
        image.load()  # the full decode: truncated files fail here
        if image.mode != "RGB":  # converting an RGB image would only copy it
            image = image.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        return "bad_jpg"
    tokens = plan.tokenize(_caption(caption, meta, sample["__key__"], plan))
    if tokens.dim() != 1:
        raise TypeError(f"tokenize must return a 1-D LongTensor [L] for one caption, got shape {tuple(tokens.shape)}")
    return sample["__key__"], _views(image, plan), tokens, meta


def _views(image: PIL.Image.Image, plan: _Plan) -> torch.Tensor:
    """The transformed tile ([3, H, W]), or `views` independent draws of the transform stacked ([V, 3, H, W])."""
    if plan.views == 1:
        return plan.image_transform(image)
    return torch.stack([plan.image_transform(image) for _ in range(plan.views)])


def _decode(src: Iterable[dict], plan: _Plan, stats: _Stats) -> Iterator[tuple]:
    for sample in src:
        item = _decode_sample(sample, plan)
        if isinstance(item, str):
            stats.skipped[item] += 1
        else:
            stats.usable += 1
            yield item


def _batches(src: Iterable[tuple], plan: _Plan, stats: _Stats) -> Iterator[_Delivery]:
    """Batches of `batch_size`; in training exactly as many as this worker owes, then stop reading."""
    worker = _logical_worker(plan)
    owed = plan.remaining[worker] if plan.remaining is not None else None
    made, items = 0, []
    if owed == 0:
        return
    for item in src:
        items.append(item)
        if len(items) == plan.batch_size:
            yield _deliver(items, worker, plan, stats)
            made, items = made + 1, []
            if made == owed:
                return
    if items or stats.skipped:  # evaluation: the short last batch, or the skip counts after the last batch
        yield _deliver(items, worker, plan, stats)


def _deliver(items: list[tuple], worker: int, plan: _Plan, stats: _Stats) -> _Delivery:
    skipped = stats.take_skipped()
    if not items:
        return _Delivery(None, worker, stats.consumed, skipped)
    keys, images, texts, metas = zip(*items)
    batch = Batch(images=default_collate(images), texts=default_collate(texts), keys=list(keys),
                  meta=list(metas) if plan.with_meta else None, skipped=skipped)
    return _Delivery(batch, worker, stats.consumed, skipped)


# ----------------------------------------------------------------------------- the loader (main process)

def _owed(worker: int, workers: int, batches: int) -> int:
    """How many of batches 0..batches-1 come from logical worker `worker` (batch i from worker i % workers)."""
    return max(0, (batches - worker + workers - 1) // workers)


class ShardLoader:
    """One rank's stream of `Batch`es over one split; one epoch per `iter()`, resumable via state_dict."""

    def __init__(self, cfg: LoaderConfig, manifest: Manifest, *, batch_size: int, rank: int, world_size: int,
                 image_transform: Callable[[PIL.Image.Image], torch.Tensor],
                 tokenize: Callable[[str], torch.Tensor], train: bool = True, with_meta: bool = False) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, "
                             f"{world_size}")
        self.cfg, self.train, self.with_meta = cfg, train, with_meta
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self._transform, self._tokenize = image_transform, tokenize
        self._urls = tuple(manifest.shard_urls(cfg.split))
        self._workers = max(1, cfg.workers)
        self.batches_per_epoch = self._count_batches(manifest)
        self.skipped_total: dict[str, int] = {}
        self._epoch, self._batches_done, self._consumed = 0, 0, [0] * self._workers

    def _count_batches(self, manifest: Manifest) -> int:
        shards = manifest.split_shards(self.cfg.split)
        if not self.train:  # each worker's samples in batches, its last one short (upper bound if any is corrupt)
            mine = list(_split(shards, self.rank, self.world_size))
            return sum(-(-sum(s["samples"] for s in _split(mine, w, self._workers)) // self.batch_size)
                       for w in range(self._workers))
        samples, per_step = manifest.samples(self.cfg.split), self.batch_size * self.world_size
        if samples < per_step:
            raise ConfigError(f"split {self.cfg.split!r} of {manifest.uri} has {samples} samples, fewer than "
                              f"batch_size x world_size = {per_step}: lower the batch size")
        return samples // per_step

    # -- position

    def state_dict(self) -> dict:
        """This rank's position (save one per rank): the next iteration continues right after it."""
        return {"epoch": self._epoch, "batches_done": self._batches_done, "consumed": list(self._consumed),
                "skipped_total": dict(self.skipped_total), "rank": self.rank, "world_size": self.world_size,
                "workers": self._workers}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position. `{"epoch", "batches_done"}` alone assumes no corrupt sample before the position;
        a full `state_dict()` is exact in every case."""
        if not self.train:
            raise ValueError("evaluation loaders always read the whole split: they have no position to restore")
        saved = {k: state[k] for k in ("rank", "world_size", "workers") if k in state}
        mine = {"rank": self.rank, "world_size": self.world_size, "workers": self._workers}
        if any(saved[k] != mine[k] for k in saved):
            raise ValueError(f"loader state saved with {saved} cannot resume a loader with {mine}: "
                             "save one state per rank and keep world size and workers")
        self._epoch, self._batches_done = int(state["epoch"]), int(state["batches_done"])
        derived = [_owed(w, self._workers, self._batches_done) * self.batch_size for w in range(self._workers)]
        self._consumed = [int(c) for c in state.get("consumed", derived)]
        if len(self._consumed) != self._workers:
            raise ValueError(f"loader state has {len(self._consumed)} worker positions, this loader {self._workers}")
        self.skipped_total = dict(state.get("skipped_total", {}))

    # -- iteration

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:  # evaluation always reads the whole split
            self._batches_done, self._consumed = 0, [0] * self._workers
        elif self._batches_done >= self.batches_per_epoch:  # a position at the end of an epoch
            self._next_epoch()
        loader = DataLoader(self._pipeline(), batch_size=None, num_workers=self.cfg.workers,
                            generator=torch.Generator().manual_seed(  # augmentation seeds of the workers
                                _seed("augment", self.cfg.seed, self._epoch, self.rank, self._batches_done)))
        for delivery in loader:
            for reason, n in delivery.skipped.items():
                self.skipped_total[reason] = self.skipped_total.get(reason, 0) + n
            if delivery.batch is not None:
                self._consumed[delivery.worker] = delivery.consumed
                self._batches_done += 1
                yield delivery.batch
        self._next_epoch()

    def _next_epoch(self) -> None:
        self._epoch, self._batches_done, self._consumed = self._epoch + 1, 0, [0] * self._workers

    def _pipeline(self) -> wds.DataPipeline:
        done = self._batches_done
        remaining = None
        if self.train:
            remaining = tuple(_owed(w, self._workers, self.batches_per_epoch) - _owed(w, self._workers, done)
                              for w in range(self._workers))
        plan = _Plan(urls=self._urls, rank=self.rank, world_size=self.world_size, workers=self._workers,
                     epoch=self._epoch, seed=self.cfg.seed, train=self.train,
                     resampled=self.train and self.cfg.resampled, shuffle_buffer=self.cfg.shuffle_buffer,
                     batch_size=self.batch_size, offset=done, skip=tuple(self._consumed), remaining=remaining,
                     with_meta=self.with_meta, caption=self.cfg.caption, views=self.cfg.views,
                     image_transform=self._transform, tokenize=self._tokenize)
        stats = _Stats()
        return wds.DataPipeline(partial(_worker_samples, plan, stats), partial(_skip_consumed, plan=plan, stats=stats),
                                partial(_decode, plan=plan, stats=stats), partial(_batches, plan=plan, stats=stats))


__all__ = ["Manifest", "read_manifest", "Batch", "ShardLoader"]
