"""Tiny shard-builder inputs made by the tests themselves: an UrbanCLIP-toolkit-layout city with every kind of
bad input, and manifest tables; each comes with what a correct build must produce (`Expected`).

Images are random-noise JPEGs drawn with PIL; coordinates go through data_shards.geo the way the toolkit's
columns do (BD-09 "(lat, lon)" in the column called "WGS84 coordinate"). Nothing here reads the real data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_shards import geo

CITY = "Testcity"
INDICATOR_COLUMNS = ("carbon_emissions (ton)", "population (unit)", "gdp (million yuan)")
POI_CATEGORIES = ("food", "school")


def noise_jpeg(seed: int, size: int = 40, shape: tuple[int, int] | None = None) -> bytes:
    w, h = shape or (size, size)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


@dataclass
class Expected:
    """What the build must write: key -> expected sample fields; skips by reason; null reasons."""

    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    gdp_fill_share: float = 0.0


def _name(x: int, y: int, city: str = CITY, ext: str = "jpg") -> str:
    return f"{city}/16_{x}_{y}_s.{ext}"


def _bd09_cell(x: int, y: int) -> str:
    lat, lon = geo.baidu_tile_center(x, y, 16)
    return f"({lat + 0.0001}, {lon - 0.0001})"  # a point inside the tile, as the toolkit gives


def make_toolkit(root: Path, width: int = 6, height: int = 5, x0: int = 1000, y0: int = 500) -> tuple[dict, Expected]:
    """A `width` x `height` city in the toolkit layout plus one instance of each bad input.

    Returns (paths for the config, expected outcome)."""
    images = root / "images" / CITY
    images.mkdir(parents=True)
    exp = Expected(skipped={"missing_image": 2, "corrupt_image": 2, "no_caption": 1, "duplicate_key": 2,
                            "bad_row": 5},
                   nulls={"missing_indicators": 1, "empty_indicator": 1, "non_numeric_indicator": 1,
                          "negative_indicator": 1})
    entries, csv_rows, poi_rows = [], [], []
    tiles = [(x0 + i, y0 + j) for j in range(height) for i in range(width)]
    for n, (x, y) in enumerate(tiles):
        data = noise_jpeg(n, shape=(40, 40) if n % 7 else (48, 40))  # some non-square sources
        (images / f"16_{x}_{y}_s.jpg").write_bytes(data)
        sentences = [f"Tile {x} {y} shows block {n}", f"there are {n % 4} parks here."]
        entries.append({"caption": sentences[0], "image": _name(x, y)})
        gdp = 10000.0 if n % 5 == 0 else 100.0 + n
        row = [_name(x, y), f"({x},{y})", _bd09_cell(x, y), f"{n * 1.5}", f"{100 + n}", f"{gdp}"]
        indicators = {"carbon": n * 1.5, "population": 100.0 + n, "gdp": gdp}
        exp.samples[f"testcity_16_{x}_{y}"] = {"sentences": sentences, "indicators": indicators,
                                                "sha256": hashlib.sha256(data).hexdigest(), "poi": None,
                                                "x": x, "y": y, "bd09": _bd09_cell(x, y)}
        csv_rows.append(row)
        if n % 3:
            counts = {"food": n, "school": n % 2}
            poi_rows.append([_name(x, y), counts["food"], counts["school"]])
            exp.samples[f"testcity_16_{x}_{y}"]["poi"] = counts
    entries += [{"caption": exp.samples[f"testcity_16_{x}_{y}"]["sentences"][1], "image": _name(x, y)}
                for x, y in tiles]  # second sentences come later in the file: grouping must keep order
    _break_things(root, tiles, entries, csv_rows, poi_rows, exp)
    (root / f"{CITY}_captions.json").write_text(json.dumps([entries]))
    _write_csv(root / f"{CITY}.csv", ["satellite_img_name", "BD09 coordinate", "WGS84 coordinate",
                                       *INDICATOR_COLUMNS], csv_rows)
    _write_csv(root / f"{CITY}_poi.csv", ["satellite_img_name", *POI_CATEGORIES], poi_rows)
    paths = {"captions": [str(root / f"{CITY}_captions.json")], "images": str(root / "images"),
             "indicators": [str(root / f"{CITY}.csv")], "poi": [str(root / f"{CITY}_poi.csv")]}
    return paths, exp


def _break_things(root: Path, tiles: list, entries: list, csv_rows: list, poi_rows: list, exp: Expected) -> None:
    images = root / "images" / CITY
    (xa, ya), (xb, yb), (xc, yc), (xd, yd), (xe, ye), (xf, yf) = tiles[:6]
    # corrupt_image x2: a truncated JPEG and garbage bytes
    data = (images / f"16_{xa}_{ya}_s.jpg").read_bytes()
    (images / f"16_{xa}_{ya}_s.jpg").write_bytes(data[: len(data) // 2])
    (images / f"16_{xb}_{yb}_s.jpg").write_bytes(b"not a jpeg at all")
    for x, y in ((xa, ya), (xb, yb)):
        del exp.samples[f"testcity_16_{x}_{y}"]
    # missing_image x2: captions naming files that do not exist
    entries += [{"caption": "A tile nobody crawled", "image": _name(9000, 9000)},
                {"caption": "Another missing tile", "image": _name(9001, 9000)}]
    # no_caption x1: an image file that no caption names
    (images / "16_9100_9100_s.jpg").write_bytes(noise_jpeg(99))
    # duplicate_key x2: a captioned .png of an existing tile, and a second CSV row for a tile
    (images / f"16_{xc}_{yc}_s.png").write_bytes(noise_jpeg(98))
    entries.append({"caption": "Same tile again as png", "image": _name(xc, yc, ext="png")})
    csv_rows.append(list(csv_rows[8]))
    # bad_row x5: caption entries without image / not a dict / an unparseable tile name; a CSV row with too few
    # fields; a POI row with a non-integer count
    entries += [{"caption": "no image field"}, "just a string", {"caption": "odd", "image": f"{CITY}/notatile.jpg"}]
    csv_rows.append([_name(7000, 7000), "(7000,7000)"])
    poi_rows.append([_name(xd, yd), "many", 1])
    # indicators: a tile without CSV row, an empty, a non-numeric and a negative cell (kept, null)
    row_d = next(r for r in csv_rows if r[0] == _name(xd, yd))
    csv_rows.remove(row_d)
    exp.samples[f"testcity_16_{xd}_{yd}"]["indicators"] = {"carbon": None, "population": None, "gdp": None}
    exp.samples[f"testcity_16_{xd}_{yd}"]["bd09"] = None
    for (x, y), col, cell in (((xe, ye), 3, ""), ((xf, yf), 4, "n/a"), ((tiles[6][0], tiles[6][1]), 5, "-5")):
        row = next(r for r in csv_rows if r[0] == _name(x, y))
        row[col] = cell
        name = {3: "carbon", 4: "population", 5: "gdp"}[col]
        exp.samples[f"testcity_16_{x}_{y}"]["indicators"][name] = None
    # spikes count every readable, first-of-its-key CSV row's non-null GDP
    readable = {r[0]: r for r in reversed(csv_rows) if len(r) == 6}
    gdp = [float(r[5]) for r in readable.values() if r[5] and float(r[5]) >= 0]
    exp.gdp_fill_share = round(gdp.count(10000.0) / len(gdp), 4)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def manifest_rows(folder: Path, n: int, *, city: str = "Mapville", size: int = 40) -> list[dict[str, Any]]:
    """`n` manifest rows (xyz tiles near Berlin) with images written under folder/img/, relative paths."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        x, y = 35200 + i % 7, 21490 + i // 7
        data = noise_jpeg(1000 + i, size=size)
        (folder / "img" / f"t{i}.jpg").write_bytes(data)
        rows.append({"image": f"img/t{i}.jpg", "caption": f"Row {i} first line\nsecond line of {i}",
                     "z": 16, "x": x, "y": y, "city": city, "nightlight": 0.5 * i, "label": "text"})
    return rows


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as .csv, .jsonl or .parquet by the file's suffix."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        _write_csv(path, columns, [[r.get(c, "") for c in columns] for r in rows])
    else:
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), path)
