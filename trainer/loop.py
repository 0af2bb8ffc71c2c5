"""The training loop: a short list of calls; each component owns its cadence.

The checkpointer decides whether a step publishes, the sinks whether they write, the key log whether it is
on (a null object when not): no `if cfg.x.enable` and no `if rank == 0` here (shared STYLE.md habit 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.accum import split_micro, train_step
from trainer.checkpoint import Checkpointer
from trainer.data import DataStream, KeyLog, NullKeyLog
from trainer.engine import Engine
from trainer.loss import Loss
from trainer.metrics import Sink, StepMeter


@dataclass
class Trainer:
    engine: Engine
    loss: Loss
    data: DataStream
    checkpointer: Checkpointer
    sink: Sink
    keys: KeyLog | NullKeyLog
    micro_batch: int


def train(t: Trainer, *, start_step: int, total_steps: int) -> None:
    """Run steps start_step+1 .. total_steps (steps are 1-based: step N is done after N updates)."""
    meter = StepMeter()
    try:
        for step in range(start_step + 1, total_steps + 1):
            meter.start()
            batch = t.data.next()
            meter.data_ready()
            result = train_step(t.engine, t.loss, split_micro(batch.images, batch.texts, t.micro_batch))
            t.keys.log(step, batch.keys)
            t.sink.log(meter.record(texts=batch.texts, skipped=batch.skipped, losses=result.losses,
                                    logit_scale=result.logit_scale, lr=t.engine.lr(),
                                    grad_norm=t.engine.grad_norm()), step)
            t.checkpointer.maybe_save(step, t.data.state_dict())
    finally:
        t.sink.close()
        t.keys.close()


__all__ = ["Trainer", "train"]
