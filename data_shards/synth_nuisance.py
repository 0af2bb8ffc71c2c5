"""Nuisance of the synthetic city (`cityscale synth --nuisance none|realistic|hard`): what real imagery varies in
that says nothing about the indicators.

Why: the plain drawing (`none`) paints each land use in its own palette and draws density as roof area, so a
3x8-bin colour histogram reads population almost directly and beats every encoder; on such a city no method can
show that it helps. Real tiles differ by district style, season, sun, weather and sensor, and the indicators
live in structure: how many buildings, how large, how tall (shadow length at the tile's sun), how dense the
streets, how much green. So each level draws, per tile, from smooth seeded fields over the city (neighbouring
tiles share an acquisition) plus a per-tile share:

    district palettes   roofs, yards and paving, streets and roads, water, soil and crops remapped per district
                        (a warped coarse grid of the tiles), so one land use looks different across the city
    season              trees and grass tinted towards winter browns; crop strips towards bare fields
    sun                 azimuth and elevation: shadow direction and length (length still grows with height)
    atmosphere          haze veils and, on some tiles, cloud patches
    sensor              blur, noise, brightness, contrast, gamma and white balance, JPEG quality

Colours and shadow offsets change; geometry, the latent truth, the indicators and the captions do not (the
tile's own random stream is untouched: these draws use their own generators). Level `none` is the original
drawing, byte for byte.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from configs.loader import doc
from data_shards.synth_palette import (CONCRETE, FARM, PAVEMENT, ROAD, ROOFS_HALL, ROOFS_HOUSE, ROOFS_SLAB,
                                       ROOFS_TOWER, SHADOW, SOIL, STREET_DIRT, STREET_PAVED, WATER_DRY, WATER_LUSH,
                                       YARD, Color, Look)

LEVELS = ("none", "realistic", "hard")

# Pools a district draws its colours from (realistic materials seen from above).
ROOF_POOL: tuple[Color, ...] = ((178, 86, 60), (130, 62, 52), (120, 92, 72), (200, 200, 196), (150, 150, 150),
                                (92, 94, 98), (232, 232, 228), (82, 122, 170), (72, 130, 132), (92, 130, 92),
                                (210, 190, 150), (190, 170, 130), (200, 122, 64))
GROUND_POOL: tuple[Color, ...] = ((182, 180, 172), (140, 140, 136), (170, 150, 120), (160, 122, 102), (104, 104, 100),
                                  (126, 132, 104), (196, 186, 164))
STREET_POOL: tuple[Color, ...] = ((70, 72, 76), (96, 96, 98), (120, 120, 116), (150, 148, 140), (172, 166, 150))
DIRT_POOL: tuple[Color, ...] = ((150, 136, 108), (172, 152, 122), (130, 112, 90), (160, 140, 100), (118, 108, 96))
WATER_POOL: tuple[Color, ...] = ((58, 82, 76), (72, 86, 98), (40, 62, 92), (92, 102, 80), (112, 102, 82))
SOIL_POOL: tuple[Color, ...] = ((150, 128, 100), (172, 152, 122), (122, 102, 82), (162, 112, 82), (182, 172, 152))
CROP_POOL: tuple[Color, ...] = ((112, 128, 70), (92, 116, 64), (80, 142, 60), (150, 160, 80), (192, 172, 92),
                                (146, 136, 96), (128, 112, 84))
BARE_FIELDS: tuple[Color, ...] = ((140, 120, 96), (160, 146, 122), (122, 106, 90), (150, 132, 104))
WINTER_TREES: Color = (112, 104, 88)
HAZE_COLOURS: tuple[Color, ...] = ((206, 210, 218), (196, 192, 180), (220, 220, 222))
# base colour groups -> the pool each member is remapped into
GROUPS: tuple[tuple[tuple[Color, ...], tuple[Color, ...]], ...] = (
    (ROOFS_HOUSE + ROOFS_SLAB + ROOFS_TOWER + ROOFS_HALL, ROOF_POOL), ((YARD, PAVEMENT, CONCRETE), GROUND_POOL),
    ((STREET_PAVED, ROAD), STREET_POOL), ((STREET_DIRT,), DIRT_POOL), ((WATER_LUSH, WATER_DRY), WATER_POOL),
    ((SOIL,), SOIL_POOL), (FARM, CROP_POOL))
SUN_DEGREES, SUN_LENGTH, TANK_LENGTH = math.degrees(math.atan2(0.4, 0.55)), math.hypot(0.55, 0.4), math.hypot(1.5, 1.5)


@dataclass(frozen=True, kw_only=True)
class NuisanceConfig:
    """How strongly one level varies each nuisance (0 = off)."""

    district_tiles: int = doc("mean tiles per district; a district has its own roof, paving, road, water, soil "
                              "and crop palette", default=100)
    palette: float = doc("0..1: how far district colours move from the base colours towards the district's",
                         default=0.85)
    season: float = doc("0..1: strength of winter (brown trees, bare fields) where the season field is cold",
                        default=0.8)
    sun_azimuth: float = doc("largest turn (degrees, either way) of the sun from the original upper left",
                             default=70.0)
    sun_length: tuple[float, float] = doc("range of shadow length per unit height, relative to the original",
                                          default=(0.6, 1.5))
    illumination: float = doc("standard deviation of log brightness, log contrast and log gamma", default=0.15)
    white_balance: float = doc("standard deviation of the log red and blue gains", default=0.05)
    haze: float = doc("largest haze opacity (0..1)", default=0.35)
    clouds: float = doc("share of tiles with a cloud patch", default=0.1)
    cloud_cover: float = doc("largest share of a tile one cloud patch covers", default=0.35)
    blur: float = doc("largest sensor blur radius, px of a 64 px tile (scaled with the tile size)", default=0.7)
    noise: float = doc("largest standard deviation of sensor noise (0..255 levels)", default=5.0)
    jpeg: tuple[int, int] = doc("range of the JPEG quality", default=(45, 90))


PRESETS = {
    "realistic": NuisanceConfig(),
    "hard": NuisanceConfig(district_tiles=50, palette=1.0, season=1.0, sun_azimuth=180.0, sun_length=(0.4, 2.0),
                           illumination=0.25, white_balance=0.12, haze=0.5, clouds=0.2, cloud_cover=0.5, blur=1.2,
                           noise=9.0, jpeg=(25, 80)),
}


@dataclass(frozen=True)
class TileNuisance:
    """One tile's draws: its look (colours, season, sun) and the atmosphere and sensor applied to the pixels."""

    look: Look
    brightness: float
    contrast: float
    gamma: float
    gains: tuple[float, float, float]
    haze: float
    haze_colour: Color
    cloud: float  # share of the tile under a cloud patch (0 = clear)
    blur: float  # radius in px of a 64 px tile
    noise: float
    quality: int


