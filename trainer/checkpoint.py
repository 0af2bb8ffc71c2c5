"""Publishing checkpoints under RUN/checkpoints/step_{N}/ and resuming from the latest one.

A published checkpoint folder holds

    ds/                              DeepSpeed's files (model, optimizer and LR schedule; one set per rank)
    trainer_state_rank{r}.pt         step, the reader's position and RNG states of rank r
    open_clip_config.json            the exported model: open_clip.create_model("local-dir:FOLDER") loads it
    open_clip_model.safetensors
    COMPLETE                         written once every file above is in place

and `RUN/checkpoints/latest` (the folder name) is written after COMPLETE, so a reader that follows `latest`
never sees a partial checkpoint (names and markers: data_shards/run_layout.py). DeepSpeed writes to a local
folder: for a local run that is `RUN/checkpoints/.tmp-step_{N}`, renamed into place (atomic); for `s3://` runs
it is a staging folder on each node's local disk, uploaded by the node's local rank 0, then marked COMPLETE. The last `keep_last`
complete checkpoints are kept. Everything is loaded through `torch.load(weights_only=True)` or safetensors.

The checkpointer owns its cadence (`maybe_save`): every `every_steps` steps and at the last step.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from configs.train import CheckpointConfig
from data_shards.run_layout import checkpoint_name, checkpoints_uri, list_complete, mark_complete, read_latest
from data_shards.storage import is_local_fs, url_to_fs
from trainer import dist
from trainer.dist import DistInfo

DS_TAG = "ds"  # DeepSpeed's own files inside a checkpoint folder


class Saveable(Protocol):
    """What the checkpointer needs from the engine (trainer/engine.py)."""

    def save(self, folder: str, tag: str) -> None: ...

    def load(self, folder: str, tag: str) -> None: ...

    def full_state_dict(self, keep: bool) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Restored:
    step: int
    loader: dict


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves (on its own cadence) and restores the whole training state of one rank."""

    def __init__(self, cfg: CheckpointConfig, run_dir: str, *, total_steps: int, info: DistInfo, engine: Saveable,
                 export: Any) -> None:
        self.cfg, self.total_steps, self.info, self.engine, self.export = cfg, total_steps, info, engine, export
        self.run_dir = run_dir
        self.fs, root = url_to_fs(checkpoints_uri(run_dir))
        self.root = root.rstrip("/")
        self.local = is_local_fs(self.fs)
        digest = hashlib.sha1(run_dir.encode()).hexdigest()[:12]
        self.stage_root = self.root if self.local else os.path.join(tempfile.gettempdir(), f"cityscale-{digest}")

    # ------------------------------------------------------------------ save

    def maybe_save(self, step: int, loader_state: dict) -> bool:
        """Publish a checkpoint if `step` is due; every rank calls this every step."""
        every = self.cfg.every_steps
        if not (step == self.total_steps or (every and step % every == 0)):
            return False
        self.save(step, loader_state)
        return True

    def save(self, step: int, loader_state: dict) -> None:
        name = checkpoint_name(step)
        stage = os.path.join(self.stage_root, f".tmp-{name}")
        if self._stager():
            shutil.rmtree(stage, ignore_errors=True)
            os.makedirs(stage)
        dist.barrier()  # sync point: the staging folder exists on every node
        self.engine.save(stage, DS_TAG)  # collective
        weights = self.engine.full_state_dict(keep=self.info.is_main)  # collective (gathers under ZeRO-3)
        torch.save({"step": step, "loader": loader_state, "rng": rng_state()},
                   os.path.join(stage, f"trainer_state_rank{self.info.rank}.pt"))
        if self.info.is_main:
            self.export(weights, stage)
        dist.barrier()  # sync point: every rank's files are written
        self._publish(stage, name, step)
        dist.barrier()  # sync point: nobody races ahead of a half-published checkpoint

    def _stager(self) -> bool:
        """Who prepares staging folders: rank 0 for a (shared) local run folder, else each node's local rank 0."""
        return self.info.is_main if self.local else self.info.local_rank == 0

    def _publish(self, stage: str, name: str, step: int) -> None:
        final = f"{self.root}/{name}"
        if self.local and self.info.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(stage, final)
        elif not self.local and self._stager():
            self.fs.put(stage + "/", final, recursive=True)  # each node uploads the files its ranks wrote
            shutil.rmtree(stage, ignore_errors=True)
        if not self.local:
            dist.barrier()  # sync point: all nodes uploaded before the checkpoint is marked complete
        if self.info.is_main:
            mark_complete(self.run_dir, name, {"step": step, "world_size": self.info.world_size})
            self._prune()

    def _prune(self) -> None:
        for name in self.complete()[:-self.cfg.keep_last]:
            self.fs.rm(f"{self.root}/{name}", recursive=True)

    def complete(self) -> list[str]:
        """Published checkpoint folder names, oldest first."""
        return [ref.name for ref in list_complete(self.run_dir)]

    # ------------------------------------------------------------------ restore

    def latest(self) -> str | None:
        return read_latest(self.run_dir)

    def restore(self) -> Restored | None:
        """Load the latest published checkpoint into the engine and RNG; None when there is none (or resume off)."""
        name = self.latest() if self.cfg.resume else None
        if name is None:
            return None
        folder = self._local_copy(name)
        self.engine.load(folder, DS_TAG)  # collective
        state_path = os.path.join(folder, f"trainer_state_rank{self.info.rank}.pt")
        if not os.path.exists(state_path):
            raise RuntimeError(f"{self.root}/{name} has no state for rank {self.info.rank}: resume with the world "
                               "size it was saved with")
        state = torch.load(state_path, weights_only=True)
        set_rng_state(state["rng"])
        return Restored(step=int(state["step"]), loader=state["loader"])

    def _local_copy(self, name: str) -> str:
        if self.local:
            return f"{self.root}/{name}"
        folder = os.path.join(self.stage_root, name)
        if self._stager():
            shutil.rmtree(folder, ignore_errors=True)
            self.fs.get(f"{self.root}/{name}/", folder, recursive=True)
        dist.barrier()  # sync point: the node's copy is complete
        return folder


__all__ = ["Checkpointer", "Restored", "rng_state", "set_rng_state", "DS_TAG"]
