"""Source readers: the UrbanCLIP toolkit layout (here) and generic manifests (manifest_source.py).

The toolkit layout, which `cityscale synth` also writes:
- captions JSON: a list of lists of `{"caption": sentence, "image": "City/16_x_y_s.jpg"}` entries, several per
  image. We group ALL sentences of an image, in file order (the official loader keeps one random sentence and,
  given the real file's single outer list, would yield one sample in total);
- indicators CSV: `satellite_img_name, BD09 coordinate, WGS84 coordinate, <indicator columns>`, where the column
  called "WGS84 coordinate" really holds Baidu BD-09 "(lat, lon)": we convert it with geo.bd09_to_wgs84. Tiles
  without a CSV row get the approximate centre of their Baidu tile index and null indicators;
- images folder: `images/City/16_x_y_s.jpg`, where `images` is the folder the captions' names are relative to.

Candidates are every captioned image plus every image file in the cities' folders; an image without caption is
`no_caption`, a caption without image file `missing_image`. Indicator and POI rows are joined by sample key.
Only the driver runs this: it reads the tables and lists the image folders, never the image bytes.
"""

from __future__ import annotations

import json
from typing import Any

from configs.loader import ConfigError
from configs.shards import SourceConfig
from data_shards import geo
from data_shards.format import indicator_name, sample_key
from data_shards.manifest_source import read_manifest
from data_shards.records import (Collector, Scan, Tile, csv_rows, parse_indicators, read_poi, read_text,
                                 tile_name_parts)
from data_shards.storage import file_stat, join, list_folder

_COORD_COLUMNS = ("satellite_img_name", "BD09 coordinate", "WGS84 coordinate")
_IMAGE_EXT = (".jpg", ".jpeg", ".png")


def read_source(cfg: SourceConfig) -> Scan:
    """Read the configured source on the driver: candidate tiles (pixels untouched), skips, indicator values."""
    return read_toolkit(cfg) if cfg.kind == "urbanclip" else read_manifest(cfg)


def read_toolkit(cfg: SourceConfig) -> Scan:
    col = Collector()
    captions = read_captions(cfg.captions, col)
    rows = read_indicator_tables(cfg.indicators, col)
    poi = read_poi(cfg.poi, col) if cfg.poi else None
    cities = sorted({n.split("/", 1)[0] for n in captions if "/" in n} | {r["city"] for r in rows.values()})
    listing = _list_images(cfg.images, cities)
    if captions and not listing:
        raise ConfigError(f"images folder {cfg.images!r} holds no image of {', '.join(cities[:3])}: pass --images "
                          "DIR, the folder the captions' City/16_x_y_s.jpg names are relative to")
    candidates = list(captions) + sorted(n for n in listing if n not in captions)
    for name in candidates:
        parts = tile_name_parts(name)
        if parts is None:
            col.skip("bad_row")
            continue
        key = sample_key(*parts)
        tile = _tile(parts, key, name, cfg.images, captions.get(name, []), rows.get(key), col.indicators,
                     listing.get(name) or {}, None if poi is None else poi.get(key))
        col.offer(tile, exists=name in listing)
    return col.scan()


# ----------------------------------------------------------------------------- captions

def read_captions(uris: list[str], col: Collector) -> dict[str, list[str]]:
    """Image name -> its sentences in file order, over all caption files; malformed entries are bad rows."""
    out: dict[str, list[str]] = {}
    for uri in uris:
        text = read_text(uri, "captions file", "--captions F")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"captions file {uri!r} is not valid JSON ({e}): pass the toolkit's "
                              "{City}_captions.json") from None
        if not isinstance(data, list):
            raise ConfigError(f"captions file {uri!r} must hold a list of lists of {{caption, image}} entries")
        for entry in _flatten(data):
            if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                    and isinstance(entry.get("caption"), str)):
                col.skip("bad_row")
                continue
            sentences = out.setdefault(entry["image"].strip(), [])
            sentence = " ".join(entry["caption"].split())
            if sentence:
                sentences.append(sentence)
    return out