# ----------------------------------------------------------------------------- the city's plan

def _uniform(z: np.ndarray) -> np.ndarray:
    """Standard normal values -> uniform on 0..1 (the normal CDF)."""
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def _districts(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, smooth: Callable[[], np.ndarray],
               tiles: int) -> np.ndarray:
    """District id per tile: a coarse grid of about `tiles` tiles per cell, its borders warped by smooth fields."""
    side = math.sqrt(tiles)
    wx, wy = x + 0.35 * side * smooth(), y + 0.35 * side * smooth()
    ox, oy = rng.uniform(0.0, side, 2)
    cells = np.stack([np.floor((wx + ox) / side), np.floor((wy + oy) / side)], axis=1).astype(int)
    return np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1)


def _palette(rng: np.random.Generator, strength: float) -> dict[Color, Color]:
    """One district's remap of every base colour into its group's pool, `strength` of the way."""
    out = {}
    for bases, pool in GROUPS:
        for base in bases:
            target = pool[int(rng.integers(len(pool)))]
            out[base] = tuple(int(round(b + strength * (t - b))) for b, t in zip(base, target))
    return out


def _winter(tones: dict[Color, Color], w: float, bare: np.ndarray) -> dict[Color, Color]:
    """Crop strips `w` of the way to bare fields (crop colour k towards BARE_FIELDS[bare[k]])."""
    out = dict(tones)
    for base, j in zip(FARM, bare):
        now, target = out.get(base, base), BARE_FIELDS[int(j)]
        out[base] = tuple(int(round(a + w * (b - a))) for a, b in zip(now, target))
    return out


