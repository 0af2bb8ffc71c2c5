"""The shard build job: `cityscale shards build ...` or, on a Ray cluster,
`ray job submit --address http://HEAD:8265 --working-dir . -- python -m data_shards.build --config F`.

The driver reads the source tables (never the images), assigns splits, plans chunks (data_shards/plan.py), runs
one Ray task per chunk (data_shards/ray_tasks.py) and publishes results in order, then writes report.json and,
last, manifest.json. Re-running the same build keeps every shard whose record and checksum still match; a build
killed at any point leaves only complete shards under final names, and the next run finishes the job with the
same manifest. Exit codes: 0 done, 1 no usable sample, 2 configuration error (one line naming the key or file).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from configs.loader import (FLAG_DEST, add_config_flags, apply_flags, apply_overrides, from_dict, read_yaml,
                            run_module)
from configs.shards import ShardsConfig
from data_shards import ray_tasks
from data_shards.format import MANIFEST_NAME, REPORT_NAME, SHARD_RE, TMP_PREFIX, city_slug, shard_name
from data_shards.plan import Chunk, load_records, matching_record, plan_chunks, record_name, state_uri
from data_shards.records import Scan, Tile
from data_shards.report import Tally, build_manifest, build_report, find_spikes, print_summary
from data_shards.sources import read_source
from data_shards.splits import assign_split
from data_shards.storage import (absolute, join, list_folder, makedirs, publish, remove, url_to_fs,
                                 write_json_atomic)
from data_shards.writer import ChunkJob


class NoSamples(RuntimeError):
    """The source held no usable sample (report.json says why)."""


# ----------------------------------------------------------------------------- the build

def run(cfg: ShardsConfig) -> dict[str, Any]:
    """Build the shards of `cfg` into cfg.output.uri and return the report. Raises NoSamples, ConfigError."""
    start = time.perf_counter()
    cfg = _absolute_paths(cfg)
    scan = read_source(cfg.source)
    tiles = _with_splits(scan.tiles, cfg)
    chunks = plan_chunks(tiles, cfg)
    out = cfg.output.uri
    makedirs(out)
    _remove_temporaries(out)
    jobs = _jobs(cfg, chunks, load_records(out))
    if not tiles or any(job.reuse is None for job in jobs):
        remove(out, [MANIFEST_NAME])  # the folder is no complete build until the new manifest lands
    phases = {"read_and_plan": time.perf_counter() - start}
    with ray_tasks.session(cfg.ray) if jobs else nullcontext() as run_jobs:  # no job: no Ray at all
        phases["ray_start"] = time.perf_counter() - start - sum(phases.values())
        publisher = _Publisher(out, Tally(skipped=Counter(scan.skipped)), total=len(tiles),
                               progress=cfg.report.progress)
        try:
            if jobs:
                run_jobs(jobs, publisher.accept)
            phases["tasks"] = time.perf_counter() - start - sum(phases.values())
        finally:
            publisher.close()
    report = build_report(publisher.tally, find_spikes(scan.values, cfg.report), scan.rows, phases)
    write_json_atomic(join(out, REPORT_NAME), report)
    if report["samples_written"] == 0:
        remove(out, [MANIFEST_NAME])
        raise NoSamples(_no_samples_line(scan, out))
    manifest = build_manifest(cfg, publisher.tally, scan.indicators, sorted({t.city for t in tiles}))
    write_json_atomic(join(out, MANIFEST_NAME), manifest)  # last: its presence marks a complete build
    _remove_stale(out, manifest, chunks)
    return report


def fresh_jobs(cfg: ShardsConfig) -> list[ChunkJob]:
    """The chunk jobs of building `cfg` from scratch (no earlier build kept), without running them: for
    bench/shards.py, which times the tasks apart from the build."""
    cfg = _absolute_paths(cfg)
    return _jobs(cfg, plan_chunks(_with_splits(read_source(cfg.source).tiles, cfg), cfg), {})


def _with_splits(tiles: list[Tile], cfg: ShardsConfig) -> list[Tile]:
    return [replace(t, split=assign_split(city_slug(t.city), t.x, t.y, cfg.split)) for t in tiles]


def _absolute_paths(cfg: ShardsConfig) -> ShardsConfig:
    """Local paths made absolute on the driver, so tasks find them wherever Ray runs them."""
    src = cfg.source
    source = replace(src, captions=[absolute(u) for u in src.captions], images=absolute(src.images),
                     indicators=[absolute(u) for u in src.indicators], poi=[absolute(u) for u in src.poi],
                     manifest=absolute(src.manifest))
    return replace(cfg, source=source, output=replace(cfg.output, uri=absolute(cfg.output.uri)))


def _jobs(cfg: ShardsConfig, chunks: list[Chunk], records: dict[str, Any]) -> list[ChunkJob]:
    return [ChunkJob(out=cfg.output.uri, split=c.split, index=c.index, tiles=c.tiles,
                     image_size=cfg.output.image_size, jpeg_quality=cfg.output.jpeg_quality,
                     max_bytes=cfg.output.max_bytes_per_shard, caption_source=cfg.source.label(),
                     fingerprint=c.fingerprint, reuse=matching_record(c, records)) for c in chunks]


class _Publisher:
    """Publishes task results per split in chunk order, so shard indices are contiguous and deterministic."""

    def __init__(self, out: str, tally: Tally, total: int, progress: bool) -> None:
        self.out, self.tally = out, tally
        self.fs, self.folder = url_to_fs(out)
        self.next_chunk: Counter = Counter()
        self.next_shard: Counter = Counter()
        self.waiting: dict[tuple[str, int], tuple[ChunkJob, dict[str, Any]]] = {}
        self.bar = tqdm(total=total, unit="tile", desc="shards", disable=not progress, smoothing=0.1)

    def accept(self, job: ChunkJob, result: dict[str, Any]) -> list[ChunkJob]:
        """Take one task result; publish what is now in order; return chunks that must be rebuilt."""
        if result["parts"] is None:
            return [replace(job, reuse=None)]  # a kept chunk's shards are damaged or gone: rebuild it
        self.bar.update(len(job.tiles))
        self.waiting[(job.split, job.index)] = (job, result)
        split = job.split
        while (key := (split, self.next_chunk[split])) in self.waiting:
            job, result = self.waiting.pop(key)
            first = self.next_shard[split]
            names = [shard_name(split, first + i) for i in range(len(result["parts"]))]
            if result["reused"] and [p["name"] for p in result["parts"]] != names:
                self.bar.update(-len(job.tiles))
                return [replace(job, reuse=None)]  # an earlier chunk changed its shard count: rebuild
            if not result["reused"]:
                self._publish(job, result, names)
            self.tally.add(split, result, names)
            self.next_chunk[split] += 1
            self.next_shard[split] += len(names)
        return []

    def _publish(self, job: ChunkJob, result: dict[str, Any], names: list[str]) -> None:
        for part, name in zip(result["parts"], names):
            publish(self.fs, f"{self.folder}/{part['tmp']}", f"{self.folder}/{name}")
        parts = [{"name": name, "samples": p["samples"], "bytes": p["bytes"], "sha256": p["sha256"]}
                 for p, name in zip(result["parts"], names)]
        write_json_atomic(join(state_uri(self.out), record_name(job.split, job.index)),
                          {"fingerprint": job.fingerprint, "parts": parts, "stats": result["stats"]})
        result["parts"] = parts

    def close(self) -> None:
        self.bar.close()


def _remove_temporaries(out: str) -> None:
    """Temporary files of crashed builds (nothing else writes into `out` while a build runs)."""
    for folder in (out, state_uri(out)):
        remove(folder, [n for n in list_folder(folder) if n.startswith(TMP_PREFIX)])


def _remove_stale(out: str, manifest: dict[str, Any], chunks: list[Chunk]) -> None:
    """After the manifest: shards and records of earlier builds that this build no longer has."""
    keep = {s["name"] for s in manifest["shards"]}
    remove(out, [n for n in list_folder(out) if SHARD_RE.match(n) and n not in keep])
    planned = {c.record_name for c in chunks}
    remove(state_uri(out), [n for n in list_folder(state_uri(out)) if n not in planned])
    _remove_temporaries(out)


def _no_samples_line(scan: Scan, out: str) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in scan.skipped.items() if v) or "the source is empty"
    return (f"no usable sample ({reasons}): check the source paths and {join(out, REPORT_NAME)}")


# ----------------------------------------------------------------------------- command line

# option -> (dotted config key, argparse kwargs)
_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--source": ("source.kind", {"choices": ["urbanclip", "manifest"]}),
    "--captions": ("source.captions", {"nargs": "+", "metavar": "F"}),
    "--images": ("source.images", {"metavar": "DIR"}),
    "--indicators": ("source.indicators", {"nargs": "+", "metavar": "F.csv"}),
    "--poi": ("source.poi", {"nargs": "+", "metavar": "F.csv"}),
    "--manifest": ("source.manifest", {"metavar": "F"}),
    "--city": ("source.city", {"metavar": "NAME"}),
    "--caption-source": ("source.caption_source", {"metavar": "NAME"}),
    "--out": ("output.uri", {"metavar": "URL"}),
    "--image-size": ("output.image_size", {"type": int, "metavar": "PX"}),
    "--max-samples": ("output.max_samples_per_shard", {"type": int, "metavar": "N"}),
    "--max-bytes": ("output.max_bytes_per_shard", {"type": int, "metavar": "N"}),
    "--block-size": ("split.block_size", {"type": int, "metavar": "N"}),
    "--ray-address": ("ray.address", {"metavar": "A"}),
    "--workers": ("ray.num_workers", {"type": int, "metavar": "N"}),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cityscale shards build",
        description="Build webdataset shards (train/val/test) from UrbanCLIP-layout data or a manifest, with Ray.\n"
                    "Options override the YAML given by --config; docs/shard-format.md describes the output.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  cityscale shards build --captions D/captions/X_captions.json --images D/images \\\n"
               "      --indicators D/downstream_task/X.csv --poi D/poi/X.csv --caption-source synth --out shards/\n"
               "  cityscale shards build --source manifest --manifest tiles.parquet --city Berlin "
               "--out s3://bucket/shards\n"
               "  ray job submit --address http://HEAD:8265 --working-dir . -- \\\n"
               "      python -m data_shards.build --config configs/shards/X.yaml\n"
               "exit codes: 0 done, 1 no usable sample, 2 configuration error")
    p.add_argument("--config", metavar="F", help="YAML file with the sections of configs/shards/default.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set split.ratios.val=0.2 (repeatable)")
    add_config_flags(p, ShardsConfig, _FLAGS)
    p.add_argument("--no-progress", dest=FLAG_DEST + "report.progress", action="store_const", const=False,
                   default=None, help="no progress bar and summary table [report.progress]")
    return p


def config_from_args(args: argparse.Namespace) -> ShardsConfig:
    """YAML <- --set overrides <- explicit options, validated (ConfigError names the key)."""
    data = apply_overrides(read_yaml(args.config) if args.config else {}, args.set)
    return from_dict(ShardsConfig, apply_flags(data, args))


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(parser().parse_args(argv))
    try:
        report = run(cfg)
    except NoSamples as e:
        print(f"cityscale shards build: {e}", file=sys.stderr)
        return 1
    if cfg.report.progress:
        print_summary(report)
    return 0


if __name__ == "__main__":
    run_module(main, "cityscale shards build")
