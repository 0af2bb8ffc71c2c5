"""The synthetic city's base colours, and the `Look` that says how one tile shows them.

Why a module of its own: the drawer (`synth_draw`) paints with these base colours, and the nuisance model
(`synth_nuisance`) remaps them per district and season; both import this file and neither imports the other.
A `Look` changes colours and shadow offsets only, never geometry, and draws no random numbers, so every look
of a tile has the same layout, scene and caption. `NEUTRAL` is the original drawing, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]

ROOFS_HOUSE: tuple[Color, ...] = ((168, 92, 74), (150, 150, 148), (96, 124, 164), (206, 202, 192), (120, 112, 104))
ROOFS_SLAB: tuple[Color, ...] = ((196, 192, 184), (176, 120, 100), (214, 210, 204), (150, 156, 162))
ROOFS_TOWER: tuple[Color, ...] = ((222, 224, 226), (118, 150, 178), (178, 182, 186), (96, 132, 136))
ROOFS_HALL: tuple[Color, ...] = ((96, 132, 178), (218, 220, 222), (168, 172, 176), (132, 168, 196))
FARM: tuple[Color, ...] = ((112, 128, 70), (146, 136, 96), (128, 112, 84), (92, 116, 64), (160, 150, 110))
SHADOW: Color = (46, 48, 50)
# ground, paving, roads and water
STREET_PAVED, STREET_DIRT, ROAD = (120, 120, 116), (150, 136, 108), (104, 106, 108)
YARD, PAVEMENT, CONCRETE, SOIL = (146, 142, 132), (168, 166, 160), (158, 152, 140), (150, 128, 100)
WATER_LUSH, WATER_DRY = (58, 82, 76), (72, 86, 98)


@dataclass(frozen=True)
class Look:
    """How one tile's materials appear; the defaults are the original drawing (no remap, sun upper left)."""

    tones: Mapping[Color, Color] = field(default_factory=dict)  # base colour -> this tile's colour
    vegetation: tuple[Color, float] | None = None  # season: (target colour, blend weight) of trees and grass
    sun: tuple[float, float] = (0.55, 0.4)  # shadow offset per unit of building height (design px)
    tank_shadow: tuple[float, float] = (1.5, 1.5)  # shadow offset of storage tanks (design px)
    shadow: Color = SHADOW


NEUTRAL = Look()

__all__ = ["Box", "Color", "Look", "NEUTRAL", "ROOFS_HOUSE", "ROOFS_SLAB", "ROOFS_TOWER", "ROOFS_HALL", "FARM",
           "SHADOW", "STREET_PAVED", "STREET_DIRT", "ROAD", "YARD", "PAVEMENT", "CONCRETE", "SOIL", "WATER_LUSH",
           "WATER_DRY"]
