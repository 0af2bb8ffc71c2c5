"""Coordinates of map tiles: Baidu tile indices, BD-09 / GCJ-02 / WGS84 conversions and tile bounds.

UrbanCLIP's toolkit names tiles by Baidu tile indices at zoom 16 (`16_x_y_s.jpg`) and its CSV column called
"WGS84 coordinate" in fact holds Baidu BD-09 lat/lon (see shared SOURCE.md). We convert BD-09 to WGS84 with the
standard closed-form formulas (accurate to a few metres) and give each tile an approximate WGS84 box around its
centre: a Baidu tile at zoom z spans 256 * 2**(18 - z) Baidu-Mercator units, which we treat as spherical
Mercator metres. That is good to a few per cent, which is all the bounds are used for (maps, spatial splits).
"""

from __future__ import annotations

import math

_A = 6378245.0  # Krasovsky ellipsoid semi-major axis used by GCJ-02
_EE = 0.00669342162296594323
_X_PI = math.pi * 3000.0 / 180.0
_MERCATOR_R = 6378137.0
_M_PER_DEG = math.pi * _MERCATOR_R / 180.0  # metres per degree of longitude on the Mercator sphere


def tile_span_units(z: int) -> float:
    """Width of one Baidu tile at zoom z, in Baidu-Mercator units (~metres at the equator)."""
    return 256.0 * 2.0 ** (18 - z)


def baidu_tile_center(x: int, y: int, z: int) -> tuple[float, float]:
    """Approximate BD-09 (lat, lon) of the centre of Baidu tile (x, y) at zoom z; y grows northwards."""
    span = tile_span_units(z)
    lon = (x + 0.5) * span / _M_PER_DEG
    lat = math.degrees(2.0 * math.atan(math.exp((y + 0.5) * span / _MERCATOR_R)) - math.pi / 2.0)
    return lat, lon


def tile_bounds(lat: float, lon: float, z: int) -> list[float]:
    """[lon_min, lat_min, lon_max, lat_max] of a Baidu tile at zoom z centred on WGS84 (lat, lon)."""
    half = tile_span_units(z) / 2.0
    dlon = half / _M_PER_DEG
    dlat = half * math.cos(math.radians(lat)) / _M_PER_DEG
    return [round(lon - dlon, 7), round(lat - dlat, 7), round(lon + dlon, 7), round(lat + dlat, 7)]


# ----------------------------------------------------------------------------- datum shifts

def _gcj_delta(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
            + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
            + (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
            + (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
            + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
            + (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
            + (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0)
    rad = math.radians(lat)
    magic = 1 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    dlat, dlon = _gcj_delta(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """Inverse of wgs84_to_gcj02 by fixed-point iteration (sub-metre after a few rounds)."""
    wlat, wlon = lat, lon
    for _ in range(4):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        wlat, wlon = wlat - (glat - lat), wlon - (glon - lon)
    return wlat, wlon


def bd09_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 0.0065, lat - 0.006
    z = math.sqrt(x * x + y * y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    return z * math.sin(theta), z * math.cos(theta)


def gcj02_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    z = math.sqrt(lon * lon + lat * lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def bd09_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))


def wgs84_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_bd09(*wgs84_to_gcj02(lat, lon))


# ----------------------------------------------------------------------------- tile indices from coordinates

def baidu_tile(lat: float, lon: float, z: int) -> tuple[int, int]:
    """Baidu tile (x, y) at zoom z holding BD-09 (lat, lon): the inverse of `baidu_tile_center`."""
    span = tile_span_units(z)
    x = math.floor(lon * _M_PER_DEG / span)
    y = math.floor(_MERCATOR_R * math.log(math.tan(math.pi / 4.0 + math.radians(lat) / 2.0)) / span)
    return x, y


def xyz_tile(lat: float, lon: float, z: int) -> tuple[int, int]:
    """Web-map (OSM/XYZ, y grows southwards) tile (x, y) at zoom z holding WGS84 (lat, lon)."""
    n = 2**z
    x = math.floor((lon + 180.0) / 360.0 * n)
    y = math.floor((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return min(max(x, 0), n - 1), min(max(y, 0), n - 1)


def xyz_tile_bounds(x: int, y: int, z: int) -> list[float]:
    """[lon_min, lat_min, lon_max, lat_max] of web-map tile (x, y) at zoom z (exact)."""
    n = 2**z

    def lat_of(row: float) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1.0 - 2.0 * row / n))))

    return [round(x / n * 360.0 - 180.0, 7), round(lat_of(y + 1), 7),
            round((x + 1) / n * 360.0 - 180.0, 7), round(lat_of(y), 7)]


def xyz_tile_center(x: int, y: int, z: int) -> tuple[float, float]:
    """WGS84 (lat, lon) of the centre of web-map tile (x, y) at zoom z (centre in Mercator)."""
    n = 2**z
    lon = (x + 0.5) / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1.0 - 2.0 * (y + 0.5) / n))))
    return lat, lon
