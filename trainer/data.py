"""The trainer's side of the shard reader: an endless stream of step batches with a resumable position.

One loader batch is one rank's share of an optimizer step (global_batch / ranks samples); the feature-cache
accumulation cuts it into micro-batches. Epochs are chained here (the reader yields one epoch per
iteration), and the position saved in checkpoints is the reader's own `state_dict()`, taken right after
the step's batch was consumed, so a resumed run continues with the next unseen batch.
"""

from __future__ import annotations

from collections.abc import Iterator

from configs.data import LoaderConfig
from data_shards.jsonl_log import REMOTE_FLUSH_SECONDS, JsonlLog
from data_shards.reader import Batch, Manifest, ShardLoader
from data_shards.tokenize import CaptionTokenizer
from trainer.model import BuiltModel, train_transform


class DataStream:
    """Batches of one rank, epoch after epoch."""

    def __init__(self, loader: ShardLoader) -> None:
        self.loader = loader
        self._it: Iterator[Batch] | None = None

    def next(self) -> Batch:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            batch = next(self._it, None)
            if batch is not None:
                return batch
            self._it = None  # epoch done: the reader has moved its position to the next epoch

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None


def build_stream(cfg: LoaderConfig, manifest: Manifest, built: BuiltModel, *, per_rank_batch: int, rank: int,
                 world_size: int) -> DataStream:
    loader = ShardLoader(cfg, manifest, batch_size=per_rank_batch, rank=rank, world_size=world_size,
                         image_transform=train_transform(built, cfg.augment),
                         tokenize=CaptionTokenizer(built.tokenizer), train=True)
    return DataStream(loader)


class KeyLog:
    """Appends `{"step", "keys"}` per step to a JSONL log (debug.log_sample_keys); checks exact resume."""

    def __init__(self, uri: str) -> None:
        self._log = JsonlLog(uri, remote_seconds=REMOTE_FLUSH_SECONDS)

    def log(self, step: int, keys: list[str]) -> None:
        self._log.append({"step": step, "keys": keys})

    def close(self) -> None:
        self._log.close()


class NullKeyLog:
    def log(self, step: int, keys: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def key_log(enabled: bool, run_dir: str, rank: int) -> KeyLog | NullKeyLog:
    return KeyLog(f"{run_dir.rstrip('/')}/debug/keys-rank{rank}.jsonl") if enabled else NullKeyLog()


__all__ = ["DataStream", "build_stream", "KeyLog", "NullKeyLog", "key_log"]