def _flatten(data: list[Any]) -> list[Any]:
    """The toolkit's outer list holds lists of entries; accept a flat list of entries as well."""
    out: list[Any] = []
    for item in data:
        out.extend(item if isinstance(item, list) else [item])
    return out


# ----------------------------------------------------------------------------- indicator tables

def read_indicator_tables(uris: list[str], col: Collector) -> dict[str, dict[str, Any]]:
    """Sample key -> {city, lat, lon (WGS84), indicators, reasons}; sets col.indicators to the union of names."""
    out: dict[str, dict[str, Any]] = {}
    for uri in uris:
        header, rows = csv_rows(read_text(uri, "indicators file", "--indicators F.csv"))
        missing = [c for c in _COORD_COLUMNS if c not in header]
        if missing:
            raise ConfigError(f"indicators file {uri!r} lacks column {missing[0]!r}: pass a CSV with the toolkit "
                              f"columns {', '.join(_COORD_COLUMNS)}, <indicators>")
        columns = {c: indicator_name(c) for c in header if c not in _COORD_COLUMNS}
        col.indicators = sorted(set(col.indicators) | set(columns.values()))
        for row in rows:
            parsed = _indicator_row(row, columns)
            if parsed is None:
                col.skip("bad_row")
            elif parsed["key"] in out:
                col.skip("duplicate_key")
            else:
                col.observe(parsed["indicators"])
                out[parsed["key"]] = parsed
    return out


def _indicator_row(row: dict[str, str] | None, columns: dict[str, str]) -> dict[str, Any] | None:
    parts = tile_name_parts(row["satellite_img_name"]) if row else None
    if parts is None:
        return None
    try:
        lat_bd, lon_bd = (float(v) for v in row["WGS84 coordinate"].strip().strip("()").split(","))
    except ValueError:
        return None
    if not (-90.0 <= lat_bd <= 90.0 and -180.0 <= lon_bd <= 180.0):
        return None
    lat, lon = geo.bd09_to_wgs84(lat_bd, lon_bd)  # the toolkit's "WGS84" column is BD-09 (SOURCE.md)
    indicators, reasons = parse_indicators(row, columns)
    return {"key": sample_key(*parts), "city": parts[0], "lat": lat, "lon": lon, "indicators": indicators,
            "reasons": reasons}


# ----------------------------------------------------------------------------- tiles

def _list_images(images_uri: str, cities: list[str]) -> dict[str, dict[str, Any]]:
    """`City/file.jpg` -> {"size", "version"} for the image files in each city's folder."""
    out = {}
    for city in cities:
        for name, info in list_folder(join(images_uri, city)).items():
            if name.lower().endswith(_IMAGE_EXT):
                out[f"{city}/{name}"] = file_stat(info)
    return out


def _tile(parts: tuple[str, int, int, int], key: str, name: str, images_uri: str, sentences: list[str],
          row: dict[str, Any] | None, indicator_names: list[str], stat: dict[str, Any],
          poi: dict[str, int] | None) -> Tile:
    city, z, x, y = parts
    if row is None:
        lat, lon = geo.bd09_to_wgs84(*geo.baidu_tile_center(x, y, z))
        indicators: dict[str, float | None] = {n: None for n in indicator_names}
        reasons = ["missing_indicators"]
    else:
        lat, lon = row["lat"], row["lon"]
        indicators = {n: row["indicators"].get(n) for n in indicator_names}
        reasons = row["reasons"] + ["empty_indicator"] * (len(indicator_names) - len(row["indicators"]))
    return Tile(key=key, city=city, z=z, x=x, y=y, lat=lat, lon=lon, bounds=geo.tile_bounds(lat, lon, z),
                image=join(images_uri, name), image_name=name, image_stat=stat, sentences=tuple(sentences),
                indicators=indicators, null_reasons=tuple(reasons), poi=poi)


__all__ = ["read_source", "read_toolkit", "read_captions", "read_indicator_tables"]
