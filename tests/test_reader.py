"""Tests of the shard reader (data_shards/reader.py): coverage of an epoch across ranks and workers, equal batches
per rank, determinism, exact resume, corrupt samples, s3:// on a real S3 API server, evaluation mode, bad input,
two augmented views per tile.

Two ranks are two loaders built in one process (rank and world size are passed in, nothing is read from the
environment); workers are real DataLoader worker processes.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter

import PIL.Image
import pytest
import torch

from configs.data import AugmentConfig, LoaderConfig
from configs.loader import ConfigError, from_dict
from data_shards.augment import tile_transform
from data_shards.reader import ShardLoader, read_manifest
from tests.shard_fixtures import break_sample, byte_tokenize, into_shards, make_samples, write_shard_folder

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def loaders(folder, *, world_size=2, batch_size=3, train=True, with_meta=False, **cfg):
    cfg = LoaderConfig(**{"workers": 2, "shuffle_buffer": 16, **cfg})
    manifest = read_manifest(str(folder))
    transform = tile_transform(16, MEAN, STD, train, AugmentConfig())
    return [ShardLoader(cfg, manifest, batch_size=batch_size, rank=r, world_size=world_size, image_transform=transform,
                        tokenize=byte_tokenize, train=train, with_meta=with_meta) for r in range(world_size)]


def epoch_keys(loader) -> list[list[str]]:
    return [b.keys for b in loader]


def flat(batches) -> list[str]:
    return [k for b in batches for k in b]


@pytest.fixture
def even_folder(tmp_path):
    """48 samples in 8 shards of 6: with 2 ranks x 2 workers x batch 3 each worker owes exactly 2 shards."""
    write_shard_folder(tmp_path, {"train": into_shards(make_samples(48), [6] * 8)})
    return tmp_path


@pytest.fixture
def uneven_folder(tmp_path):
    """21 samples in 3 shards of different sizes: fewer shards than the 4 (rank, worker) slots."""
    write_shard_folder(tmp_path, {"train": into_shards(make_samples(21), [13, 2, 6])})
    return tmp_path


# ----------------------------------------------------------------------------- training epochs

def test_epoch_sees_every_sample_once_across_ranks_and_workers(even_folder):
    ranks = loaders(even_folder)
    batches = [epoch_keys(r) for r in ranks]
    assert [len(b) for b in batches] == [8, 8] == [r.batches_per_epoch for r in ranks]
    assert all(len(b) == 3 for rank in batches for b in rank)
    keys = flat(batches[0]) + flat(batches[1])
    assert sorted(keys) == sorted(s["__key__"] for s in make_samples(48))


def test_uneven_shards_give_equal_full_batches_on_every_rank(uneven_folder):
    ranks = loaders(uneven_folder, batch_size=2)
    assert [r.batches_per_epoch for r in ranks] == [5, 5]  # 21 // (2 x 2)
    for _ in range(3):  # several epochs: every worker keeps owing batches, none may run dry
        batches = [epoch_keys(r) for r in ranks]
        assert [len(b) for b in batches] == [5, 5]
        assert all(len(b) == 2 for rank in batches for b in rank)


def test_epochs_differ_and_runs_are_deterministic(even_folder):
    first, second = loaders(even_folder)[0], loaders(even_folder)[0]
    run1 = [epoch_keys(first) for _ in range(2)]
    run2 = [epoch_keys(second) for _ in range(2)]
    assert run1 == run2
    assert run1[0] != run1[1] and sorted(flat(run1[0])) != sorted(flat(run1[1]))  # other shards, other order


def test_rank_comes_from_the_caller_not_the_environment(even_folder, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # webdataset's own node splitting would read these
    only = loaders(even_folder, world_size=1, batch_size=4)[0]
    assert sorted(flat(epoch_keys(only))) == sorted(s["__key__"] for s in make_samples(48))


def test_no_shuffle_buffer_keeps_shard_order_within_a_worker(even_folder):
    rank0 = loaders(f"file://{even_folder}", shuffle_buffer=0, workers=0)[0]
    keys = flat(epoch_keys(rank0))
    xs = [int(k.split("_")[2]) for k in keys]
    assert all(b - a == 1 for a, b in zip(xs[:6], xs[1:6]))  # the first shard read front to back


def test_resampled_mode_is_deterministic_with_equal_batches(uneven_folder):
    runs = [[epoch_keys(r) for r in loaders(uneven_folder, batch_size=2, resampled=True)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert [len(b) for b in runs[0]] == [5, 5]
    assert runs[0][0] != runs[0][1]  # ranks draw differently


# ----------------------------------------------------------------------------- resume

@pytest.fixture
def folder_with_bad_images(tmp_path):
    """Corrupt JPEGs (found only when decoding) make the raw sample position differ from batches x batch size."""
    samples = make_samples(40)
    for i in (1, 4, 9, 17, 30):
        samples[i] = break_sample(samples[i], "bad_jpg")
    write_shard_folder(tmp_path, {"train": into_shards(samples, [5, 7, 6, 8, 4, 10])})
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [3, 6])  # odd: the worker roles rotate; 6 = end of epoch 0
def test_resume_continues_with_exactly_the_next_batches(folder_with_bad_images, stop_after):
    reference = loaders(folder_with_bad_images, batch_size=3)
    uninterrupted = [[epoch_keys(r) for _ in range(2)] for r in reference]
    assert reference[0].batches_per_epoch == 6  # 40 // (3 x 2)
    for rank, loader in enumerate(loaders(folder_with_bad_images, batch_size=3)):
        seen = []
        for batch in loader:
            seen.append(batch.keys)
            if len(seen) == stop_after:
                break
        state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint stores
        resumed = loaders(folder_with_bad_images, batch_size=3)[rank]
        resumed.load_state_dict(state)
        rest = epoch_keys(resumed)
        if stop_after < 6:
            assert seen + rest == uninterrupted[rank][0]
            rest = epoch_keys(resumed)
        assert rest == uninterrupted[rank][1]
        assert resumed.skipped_total == reference[rank].skipped_total  # carried over, nothing counted twice
    assert sum(sum(r.skipped_total.values()) for r in reference) >= 5  # the bad images were met (and re-met)


def test_resume_from_epoch_and_batches_done_alone_on_clean_data(even_folder):
    full = epoch_keys(loaders(even_folder)[1])
    resumed = loaders(even_folder)[1]
    resumed.load_state_dict({"epoch": 0, "batches_done": 5})
    assert epoch_keys(resumed) == full[5:]


def test_state_of_another_rank_is_refused(even_folder):
    rank0, rank1 = loaders(even_folder)
    with pytest.raises(ValueError, match="one state per rank"):
        rank1.load_state_dict(rank0.state_dict())


# ----------------------------------------------------------------------------- corrupt data

def test_corrupt_samples_are_skipped_and_counted_by_reason(tmp_path):
    samples = make_samples(30)
    damage = {1: "bad_jpg", 3: "truncated_jpg", 6: "bad_json", 8: "missing_txt", 10: "bad_txt", 13: "missing_jpg",
              15: "missing_json"}
    for i, how in damage.items():
        samples[i] = break_sample(samples[i], how)
    write_shard_folder(tmp_path, {"train": into_shards(samples, [6] * 5)})
    (tmp_path / "train-000003.tar").write_bytes(b"")  # unreadable: its 6 samples are lost, not fatal
    (tmp_path / "train-000004.tar").unlink()  # listed in the manifest but gone
    ranks = loaders(tmp_path, train=False, batch_size=4)
    keys = [k for r in ranks for b in r for k in b.keys]
    good = [s["__key__"] for i, s in enumerate(samples[:18]) if i not in damage]
    assert sorted(keys) == sorted(good)
    total = Counter()
    for r in ranks:
        total.update(r.skipped_total)
    assert total == {"bad_jpg": 2, "bad_json": 1, "missing_txt": 1, "bad_txt": 1, "missing_jpg": 1,
                     "missing_json": 1, "bad_tar": 1, "missing_shard": 1}


def test_all_corrupt_shards_fail_loudly_instead_of_hanging(tmp_path):
    samples = [break_sample(s, "missing_txt") for s in make_samples(8)]
    write_shard_folder(tmp_path, {"train": into_shards(samples, [4, 4])})
    loader = loaders(tmp_path, world_size=1, batch_size=2, workers=0)[0]
    with pytest.raises(RuntimeError, match="no readable sample"):
        next(iter(loader))


# ----------------------------------------------------------------------------- evaluation

def test_eval_mode_reads_every_sample_once_with_meta_and_no_augmentation(tmp_path):
    samples = make_samples(23, split="val")
    write_shard_folder(tmp_path, {"train": into_shards(make_samples(4), [4]),
                                  "val": into_shards(samples, [9, 1, 5, 8])})
    ranks = loaders(tmp_path, split="val", train=False, with_meta=True, batch_size=4)
    batches = [list(r) for r in ranks]
    assert [len(b) for b in batches] == [r.batches_per_epoch for r in ranks]
    keys = [k for rank in batches for b in rank for k in b.keys]
    assert sorted(keys) == sorted(s["__key__"] for s in samples)
    for b in (b for rank in batches for b in rank):
        assert [f"{m['city']}_{m['z']}_{m['x']}_{m['y']}" for m in b.meta] == b.keys
        assert all(m["split"] == "val" for m in b.meta)
    again = [b.images for b in loaders(tmp_path, split="val", train=False, batch_size=4)[0]]
    assert all(torch.equal(a, b.images) for a, b in zip(again, batches[0]))


# ----------------------------------------------------------------------------- s3://

@pytest.mark.slow
def test_reads_shards_from_s3(tmp_path, s3_server):
    """The reader is given only the URL: the endpoint reaches s3fs/botocore through AWS_ENDPOINT_URL."""
    write_shard_folder(tmp_path, {"train": into_shards(make_samples(24), [6, 6, 6, 6])})
    prefix = s3_server.uri(f"reader-{uuid.uuid4().hex[:8]}", "shards")
    s3_server.fs().put(str(tmp_path) + "/", prefix + "/", recursive=True)
    ranks = loaders(prefix + "/", batch_size=3)
    assert ranks[0].batches_per_epoch == 4
    keys = [k for r in ranks for b in r for k in b.keys]
    assert sorted(keys) == sorted(s["__key__"] for s in make_samples(24))


def test_missing_manifest_on_s3_names_the_path(s3_server):
    missing = s3_server.uri("reader-nothing-here")
    with pytest.raises(ConfigError, match=f"{missing}/manifest.json.*cityscale shards build"):
        read_manifest(missing)


# ----------------------------------------------------------------------------- bad input

def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}/manifest.json.*cityscale shards build"):
        read_manifest(str(tmp_path))


def test_split_without_shards_and_too_few_samples_are_config_errors(tmp_path):
    write_shard_folder(tmp_path, {"train": into_shards(make_samples(5), [5])})
    with pytest.raises(ConfigError, match="no 'test' shards"):
        loaders(tmp_path, split="test")
    with pytest.raises(ConfigError, match="fewer than batch_size x world_size = 6"):
        loaders(tmp_path, batch_size=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ConfigError, match="schema_version 99"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_manifest(str(tmp_path))


@pytest.mark.parametrize("data,key", [({"workers": -1}, "loader.workers"), ({"split": "dev"}, "loader.split"),
                                      ({"augment": {"random_resized_crop_scale": [0.9, 0.5]}},
                                       "loader.augment.random_resized_crop_scale"),
                                      ({"shuffle_bufer": 3}, "loader.shuffle_bufer"), ({"views": 0}, "loader.views")])
def test_loader_config_errors_name_the_dotted_key(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(LoaderConfig, data, "loader")


# ----------------------------------------------------------------------------- caption policy

def _four_sentence_folder(root) -> None:
    samples = make_samples(24)
    for sample in samples:
        meta = json.loads(sample["json"])
        meta["sentences"] = [f"S{j} {sample['__key__']}." for j in range(4)]
        sample["json"], sample["txt"] = json.dumps(meta).encode(), " ".join(meta["sentences"]).encode()
    write_shard_folder(root, {"train": into_shards(samples, [12, 12])})


def _texts_by_key(loader) -> dict[str, str]:
    """key -> decoded text of one epoch (byte_tokenize keeps the first bytes, enough for 'S{j}')."""
    return {k: bytes(int(t) for t in row if t).decode()[:2] for b in loader for k, row in zip(b.keys, b.texts)}


@pytest.mark.parametrize("policy", ["join", "fixed_sentence", "random_sentence"])
def test_caption_policy_join_fixed_or_redrawn_each_epoch(tmp_path, policy):
    _four_sentence_folder(tmp_path)
    first, second = (loaders(tmp_path, world_size=1, workers=0, shuffle_buffer=0, caption=policy)[0] for _ in "ab")
    epochs = [_texts_by_key(first) for _ in range(3)]
    again = [_texts_by_key(second) for _ in range(3)]
    assert epochs == again  # seeded: the same run, and a resumed one, pick the same sentences
    picked = Counter(text for epoch in epochs for text in epoch.values())
    changed = sum(epochs[0][k] != epochs[1][k] for k in epochs[0])
    if policy == "join":
        assert set(picked) == {"S0"}  # the whole caption, which starts with the first sentence
    elif policy == "fixed_sentence":
        assert len(picked) == 4 and changed == 0  # one sentence per tile, different tiles, never redrawn
    else:
        assert len(picked) == 4 and changed >= 12  # redrawn every epoch (3 in 4 change on average)


# ----------------------------------------------------------------------------- two views (SimCLR)

def _textured_folder(root) -> None:
    """24 tiles of seeded noise: any two different crops or orientations of a tile differ in their pixels."""
    g = torch.Generator().manual_seed(0)
    samples = make_samples(24, size=24)
    for sample in samples:
        pixels = torch.randint(0, 256, (24, 24, 3), generator=g, dtype=torch.uint8).numpy()
        buf = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buf, "JPEG", quality=95)
        sample["jpg"] = buf.getvalue()
    write_shard_folder(root, {"train": into_shards(samples, [6] * 4)})


def _two_view_epoch(folder, state: dict | None = None) -> list[tuple[list[str], torch.Tensor]]:
    loader = loaders(folder, world_size=1, batch_size=4, views=2)[0]
    if state is not None:
        loader.load_state_dict(state)
    return [(b.keys, b.images) for b in loader]


def _same(a: list[tuple[list[str], torch.Tensor]], b: list[tuple[list[str], torch.Tensor]]) -> bool:
    return [k for k, _ in a] == [k for k, _ in b] and all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_two_views_differ_and_are_deterministic_for_a_seed_and_a_resumed_position(tmp_path):
    _textured_folder(tmp_path)
    first, again = _two_view_epoch(tmp_path), _two_view_epoch(tmp_path)
    assert len(first) == 6 and all(images.shape == (4, 2, 3, 16, 16) for _, images in first)
    assert _same(first, again)  # same seeds, same views
    assert all(not torch.equal(images[i, 0], images[i, 1]) for _, images in first for i in range(4))
    loader = loaders(tmp_path, world_size=1, batch_size=4, views=2)[0]
    for done, _ in enumerate(loader, start=1):
        if done == 2:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint stores
    resumed, resumed_again = _two_view_epoch(tmp_path, state), _two_view_epoch(tmp_path, state)
    assert [k for k, _ in resumed] == [k for k, _ in first][2:]
    assert _same(resumed, resumed_again)


def test_two_views_share_the_pipeline_so_evaluation_views_are_equal(tmp_path):
    _textured_folder(tmp_path)
    batch = next(iter(loaders(tmp_path, world_size=1, batch_size=4, train=False, views=2)[0]))
    single = next(iter(loaders(tmp_path, world_size=1, batch_size=4, train=False)[0]))
    assert torch.equal(batch.images[:, 0], batch.images[:, 1]) and torch.equal(batch.images[:, 0], single.images)
