"""Settings of the shard builder (`cityscale shards build`, `python -m data_shards.build`).

One frozen, keyword-only dataclass per section, each handed only to the component that uses it:
`source` to the readers, `output` to the shard writer, `split` to the split rule, `report` to the report and
progress display, `ray` to the task scheduler. `ShardsConfig` bundles them for the YAML file
(configs/shards/*.yaml) and the command line, which overrides the YAML.

Only `source`, `output` (minus its `uri`) and `split` shape the bytes of the shards: they, and nothing from
`report` or `ray`, go into the per-shard fingerprints that decide whether a re-run may keep a published shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from configs.loader import ConfigError, doc

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Where the tiles, captions and indicators come from."""

    kind: Literal["urbanclip", "manifest"] = doc(
        "input layout: `urbanclip` (captions JSON + images folder + indicators CSV, as the UrbanCLIP toolkit "
        "and `cityscale synth` write it) or `manifest` (one CSV/JSONL/Parquet table)", default="urbanclip")
    captions: list[str] = doc("urbanclip: captions JSON file(s), a list of lists of {caption, image} entries",
                              default_factory=list)
    images: str = doc("urbanclip: folder the captions' `image` entries (`City/16_x_y_s.jpg`) are relative to",
                      default="")
    indicators: list[str] = doc("urbanclip: indicator CSV file(s) with the toolkit columns "
                                "(satellite_img_name, BD09 coordinate, WGS84 coordinate, indicators...)",
                                default_factory=list)
    poi: list[str] = doc("optional POI CSV file(s): satellite_img_name + one integer column per category",
                         default_factory=list)
    manifest: str = doc("manifest: a .csv, .jsonl or .parquet table with columns image, caption (newline-"
                        "separated sentences) or captions (list), lon/lat and/or z/x/y, optional city, and "
                        "numeric indicator columns", default="")
    city: str = doc("manifest: city for rows without a `city` column", default="")
    zoom: int = doc("manifest: tile zoom for rows that give only lon/lat", default=16)
    tile_scheme: Literal["xyz", "baidu"] = doc(
        "manifest: tile numbering of z/x/y (`xyz` = web/OSM tiles, `baidu` = Baidu tiles as in UrbanCLIP)",
        default="xyz")
    caption_source: str = doc("label written as `caption_source` in each sample (default: the source kind; "
                              "e.g. `synth` for `cityscale synth` output)", default="")

    def validate(self, path: str) -> None:
        if self.kind == "urbanclip":
            for name, flag in (("captions", "--captions F"), ("indicators", "--indicators F.csv")):
                if not getattr(self, name):
                    raise ConfigError(f"config key '{path}.{name}' is required when {path}.kind is 'urbanclip': "
                                      f"pass {flag}")
            if not self.images:
                raise ConfigError(f"config key '{path}.images' is required when {path}.kind is 'urbanclip': "
                                  "pass --images DIR")
        elif not self.manifest:
            raise ConfigError(f"config key '{path}.manifest' is required when {path}.kind is 'manifest': "
                              "pass --manifest F")
        if not 0 <= self.zoom <= 22:
            raise ConfigError(f"config key '{path}.zoom' must be in 0..22, got {self.zoom}")

    def label(self) -> str:
        """The `caption_source` written into each sample."""
        return self.caption_source or self.kind


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """Where and how the shards are written."""

    uri: str = doc("output folder: local path, file:// or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL)",
                   default="")
    image_size: int = doc("side of the re-encoded square JPEG tile, in pixels", default=256)
    jpeg_quality: int = doc("JPEG quality of the re-encoded tiles (1-95)", default=90)
    max_samples_per_shard: int = doc("a shard closes at this many samples (also the unit of work of one Ray task)",
                                     default=1000)
    max_bytes_per_shard: int = doc("a shard closes before it would exceed this many bytes", default=256 * 2**20)

    def validate(self, path: str) -> None:
        if not self.uri:
            raise ConfigError(f"config key '{path}.uri' is required: pass --out URL (a folder or s3://bucket/prefix)")
        checks = {"image_size": (16, 4096, self.image_size), "jpeg_quality": (1, 95, self.jpeg_quality),
                  "max_samples_per_shard": (1, 10**7, self.max_samples_per_shard),
                  "max_bytes_per_shard": (64 * 1024, 2**40, self.max_bytes_per_shard)}
        for name, (lo, hi, value) in checks.items():
            if not lo <= value <= hi:
                raise ConfigError(f"config key '{path}.{name}' must be in {lo}..{hi}, got {value}")


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Spatial-block split rule: a whole block of tiles goes to one split."""

    block_size: int = doc("block side in tile indices: block = (x // block_size, y // block_size)", default=8)
    ratios: dict[str, float] = doc("share of blocks per split (keys train, val, test; must sum to 1)",
                                   default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = doc("seed of the block -> split hash", default=0)

    def validate(self, path: str) -> None:
        if self.block_size < 1:
            raise ConfigError(f"config key '{path}.block_size' must be >= 1, got {self.block_size}")
        unknown = sorted(set(self.ratios) - set(SPLITS))
        if unknown:
            raise ConfigError(f"config key '{path}.ratios.{unknown[0]}' is not a split: use {', '.join(SPLITS)}")
        if any(v < 0 for v in self.ratios.values()) or abs(sum(self.ratios.values()) - 1.0) > 1e-6:
            raise ConfigError(f"config key '{path}.ratios' must be non-negative and sum to 1, got {self.ratios}")

    def cumulative(self) -> list[tuple[str, float]]:
        """(split, upper bound) in the fixed order train, val, test: a block's hash in [0, 1) picks the first."""
        out, acc = [], 0.0
        for name in SPLITS:
            acc += self.ratios.get(name, 0.0)
            out.append((name, acc))
        return out


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """What the build reports and how it shows progress."""

    spike_share: float = doc("report an indicator value held by at least this share of an indicator's values",
                             default=0.02)
    spike_min_count: int = doc("... and by at least this many rows (keeps tiny inputs from flagging every value)",
                               default=10)
    progress: bool = doc("show a progress bar (tiles/s) and the summary table", default=True)

    def validate(self, path: str) -> None:
        if not 0.0 < self.spike_share <= 1.0:
            raise ConfigError(f"config key '{path}.spike_share' must be in (0, 1], got {self.spike_share}")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """How the build runs on Ray."""

    address: str = doc("Ray cluster to join (e.g. auto, ray://HEAD:10001, 127.0.0.1:6379); empty: start a "
                       "local Ray instance", default="")
    num_workers: int = doc("Ray tasks running at once: CPUs the build reserves (a placement group) and the CPUs of "
                           "the local instance", default=2)

    def validate(self, path: str) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"config key '{path}.num_workers' must be >= 1, got {self.num_workers}")


@dataclass(frozen=True, kw_only=True)
class ShardsConfig:
    """A whole shard build: what the YAML files in configs/shards/ hold."""

    source: SourceConfig = field(default_factory=SourceConfig, metadata={"help": "input tiles and labels"})
    output: OutputConfig = field(default_factory=OutputConfig, metadata={"help": "shard output"})
    split: SplitConfig = field(default_factory=SplitConfig, metadata={"help": "train/val/test split"})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "report and progress"})
    ray: RayConfig = field(default_factory=RayConfig, metadata={"help": "Ray execution"})


__all__ = ["SPLITS", "SourceConfig", "OutputConfig", "SplitConfig", "ReportConfig", "RayConfig", "ShardsConfig"]
