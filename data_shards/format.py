"""The shard format in code: names, keys and the per-sample metadata of docs/shard-format.md.

The builder writes with these functions and the reader (trainer, eval) reads with them, so a field or a name is
spelled in exactly one place. Changing anything here that a reader relies on needs a new SCHEMA_VERSION.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from configs.shards import SPLITS

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
STATE_DIR = ".build"  # per-chunk publication records of the builder (not read by trainers)
TMP_PREFIX = ".tmp-"
SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")

# reasons a row or sample is skipped (report.json "skipped"), and why an indicator was kept as null
SKIP_REASONS = ("missing_image", "corrupt_image", "no_caption", "duplicate_key", "bad_row")
NULL_REASONS = ("missing_indicators", "empty_indicator", "non_numeric_indicator", "negative_indicator")

# the UrbanCLIP toolkit's indicator columns -> our short names; other columns keep their name
_TOOLKIT_INDICATORS = {
    "carbon_emissions (ton)": "carbon",
    "population (unit)": "population",
    "gdp (million yuan)": "gdp",
}
_SENTENCE_END = (".", "!", "?")


def shard_name(split: str, index: int) -> str:
    """`train-000003.tar`: contiguous indices from 0 per split, so `train-{000000..000003}.tar` expands."""
    return f"{split}-{index:06d}.tar"


@functools.lru_cache(maxsize=4096)
def city_slug(city: str) -> str:
    """City lower-cased with only [a-z0-9] kept. Names with none of those (e.g. Chinese) become `c` + a short
    hash, and names over 40 characters are cut to 31 + a hash (tar member names must stay under 100 bytes)."""
    slug = re.sub(r"[^a-z0-9]", "", city.lower())
    digest = hashlib.sha1(city.encode("utf-8")).hexdigest()[:8]
    if not slug:
        return "c" + digest
    return slug if len(slug) <= 40 else slug[:31] + digest


def sample_key(city: str, z: int, x: int, y: int) -> str:
    """`__key__` of a sample: `{city}_{z}_{x}_{y}` with no slashes or dots (webdataset splits keys at dots)."""
    return f"{city_slug(city)}_{int(z)}_{int(x)}_{int(y)}"


def indicator_name(column: str) -> str:
    """Normalised indicator name: the toolkit's `gdp (million yuan)` -> `gdp`; other names kept (stripped)."""
    column = column.strip()
    return _TOOLKIT_INDICATORS.get(column, column)


def caption_text(sentences: list[str]) -> str:
    """The `txt` member: the sentences joined by single spaces, each ending in . ! or ? (UrbanCLIP's caption
    sentences were split at full stops, which this puts back)."""
    parts = []
    for s in sentences:
        s = " ".join(s.split())
        if s:
            parts.append(s if s.endswith(_SENTENCE_END) else s + ".")
    return " ".join(parts)


def sample_metadata(*, city: str, z: int, x: int, y: int, lat: float, lon: float, bounds: list[float],
                    indicators: dict[str, float | None], sentences: list[str], caption_source: str,
                    poi: dict[str, int] | None, image_sha256: str, split: str, image: str) -> dict[str, Any]:
    """The `json` member of a sample (fields documented in docs/shard-format.md)."""
    return {
        "city": city, "z": int(z), "x": int(x), "y": int(y),
        "lat": round(float(lat), 7), "lon": round(float(lon), 7), "bounds": [float(b) for b in bounds],
        "indicators": dict(sorted(indicators.items())),
        "sentences": list(sentences),
        "caption_source": caption_source,
        "poi": None if poi is None else dict(sorted(poi.items())),
        "image_sha256": image_sha256,
        "split": split,
        "image": image,
    }


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, UTF-8): the same metadata always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


__all__ = ["SCHEMA_VERSION", "SPLITS", "MANIFEST_NAME", "REPORT_NAME", "STATE_DIR", "TMP_PREFIX", "SHARD_RE",
           "SKIP_REASONS", "NULL_REASONS", "shard_name", "city_slug", "sample_key", "indicator_name",
           "caption_text", "sample_metadata", "dumps"]