def _sun(cfg: NuisanceConfig, turn: float, length: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shadow offsets per unit height (buildings) and for tanks, for a sun turned by `turn` (0..1 -> -a..a)."""
    angle = math.radians(SUN_DEGREES + (2.0 * turn - 1.0) * cfg.sun_azimuth)
    scale = cfg.sun_length[0] + length * (cfg.sun_length[1] - cfg.sun_length[0])
    unit = (math.cos(angle), math.sin(angle))
    return (SUN_LENGTH * scale * unit[0], SUN_LENGTH * scale * unit[1]), (TANK_LENGTH * scale * unit[0],
                                                                           TANK_LENGTH * scale * unit[1])


def _tile(cfg: NuisanceConfig, tones: dict[Color, Color], z: dict[str, float], u: dict[str, float],
          extra: dict[str, np.ndarray]) -> TileNuisance:
    """One tile's nuisance from its field values `z` (standard normal) and `u` (uniform) and its own draws."""
    w = cfg.season * u["season"] ** 2  # most tiles in the growing season, some in deep winter
    sun, tank = _sun(cfg, u["turn"], u["length"])
    dark = 0.75 + 0.6 * u["shadow"]
    look = Look(tones=_winter(tones, w, extra["bare"]), vegetation=(WINTER_TREES, 0.85 * w), sun=sun,
                tank_shadow=tank, shadow=tuple(min(255, int(v * dark)) for v in SHADOW))
    s_i, s_wb = cfg.illumination, cfg.white_balance
    return TileNuisance(
        look=look, brightness=math.exp(s_i * z["bright"]), contrast=math.exp(s_i * z["contrast"]),
        gamma=math.exp(s_i * z["gamma"]), gains=(math.exp(s_wb * z["red"]), 1.0, math.exp(s_wb * z["blue"])),
        haze=cfg.haze * u["haze"] ** 2, haze_colour=HAZE_COLOURS[int(extra["haze_colour"])],
        cloud=cfg.cloud_cover * float(extra["cloud"]) if u["cloud"] > 1.0 - cfg.clouds else 0.0,
        blur=cfg.blur * u["blur"], noise=cfg.noise * u["noise"],
        quality=int(round(cfg.jpeg[0] + u["jpeg"] * (cfg.jpeg[1] - cfg.jpeg[0]))))


FIELDS = ("bright", "contrast", "gamma", "red", "blue", "season", "haze", "cloud", "turn", "length", "blur", "noise",
          "jpeg", "shadow")


def plan_city(cfg: NuisanceConfig, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
              smooth: Callable[[], np.ndarray]) -> Iterator[TileNuisance]:
    """Each tile's nuisance, in the order of `x`, `y`: smooth acquisition fields plus a per-tile share.

    `smooth()` returns a fresh standardised smooth field over these tiles (drawn from `rng`). Every number is
    drawn before the first tile is yielded; tiles are built one at a time (no per-tile state held for the city).
    """
    n = len(x)
    district = _districts(rng, x, y, smooth, cfg.district_tiles)
    palettes = [_palette(rng, cfg.palette) for _ in range(district.max() + 1)]
    z = {k: 0.8 * smooth() + 0.6 * rng.normal(0.0, 1.0, n) for k in FIELDS}
    u = {k: _uniform(v) for k, v in z.items()}
    extra = {"bare": rng.integers(len(BARE_FIELDS), size=(n, len(FARM))),
             "haze_colour": rng.integers(len(HAZE_COLOURS), size=n), "cloud": rng.uniform(0.3, 1.0, n)}
    for i in range(n):
        yield _tile(cfg, palettes[district[i]], {k: float(v[i]) for k, v in z.items()},
                    {k: float(v[i]) for k, v in u.items()}, {k: v[i] for k, v in extra.items()})


# ----------------------------------------------------------------------------- the pixels

def _blobs(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random values in 0..1 over the tile: a `cells` x `cells` grid upsampled bicubically."""
    grid = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def _atmosphere(img: Image.Image, t: TileNuisance, rng: np.random.Generator) -> Image.Image:
    """A haze veil of uneven thickness, then (some tiles) a soft-edged cloud patch covering `t.cloud`."""
    size = img.size[0]
    if t.haze > 0:
        veil = Image.fromarray((255 * t.haze * (0.5 + 0.5 * _blobs(rng, size, 3))).astype(np.uint8))
        img = Image.composite(Image.new("RGB", img.size, t.haze_colour), img, veil)
    if t.cloud > 0:
        field = _blobs(rng, size, 4)
        edge = float(np.quantile(field, 1.0 - t.cloud))
        alpha = np.clip((field - edge) / 0.08, 0.0, 0.92)
        white = Image.new("RGB", img.size, (238, 238, 236))
        img = Image.composite(white, img, Image.fromarray((255 * alpha).astype(np.uint8)))
    return img


def _response(t: TileNuisance) -> list[int]:
    """Per-channel lookup table: gamma, contrast around mid-grey, brightness and white-balance gains."""
    v = np.linspace(0.0, 1.0, 256) ** t.gamma
    curve = ((v - 0.5) * t.contrast + 0.5) * t.brightness
    return np.concatenate([np.clip(curve * g * 255.0, 0, 255).round() for g in t.gains]).astype(int).tolist()


def degrade(img: Image.Image, t: TileNuisance, rng: np.random.Generator) -> Image.Image:
    """Atmosphere, sensor blur, radiometric response and noise on a drawn tile (JPEG quality is `t.quality`)."""
    size = img.size[0]
    img = _atmosphere(img, t, rng)
    if t.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(t.blur * size / 64))
    img = img.point(_response(t))
    if t.noise > 0:
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, t.noise, (size, size, 3)).astype(np.float32)
        img = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
    return img


def jpeg(img: Image.Image, quality: int) -> bytes:
    """The tile's JPEG bytes (no metadata, so the same pixels and quality give the same bytes)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


__all__ = ["LEVELS", "PRESETS", "NuisanceConfig", "TileNuisance", "plan_city", "degrade", "jpeg"]
