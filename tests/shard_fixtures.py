"""Small shard folders for tests, written exactly as docs/shard-format.md says, independent of the shard builder.

`make_samples` gives valid samples (tiny JPEG tiles, captions, metadata json); `break_sample` damages one the way
real data breaks; `write_shard_folder` writes `{split}-{index:06d}.tar` shards and `manifest.json` (last).
`byte_tokenize` is a picklable stand-in tokenizer (DataLoader workers need to pickle it under spawn).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import PIL.Image
import torch
import webdataset as wds

TOKENS = 8


def tile_key(city: str, x: int, y: int, z: int = 16) -> str:
    return f"{city}_{z}_{x}_{y}"


def make_samples(n: int, *, city: str = "testcity", start: int = 0, size: int = 24, split: str = "train") -> list[dict]:
    """`n` valid samples with distinct keys, images and captions."""
    out = []
    for i in range(start, start + n):
        image = PIL.Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256))
        image.putpixel((i % size, (i // size) % size), (255, 255, 255))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        sentences = [f"Tile {i} of {city}.", "It has roads."]
        meta = {"city": city, "z": 16, "x": i, "y": 7, "lat": 39.9, "lon": 116.4,
                "bounds": [116.39, 39.89, 116.41, 39.91], "indicators": {"population": float(i), "gdp": None},
                "sentences": sentences, "caption_source": "synth", "poi": None,
                "image_sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "split": split}
        out.append({"__key__": tile_key(city, i, 7), "jpg": buf.getvalue(), "txt": " ".join(sentences).encode(),
                    "json": json.dumps(meta).encode()})
    return out


def break_sample(sample: dict, how: str) -> dict:
    """A damaged copy: how in bad_jpg, truncated_jpg, bad_json, bad_txt, missing_txt, missing_jpg, missing_json."""
    out = dict(sample)
    if how == "bad_jpg":
        out["jpg"] = b"this is not a jpeg"
    elif how == "truncated_jpg":
        out["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2]
    elif how == "bad_json":
        out["json"] = b"{not json"
    elif how == "bad_txt":
        out["txt"] = b"\xff\xfe\xfa"
    elif how.startswith("missing_"):
        del out[how.removeprefix("missing_")]
    else:
        raise ValueError(how)
    return out


def write_shard_folder(root: str | Path, shards: dict[str, list[list[dict]]]) -> dict:
    """Write shards (split -> list of shards -> samples) and manifest.json under `root`; return the manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, split_shards in shards.items():
        for index, samples in enumerate(split_shards):
            name = f"{split}-{index:06d}.tar"
            with wds.TarWriter(str(root / name), encoder=False, mtime=0) as sink:
                for sample in samples:
                    sink.write(sample)
            data = (root / name).read_bytes()
            entries.append({"name": name, "split": split, "samples": len(samples), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"schema_version": 1, "created_by": "tests", "build_config": {}, "source_fingerprint": "test",
                "split_rule": {"kind": "spatial_block", "block_size": 8, "ratios": {"train": 1.0}, "seed": 0},
                "indicators": ["gdp", "population"], "cities": ["testcity"], "shards": entries,
                "totals": {split: sum(len(s) for s in ss) for split, ss in shards.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def into_shards(samples: list[dict], sizes: list[int]) -> list[list[dict]]:
    """Cut `samples` into consecutive shards of the given sizes."""
    assert sum(sizes) == len(samples)
    out, at = [], 0
    for size in sizes:
        out.append(samples[at:at + size])
        at += size
    return out


def byte_tokenize(caption: str) -> torch.Tensor:
    """Caption -> the first TOKENS UTF-8 bytes as int64, zero padded (a 1-D LongTensor like a real tokenizer)."""
    ids = list(caption.encode()[:TOKENS])
    return torch.tensor(ids + [0] * (TOKENS - len(ids)), dtype=torch.int64)
