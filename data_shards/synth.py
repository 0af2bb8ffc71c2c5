"""`cityscale synth`: a synthetic city in the UrbanCLIP toolkit's data layout, with its latent truth.

Why: the real toolkit ships captions and indicators for thousands of tiles but only 6 images per city, and its
terms forbid copying it into the project. Every stage after this one (shard builder, trainer, probes) needs
many tiles whose pictures, captions and indicators agree, on a machine without network access. So we draw them:

    DIR/captions/{City}_captions.json   [[{"caption": sentence, "image": "City/16_x_y_s.jpg"}, ...]]
    DIR/images/{City}/16_x_y_s.jpg      JPEG tiles (Baidu tile indices at zoom 16, y grows northwards)
    DIR/downstream_task/{City}.csv      the toolkit's indicator columns and value formats
    DIR/poi/{City}.csv                  per-tile POI category counts
    DIR/truth/{City}.csv                latent land-use mix, density, dominant use, noiseless log indicators

The city is a roughly square block of contiguous tiles. Smooth random fields (white noise on the tile grid
blurred at a few scales) plus a centre-distance effect give each tile a density and a land-use mix (softmax of
one field per use). Indicators are log-normal functions of mix x density plus noise (population from
residential share x density, carbon from industry and density, GDP from commercial share), with realistic
quirks: zeros, and the toolkit's GDP fill value 10000.0. The picture (`synth_draw`) and the caption
(`synth_text`) follow the same mix.

Nuisance (`synth_nuisance`, level `none`, `realistic` or `hard`): district palettes, season, sun, haze and
clouds, sensor blur, noise, response and JPEG quality vary per tile. It changes pixels only: the truth table,
indicators, POI counts and captions are the same at every level; `none` is the original drawing.

Determinism: the city-level generator is seeded from (seed, city); each tile's from (seed, city, x, y), so tiles
could be drawn in parallel; the nuisance draws from its own generators, (seed, city, 2) for the city's fields
and (seed, city, x, y, 2) per tile. JPEGs carry no metadata, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from configs.loader import ConfigError
from data_shards.geo import baidu_tile_center
from data_shards.synth_draw import LAND_USES, draw_tile
from data_shards.synth_nuisance import LEVELS, PRESETS, TileNuisance, degrade, jpeg, plan_city
from data_shards.synth_palette import NEUTRAL
from data_shards.synth_text import caption

ZOOM = 16
JPEG_QUALITY = 80
LAYOUT = ("captions", "images", "downstream_task", "poi", "truth")
INDICATOR_COLUMNS = ("carbon_emissions (ton)", "population (unit)", "gdp (million yuan)")
DOWNSTREAM_HEADER = ("satellite_img_name", "BD09 coordinate", "WGS84 coordinate") + INDICATOR_COLUMNS
GDP_FILL, GDP_FILL_SHARE = 10000.0, 0.15
# Grid centres (Baidu tile x, y at zoom 16) of cities in the toolkit; other names get a hashed spot in China.
CITY_CENTRES = {"Beijing": (12655, 4718), "Shenzhen": (12411, 2515)}
# POI category -> (weights over LAND_USES, density exponent, scale): expected count = scale * w.mix * dens**exp
POI = {
    "food": ((0.4, 1.0, 0.1, 0.05, 0, 0, 0), 1.5, 40.0),
    "shopping": ((0.2, 1.0, 0.05, 0, 0, 0, 0), 1.5, 30.0),
    "education": ((1.0, 0.2, 0, 0.05, 0, 0.02, 0), 1.0, 4.0),
    "health": ((0.5, 0.5, 0.05, 0, 0, 0.02, 0), 1.0, 3.0),
    "transport": ((0.3, 0.5, 0.3, 0.05, 0.05, 0.05, 0.05), 1.0, 6.0),
    "industry": ((0.02, 0.05, 1.0, 0, 0, 0.05, 0.05), 0.5, 12.0),
    "leisure": ((0.1, 0.4, 0, 0.6, 0.2, 0, 0), 1.0, 5.0),
    "residential_services": ((1.0, 0.2, 0, 0, 0, 0.02, 0), 1.5, 15.0),
    "office": ((0.05, 1.0, 0.1, 0, 0, 0, 0), 2.0, 25.0),
}


@dataclass(frozen=True)
class Tile:
    """One tile's latent state; `log_*` are the noiseless log indicators."""

    x: int
    y: int
    mix: np.ndarray
    density: float
    log_population: float
    log_carbon: float
    log_gdp: float

    @property
    def image(self) -> str:
        return f"{ZOOM}_{self.x}_{self.y}_s.jpg"


