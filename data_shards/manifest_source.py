"""Generic manifest source: one table (CSV, JSONL or Parquet) with a row per tile.

Columns:
- `image`: local path (relative paths are relative to the manifest's folder) or any fsspec URI (s3://, http://);
- `caption` (sentences separated by newlines) or `captions` (a list; in CSV a JSON array string);
- location: `lon`, `lat` (WGS84) and/or `z`, `x`, `y`. z/x/y name the tile in `source.tile_scheme` (`xyz` web
  tiles or `baidu` tiles); rows with only lon/lat get the tile holding them at `source.zoom`, rows with only
  z/x/y get the tile centre;
- `city`, or `source.city` for every row;
- every other column holding at least one number is an indicator, by its (normalised) name.

CSV and JSONL are read with the standard library, Parquet with pyarrow. A row that cannot be read or lacks an
image or a location is a `bad_row`; the Collector applies the rules shared with the toolkit reader.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pyarrow.parquet as pq

from configs.loader import ConfigError
from configs.shards import SourceConfig
from data_shards import geo
from data_shards.format import indicator_name, sample_key
from data_shards.records import (Collector, Scan, Tile, csv_rows, parse_indicator, parse_indicators, read_poi,
                                 read_text, sentences_of)
from data_shards.storage import join, stat_many, url_to_fs

RESERVED = ("image", "caption", "captions", "lon", "lat", "z", "x", "y", "city")


def read_manifest(cfg: SourceConfig) -> Scan:
    col = Collector()
    rows = load_rows(cfg.manifest)
    columns = _columns(rows)
    _check_columns(cfg, columns)
    indicator_cols = {c: indicator_name(c) for c in columns if c not in RESERVED and _has_number(rows, c)}
    col.indicators = sorted(set(indicator_cols.values()))
    poi = read_poi(cfg.poi, col) if cfg.poi else None
    folder = cfg.manifest.rsplit("/", 1)[0] if "/" in cfg.manifest else "."
    tiles = []
    for row in rows:
        tile = _row_tile(row, cfg, indicator_cols, folder) if row is not None else None
        if tile is None:
            col.skip("bad_row")
            continue
        col.observe(tile.indicators)
        tiles.append(tile if poi is None else replace(tile, poi=poi.get(tile.key)))
    stats = stat_many(sorted({t.image for t in tiles}))
    for tile in tiles:
        stat = stats.get(tile.image)
        col.offer(replace(tile, image_stat=stat or {}), exists=stat is not None)
    return col.scan()


# ----------------------------------------------------------------------------- reading the table

def load_rows(uri: str) -> list[dict[str, Any] | None]:
    """Rows of a .csv, .jsonl/.ndjson or .parquet manifest; an unreadable row is None."""
    lower = uri.lower()
    if lower.endswith(".parquet"):
        fs, path = url_to_fs(uri)
        try:
            with fs.open(path, "rb") as f:
                return pq.read_table(f).to_pylist()
        except FileNotFoundError:
            raise ConfigError(f"manifest {uri!r} not found: pass an existing file with --manifest F") from None
    text = read_text(uri, "manifest", "--manifest F")
    if lower.endswith((".jsonl", ".ndjson")):
        return [_json_row(line) for line in text.splitlines() if line.strip()]
    if lower.endswith(".csv"):
        return csv_rows(text)[1]
    raise ConfigError(f"manifest {uri!r}: unknown format, name it *.csv, *.jsonl or *.parquet")


def _json_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _columns(rows: list[dict[str, Any] | None]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row or {}))
    return list(seen)


def _check_columns(cfg: SourceConfig, columns: list[str]) -> None:
    where = f"manifest {cfg.manifest!r}"
    if "image" not in columns:
        raise ConfigError(f"{where} has no `image` column: add one with a path or URL per tile")
    if not ({"lon", "lat"} <= set(columns) or {"z", "x", "y"} <= set(columns)):
        raise ConfigError(f"{where} needs location columns lon and lat, or z, x and y")
    if "city" not in columns and not cfg.city:
        raise ConfigError(f"{where} has no `city` column: set source.city (--city NAME)")


def _has_number(rows: list[dict[str, Any] | None], column: str) -> bool:
    return any(row and parse_indicator(row.get(column))[0] is not None for row in rows)


# ----------------------------------------------------------------------------- one row

def _row_tile(row: dict[str, Any], cfg: SourceConfig, indicator_cols: dict[str, str], folder: str) -> Tile | None:
    image = row.get("image")
    city = str(row.get("city") or cfg.city).strip()
    place = _place(row, cfg)
    if not isinstance(image, str) or not image.strip() or not city or place is None:
        return None
    sentences = _sentences(row)
    if sentences is None:
        return None
    z, x, y, lat, lon, bounds = place
    indicators, reasons = parse_indicators(row, indicator_cols)
    return Tile(key=sample_key(city, z, x, y), city=city, z=z, x=x, y=y, lat=lat, lon=lon, bounds=bounds,
                image=_resolve(image.strip(), folder), image_name=image.strip(), image_stat={},
                sentences=tuple(sentences),
                indicators=indicators, null_reasons=tuple(reasons), poi=None)


def _sentences(row: dict[str, Any]) -> list[str] | None:
    """Sentences of the `captions` list or the `caption` text; None when the cell cannot be read."""
    value = row.get("captions")
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list):
        if not all(isinstance(s, str) for s in value):
            return None
        return [" ".join(s.split()) for s in value if s.strip()]
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
        return None
    return sentences_of(caption or "")


def _place(row: dict[str, Any], cfg: SourceConfig) -> tuple[int, int, int, float, float, list[float]] | None:
    """(z, x, y, lat, lon, bounds) of a row, or None when its location is missing or unreadable."""
    try:
        zxy = _ints(row, ("z", "x", "y"))
        latlon = _floats(row, ("lat", "lon"))
    except (TypeError, ValueError):
        return None
    if latlon is not None and not (-85.06 <= latlon[0] <= 85.06 and -180.0 <= latlon[1] <= 180.0):
        return None
    if zxy is None and latlon is None:
        return None
    z, x, y = zxy if zxy is not None else (cfg.zoom, *_tile_of(latlon, cfg.zoom, cfg.tile_scheme))
    lat, lon = latlon if latlon is not None else _center(x, y, z, cfg.tile_scheme)
    bounds = geo.xyz_tile_bounds(x, y, z) if cfg.tile_scheme == "xyz" else geo.tile_bounds(lat, lon, z)
    return z, x, y, lat, lon, bounds


def _ints(row: dict[str, Any], names: tuple[str, ...]) -> tuple[int, ...] | None:
    values = [row.get(n) for n in names]
    if all(v is None or v == "" for v in values):
        return None
    numbers = [float(v) for v in values]  # TypeError/ValueError on junk or a partial triple
    if not all(math.isfinite(n) and n == int(n) for n in numbers):
        raise ValueError("tile index is not an integer")
    return tuple(int(n) for n in numbers)


def _floats(row: dict[str, Any], names: tuple[str, ...]) -> tuple[float, ...] | None:
    values = [row.get(n) for n in names]
    if all(v is None or v == "" for v in values):
        return None
    return tuple(float(v) for v in values)


def _tile_of(latlon: tuple[float, ...], z: int, scheme: str) -> tuple[int, int]:
    lat, lon = latlon
    return geo.xyz_tile(lat, lon, z) if scheme == "xyz" else geo.baidu_tile(*geo.wgs84_to_bd09(lat, lon), z)


def _center(x: int, y: int, z: int, scheme: str) -> tuple[float, float]:
    return geo.xyz_tile_center(x, y, z) if scheme == "xyz" else geo.bd09_to_wgs84(*geo.baidu_tile_center(x, y, z))


def _resolve(image: str, folder: str) -> str:
    """A URI or absolute path as is; a relative path relative to the manifest's folder."""
    return image if "://" in image or image.startswith("/") else join(folder, image)


__all__ = ["RESERVED", "read_manifest", "load_rows"]
