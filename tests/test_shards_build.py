"""The shard builder end to end on a real local Ray and a real S3 API server: every input kind, metadata checked
against the source, skips by reason, spatial splits, byte caps, idempotent re-runs, changed inputs, and a build
killed with SIGKILL that a re-run completes with the same manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import fsspec
import pytest
import webdataset as wds
from PIL import Image

from data_shards import build, geo, ray_tasks
from data_shards.format import caption_text, city_slug
from data_shards.splits import assign_split, block_of
from data_shards.synth import synthesize
from configs.loader import run_module
from configs.shards import SplitConfig
from tests.shards_layout import CITY, make_toolkit, manifest_rows, noise_jpeg, write_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "urbanclip_toolkit"  # beside the checkout; never copied into it
RATIOS = "split.ratios={train: 0.6, val: 0.2, test: 0.2}"


def toolkit_args(paths: dict, out: str, *extra: str) -> list[str]:
    return ["--source", "urbanclip", "--captions", *paths["captions"], "--images", paths["images"],
            "--indicators", *paths["indicators"], "--poi", *paths["poi"], "--out", out, "--image-size", "32",
            "--max-samples", "4", "--block-size", "2", "--set", RATIOS, "--set", "report.spike_min_count=3",
            "--no-progress", *extra]


def read_json(uri: str) -> dict:
    with fsspec.open(uri, "rb") as f:
        return json.loads(f.read())


def read_samples(out: str) -> dict[str, dict]:
    """key -> {jpg, txt, json, shard} over every shard of the manifest, checking sizes and checksums."""
    manifest = read_json(f"{out}/manifest.json")
    samples = {}
    for shard in manifest["shards"]:
        with fsspec.open(f"{out}/{shard['name']}", "rb") as f:
            data = f.read()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {"shard": shard["name"]})[ext] = tar.extractfile(member).read()
    return samples


def assert_contiguous(manifest: dict) -> None:
    for split in ("train", "val", "test"):
        names = [s["name"] for s in manifest["shards"] if s["split"] == split]
        assert names == [f"{split}-{i:06d}.tar" for i in range(len(names))]


def assert_no_spatial_leak(samples: dict[str, dict], block_size: int) -> None:
    split_of_block: dict = {}
    for s in samples.values():
        meta = json.loads(s["json"])
        split_of_block.setdefault((meta["city"], block_of(meta["x"], meta["y"], block_size)), set()).add(meta["split"])
    assert all(len(v) == 1 for v in split_of_block.values())
    train_blocks = {b for b, v in split_of_block.items() if v == {"train"}}
    test_blocks = {b for b, v in split_of_block.items() if v == {"test"}}
    assert test_blocks and train_blocks and not test_blocks & train_blocks


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tar")}


def comparable(manifest: dict) -> dict:
    manifest = json.loads(json.dumps(manifest))
    manifest["build_config"]["output"].pop("uri")
    return manifest


# ----------------------------------------------------------------------------- toolkit layout

def test_toolkit_layout_end_to_end(tmp_path, ray_local):
    paths, exp = make_toolkit(tmp_path / "src")
    out = tmp_path / "out"
    assert build.main(toolkit_args(paths, str(out))) == 0
    report, manifest = read_json(f"{out}/report.json"), read_json(f"{out}/manifest.json")
    assert report["samples_written"] == len(exp.samples) == 28
    assert report["skipped"] == exp.skipped and report["kept_with_null_indicator"] == exp.nulls
    spike = next(s for s in report["indicator_spikes"] if s["indicator"] == "gdp" and s["value"] == 10000.0)
    assert spike["share"] == exp.gdp_fill_share
    assert manifest["indicators"] == ["carbon", "gdp", "population"] and manifest["cities"] == [CITY]
    assert manifest["split_rule"]["block_size"] == 2 and manifest["schema_version"] == 1
    assert_contiguous(manifest)
    assert sum(manifest["totals"].values()) == 28 and all(s["samples"] <= 4 for s in manifest["shards"])
    assert os.path.getmtime(out / "manifest.json") >= max(os.path.getmtime(p) for p in out.glob("*.tar"))
    samples = read_samples(str(out))
    assert set(samples) == set(exp.samples)
    split_cfg = SplitConfig(block_size=2, ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    for key, want in exp.samples.items():
        s, meta = samples[key], json.loads(samples[key]["json"])
        assert Image.open(io.BytesIO(s["jpg"])).size == (32, 32)
        assert s["txt"].decode() == caption_text(want["sentences"]) and meta["sentences"] == want["sentences"]
        assert (meta["city"], meta["z"], meta["x"], meta["y"]) == (CITY, 16, want["x"], want["y"])
        assert meta["indicators"] == want["indicators"] and meta["poi"] == want["poi"]
        assert meta["image_sha256"] == want["sha256"] and meta["caption_source"] == "urbanclip"
        assert meta["image"] == f"{CITY}/16_{want['x']}_{want['y']}_s.jpg"  # as the captions name it
        if want["bd09"]:
            lat, lon = geo.bd09_to_wgs84(*(float(v) for v in want["bd09"].strip("()").split(",")))
        else:
            lat, lon = geo.bd09_to_wgs84(*geo.baidu_tile_center(want["x"], want["y"], 16))
        assert (meta["lat"], meta["lon"]) == pytest.approx((lat, lon), abs=1e-6)
        assert meta["bounds"] == pytest.approx(geo.tile_bounds(lat, lon, 16), abs=1e-6)
        assert meta["split"] == assign_split(city_slug(CITY), want["x"], want["y"], split_cfg)
    assert_no_spatial_leak(samples, block_size=2)
    # webdataset itself reads the shards back, sample by sample
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    read = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(r["__key__"] for r in read) == sorted(exp.samples)
    assert all(set(r) >= {"jpg", "json", "txt"} for r in read)


def test_rerun_keeps_shards_and_changed_inputs_rebuild(tmp_path, ray_local):
    paths, exp = make_toolkit(tmp_path / "src")
    out = tmp_path / "out"
    args = toolkit_args(paths, str(out), "--max-bytes", str(64 * 1024))
    assert build.main(args) == 0
    first, before = read_json(f"{out}/manifest.json"), mtimes(out)
    # the same build again: nothing rewritten, every shard reported as kept
    assert build.main(args) == 0
    report = read_json(f"{out}/report.json")
    assert report["shards_reused"] == len(first["shards"]) and report["shards_written"] == 0
    assert mtimes(out) == before and read_json(f"{out}/manifest.json") == first
    # one tile of the first train shard gets a huge sentence: its chunk now needs several shards, so the names
    # of every later train shard shift; the result must equal a clean build of the changed input
    first_train = read_samples(str(out))
    key = sorted(k for k, v in first_train.items() if v["shard"] == "train-000000.tar")[1]
    name = f"{CITY}/16_{exp.samples[key]['x']}_{exp.samples[key]['y']}_s.jpg"
    captions = json.loads(Path(paths["captions"][0]).read_text())
    captions[0].append({"caption": "word " * 20000, "image": name})
    Path(paths["captions"][0]).write_text(json.dumps(captions))
    assert build.main(args) == 0
    changed = read_json(f"{out}/report.json")
    assert changed["shards_written"] >= 3 and changed["shards_reused"] >= 1
    assert build.main(toolkit_args(paths, str(tmp_path / "clean"), "--max-bytes", str(64 * 1024))) == 0
    assert comparable(read_json(f"{out}/manifest.json")) == comparable(read_json(f"{tmp_path}/clean/manifest.json"))
    assert_contiguous(read_json(f"{out}/manifest.json"))
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    # another image size changes every fingerprint
    assert build.main(args + ["--image-size", "24"]) == 0
    assert read_json(f"{out}/report.json")["shards_reused"] == 0


def test_zero_usable_samples_exit_1_with_a_report(tmp_path, ray_local, capsys):
    paths, exp = make_toolkit(tmp_path / "src", width=3, height=3)
    for image in Path(paths["images"], CITY).glob("*"):
        image.write_bytes(b"broken")
    out = tmp_path / "out"
    assert build.main(toolkit_args(paths, str(out))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable sample" in err[0]
    assert read_json(f"{out}/report.json")["skipped"]["corrupt_image"] == len(exp.samples) + 2
    assert not (out / "manifest.json").exists()



def test_more_workers_than_the_cluster_has_cpus_is_one_line_and_exit_2(tmp_path, ray_local, capsys, monkeypatch):
    """The build reserves ray.num_workers CPUs before any task runs; a cluster without them is a config error."""
    monkeypatch.setattr(ray_tasks, "RESERVE_TIMEOUT", 2.0)
    paths, _ = make_toolkit(tmp_path / "src", width=3, height=3)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:  # ray_local has 2 CPUs
        run_module(lambda: build.main(toolkit_args(paths, str(out), "--set", "ray.num_workers=3")), "build")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ray.num_workers'" in err[0] and "lower ray.num_workers" in err[0]
    assert not list(out.glob("*.tar"))
    assert build.main(toolkit_args(paths, str(out))) == 0  # the reservation was released: 2 workers fit


# ----------------------------------------------------------------------------- manifest source, S3

def test_manifest_source_to_s3_with_byte_cap_and_idempotent_rerun(tmp_path, s3_server, ray_local):
    # the manifest and its images live on S3 (relative paths resolve there), except one local absolute path
    rows = manifest_rows(tmp_path, 30, size=64)
    local = noise_jpeg(7, size=64)
    (tmp_path / "local.jpg").write_bytes(local)
    rows[5]["image"] = str(tmp_path / "local.jpg")
    write_manifest(tmp_path / "m.csv", rows)
    fs, run = s3_server.fs(), uuid.uuid4().hex[:8]
    names = ["m.csv", *(f"img/t{i}.jpg" for i in range(30))]
    fs.put([str(tmp_path / n) for n in names], [f"{s3_server.bucket}/in-{run}/{n}" for n in names])
    out = s3_server.uri(f"out-{run}")
    args = ["--source", "manifest", "--manifest", s3_server.uri(f"in-{run}", "m.csv"), "--out", out,
            "--image-size", "64", "--max-samples", "12", "--max-bytes", str(64 * 1024), "--block-size", "2", "--set", RATIOS,
            "--no-progress", "--workers", "2"]
    assert build.main(args) == 0
    manifest = read_json(f"{out}/manifest.json")
    assert_contiguous(manifest)
    assert sum(manifest["totals"].values()) == 30 and manifest["indicators"] == ["nightlight"]
    assert all(s["bytes"] <= 64 * 1024 for s in manifest["shards"])
    chunks = sum(-(-n // 12) for n in manifest["totals"].values())
    assert len(manifest["shards"]) > chunks  # the byte cap split chunks into several shards
    samples = read_samples(out)
    for i, row in enumerate(rows):
        meta = json.loads(samples[f"mapville_16_{row['x']}_{row['y']}"]["json"])
        assert meta["indicators"] == {"nightlight": 0.5 * i} and meta["caption_source"] == "manifest"
        assert meta["image"] == row["image"]  # as written in the manifest (relative, or row 5's absolute)
        assert meta["bounds"] == geo.xyz_tile_bounds(row["x"], row["y"], 16)
    for i in (4, 5):
        meta = json.loads(samples[f"mapville_16_{rows[i]['x']}_{rows[i]['y']}"]["json"])
        source = local if i == 5 else (tmp_path / "img" / "t4.jpg").read_bytes()
        assert meta["image_sha256"] == hashlib.sha256(source).hexdigest()
    assert_no_spatial_leak(samples, block_size=2)
    prefix = out.removeprefix("s3://")

    def etags():
        return {i["name"]: (i["ETag"], i["LastModified"]) for i in fs.ls(prefix, detail=True)
                if i["name"].endswith(".tar")}

    before = etags()
    assert build.main(args) == 0
    report = read_json(f"{out}/report.json")
    assert report["shards_reused"] == len(manifest["shards"]) and report["shards_written"] == 0
    assert etags() == before and read_json(f"{out}/manifest.json") == manifest
    assert not [n for n in fs.ls(prefix) if "/.tmp-" in n]


# ----------------------------------------------------------------------------- killed build

def test_killed_build_rerun_gives_the_same_manifest(tmp_path, ray_local):
    rows = manifest_rows(tmp_path, 240, size=48)
    write_manifest(tmp_path / "m.jsonl", rows)
    config = tmp_path / "build.yaml"
    config.write_text(f"source: {{kind: manifest, manifest: {tmp_path / 'm.jsonl'}}}\n"
                      "output: {max_samples_per_shard: 3, image_size: 48}\nsplit: {block_size: 2}\n"
                      "report: {progress: false}\n")
    assert build.main(["--config", str(config), "--out", str(tmp_path / "clean")]) == 0
    clean = read_json(f"{tmp_path}/clean/manifest.json")
    out = tmp_path / "killed"
    # as `ray job submit -- python -m data_shards.build --config F` runs it: RAY_ADDRESS names the cluster
    proc = subprocess.Popen([sys.executable, "-m", "data_shards.build", "--config", str(config), "--out", str(out),
                             "--workers", "1"], cwd=ROOT, env=dict(os.environ, RAY_ADDRESS=ray_local),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # kill once two chunks are published and recorded, while most are still to do
        while len(list(out.glob(".build/*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    published = list(out.glob("*.tar"))
    assert published and not (out / "manifest.json").exists(), "the build was not killed mid-way"
    assert len(published) < len(clean["shards"])
    clean_sha = {s["name"]: s["sha256"] for s in clean["shards"]}
    for shard in published:  # whatever is published under a final name is complete
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == clean_sha[shard.name]
    rerun = subprocess.run([sys.executable, "-m", "launcher.cli", "shards", "build", "--config", str(config),
                            "--out", str(out), "--ray-address", ray_local], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert comparable(read_json(f"{out}/manifest.json")) == comparable(clean)
    assert read_json(f"{out}/report.json")["shards_reused"] >= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- synthetic city, real data

def test_synthetic_city_end_to_end(tmp_path, ray_local):
    summary = synthesize(str(tmp_path / "syn"), "Synthville", tiles=48, seed=5, size=64, progress=False)
    p = summary["paths"]
    out = tmp_path / "out"
    assert build.main(["--captions", p["captions"], "--images", str(tmp_path / "syn" / "images"),
                       "--indicators", p["downstream_task"], "--poi", p["poi"], "--out", str(out),
                       "--caption-source", "synth", "--image-size", "64", "--set", "report.spike_min_count=3",
                       "--no-progress"]) == 0
    report = read_json(f"{out}/report.json")
    assert report["samples_written"] == 48 and not any(report["skipped"].values())
    assert report["kept_with_null_indicator"]["missing_indicators"] == 0
    if summary["gdp_fill"] >= 3:
        assert any(s["indicator"] == "gdp" and s["value"] == 10000.0 for s in report["indicator_spikes"])
    poi = {r.split(",")[0]: r.strip().split(",")[1:] for r in Path(p["poi"]).read_text().splitlines()[1:]}
    captions = json.loads(Path(p["captions"]).read_text())[0]
    for key, s in read_samples(str(out)).items():
        meta = json.loads(s["json"])
        name = f"Synthville/16_{meta['x']}_{meta['y']}_s.jpg"
        assert meta["caption_source"] == "synth" and list(meta["poi"].values()) != []
        assert sorted(int(v) for v in poi[name]) == sorted(meta["poi"].values())
        assert meta["sentences"] == [" ".join(e["caption"].split()) for e in captions if e["image"] == name]
        image = tmp_path / "syn" / "images" / name
        assert meta["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


@pytest.mark.skipif(not REAL.exists(), reason="the UrbanCLIP toolkit sample is not beside this checkout "
                    "(../shared/data/urbanclip_toolkit): the real-data build is not run")
def test_real_toolkit_sample_reads_correctly(tmp_path, ray_local):
    out = tmp_path / "out"
    assert build.main(["--captions", str(REAL / "Beijing_captions.json"), "--images", str(REAL / "images"),
                       "--indicators", str(REAL / "Beijing.csv"), "--out", str(out), "--no-progress"]) == 0
    report = read_json(f"{out}/report.json")
    captioned = {e["image"] for e in json.loads((REAL / "Beijing_captions.json").read_text())[0]}
    assert report["samples_written"] == 6 and report["skipped"]["missing_image"] == len(captioned) - 6
    spike = next(s for s in report["indicator_spikes"] if s["indicator"] == "gdp" and s["value"] == 10000.0)
    assert 0.13 <= spike["share"] <= 0.21
    for s in read_samples(str(out)).values():
        meta = json.loads(s["json"])
        assert 39.0 < meta["lat"] < 41.5 and 115.0 < meta["lon"] < 118.0 and len(meta["sentences"]) >= 4
        assert all(v is not None for v in meta["indicators"].values())
