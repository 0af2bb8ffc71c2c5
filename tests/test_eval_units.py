"""Eval building blocks on their own: retrieval ranks in chunks, claims and leases (local disk and the S3 API
server), checkpoint listing and loading (partial, broken and foreign checkpoints), the colour histogram, shard
spreading, metrics export, and the config sections."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from configs.eval import BaselinesConfig, EvalConfig, WorkerConfig
from configs.loader import ConfigError, load
from data_shards.reader import Manifest
from data_shards.run_layout import list_complete, ref_from_uri
from data_shards.storage import modified_time
from eval.baselines import ColorHistogram
from eval.checkpoints import CheckpointError, fetch, load_model, local_workdir
from eval.claims import Claims, Heartbeat, LeaseLost
from eval.embed import SplitData, spread_shards
from eval.metrics import EvalMetrics
from eval.retrieval import match_ranks, retrieval, top_matches
from eval.run import _text_features
from eval.text_encoder import default_encoder_path
from eval.worker import _child_argv
from tests.eval_fixtures import write_checkpoint

# ----------------------------------------------------------------------------- retrieval


def _brute_ranks(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    sims = q @ c.T
    return np.array([1 + int((sims[i] > sims[i, i]).sum()) for i in range(len(q))])


def test_ranks_in_chunks_equal_the_full_matrix():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(103, 16)).astype(np.float32), rng.normal(size=(103, 16)).astype(np.float32)
    expected = _brute_ranks(q, c)
    for chunk in (1, 7, 50, 1000):
        np.testing.assert_array_equal(match_ranks(q, c, chunk), expected)


def test_retrieval_metrics_perfect_and_shuffled():
    x = np.eye(20, dtype=np.float32)
    perfect = retrieval(x, x, (1, 5), chunk=6)
    assert perfect["image_to_text"] == {"r@1": 1.0, "r@5": 1.0, "mean_rank": 1.0, "median_rank": 1.0, "n": 20}
    shifted = retrieval(x, np.roll(x, 1, axis=0), (1, 5), chunk=6)  # every match scores 0, one wrong scores 1
    assert shifted["text_to_image"]["r@1"] == 0.0 and shifted["text_to_image"]["mean_rank"] == 2.0
    assert top_matches(x, x, [3, 7], 2)[0][0] == 3 and top_matches(x, x, [3, 7], 2)[1][0] == 7


# ----------------------------------------------------------------------------- claims


def test_one_of_many_racing_workers_gets_the_claim(tmp_path):
    winners = []

    def race(i: int) -> None:
        lease = Claims(str(tmp_path), f"w{i}", lease_seconds=30).try_acquire("step_10")
        if lease is not None:
            winners.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def _claims_on(uri: str):
    clock = [1000.0]
    return clock, (lambda owner: Claims(uri, owner, lease_seconds=10, clock=lambda: clock[0]))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_lease_expiry_takeover_and_release(where, tmp_path, request):
    uri = str(tmp_path) if where == "local" else request.getfixturevalue("s3_server").uri("claims-unit")
    clock, claims = _claims_on(uri)
    a, b = claims("a"), claims("b")
    lease_a = a.try_acquire("step_1")
    assert lease_a is not None and lease_a.generation == 0
    assert b.try_acquire("step_1") is None
    clock[0] += 6
    assert lease_a.renew()  # renewed at t+6: live until t+16
    clock[0] += 6
    assert b.try_acquire("step_1") is None
    clock[0] += 11  # a stalled: its lease expired
    lease_b = b.try_acquire("step_1")
    assert lease_b is not None and lease_b.generation == 1
    assert not lease_a.held() and not lease_a.renew()
    assert a.try_acquire("step_1") is None  # b's fresh lease is live
    lease_b.release()
    assert a.try_acquire("step_1").generation == 0  # released: a new claim starts over


def test_heartbeat_keeps_a_lease_and_detects_takeover(tmp_path):
    lease = Claims(str(tmp_path), "a", lease_seconds=1.0).try_acquire("step_5")
    with Heartbeat(lease, every=0.2) as beat:
        time.sleep(1.5)  # longer than the lease: only the heartbeat keeps it
        assert Claims(str(tmp_path), "b", lease_seconds=1.0).try_acquire("step_5") is None
        beat.check()
    stale = Claims(str(tmp_path), "c", lease_seconds=1.0, clock=lambda: time.time() + 5)
    assert stale.try_acquire("step_5").generation == 1  # from c's point of view a's lease expired
    with pytest.raises(LeaseLost):
        Heartbeat(lease, every=10).check()


# ----------------------------------------------------------------------------- checkpoints


def test_listing_sees_complete_checkpoints_only(tmp_path):
    run = str(tmp_path / "run")
    assert list_complete(run) == []
    write_checkpoint(run, 20)
    write_checkpoint(run, 5)
    write_checkpoint(run, 30, complete=False)
    (tmp_path / "run" / "checkpoints" / ".tmp-step_40").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_20")
    refs = list_complete(run)
    assert [r.name for r in refs] == ["step_5", "step_20"] and [r.step for r in refs] == [5, 20]
    assert all(r.published_at and abs(r.published_at - time.time()) < 600 for r in refs)
    assert ref_from_uri(f"{run}/checkpoints/step_30").published_at is None


def test_load_roundtrip_random_init_and_bad_checkpoints(tmp_path):
    run = str(tmp_path / "run")
    write_checkpoint(run, 1, seed=1)
    ref = list_complete(run)[0]
    with local_workdir() as folder:
        fetch(ref, folder)
        loaded, fresh = load_model(folder), load_model(folder, weights=False, seed=0)
        assert loaded.image_size == 32 and loaded.tokenizer(["a tile"]).shape == (1, 32)
        assert not torch.equal(loaded.module.visual.conv1.weight, fresh.module.visual.conv1.weight)
    write_checkpoint(run, 2, config_patch={"width": 32})  # config of another architecture than the weights
    with local_workdir() as folder, pytest.raises(CheckpointError, match="size mismatch"):
        load_model(fetch(ref_from_uri(f"{run}/checkpoints/step_2"), folder))
    (tmp_path / "run" / "checkpoints" / "step_1" / "open_clip_config.json").unlink()
    with local_workdir() as folder, pytest.raises(CheckpointError, match="no model config"):
        fetch(ref, folder)


def test_modified_time_reads_local_and_s3_infos():
    assert modified_time({"mtime": 12.5}) == 12.5
    from datetime import datetime, timezone
    assert modified_time({"LastModified": datetime(2024, 1, 1, tzinfo=timezone.utc)}) == 1704067200.0


# ----------------------------------------------------------------------------- features, shards, config, metrics


def test_colour_histogram_counts_pixels_per_channel():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0] = (1.0 - 0.5) / 0.25  # red channel at 1.0 everywhere, others at 0.5
    img[0, 2, :2] = (0.0 - 0.5) / 0.25  # blue: half the pixels at 0.0
    hist = ColorHistogram(mean, std, bins=4)(img, torch.zeros(1, 2))["color_hist"][0].reshape(3, 4)
    np.testing.assert_allclose(hist.sum(1), 1.0)
    assert hist[0, 3] == 1.0 and hist[1, 2] == 1.0 and hist[2, 0] == 0.5 and hist[2, 2] == 0.5


def test_spread_shards_reaches_the_cap_with_shards_across_the_split():
    shards = [{"name": f"train-{i:06d}.tar", "split": "train", "samples": 100} for i in range(10)]
    shards.append({"name": "test-000000.tar", "split": "test", "samples": 100})
    m = Manifest(uri="x", shards=shards, indicators=[], cities=[], raw={})
    picked = spread_shards(m, "train", 250)
    assert [s["name"] for s in picked.shards] == ["train-000000.tar", "train-000004.tar", "train-000009.tar"]
    assert len(spread_shards(m, "train", 5000).shards) == 10


def test_config_sections_name_the_bad_key():
    assert load(WorkerConfig, None, ["eval.probe.seeds=[0]"]).eval.probe.seeds == (0,)
    with pytest.raises(ConfigError, match="'eval.batch_size'"):
        load(WorkerConfig, None, ["eval.batch_size=0"])
    with pytest.raises(ConfigError, match="'retrieval.ks'"):
        load(EvalConfig, None, ["retrieval.ks=[0]"])
    with pytest.raises(ConfigError, match="'lease_seconds'"):
        load(WorkerConfig, None, ["lease_seconds=0"])


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_export_gauges_and_jsonl(tmp_path):
    report = {"status": "ok", "checkpoint": {"name": "step_7", "step": 7}, "lag_seconds": 3.5,
              "timing": {"total_seconds": 9.0},
              "regression": {"C": {"population": {"image": {"mlp": {"r2": 0.5}, "ridge": {"r2": 0.4}}}}},
              "retrieval": {"checkpoint": {"image_to_text": {"r@1": 0.25, "mean_rank": 3.0}}}}
    port = _free_port()
    metrics = EvalMetrics(str(tmp_path / "log" / "w.jsonl"), port=port)
    try:
        metrics.report(report)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert 'cityscale_eval_r2{city="C",features="image",indicator="population",probe="mlp"} 0.5' in body
    assert "cityscale_eval_checkpoint_step 7.0" in body and "cityscale_eval_publish_to_report_seconds 3.5" in body
    assert 'cityscale_eval_retrieval_recall{direction="image_to_text",encoder="checkpoint",k="1"} 0.25' in body
    line = metrics.log.read()[-1]
    assert line["event"] == "report" and line["r2"] == {"C/population/image": 0.5} and line["step"] == 7


def test_children_of_workers_n_get_an_index_and_a_core_share():
    argv = ["--run", "r", "--workers", "3", "--shards", "s", "--once"]
    assert _child_argv(argv, 2, 1) == ["--run", "r", "--shards", "s", "--once", "--index", "2", "--set", "threads=1"]
    assert _child_argv(["--workers=2", "--run", "r"], 0, 1)[:2] == ["--run", "r"]


def test_sentence_encoder_features_replace_the_text_tower(tmp_path):
    data = SplitData(split="test", keys=["a", "b"], sentences=[["A river.", "Trees."], ["Dense housing."]])
    assert _text_features({"test": data}, EvalConfig()) == "text"
    cfg = EvalConfig(text_encoder=default_encoder_path(), baselines=BaselinesConfig(cache_dir=str(tmp_path)))
    assert _text_features({"test": data}, cfg) == "sentence"
    emb = data.features["sentence"]
    assert emb.shape == (2, 384) and not np.allclose(emb[0], emb[1])
