"""Checkpoint publishing/restore and metric sinks, in one process (no DeepSpeed, no process group).

The checkpointer is driven with a small engine that writes and reads one tensor file the way DeepSpeed's
would, locally and on the real S3 API server; the Prometheus sink is scraped over real HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest
import torch
from safetensors.torch import load_file, save_file

from configs.train import CheckpointConfig, MetricsConfig
from trainer.checkpoint import Checkpointer
from trainer.dist import DistInfo
from trainer.metrics import FanOut, JsonlSink, NullSink, PrometheusSink, StepMeter, build_sink

RANK0 = DistInfo(rank=0, local_rank=0, world_size=1)


class TensorEngine:
    """Stands in for trainer.engine.Engine: one weight tensor, saved and loaded like DeepSpeed's files."""

    def __init__(self, value: float) -> None:
        self.weight = torch.full((3,), value)

    def save(self, folder: str, tag: str) -> None:
        os.makedirs(os.path.join(folder, tag))
        torch.save({"weight": self.weight}, os.path.join(folder, tag, "model_states.pt"))

    def load(self, folder: str, tag: str) -> None:
        self.weight = torch.load(os.path.join(folder, tag, "model_states.pt"), weights_only=True)["weight"]

    def full_state_dict(self, keep: bool) -> dict[str, torch.Tensor]:
        return {"weight": self.weight} if keep else {}


def _export(weights: dict[str, torch.Tensor], folder: str) -> None:
    save_file(weights, os.path.join(folder, "open_clip_model.safetensors"))


def _checkpointer(run: str, engine: TensorEngine, **cfg) -> Checkpointer:
    return Checkpointer(CheckpointConfig(**{"every_steps": 2, "keep_last": 2, **cfg}), run, total_steps=5,
                        info=RANK0, engine=engine, export=_export)


def _train_and_save(ckpt: Checkpointer, engine: TensorEngine) -> list[int]:
    saved = []
    for step in range(1, 6):
        engine.weight = engine.weight + 1
        if ckpt.maybe_save(step, {"epoch": 0, "batches_done": step}):
            saved.append(step)
    return saved


@pytest.mark.parametrize("where", ["local", "s3"])
def test_publish_keep_last_and_exact_restore(where, tmp_path, request):
    run = str(tmp_path / "run") if where == "local" else request.getfixturevalue("s3_server").uri("ckpt-test")
    engine = TensorEngine(0.0)
    ckpt = _checkpointer(run, engine)
    assert ckpt.restore() is None  # nothing published yet
    assert _train_and_save(ckpt, engine) == [2, 4, 5]  # every 2 steps and the last one
    assert ckpt.complete() == ["step_4", "step_5"] and ckpt.latest() == "step_5"
    assert not [p for p in ckpt.fs.ls(ckpt.root, detail=False) if ".tmp" in p], "staging left behind"
    assert json.loads(ckpt.fs.cat_file(f"{ckpt.root}/step_5/COMPLETE")) == {"step": 5, "world_size": 1}
    with ckpt.fs.open(f"{ckpt.root}/step_5/open_clip_model.safetensors", "rb") as f:
        exported = f.read()
    (tmp_path / "w.safetensors").write_bytes(exported)
    assert load_file(str(tmp_path / "w.safetensors"))["weight"].tolist() == [5.0] * 3

    expected_rng = torch.rand(4)  # the draw right after the save at step 5...
    fresh = TensorEngine(-1.0)
    restored = _checkpointer(run, fresh).restore()
    assert restored.step == 5 and restored.loader == {"epoch": 0, "batches_done": 5}
    assert fresh.weight.tolist() == [5.0] * 3
    assert torch.equal(torch.rand(4), expected_rng)  # ...is the draw after the restore: RNG state restored
    assert _checkpointer(run, TensorEngine(0.0), resume=False).restore() is None


def test_only_complete_checkpoints_count(tmp_path):
    run = str(tmp_path / "run")
    ckpt = _checkpointer(run, TensorEngine(0.0))
    ckpt.save(2, {})
    os.makedirs(tmp_path / "run/checkpoints/step_9/ds")  # a crash before COMPLETE
    assert ckpt.complete() == ["step_2"] and ckpt.latest() == "step_2"


# ----------------------------------------------------------------------------- metrics

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(meter: StepMeter, loss: float) -> dict[str, float]:
    meter.start()
    meter.data_ready()
    texts = torch.tensor([[5, 6, 0], [7, 0, 0]])
    return meter.record(texts=texts, skipped={"bad_jpg": 1}, losses={"loss": loss, "contrastive": loss},
                        logit_scale=14.3, lr=1e-3, grad_norm=2.5)


def test_step_record_has_counts_and_values():
    record = _record(StepMeter(), 3.0)
    assert record["samples"] == 2 and record["tokens"] == 3 and record["steps"] == 1 and record["skipped/bad_jpg"] == 1
    assert 0 <= record["data_wait_share"] <= 1 and record["process_memory_bytes"] > 1e6
    assert record["loss"] == 3.0 and record["grad_norm"] == 2.5


def test_prometheus_endpoint_counts_and_sets_with_run_and_rank_labels():
    port = _free_port()
    sink = PrometheusSink("127.0.0.1", port, run="r1", rank=3)
    meter = StepMeter()
    sink.log(_record(meter, 3.0), 1)
    sink.log(_record(meter, 2.0), 2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    sink.close()
    assert 'cityscale_train_samples_total{rank="3",run="r1"} 4.0' in body
    assert 'cityscale_train_tokens_total{rank="3",run="r1"} 6.0' in body
    assert 'cityscale_train_steps_total{rank="3",run="r1"} 2.0' in body
    assert 'cityscale_train_skipped_samples_total{rank="3",reason="bad_jpg",run="r1"} 2.0' in body
    assert 'cityscale_train_loss{rank="3",run="r1"} 2.0' in body
    assert 'cityscale_train_logit_scale{rank="3",run="r1"} 14.3' in body
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_jsonl_cadence_fanout_and_rank_specific_sinks(tmp_path):
    sink = FanOut([JsonlSink(str(tmp_path / "logs/train.jsonl"), every=2), NullSink()])
    for step in range(1, 6):
        sink.log({"loss": float(step)}, step)
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "logs/train.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(2, 2.0), (4, 4.0)]

    cfg = MetricsConfig(port_base=0, progress=False)
    other = build_sink(cfg, run_dir=str(tmp_path / "r"), info=DistInfo(rank=1, local_rank=1, world_size=2),
                       total_steps=5, start_step=0)
    assert isinstance(other, NullSink)  # non-reporting rank without an endpoint: nothing at all
    main = build_sink(cfg, run_dir=str(tmp_path / "r"), info=RANK0, total_steps=5, start_step=0)
    main.log({"loss": 1.0}, 1)
    main.close()
    assert (tmp_path / "r/logs/train.jsonl").exists()
