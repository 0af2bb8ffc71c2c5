"""Draws one synthetic satellite-like tile from its latent land-use mix (numpy + PIL, no other dependency).

Why a hand-made drawer: the synthetic city must let every later stage (shards, trainer, probes) be tested on
data whose indicators are *visibly* encoded in the pixels, without network access or real imagery. The picture
is built so that the latent mix drives it directly:

1. a street grid whose spacing shrinks with density cuts the tile into blocks;
2. blocks are handed out to land uses by largest remaining area deficit, so drawn area shares track the mix;
3. each block is painted by its land use (apartment slabs or village houses with height shadows, commercial
   towers, industrial halls and storage tanks, tree crowns, crop strips, bare soil), then water (river, lake or
   pond) and main roads (bridges) go on top;
4. a low-frequency haze and fine sensor noise finish it; JPEG encoding happens in `synth.py`.

A `Look` (`synth_palette`) says how the tile's materials appear: base colours remapped (district roofs,
paving and roads, crops by season), vegetation tinted by season, shadow offsets from the sun. It never changes
what is drawn where; `NEUTRAL` is the original drawing (data_shards/synth_nuisance.py builds the others).

Building coverage in residential blocks grows with density, and population is driven by residential share x
density, so a model can learn population from the image. Geometry is written for a 256 px design canvas and
scaled; smaller outputs are drawn at 256 px and box-downsampled so thin features survive as tones.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from data_shards.synth_palette import (CONCRETE, FARM, NEUTRAL, PAVEMENT, ROAD, ROOFS_HALL, ROOFS_HOUSE, ROOFS_SLAB,
                                       ROOFS_TOWER, SOIL, STREET_DIRT, STREET_PAVED, WATER_DRY, WATER_LUSH, YARD,
                                       Box, Color, Look)

LAND_USES = ("residential", "commercial", "industrial", "green", "water", "farmland", "bare")
DESIGN = 256  # design canvas in px; all geometry constants below are in these units


@dataclass(frozen=True)
class Scene:
    """What the drawn tile shows; the caption writer describes this, as an LLM would describe the picture."""

    area: dict[str, float]      # drawn area share per land use (sums to 1)
    buildings: int              # building footprints drawn
    tall: bool                  # long shadows: towers or high-rise slabs
    main_road: str | None       # "horizontal", "vertical", "crossing", "diagonal" or None
    street_spacing: float       # design px between local streets
    water: str | None           # "river", "lake", "pond" or None
    tanks: int                  # storage tanks drawn
    village: bool               # low-rise houses rather than apartment slabs dominate the housing


class _Canvas:
    """A PIL drawing surface addressed in design units, with the tile's random generator."""

    def __init__(self, size: int, ground: Color, rng: np.random.Generator, look: Look):
        self.k = size / DESIGN
        self.look = look
        self.img = Image.new("RGB", (size, size), self.tone(ground))
        self.draw = ImageDraw.Draw(self.img)
        self.rng = rng

    def tone(self, color: Color) -> Color:
        """A base colour as this tile's look shows it (unchanged when the look does not remap it)."""
        return self.look.tones.get(color, color)

    def veg(self, color: Color) -> Color:
        """A vegetation colour blended towards the season's target."""
        if self.look.vegetation is None:
            return color
        target, w = self.look.vegetation
        return tuple(int(a + (b - a) * w) for a, b in zip(color, target))

    def rect(self, box: Box, fill: Color) -> None:
        k = self.k
        if box[2] - box[0] < 1 / k or box[3] - box[1] < 1 / k:
            return  # clipped away by its block
        self.draw.rectangle((box[0] * k, box[1] * k, box[2] * k - 1, box[3] * k - 1), fill=fill)

    def ellipse(self, box: Box, fill: Color, outline: Color | None = None) -> None:
        k = self.k
        self.draw.ellipse((box[0] * k, box[1] * k, box[2] * k, box[3] * k), fill=fill, outline=outline)

    def line(self, points: list[tuple[float, float]], fill: Color, width: float) -> None:
        k = self.k
        self.draw.line([(x * k, y * k) for x, y in points], fill=fill, width=max(1, round(width * k)),
                       joint="curve")

    def polygon(self, points: list[tuple[float, float]], fill: Color) -> None:
        k = self.k
        self.draw.polygon([(x * k, y * k) for x, y in points], fill=fill)

    def at(self, lo: float, hi: float, n: int | None = None):
        """Uniform position(s) in [lo, max(lo, hi)]: small blocks must not make the range empty."""
        return self.rng.uniform(lo, max(lo, hi), n)

    def texture(self, box: Box, tex: Image.Image, dark: Color, light: Color) -> None:
        """Paste a random crop of grey texture `tex` over `box`, mapped linearly from `dark` to `light`."""
        x0, y0, x1, y1 = (round(v * self.k) for v in box)
        if x1 <= x0 or y1 <= y0:
            return
        ox, oy = (int(v) for v in self.rng.integers(0, tex.width - max(x1 - x0, y1 - y0), 2))
        grey = tex.crop((ox, oy, ox + x1 - x0, oy + y1 - y0))
        ramp = np.linspace(0.0, 1.0, 256)
        bands = [grey.point((lo + (hi - lo) * ramp).astype(int).tolist()) for lo, hi in zip(dark, light)]
        self.img.paste(Image.merge("RGB", bands), (x0, y0))

    def jit(self, color: Color, amount: float = 10.0) -> Color:
        """`color` with a shared brightness shift and a smaller per-channel tint, clipped to 0..255."""
        d = self.rng.normal(0.0, amount)
        tint = self.rng.normal(0.0, amount / 3, 3)
        return tuple(min(255, max(0, int(v + d + t))) for v, t in zip(color, tint))

    def building(self, box: Box, roof: Color, height: float) -> None:
        """Shadow first (offset away from the sun), then the roof; longer shadows mean taller buildings."""
        dx, dy = self.look.sun[0] * height, self.look.sun[1] * height
        self.rect((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), self.look.shadow)
        self.rect(box, roof)


