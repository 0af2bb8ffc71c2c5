"""What every source reader produces: `Tile` records, skip counts by reason and the raw indicator values.

Readers (data_shards/sources.py for the UrbanCLIP layout, data_shards/manifest_source.py for manifests) parse
rows and hand candidate tiles to a `Collector`, which owns the rules shared by both: a tile needs an existing
image and at least one sentence, the first tile with a key wins (later ones are `duplicate_key`), and every
reason is counted. Indicator cells are parsed here too: empty, non-numeric, non-finite or negative values become
null with a reason, and a sample keeps them (a tile without indicators is still a pretraining sample).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from configs.loader import ConfigError
from data_shards.format import SKIP_REASONS, sample_key
from data_shards.storage import url_to_fs

# `City/16_12614_4690_s.jpg` as in UrbanCLIP captions, indicator and POI tables
TILE_NAME_RE = re.compile(r"^(?P<city>[^/]+)/(?P<z>\d+)_(?P<x>-?\d+)_(?P<y>-?\d+)(?:_[a-z]+)?\.(?:jpe?g|png)$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class Tile:
    """One sample-to-be: everything but the pixels, which a Ray task reads, hashes and re-encodes."""

    key: str
    city: str
    z: int
    x: int
    y: int
    lat: float
    lon: float
    bounds: list[float]
    image: str  # URI of the source image
    image_stat: dict[str, Any]  # {"size", "version"}: enters the shard fingerprint instead of the bytes
    sentences: tuple[str, ...]
    indicators: dict[str, float | None]
    null_reasons: tuple[str, ...]  # one entry per indicator kept as null (see format.NULL_REASONS)
    poi: dict[str, int] | None
    split: str = ""
    image_name: str = ""  # the image as the source names it: the sample json's `image`


@dataclass
class Scan:
    """A source read on the driver: candidate tiles, skips by reason, all indicator values seen."""

    tiles: list[Tile]
    skipped: Counter
    indicators: list[str]
    values: dict[str, list[float]]  # every non-null indicator value of every source row (for spike detection)
    rows: int  # indicator rows read (CSV rows or manifest rows)


@dataclass
class Collector:
    """Accumulates a Scan; the only place that decides whether a candidate tile becomes a sample."""

    indicators: list[str] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)
    skipped: Counter = field(default_factory=lambda: Counter({r: 0 for r in SKIP_REASONS}))
    values: dict[str, list[float]] = field(default_factory=dict)
    rows: int = 0
    _keys: set[str] = field(default_factory=set)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def observe(self, indicators: dict[str, float | None]) -> None:
        """Record one source row's indicator values (for the spike report)."""
        self.rows += 1
        for name, value in indicators.items():
            if value is not None:
                self.values.setdefault(name, []).append(value)

    def offer(self, tile: Tile, *, exists: bool) -> None:
        """Keep `tile` unless its image is missing, it has no sentence, or its key was already taken."""
        if not exists:
            self.skip("missing_image")
        elif not tile.sentences:
            self.skip("no_caption")
        elif tile.key in self._keys:
            self.skip("duplicate_key")
        else:
            self._keys.add(tile.key)
            self.tiles.append(tile)

    def scan(self) -> Scan:
        return Scan(tiles=self.tiles, skipped=self.skipped, indicators=sorted(self.indicators),
                    values=self.values, rows=self.rows)


# ----------------------------------------------------------------------------- cells

def parse_indicator(value: Any) -> tuple[float | None, str | None]:
    """(value, None) for a usable indicator, else (None, reason) with reason from format.NULL_REASONS."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "empty_indicator"
    if isinstance(value, bool):
        return None, "non_numeric_indicator"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, "non_numeric_indicator"
    if not math.isfinite(number):
        return None, "non_numeric_indicator"
    if number < 0:
        return None, "negative_indicator"
    return number, None


def parse_indicators(row: dict[str, Any], columns: dict[str, str]) -> tuple[dict[str, float | None], list[str]]:
    """Indicator name -> value (or None) for the given {column: name} of one row, and the null reasons."""
    values, reasons = {}, []
    for column, name in columns.items():
        value, reason = parse_indicator(row.get(column))
        values[name] = value
        if reason:
            reasons.append(reason)
    return values, reasons


def sentences_of(text: str) -> list[str]:
    """Non-empty, whitespace-normalised lines of a caption cell."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def tile_name_parts(name: str) -> tuple[str, int, int, int] | None:
    """(city, z, x, y) of `City/16_x_y_s.jpg`, or None when the name does not look like that."""
    m = TILE_NAME_RE.match(name.strip())
    return None if m is None else (m["city"], int(m["z"]), int(m["x"]), int(m["y"]))


# ----------------------------------------------------------------------------- files

def read_text(uri: str, what: str, flag: str) -> str:
    """A whole text file; a missing file is a configuration error naming the file and the option."""
    fs, path = url_to_fs(uri)
    try:
        return fs.cat_file(path).decode("utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{what} {uri!r} not found: pass an existing file with {flag}") from None


def csv_rows(text: str) -> tuple[list[str], list[dict[str, str] | None]]:
    """(header, rows) of a CSV text; a row with the wrong number of fields comes back as None (a bad row)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    rows: list[dict[str, str] | None] = []
    for cells in reader:
        if not cells:
            continue
        rows.append(dict(zip(header, cells)) if len(cells) == len(header) else None)
    return header, rows


def read_poi(uris: list[str], collector: Collector) -> dict[str, dict[str, int]]:
    """Sample key -> {category: count} from POI CSVs (satellite_img_name + integer columns); bad rows counted."""
    out: dict[str, dict[str, int]] = {}
    for uri in uris:
        header, rows = csv_rows(read_text(uri, "POI file", "--poi F.csv"))
        if "satellite_img_name" not in header:
            raise ConfigError(f"POI file {uri!r} has no satellite_img_name column: pass a POI CSV as "
                              "`cityscale synth` writes it")
        categories = [c for c in header if c != "satellite_img_name"]
        for row in rows:
            parsed = _poi_row(row, categories)
            if parsed is None:
                collector.skip("bad_row")
            else:
                out.setdefault(parsed[0], parsed[1])
    return out


def _poi_row(row: dict[str, str] | None, categories: list[str]) -> tuple[str, dict[str, int]] | None:
    parts = tile_name_parts(row["satellite_img_name"]) if row else None
    if parts is None:
        return None
    try:
        counts = {c: int(float(row[c])) for c in categories}
    except (ValueError, OverflowError):
        return None
    if any(v < 0 for v in counts.values()):
        return None
    return sample_key(*parts), counts


__all__ = ["TILE_NAME_RE", "Tile", "Scan", "Collector", "parse_indicator", "parse_indicators", "sentences_of",
           "tile_name_parts", "read_text", "csv_rows", "read_poi"]
