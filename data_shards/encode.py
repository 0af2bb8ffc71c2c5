"""Decode, resize and re-encode one tile: the per-sample CPU cost of the shard builder.

This is the step whose single-core speed bounds the build (bench/shards.py compares the builder against a plain
loop over this function). JPEG sources are decoded with PIL's `draft()`, which lets libjpeg scale down by
1/2, 1/4 or 1/8 inside the DCT, so large tiles never get decoded at full size. Non-square images are
centre-cropped to a square first; everything is written as baseline RGB JPEG without metadata.
"""

from __future__ import annotations

import io

from PIL import Image


class CorruptImage(ValueError):
    """The bytes are not a decodable image (truncated, garbage, unsupported, absurdly large)."""


def encode_tile(data: bytes, size: int, quality: int) -> bytes:
    """Source image bytes -> `size` x `size` RGB JPEG bytes at `quality`. Raises CorruptImage."""
    try:
        im = Image.open(io.BytesIO(data))  # in-memory: nothing to close
        im.draft("RGB", (size, size))  # JPEG only: decode at the smallest scale still >= size
        im.load()  # the full decode: truncated files fail here
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise CorruptImage(f"{type(e).__name__}: {e}") from None
    rgb = _square(rgb)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    if w == h:
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


__all__ = ["CorruptImage", "encode_tile"]