# ----------------------------------------------------------------------------- latent city

def _city_key(city: str) -> int:
    return int.from_bytes(hashlib.sha256(city.encode()).digest()[:8], "big")


def _grid(city: str, tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Baidu (x, y) of `tiles` contiguous tiles filling a near-square block row by row from the north-west."""
    width = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / width)
    key = _city_key(city)
    cx, cy = CITY_CENTRES.get(city, (11500 + key % 1800, 2300 + (key >> 16) % 2900))
    i = np.arange(tiles)
    return cx - width // 2 + i % width, cy + rows // 2 - i // width


def _field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth standardised random field over tiles: white noise on the tile grid blurred by Gaussians 1.5, 3
    and 5 tiles wide (separable, as two small kernel matrices, so memory grows with the grid side, not N^2)."""
    col, row = (x - x.min()).astype(int), (y.max() - y).astype(int)
    total = np.zeros((row.max() + 1, col.max() + 1))
    for sigma in (1.5, 3.0, 5.0):
        pad = int(3 * sigma)
        noise = rng.normal(0.0, 1.0, (total.shape[0] + 2 * pad, total.shape[1] + 2 * pad))
        rows, cols = (np.exp(-((np.arange(n)[:, None] + pad - np.arange(n + 2 * pad)) ** 2) / (2 * sigma**2))
                      for n in total.shape)
        smooth = rows @ noise @ cols.T
        total += smooth / (smooth.std() + 1e-9)
    f = total[row, col]
    return (f - f.mean()) / (f.std() + 1e-9)


def _density(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Urban density in 0..1: a main centre, one or two sub-centres and a smooth random field."""
    radius = max(np.ptp(x), np.ptp(y), 1) / 2 + 0.5
    centres = rng.uniform(-0.3, 0.3, (3, 2)) * radius + [(x.mean(), y.mean())]
    reach = np.array([0.75, 0.3, 0.25]) * radius
    weight = np.array([3.0, 1.5, 1.2 * rng.random()])
    d2 = (x[:, None] - centres[:, 0]) ** 2 + (y[:, None] - centres[:, 1]) ** 2
    core = (weight * np.exp(-d2 / (2 * reach**2))).sum(axis=1)
    return 1.0 / (1.0 + np.exp(-(core + 0.9 * _field(rng, x, y) - 1.6)))


def _mix(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Land-use shares (tiles x LAND_USES): a softmax of one smooth field per use plus density effects."""
    f = {k: _field(rng, x, y) for k in LAND_USES}
    ring = np.exp(-(((dens - 0.45) / 0.2) ** 2))  # industry likes the urban fringe
    logits = np.stack([
        0.9 * f["residential"] + 1.6 * dens - 0.6,
        0.9 * f["commercial"] + 4.0 * (dens - 0.7),
        0.9 * f["industrial"] + 1.2 * ring - 0.9,
        0.9 * f["green"] - 0.4,
        1.6 * f["water"] - 2.0,
        0.9 * f["farmland"] + 3.0 * (0.35 - dens),
        0.8 * f["bare"] + 1.5 * (0.3 - dens) - 0.8,
    ], axis=1)
    logits = 1.8 * logits + rng.normal(0.0, 0.3, logits.shape)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_indicators(mix: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Noiseless log population, carbon and GDP (tiles x 3) from land-use shares and density."""
    res, com, ind = (mix[:, LAND_USES.index(k)] for k in ("residential", "commercial", "industrial"))
    log_pop = 5.0 + 2.6 * np.log1p(8 * res * dens) + 0.5 * np.log1p(6 * com * dens)
    log_carbon = 4.2 + 1.8 * np.log1p(12 * ind * (0.3 + dens)) + 1.2 * np.log1p(4 * dens) + 0.4 * np.log1p(6 * com)
    log_gdp = 5.0 + 2.6 * np.log1p(12 * com * dens) + 1.0 * np.log1p(8 * res * dens) + 0.7 * np.log1p(8 * ind)
    return np.stack([log_pop, log_carbon, log_gdp], axis=1)


def latent_city(city: str, tiles: int, seed: int) -> list[Tile]:
    """The city's tiles in generation order (a seeded permutation of the grid, like the toolkit's files)."""
    rng = np.random.default_rng([seed, _city_key(city)])
    x, y = _grid(city, tiles)
    dens = _density(rng, x.astype(float), y.astype(float))
    mix = _mix(rng, x.astype(float), y.astype(float), dens)
    logs = _log_indicators(mix, dens)
    return [Tile(x=int(x[j]), y=int(y[j]), mix=mix[j], density=float(dens[j]), log_population=float(logs[j, 0]),
                 log_carbon=float(logs[j, 1]), log_gdp=float(logs[j, 2])) for j in rng.permutation(tiles)]


def observed_indicators(city: str, seed: int, tiles: list[Tile]) -> np.ndarray:
    """Noisy indicators (tiles x [carbon, population, gdp]) with zeros and the GDP fill value.

    The lowest-signal tiles get zeros (3-8% for population, as water or bare tiles have no residents).
    """
    rng = np.random.default_rng([seed, _city_key(city), 1])
    logs = np.array([[t.log_carbon, t.log_population, t.log_gdp] for t in tiles])
    values = np.exp(logs + rng.normal(0.0, 1.0, logs.shape) * [0.35, 0.3, 0.5])
    for col, (lo, hi) in enumerate([(0.005, 0.03), (0.03, 0.08), (0.003, 0.02)]):
        k = round(rng.uniform(lo, hi) * len(tiles))
        values[np.argsort(logs[:, col])[:k], col] = 0.0
    fill = (rng.random(len(tiles)) < GDP_FILL_SHARE) & (values[:, 2] > 0)
    values[fill, 2] = GDP_FILL
    values[:, 1] = np.round(values[:, 1])
    return values


def poi_counts(tile: Tile, rng: np.random.Generator) -> list[int]:
    """Poisson POI counts per category of POI, driven by land use and density."""
    rates = [scale * float(np.dot(w, tile.mix)) * tile.density**p for w, p, scale in POI.values()]
    return [int(v) for v in rng.poisson(rates)]


# ----------------------------------------------------------------------------- writing

def _check_args(out: str, city: str, tiles: int, seed: int, size: int, nuisance: str) -> None:
    if nuisance not in LEVELS:
        raise ConfigError(f"--nuisance {nuisance!r}: use one of {', '.join(LEVELS)}")
    if "://" in out:
        raise ConfigError(f"--out {out!r}: synth writes a local folder; pass a path (upload it afterwards)")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", city):
        raise ConfigError(f"--city {city!r}: use a name of letters, digits, '_' or '-' starting with a letter")
    if tiles < 1:
        raise ConfigError(f"--tiles {tiles}: must be at least 1")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be a non-negative integer")
    if not 32 <= size <= 4096:
        raise ConfigError(f"--size {size}: tile size must be between 32 and 4096 px")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out!r} is a file: pass a folder")
    foreign = sorted(set(os.listdir(out)) - set(LAYOUT)) if os.path.isdir(out) else []
    if foreign:
        raise ConfigError(f"--out {out!r} holds {foreign[0]!r}, which is not part of the UrbanCLIP layout: "
                          "pass an empty or new folder (other cities in the same folder are kept)")


def _prepare(out: str, city: str) -> dict[str, str]:
    """Create the layout folders and remove this city's old tiles, so a rerun leaves exactly its own files."""
    paths = {"captions": os.path.join(out, "captions", f"{city}_captions.json"),
             "images": os.path.join(out, "images", city),
             "downstream_task": os.path.join(out, "downstream_task", f"{city}.csv"),
             "poi": os.path.join(out, "poi", f"{city}.csv"),
             "truth": os.path.join(out, "truth", f"{city}.csv")}
    for name in LAYOUT:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    os.makedirs(paths["images"], exist_ok=True)
    for name in os.listdir(paths["images"]):
        if re.fullmatch(r"\d+_\d+_\d+_s\.jpg", name):
            os.remove(os.path.join(paths["images"], name))
    return paths


def _write_csv(path: str, header: list[str] | tuple[str, ...], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:  # csv's default \r\n line ends, like the toolkit's files
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _downstream_row(city: str, tile: Tile, values: np.ndarray) -> list:
    lat, lon = baidu_tile_center(tile.x, tile.y, ZOOM)
    carbon, population, gdp = values
    # float32 shortest repr, as in the toolkit ("564.68396", "10000.0"); population is an integer count
    return [f"{city}/{tile.image}", f"({tile.x},{tile.y})", f"({lat}, {lon})", str(np.float32(carbon)),
            int(population), str(np.float32(gdp))]


def _truth_row(city: str, tile: Tile) -> list:
    return ([f"{city}/{tile.image}", tile.x, tile.y] + [round(float(v), 6) for v in tile.mix]
            + [round(tile.density, 6), LAND_USES[int(np.argmax(tile.mix))], round(tile.log_population, 6),
               round(tile.log_carbon, 6), round(tile.log_gdp, 6)])


TRUTH_HEADER = (["satellite_img_name", "x", "y"] + list(LAND_USES)
                + ["density", "dominant", "log_population", "log_carbon", "log_gdp"])


def _lush(tile_y: int) -> float:
    """Vegetation palette from latitude (tile y): dry olive in the north, lush green in the south."""
    return float(np.clip((5000 - tile_y) / 2500, 0.1, 0.95))


def nuisance_plan(city: str, seed: int, tiles: list[Tile], level: str) -> Iterable[TileNuisance | None]:
    """Each tile's nuisance at `level` (None everywhere at `none`), from the city's own nuisance generator."""
    if level == "none":
        return [None] * len(tiles)
    rng = np.random.default_rng([seed, _city_key(city), 2])
    x, y = (np.array([getattr(t, k) for t in tiles], dtype=float) for k in ("x", "y"))
    return plan_city(PRESETS[level], rng, x, y, lambda: _field(rng, x, y))


def _tile_jpeg(city: str, seed: int, tile: Tile, img, nuisance: TileNuisance | None) -> bytes:
    if nuisance is None:
        return jpeg(img, JPEG_QUALITY)
    rng = np.random.default_rng([seed, _city_key(city), tile.x, tile.y, 2])
    return jpeg(degrade(img, nuisance, rng), nuisance.quality)


def synthesize(out: str, city: str, tiles: int, seed: int, size: int = 256, progress: bool = True,
               nuisance: str = "realistic") -> dict:
    """Write a synthetic city into `out` (UrbanCLIP layout + poi/ + truth/) and return a summary."""
    _check_args(out, city, tiles, seed, size, nuisance)
    paths = _prepare(out, city)
    start, cpu_start = time.perf_counter(), time.process_time()
    city_tiles = latent_city(city, tiles, seed)
    values = observed_indicators(city, seed, city_tiles)
    lush = _lush(int(np.median([t.y for t in city_tiles])))
    plan = nuisance_plan(city, seed, city_tiles, nuisance)
    entries, poi_rows, sentence_counts, words = [], [], [], []
    for tile, tile_nuisance in tqdm(zip(city_tiles, plan), total=tiles, desc=f"synth {city}", unit=" tiles",
                                    disable=not progress):
        rng = np.random.default_rng([seed, _city_key(city), tile.x, tile.y])
        look = tile_nuisance.look if tile_nuisance else NEUTRAL
        img, scene = draw_tile(tile.mix, tile.density, lush, rng, size, look)
        with open(os.path.join(paths["images"], tile.image), "wb") as f:
            f.write(_tile_jpeg(city, seed, tile, img, tile_nuisance))
        sentences = caption(scene, tile.density, rng)
        entries += [{"caption": s, "image": f"{city}/{tile.image}"} for s in sentences]
        sentence_counts.append(len(sentences))
        words.append(sum(len(s.split()) for s in sentences))
        poi_rows.append([f"{city}/{tile.image}"] + poi_counts(tile, rng))
    with open(paths["captions"], "w") as f:
        json.dump([entries], f, indent=2)  # ONE inner list, as in the toolkit's file
    _write_csv(paths["downstream_task"], DOWNSTREAM_HEADER,
               [_downstream_row(city, t, v) for t, v in zip(city_tiles, values)])
    _write_csv(paths["poi"], ["satellite_img_name"] + list(POI), poi_rows)
    _write_csv(paths["truth"], TRUTH_HEADER, [_truth_row(city, t) for t in city_tiles])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    dominant = [LAND_USES[int(np.argmax(t.mix))] for t in city_tiles]
    return {"city": city, "tiles": tiles, "size": size, "seed": seed, "nuisance": nuisance, "paths": paths,
            "sentences": int(sum(sentence_counts)), "mean_sentences": float(np.mean(sentence_counts)),
            "mean_words": float(np.mean(words)),
            "dominant": {k: dominant.count(k) for k in LAND_USES},
            "zeros": {c: int((values[:, i] == 0).sum()) for i, c in enumerate(("carbon", "population", "gdp"))},
            "gdp_fill": int((values[:, 2] == GDP_FILL).sum()),
            "seconds": round(seconds, 3), "tiles_per_second": round(tiles / seconds, 1),
            # CPU time shows the generator's own speed on a machine shared with other work
            "cpu_tiles_per_second": round(tiles / max(cpu, 1e-9), 1)}


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cityscale synth",
        description="Draw a synthetic city in the UrbanCLIP toolkit layout: JPEG tiles, LLM-style captions, "
                    "indicators (carbon, population, GDP), POI counts and the latent truth. The same arguments "
                    "give byte-identical files.")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="local output folder (created; other cities in it are kept, this city's files are replaced)")
    p.add_argument("--city", required=True, metavar="NAME",
                   help="city name used in file names, e.g. Beijing (Beijing and Shenzhen sit at their real tiles)")
    p.add_argument("--tiles", type=int, required=True, metavar="N",
                   help="number of tiles, laid out on a near-square grid")
    p.add_argument("--seed", type=int, required=True, metavar="S", help="random seed (non-negative integer)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="tile width and height in px (default: 256)")
    p.add_argument("--nuisance", choices=LEVELS, default="realistic",
                   help="what varies besides content (pixels only; truth, indicators and captions are the same at "
                        "every level): none = one palette per land use, sun from the upper left (the original "
                        "drawing); realistic (default) = per-district roof/paving/road/water/crop palettes, season "
                        "(winter trees and bare fields), sun azimuth and shadow length, haze, some clouds, sensor "
                        "blur, noise, brightness/contrast/gamma/white balance, JPEG quality 45-90; hard = the same, "
                        "stronger (any sun azimuth, more clouds and haze, JPEG 25-80)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    summary = synthesize(args.out, args.city, args.tiles, args.seed, args.size, progress=not args.no_progress,
                         nuisance=args.nuisance)
    print(f"synth: {summary['tiles']} tiles of {args.city} ({summary['size']} px, nuisance {args.nuisance}) "
          f"in {summary['seconds']} s "
          f"({summary['tiles_per_second']} tiles/s; {summary['cpu_tiles_per_second']} per CPU second), "
          f"{summary['sentences']} caption sentences "
          f"({summary['mean_sentences']:.2f} per tile, {summary['mean_words']:.0f} words)")
    print(f"synth: zeros {summary['zeros']}, GDP fill value in {summary['gdp_fill']} rows; "
          f"dominant land use {summary['dominant']}")
    print(f"synth: wrote {args.out}/{{captions,images,downstream_task,poi,truth}}")
    return 0