# ----------------------------------------------------------------------------- block painters

def _residential(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    x0, y0, x1, y1 = box
    c.rect(box, c.jit(c.tone(YARD), 8))
    if dens > 0.42 and c.rng.random() < 0.75 and min(x1 - x0, y1 - y0) > 24:
        return _slabs(c, box, dens)
    return _houses(c, box, dens, lush)


def _slabs(c: _Canvas, box: Box, dens: float) -> int:
    """Apartment estate: parallel rows of long slabs of one roof colour, gaps shrinking with density."""
    x0, y0, x1, y1 = box
    roof = c.jit(c.tone(ROOFS_SLAB[c.rng.integers(len(ROOFS_SLAB))]), 8)
    depth, gap = c.rng.uniform(6.0, 9.0), 15.0 - 9.0 * dens
    height = 3.0 + 11.0 * dens * c.rng.uniform(0.7, 1.2)
    n, y = 0, y0 + 3.0
    while y + depth < y1 - 2:
        x = x0 + c.rng.uniform(2.0, 5.0)
        while x < x1 - 10:
            length = min(c.rng.uniform(16.0, 34.0), x1 - 3 - x)
            c.building((x, y, x + length, y + depth), roof, height)
            n, x = n + 1, x + length + c.rng.uniform(3.0, 7.0)
        y += depth + gap
    return n


def _houses(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Village or low-rise housing: many small roofs of mixed colours, coverage growing with density."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for _ in range(int(area * (1.0 - dens) / 260)):
        r = c.rng.uniform(1.5, 3.5)
        cx, cy = c.rng.uniform(x0, x1), c.rng.uniform(y0, y1)
        c.ellipse((cx - r, cy - r, cx + r, cy + r), _green(c, lush, dark=True))
    n = int(area * (0.12 + 0.55 * dens) / 30.0)
    xs, ys = c.at(x0, x1 - 4, n), c.at(y0, y1 - 4, n)
    ws, hs = c.rng.uniform(3.5, 7.5, n), c.rng.uniform(3.5, 6.5, n)
    kinds = c.rng.integers(len(ROOFS_HOUSE), size=n)
    for i in range(n):
        c.building((xs[i], ys[i], min(xs[i] + ws[i], x1), min(ys[i] + hs[i], y1)),
                   c.tone(ROOFS_HOUSE[kinds[i]]), 1.5 + 2.0 * dens)
    return n


def _commercial(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Towers with long shadows on light pavement, plus a parking lot of car-coloured dots."""
    x0, y0, x1, y1 = box
    c.rect(box, c.jit(c.tone(PAVEMENT), 8))
    n = 0
    for _ in range(int(c.rng.integers(1, 4)) + int(dens * 3)):
        w, h = c.rng.uniform(12.0, 40.0), c.rng.uniform(12.0, 40.0)
        bx, by = c.at(x0 + 2, x1 - w), c.at(y0 + 2, y1 - h)
        roof = c.jit(c.tone(ROOFS_TOWER[c.rng.integers(len(ROOFS_TOWER))]), 8)
        c.building((bx, by, min(bx + w, x1 - 1), min(by + h, y1 - 1)), roof, 6.0 + 20.0 * dens * c.rng.random())
        n += 1
    if c.rng.random() < 0.5:
        px, py = c.at(x0, x1 - 14), c.at(y0, y1 - 8)
        for i in range(int(c.rng.integers(4, 14))):
            color = (c.rng.integers(40, 230),) * 3
            c.rect((px + 3 * i, py, px + 3 * i + 2, py + 4), tuple(int(v) for v in color))
    return n


def _industrial(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Large low halls with ridge lines, storage tanks and parked trucks on concrete."""
    x0, y0, x1, y1 = box
    c.rect(box, c.jit(c.tone(CONCRETE), 8))
    n = 0
    for _ in range(int(c.rng.integers(1, 4))):
        w, h = c.rng.uniform(24.0, 80.0), c.rng.uniform(16.0, 50.0)
        bx, by = c.at(x0 + 2, x1 - w), c.at(y0 + 2, y1 - h)
        bx1, by1 = min(bx + w, x1 - 2), min(by + h, y1 - 2)
        roof = c.jit(c.tone(ROOFS_HALL[c.rng.integers(len(ROOFS_HALL))]), 6)
        c.building((bx, by, bx1, by1), roof, 3.0)
        c.line([(bx, (by + by1) / 2), (bx1, (by + by1) / 2)], tuple(min(255, v + 22) for v in roof), 1.0)
        n += 1
    for i in range(int(c.rng.integers(0, 6))):
        tx, ty = c.at(x0, x1 - 6), c.at(y0, y1 - 3)
        c.rect((tx, ty, tx + 6, ty + 2.5), c.jit((200, 200, 196), 20))
    return n


def _tanks(c: _Canvas, box: Box) -> int:
    x0, y0, x1, y1 = box
    r = c.rng.uniform(4.0, 9.0)
    if x1 - x0 < 4 * r or y1 - y0 < 4 * r:
        return 0
    count = int(c.rng.integers(2, 6))
    cx, cy = c.rng.uniform(x0 + r, x1 - 3 * r), c.rng.uniform(y0 + r, y1 - 3 * r)
    for i in range(count):
        px, py = cx + (i % 3) * 2.3 * r, cy + (i // 3) * 2.3 * r
        sx, sy = c.look.tank_shadow
        c.ellipse((px - r + sx, py - r + sy, px + r + sx, py + r + sy), c.look.shadow)
        c.ellipse((px - r, py - r, px + r, py + r), c.jit((222, 222, 218), 6), outline=(120, 120, 120))
    return count


def _green(c: _Canvas, lush: float, dark: bool = False) -> Color:
    base = np.array((64, 96, 52)) * lush + np.array((96, 100, 70)) * (1 - lush)
    return c.jit(c.veg(tuple(int(v) for v in base * (0.8 if dark else 1.0))), 12)


def _park(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Tree canopy: a crop of the shared crown texture, tinted between a dark and a light green."""
    c.texture(box, _canopy(round(DESIGN * c.k)), _green(c, lush, dark=True), _green(c, lush))
    return 0


@functools.lru_cache(maxsize=4)
def _canopy(px: int) -> Image.Image:
    """Grey tree-crown texture twice the canvas size, drawn once per canvas size from a fixed seed (so it is
    deterministic and shared by all tiles: painting crowns one by one per tile was the slowest step)."""
    rng = np.random.default_rng(1)
    tex = Image.new("L", (2 * px, 2 * px), 70)
    draw = ImageDraw.Draw(tex)
    n = (2 * DESIGN) ** 2 // 24
    xs, ys, rs = rng.uniform(0, 2 * px, n), rng.uniform(0, 2 * px, n), rng.uniform(1.5, 4.5, n) * px / DESIGN
    for x, y, r, tone in zip(xs, ys, rs, rng.integers(40, 230, n)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(tone))
    return tex


def _farmland(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Parallel crop strips in alternating greens and browns."""
    x0, y0, x1, y1 = box
    vertical = c.rng.random() < 0.5
    pos, end = (x0, x1) if vertical else (y0, y1)
    while pos < end:
        w = c.rng.uniform(5.0, 16.0)
        color = c.jit(c.tone(FARM[c.rng.integers(len(FARM))]), 8)
        c.rect((pos, y0, min(pos + w, x1), y1) if vertical else (x0, pos, x1, min(pos + w, y1)), color)
        pos += w + 0.8
    return 0


def _bare(c: _Canvas, box: Box, dens: float, lush: float) -> int:
    """Tan and brown soil with blotches and, sometimes, a dirt track."""
    x0, y0, x1, y1 = box
    c.rect(box, c.jit(c.tone(SOIL), 10))
    for _ in range(int(c.rng.integers(3, 9))):
        rx, ry = c.rng.uniform(4.0, 24.0, 2)
        cx, cy = c.rng.uniform(x0, x1), c.rng.uniform(y0, y1)
        c.ellipse((max(x0, cx - rx), max(y0, cy - ry), min(x1, cx + rx), min(y1, cy + ry)),
                  c.jit((136, 116, 92), 12))
    if c.rng.random() < 0.4:
        c.line([(x0, c.rng.uniform(y0, y1)), (x1, c.rng.uniform(y0, y1))], (176, 160, 130), 2.0)
    return 0


PAINTERS = {"residential": _residential, "commercial": _commercial, "industrial": _industrial,
            "green": _park, "farmland": _farmland, "bare": _bare}


# ----------------------------------------------------------------------------- layout

def _cuts(rng: np.random.Generator, spacing: float) -> list[float]:
    """Street positions along one axis: jittered spacing, covering the whole design canvas."""
    out = [-rng.uniform(0.0, spacing)]
    while out[-1] < DESIGN:
        out.append(out[-1] + spacing * rng.uniform(0.7, 1.3))
    return out


def _assign(rng: np.random.Generator, blocks: list[Box], share: np.ndarray) -> list[str]:
    """Give each block the land use with the largest remaining area deficit (randomised), so the drawn area
    shares follow the mix instead of a noisy per-block draw."""
    keys = [k for k in LAND_USES if k != "water"]
    deficit = share * sum((b[2] - b[0]) * (b[3] - b[1]) for b in blocks)
    out: list[str] = [""] * len(blocks)
    for i in rng.permutation(len(blocks)):
        b = blocks[i]
        area = (b[2] - b[0]) * (b[3] - b[1])
        j = int(np.argmax(deficit + rng.normal(0.0, 0.25 * area, len(keys))))
        deficit[j] -= area
        out[i] = keys[j]
    return out


def _water(c: _Canvas, share: float, lush: float) -> str | None:
    """A river band, a lake or a pond covering about `share` of the tile."""
    if share < 0.04:
        return None
    color = c.jit(c.tone(WATER_LUSH if lush > 0.5 else WATER_DRY), 6)
    area = share * DESIGN * DESIGN
    if share > 0.12 and c.rng.random() < 0.5:
        a, b = c.rng.uniform(0, DESIGN, 2)
        mid = [(DESIGN * t, a + (b - a) * t + 18 * np.sin(6.0 * t + a)) for t in np.linspace(0, 1, 9)]
        pts = mid if c.rng.random() < 0.5 else [(y, x) for x, y in mid]
        c.line(pts, (120, 126, 110), area / DESIGN + 5)
        c.line(pts, color, area / DESIGN)
        return "river"
    r = np.sqrt(area / np.pi)
    cx, cy = c.rng.uniform(r * 0.5, DESIGN - r * 0.5, 2)
    ang = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    phase = c.rng.uniform(0, 2 * np.pi, 2)
    rad = r * (1 + 0.18 * np.sin(2 * ang + phase[0]) + 0.1 * np.sin(3 * ang + phase[1]))  # smooth, irregular shore
    c.polygon([(cx + rr * np.cos(t), cy + rr * np.sin(t)) for rr, t in zip(rad, ang)], color)
    return "lake" if share > 0.12 else "pond"


def _main_road(c: _Canvas, dens: float) -> str | None:
    if c.rng.random() > 0.2 + 0.6 * dens:
        return None
    kind = str(c.rng.choice(["horizontal", "vertical", "crossing", "diagonal"], p=[0.35, 0.35, 0.2, 0.1]))
    width, at = c.rng.uniform(8.0, 14.0), c.rng.uniform(40.0, DESIGN - 40.0, 2)
    lines = {"horizontal": [[(0, at[0]), (DESIGN, at[0])]], "vertical": [[(at[0], 0), (at[0], DESIGN)]],
             "crossing": [[(0, at[0]), (DESIGN, at[0])], [(at[1], 0), (at[1], DESIGN)]],
             "diagonal": [[(0, at[0]), (DESIGN, at[1])]]}[kind]
    for pts in lines:
        c.line(pts, c.jit(c.tone(ROAD), 6), width)
        c.line(pts, (190, 188, 170), 0.8)
    return kind


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Per-tile exposure, haze (smooth low-frequency brightness) and fine grey sensor noise.

    The noise is one grey layer centred on 128 and added with ImageChops (C speed, clipped).
    """
    size = img.size[0]
    gain = rng.uniform(0.9, 1.08)
    img = img.point([min(255, int(v * gain)) for v in range(256)] * 3)
    haze = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    noise = (np.asarray(haze, dtype=np.int16) - 128) // 12 + rng.integers(121, 136, (size, size), dtype=np.int16)
    grey = Image.fromarray(noise.astype(np.uint8))
    return ImageChops.add(img, Image.merge("RGB", (grey, grey, grey)), offset=-128)


def _blocks(rng: np.random.Generator, spacing: float, street: float) -> list[Box]:
    """The rectangles between local streets (street centre lines at jittered `spacing`)."""
    xs, ys = _cuts(rng, spacing), _cuts(rng, spacing)
    blocks = [(max(0.0, a + street / 2), max(0.0, b + street / 2), min(DESIGN, a2 - street / 2),
               min(DESIGN, b2 - street / 2))
              for a, a2 in zip(xs, xs[1:]) for b, b2 in zip(ys, ys[1:])]
    return [b for b in blocks if b[2] - b[0] > 2 and b[3] - b[1] > 2]


def _drawn_area(kinds: list[str], blocks: list[Box], water_share: float) -> dict[str, float]:
    """Area share per land use as drawn: block areas, with the water body taking its share on top."""
    area = {k: 0.0 for k in LAND_USES}
    for k, b in zip(kinds, blocks):
        area[k] += (b[2] - b[0]) * (b[3] - b[1])
    total = sum(area.values())
    return {k: (v / total) * (1 - water_share) for k, v in area.items()} | {"water": water_share}


def draw_tile(mix: np.ndarray, density: float, lush: float, rng: np.random.Generator,
              size: int, look: Look = NEUTRAL) -> tuple[Image.Image, Scene]:
    """Draw a tile whose content follows `mix` (shares over LAND_USES) and `density` (0..1).

    `lush` (0..1) picks the vegetation and water palette of the city (dry northern winter vs green south);
    `look` only changes colours and shadow offsets, never what is drawn where.
    """
    canvas = max(size, DESIGN)
    c = _Canvas(canvas, STREET_PAVED if density > 0.3 else STREET_DIRT, rng, look)  # paved or dirt streets
    spacing = 112.0 - 80.0 * density
    blocks = _blocks(rng, spacing, street=2.0 + 2.5 * density)
    land = mix[[LAND_USES.index(k) for k in LAND_USES if k != "water"]]
    kinds = _assign(rng, blocks, land / max(land.sum(), 1e-9))
    buildings = sum(PAINTERS[k](c, b, density, lush) for k, b in zip(kinds, blocks))
    yards = [b for k, b in zip(kinds, blocks) if k == "industrial"]
    tanks = _tanks(c, yards[int(rng.integers(len(yards)))]) if yards and rng.random() < 0.5 else 0
    water_share = float(mix[LAND_USES.index("water")])
    water = _water(c, water_share, lush)
    road = _main_road(c, density)
    img = _finish(c.img.filter(ImageFilter.BoxBlur(0.5 * c.k)), rng)  # optics: no pixel-sharp edges
    if canvas != size:
        img = img.resize((size, size), Image.BOX)
    area = _drawn_area(kinds, blocks, water_share if water else 0.0)
    tall = density > 0.45 and area["commercial"] > 0.1 or density > 0.6 and area["residential"] > 0.1
    return img, Scene(area=area, buildings=buildings, tall=tall, main_road=road, street_spacing=spacing,
                      water=water, tanks=tanks, village=bool(density <= 0.42 and area["residential"] > 0.1))
