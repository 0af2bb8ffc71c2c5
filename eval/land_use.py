"""Do generated captions name the tile's dominant land use? Measured against the synthetic city's truth.

The synthetic generator knows what it drew: `truth/{City}.csv` (data_shards/synth.py) holds each tile's
dominant land use, and its caption grammar (data_shards/synth_text.py) names land uses with fixed phrases
(`AREA_WORDS`, `THINGS`; villages are residential land). A caption mentions a land use when it contains one
of its phrases as whole words; longer phrases are matched first and consumed, so "industrial park" counts as
industrial, not also as a park.

- mention rate: share of tiles whose generated caption mentions their own dominant land use;
- chance: the same share with the dominant uses shuffled across tiles (mean over `permutations` seeded
  shuffles), i.e. a captioner that writes the same captions without looking at the tile, with the same
  vocabulary and the same land-use frequencies; the p-value is the share of shuffles doing at least as well.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter

import numpy as np

from data_shards.format import sample_key
from data_shards.storage import read_text
from data_shards.synth_text import AREA_WORDS, THINGS

ZOOM = 16
SAME_LAND = {"village": "residential"}  # caption words of a drawn style -> the truth's land use


def _patterns() -> list[tuple[re.Pattern, str]]:
    pairs = {(phrase, SAME_LAND.get(use, use)) for words in (AREA_WORDS, THINGS) for use, phrases in words.items()
             for phrase in phrases}
    ordered = sorted(pairs, key=lambda p: (-len(p[0]), p))
    return [(re.compile(rf"\b{re.escape(phrase)}\b"), use) for phrase, use in ordered]


PATTERNS = _patterns()


def mentioned(caption: str) -> set[str]:
    """Land uses a caption names (longest phrases first; a matched phrase is not matched again inside)."""
    text, found = caption.lower(), set()
    for pattern, use in PATTERNS:
        text, n = pattern.subn(" ", text)
        if n:
            found.add(use)
    return found


def read_truth(uri: str) -> dict[str, str]:
    """Sample key -> dominant land use, from a synthetic city's truth CSV (local path or URL)."""
    rows = list(csv.DictReader(io.StringIO(read_text(uri))))
    return {sample_key(row["satellite_img_name"].split("/", 1)[0], ZOOM, int(row["x"]), int(row["y"])):
            row["dominant"] for row in rows}


def mention_rate(captions: dict[str, str], truth: dict[str, str], *, permutations: int = 1000,
                 seed: int = 0) -> dict:
    """Mention rate of the dominant land use vs chance, over the captioned tiles that have a truth row."""
    keys = sorted(k for k in captions if k in truth)
    if not keys:
        raise ValueError("no captioned tile has a truth row: caption the synthetic city these truth files belong to")
    said = [mentioned(captions[k]) for k in keys]
    dominant = np.array([truth[k] for k in keys])
    hits = np.array([d in s for d, s in zip(dominant, said)])
    rng = np.random.default_rng(seed)
    shuffled = np.array([np.mean([d in s for d, s in zip(rng.permutation(dominant), said)])
                         for _ in range(permutations)])
    rate = float(hits.mean())
    return {"tiles": len(keys), "mention_rate": rate, "chance": float(shuffled.mean()),
            "p_value": float((np.sum(shuffled >= rate) + 1) / (permutations + 1)),
            "by_land_use": {str(use): {"tiles": int(n), "mention_rate": float(hits[dominant == use].mean())}
                            for use, n in sorted(Counter(dominant).items())},
            "captions_naming_any_land_use": float(np.mean([bool(s) for s in said]))}


__all__ = ["mentioned", "read_truth", "mention_rate", "PATTERNS"]
