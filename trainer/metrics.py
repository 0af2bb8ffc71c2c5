"""Training metrics: the per-step record and the sinks it goes to. The only module importing prometheus_client.

A sink has two methods, `log(metrics, step)` and `close()` (torchtitan's components/metrics.py pattern).
Every rank gets a Prometheus sink (HTTP endpoint on host:(port_base + rank), labels run and rank); rank 0
also gets the JSONL log (RUN/logs/train.jsonl), optional TensorBoard and the tqdm progress bar with ETA;
other ranks get null sinks for those. `FanOut` combines them, so the loop calls one `log` and never asks
which rank it is.

The record (`StepMeter.record`) holds per-step counts (samples, tokens, skipped/<reason>), which the
Prometheus sink adds to counters, and values (loss, lr, ...), which it sets as gauges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import psutil
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from tqdm import tqdm

from configs.train import MetricsConfig
from data_shards.jsonl_log import REMOTE_FLUSH_SECONDS, JsonlLog
from data_shards.run_layout import train_log_uri
from trainer.dist import DistInfo

COUNTS = ("samples", "steps", "tokens")  # per-step increments; "skipped/<reason>" too
GAUGES = {"samples_per_second": "samples per second of this rank over the last step",
          "step_seconds": "wall seconds of the last step", "data_wait_share": "share of the last step spent "
          "waiting for data", "loss": "training loss", "learning_rate": "learning rate",
          "logit_scale": "contrastive logit scale (temperature inverse)", "grad_norm": "global gradient norm "
          "before clipping", "process_memory_bytes": "resident memory of this rank's process"}


class Sink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullSink:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class FanOut:
    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class PrometheusSink:
    """Counters and gauges of one rank, served over HTTP by prometheus_client."""

    def __init__(self, host: str, port: int, run: str, rank: int) -> None:
        self.registry = CollectorRegistry()
        labels = {"run": run, "rank": str(rank)}
        names = list(labels)
        self.counters = {k: Counter(f"cityscale_train_{k}", f"{k} processed by this rank", names,
                                    registry=self.registry).labels(**labels) for k in COUNTS}
        self.skipped = Counter("cityscale_train_skipped_samples", "samples skipped, by reason", [*names, "reason"],
                               registry=self.registry)
        self.gauges = {k: Gauge(f"cityscale_train_{k}", text, names, registry=self.registry).labels(**labels)
                       for k, text in GAUGES.items()}
        self.labels = labels
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key in self.counters:
                self.counters[key].inc(value)
            elif key.startswith("skipped/"):
                self.skipped.labels(**self.labels, reason=key.removeprefix("skipped/")).inc(value)
            elif key in self.gauges:
                self.gauges[key].set(value)

    def close(self) -> None:
        self.server.shutdown()


class JsonlSink:
    """One JSON object per `every` steps, visible at once (a line locally, a part object on object stores)."""

    def __init__(self, uri: str, every: int) -> None:
        self.log_file, self.every = JsonlLog(uri, remote_seconds=REMOTE_FLUSH_SECONDS), every

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step % self.every == 0:
            self.log_file.append({"step": step, "time": time.time(), **metrics})

    def close(self) -> None:
        self.log_file.close()


class TensorBoardSink:
    """Scalars under train/ (tensorboard is optional: trainer/preflight.py checks it is installed)."""

    def __init__(self, logdir: str, every: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # only when asked for: tensorboard is optional

        self.writer, self.every = SummaryWriter(logdir), every

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step % self.every == 0:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class ProgressSink:
    """tqdm bar over the run's steps (ETA from tqdm), loss and throughput in the postfix."""

    def __init__(self, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}",
                             sps=f"{metrics.get('samples_per_second', 0.0):.0f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def build_sink(cfg: MetricsConfig, *, run_dir: str, info: DistInfo, total_steps: int, start_step: int) -> Sink:
    """This rank's sinks: Prometheus everywhere (unless port_base = 0); logs and progress on rank 0 only."""
    sinks: list[Sink] = []
    if cfg.port_base:
        run = run_dir.rstrip("/").rsplit("/", 1)[-1]
        sinks.append(PrometheusSink(cfg.host, cfg.port_base + info.rank, run, info.rank))
    if info.is_main:
        sinks.append(JsonlSink(train_log_uri(run_dir), cfg.log_every))
        if cfg.tensorboard:
            sinks.append(TensorBoardSink(f"{run_dir.rstrip('/')}/tensorboard", cfg.log_every))
        if cfg.progress:
            sinks.append(ProgressSink(total_steps, start_step))
    return FanOut(sinks) if sinks else NullSink()


class StepMeter:
    """Times one step (data wait vs total) and turns its outputs into the metrics record."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.t0 = self.t_data = time.perf_counter()

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def data_ready(self) -> None:
        self.t_data = time.perf_counter()

    def record(self, *, texts: torch.Tensor, skipped: dict[str, int], losses: dict[str, float],
               logit_scale: float, lr: float, grad_norm: float | None) -> dict[str, float]:
        end = time.perf_counter()
        seconds = max(end - self.t0, 1e-9)
        samples = texts.shape[0]
        out = {"samples": float(samples), "steps": 1.0, "tokens": float(texts.ne(0).sum()),
               **{f"skipped/{k}": float(v) for k, v in skipped.items()},
               "samples_per_second": samples / seconds, "step_seconds": seconds,
               "data_wait_share": (self.t_data - self.t0) / seconds, **losses, "learning_rate": lr,
               "logit_scale": logit_scale, "process_memory_bytes": float(self.process.memory_info().rss)}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out


__all__ = ["Sink", "NullSink", "FanOut", "PrometheusSink", "JsonlSink", "TensorBoardSink", "ProgressSink",
           "build_sink", "StepMeter"]
