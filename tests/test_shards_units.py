"""Shard builder parts without Ray: config validation, format helpers, readers, splits, encoding, the writer's
byte cap, spike detection and the command line's configuration errors."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from configs.loader import ConfigError, from_dict, load
from configs.shards import ReportConfig, ShardsConfig, SplitConfig
from data_shards import geo
from data_shards.encode import CorruptImage, encode_tile
from data_shards.format import caption_text, city_slug, indicator_name, sample_key, shard_name
from data_shards.manifest_source import read_manifest
from data_shards.records import parse_indicator
from data_shards.report import find_spikes
from data_shards.sources import read_source
from data_shards.splits import assign_split, block_of
from data_shards.writer import ChunkJob, write_chunk
from launcher.cli import main as cli_main
from tests.shards_layout import CITY, make_toolkit, manifest_rows, noise_jpeg, write_manifest

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"source": {"captions": ["c.json"], "images": "img", "indicators": ["i.csv"]}, "output": {"uri": "out"}}


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "shards").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load(ShardsConfig, str(path), overrides=["output.uri=x", "source.captions=[c]", "source.images=i",
                                                   "source.indicators=[i]"])
    assert cfg.output.image_size >= 16 and abs(sum(cfg.split.ratios.values()) - 1) < 1e-6


@pytest.mark.parametrize("change,key", [
    ({"output": {"uri": ""}}, "output.uri"),
    ({"source": {"captions": []}}, "source.captions"),
    ({"source": {"kind": "manifest"}}, "source.manifest"),
    ({"split": {"ratios": {"train": 0.5, "val": 0.1}}}, "split.ratios"),
    ({"split": {"ratios": {"train": 0.9, "dev": 0.1}}}, "split.ratios.dev"),
    ({"output": {"image_size": 4}}, "output.image_size"),
    ({"ray": {"num_workers": 0}}, "ray.num_workers"),
    ({"output": {"max_samples": 3}}, "output.max_samples"),
])
def test_config_errors_name_the_dotted_key(change, key):
    data = json.loads(json.dumps(MINIMAL))
    for section, values in change.items():
        data.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(ShardsConfig, data)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["shards", "build", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--set", "--source", "--captions", "--images", "--indicators", "--poi", "--manifest",
                   "--city", "--caption-source", "--out", "--image-size", "--max-samples", "--max-bytes",
                   "--block-size", "--ray-address", "--workers", "--no-progress", "ray job submit"):
        assert option in text


# ----------------------------------------------------------------------------- format

def test_keys_names_and_text():
    assert sample_key("Beijing", 16, 12614, 4690) == "beijing_16_12614_4690"
    assert sample_key("São Paulo/x.y", 16, 1, -2) == "sopauloxy_16_1_-2"
    assert city_slug("北京").startswith("c") and len(city_slug("北京")) == 9
    assert len(city_slug("a" * 90)) == 39
    assert shard_name("val", 12) == "val-000012.tar"
    assert [indicator_name(c) for c in ("carbon_emissions (ton)", "population (unit)", "gdp (million yuan)",
                                        " nightlight ")] == ["carbon", "population", "gdp", "nightlight"]
    assert caption_text(["A  road", "", "Trees!", " water. "]) == "A road. Trees! water."


@pytest.mark.parametrize("cell,expected", [("3.5", (3.5, None)), (" ", (None, "empty_indicator")),
                                           ("n/a", (None, "non_numeric_indicator")),
                                           ("nan", (None, "non_numeric_indicator")),
                                           ("-1", (None, "negative_indicator")), (0, (0.0, None)),
                                           (None, (None, "empty_indicator")), (True, (None, "non_numeric_indicator"))])
def test_indicator_cells(cell, expected):
    assert parse_indicator(cell) == expected


def test_spikes_need_share_and_count():
    values = {"gdp": [10000.0] * 30 + [float(i) for i in range(70)], "pop": [1.0] * 3 + [2.0] * 97}
    spikes = find_spikes(values, ReportConfig(spike_share=0.02, spike_min_count=10))
    assert [(s["indicator"], s["value"], s["count"]) for s in spikes] == [("gdp", 10000.0, 30), ("pop", 2.0, 97)]
    assert spikes[0]["share"] == 0.3


# ----------------------------------------------------------------------------- splits

def test_spatial_blocks_are_whole_and_deterministic():
    cfg = SplitConfig(block_size=4, ratios={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    tiles = [(x, y) for x in range(-20, 60) for y in range(0, 40)]
    first = {t: assign_split("town", *t, cfg) for t in tiles}
    assert first == {t: assign_split("town", *t, cfg) for t in reversed(tiles)}
    by_block: dict = {}
    for (x, y), split in first.items():
        by_block.setdefault(block_of(x, y, 4), set()).add(split)
    assert all(len(s) == 1 for s in by_block.values())
    shares = {s: list(first.values()).count(s) / len(first) for s in ("train", "val", "test")}
    assert 0.4 < shares["train"] < 0.8 and shares["val"] > 0.05 and shares["test"] > 0.05
    other = {t: assign_split("town", *t, replace(cfg, seed=4)) for t in tiles}
    assert other != first


# ----------------------------------------------------------------------------- encoding

def test_encode_resizes_crops_and_uses_draft():
    big = noise_jpeg(1, shape=(600, 400))
    out = Image.open(io.BytesIO(encode_tile(big, 128, 90)))
    assert out.size == (128, 128) and out.format == "JPEG" and out.mode == "RGB"
    assert encode_tile(big, 128, 90) == encode_tile(big, 128, 90)
    png = io.BytesIO()
    Image.new("RGBA", (50, 50), (1, 2, 3, 4)).save(png, "PNG")
    assert Image.open(io.BytesIO(encode_tile(png.getvalue(), 32, 90))).size == (32, 32)


@pytest.mark.parametrize("data", [noise_jpeg(2)[:300], b"garbage", b""])
def test_corrupt_bytes_raise_corrupt_image(data):
    with pytest.raises(CorruptImage):
        encode_tile(data, 32, 90)


# ----------------------------------------------------------------------------- readers

def test_toolkit_reader_groups_sentences_and_counts_bad_input(tmp_path):
    paths, exp = make_toolkit(tmp_path)
    cfg = from_dict(ShardsConfig, {"source": paths, "output": {"uri": "x"}}).source
    scan = read_source(cfg)
    tiles = {t.key: t for t in scan.tiles}
    # corrupt images are only found by the tasks: the driver keeps them as candidates
    assert set(tiles) == set(exp.samples) | {"testcity_16_1000_500", "testcity_16_1001_500"}
    expected_skips = dict(exp.skipped, corrupt_image=0)
    assert dict(scan.skipped) == expected_skips
    for key, want in exp.samples.items():
        tile = tiles[key]
        assert list(tile.sentences) == want["sentences"] and tile.indicators == want["indicators"]
        assert tile.poi == want["poi"] and tile.city == CITY and tile.z == 16
        if want["bd09"] is not None:
            lat_bd, lon_bd = (float(v) for v in want["bd09"].strip("()").split(","))
            assert (tile.lat, tile.lon) == pytest.approx(geo.bd09_to_wgs84(lat_bd, lon_bd))
        else:
            assert (tile.lat, tile.lon) == pytest.approx(geo.bd09_to_wgs84(*geo.baidu_tile_center(tile.x, tile.y, 16)))
        lon0, lat0, lon1, lat1 = tile.bounds
        assert lon0 < tile.lon < lon1 and lat0 < tile.lat < lat1
    assert scan.indicators == ["carbon", "gdp", "population"]


def test_missing_source_files_are_config_errors_naming_the_file(tmp_path, capsys):
    paths, _ = make_toolkit(tmp_path)
    args = ["shards", "build", "--captions", str(tmp_path / "nope.json"), "--images", paths["images"],
            "--indicators", *paths["indicators"], "--out", str(tmp_path / "out")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.json" in err[0] and "--captions" in err[0]
    args[args.index("--indicators") + 1] = str(tmp_path / "gone.csv")
    args[3] = paths["captions"][0]
    assert cli_main(args) == 2
    assert "gone.csv" in capsys.readouterr().err
    args[3] = paths["captions"][0]
    args[args.index("--indicators") + 1] = paths["indicators"][0]
    args[args.index("--images") + 1] = str(tmp_path / "elsewhere")
    assert cli_main(args) == 2
    assert "elsewhere" in capsys.readouterr().err
    assert cli_main(["shards", "build", "--captions", "c.json", "--images", "i"]) == 2
    assert "source.indicators" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_reader_formats_locations_and_indicators(tmp_path, suffix):
    rows = manifest_rows(tmp_path, 5)
    rows[1] = {k: v for k, v in rows[1].items() if k not in ("z", "x", "y")} | {"lat": 52.5, "lon": 13.4}
    rows[2]["nightlight"] = -3.0
    if suffix != ".csv":
        rows[3] = {k: v for k, v in rows[3].items() if k != "caption"} | {"captions": ["One.", "Two"]}
    write_manifest(tmp_path / f"m{suffix}", rows)
    cfg = from_dict(ShardsConfig, {"source": {"kind": "manifest", "manifest": str(tmp_path / f"m{suffix}")},
                                   "output": {"uri": "x"}}).source
    scan = read_manifest(cfg)
    assert scan.indicators == ["nightlight"] and len(scan.tiles) == 5 and scan.skipped["bad_row"] == 0
    t0, t1, t2 = scan.tiles[:3]
    assert t0.key == "mapville_16_35200_21490" and t0.sentences == ("Row 0 first line", "second line of 0")
    assert t0.bounds == geo.xyz_tile_bounds(35200, 21490, 16)
    assert t0.image == str(tmp_path / "img" / "t0.jpg") and t0.image_stat["size"] > 0
    assert (t1.x, t1.y) == geo.xyz_tile(52.5, 13.4, 16) and (t1.lat, t1.lon) == (52.5, 13.4)
    assert t2.indicators == {"nightlight": None} and t2.null_reasons == ("negative_indicator",)
    if suffix != ".csv":
        assert scan.tiles[3].sentences == ("One.", "Two")


def test_manifest_bad_rows_missing_images_and_duplicates(tmp_path):
    rows = manifest_rows(tmp_path, 4)
    rows.append(dict(rows[0]))  # duplicate key
    rows.append(dict(rows[1], image="img/none.jpg", x=1))  # missing image
    rows.append(dict(rows[1], x=2, caption=""))  # no caption
    rows.append(dict(rows[1], x="east"))  # bad location
    write_manifest(tmp_path / "m.jsonl", rows)
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write("{not json\n")
    cfg = from_dict(ShardsConfig, {"source": {"kind": "manifest", "manifest": str(tmp_path / "m.jsonl")},
                                   "output": {"uri": "x"}}).source
    scan = read_manifest(cfg)
    assert len(scan.tiles) == 4
    assert dict(scan.skipped) == {"missing_image": 1, "corrupt_image": 0, "no_caption": 1, "duplicate_key": 1,
                                  "bad_row": 2}


def test_manifest_without_city_or_image_column_is_a_config_error(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "city"} for r in manifest_rows(tmp_path, 2)]
    write_manifest(tmp_path / "m.csv", rows)
    cfg = from_dict(ShardsConfig, {"source": {"kind": "manifest", "manifest": str(tmp_path / "m.csv")},
                                   "output": {"uri": "x"}}).source
    with pytest.raises(ConfigError, match="source.city"):
        read_manifest(cfg)
    assert len(read_manifest(replace(cfg, city="Town")).tiles) == 2


# ----------------------------------------------------------------------------- writer

def test_byte_cap_splits_a_chunk_into_parts_under_the_cap(tmp_path):
    rows = manifest_rows(tmp_path, 12, size=64)
    write_manifest(tmp_path / "m.csv", rows)
    cfg = from_dict(ShardsConfig, {"source": {"kind": "manifest", "manifest": str(tmp_path / "m.csv")},
                                   "output": {"uri": "x"}}).source
    tiles = tuple(replace(t, split="train") for t in read_manifest(cfg).tiles)
    out = tmp_path / "out"
    out.mkdir()
    job = ChunkJob(out=str(out), split="train", index=0, tiles=tiles, image_size=64, jpeg_quality=90,
                   max_bytes=64 * 1024, caption_source="manifest", fingerprint="f")
    result = write_chunk(job)
    parts = result["parts"]
    assert len(parts) > 1 and sum(p["samples"] for p in parts) == 12 and result["stats"]["encoded"] == 12
    for part in parts:
        data = (out / part["tmp"]).read_bytes()
        assert len(data) == part["bytes"] <= 64 * 1024
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert len(tar.getnames()) == 3 * part["samples"]
    assert write_chunk(job)["parts"][0]["sha256"] == parts[0]["sha256"]  # same input, same bytes
