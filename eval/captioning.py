"""`cityscale caption --checkpoint URL --shards URL --out F.csv`: captions of one split written by a CoCa
checkpoint, scored against the tiles' reference sentences (BLEU-1..4, ROUGE-L, CIDEr; eval/caption_metrics.py).

UrbanCLIP describes each tile with a captioner and then pretrains on those descriptions; a CoCa checkpoint of
ours can do the same, and this is where we look at what it writes. Captions are drawn as UrbanCLIP draws them,
by nucleus sampling with open_clip's `top_p` 0.1 (or by beam search with `--beam N`), `max_len` tokens at most.
Sampling is reproducible: each batch is generated under `torch.manual_seed(seed + batch index)` in a forked RNG
state, so the same seed gives the same captions (for the same batch size and reader workers, which decide what
a batch holds) and the caller's random state is left alone.

Reading goes through the project's reader in evaluation mode (manifest order, no augmentation, the eval tile
transform), as eval/embed.py does; `max_tiles` keeps whole shards spread over the split (embed.spread_shards)
and stops at the cap. The same `generate_captions` feeds the captioning section of `cityscale eval run`
reports (eval/run.py). Checkpoints without `generate` (CLIP) are refused with a CheckpointError.

CSV columns: key, image (the source image, the shard json's `image`; "" for shards built before that field),
generated, references (the tile's sentences joined with " | ").
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from configs.data import AugmentConfig, LoaderConfig
from configs.eval import CaptionConfig
from configs.loader import ConfigError, add_config_flags, apply_flags, from_dict, key_path, run_module, to_dict
from data_shards.augment import tile_transform
from data_shards.reader import Manifest, ShardLoader, read_manifest
from data_shards.run_layout import ref_from_uri
from data_shards.storage import write_bytes_atomic
from data_shards.tokenize import CaptionTokenizer
from eval.baselines import denormalise
from eval.caption_metrics import METRICS, caption_scores
from eval.checkpoints import CheckpointError, LoadedModel, fetch, load_model, local_workdir
from eval.embed import spread_shards
from eval.land_use import mention_rate, read_truth

CSV_COLUMNS = ("key", "image", "generated", "references")
REFERENCE_SEP = " | "


@dataclass
class CaptionRow:
    key: str
    image: str  # the shard json's `image` ("" when absent)
    generated: str
    references: list[str]


@dataclass
class Captions:
    """One split's generated captions in reading order, thumbnails of a few rows, skips by reason."""

    split: str
    rows: list[CaptionRow] = field(default_factory=list)
    thumbs: dict[int, np.ndarray] = field(default_factory=dict)  # row -> uint8 [H, W, 3]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        return caption_scores({r.key: r.generated for r in self.rows}, {r.key: r.references for r in self.rows})


# ----------------------------------------------------------------------------- the model

def can_caption(model: LoadedModel) -> bool:
    """A CoCa-style checkpoint: its module can `generate` token sequences from images."""
    return callable(getattr(model.module, "generate", None))


def check_captioner(model: LoadedModel, cfg: CaptionConfig, path: str = "") -> None:
    """CheckpointError unless the model can caption; ConfigError when max_len exceeds its text context."""
    if not can_caption(model):
        raise CheckpointError(f"captioning needs a CoCa model: this checkpoint is a {type(model.module).__name__} "
                              "without `generate` (train with a CoCa model config, e.g. cityscale-coca-nano-32)")
    context = int(model.model_cfg.get("text_cfg", {}).get("context_length", 77))
    if cfg.max_len > context:
        raise ConfigError(f"config key {key_path(path, 'max_len')!r} = {cfg.max_len} exceeds the checkpoint's "
                          f"text context length {context}: lower it")


def generate_ids(module: torch.nn.Module, images: torch.Tensor, cfg: CaptionConfig) -> torch.Tensor:
    """Token ids [B, <= max_len] (start token first) by top_p sampling or, with cfg.beam, beam search."""
    if cfg.beam:
        return module.generate(images, generation_type="beam_search", seq_len=cfg.max_len, num_beams=cfg.beam,
                               num_beam_groups=1)
    return module.generate(images, generation_type="top_p", seq_len=cfg.max_len, top_p=cfg.top_p)


def decode(tokenizer, ids: Sequence[int], pad_id: int = 0) -> str:
    """Caption text of one generated sequence: start token dropped, cut at the end token, padding dropped
    (id 0, which open_clip's tokenizer would print as `!`), whitespace normalised."""
    ids = list(ids)
    if ids and ids[0] == tokenizer.sot_token_id:
        ids = ids[1:]
    if tokenizer.eot_token_id in ids:
        ids = ids[:ids.index(tokenizer.eot_token_id)]
    return " ".join(tokenizer.decode([i for i in ids if i != pad_id]).split())


# ----------------------------------------------------------------------------- one split

def _loader(source: Manifest, split: str, model: LoadedModel, cfg: CaptionConfig, workers: int) -> ShardLoader:
    return ShardLoader(LoaderConfig(split=split, workers=workers, shuffle_buffer=0), source,
                       batch_size=cfg.batch_size, rank=0, world_size=1,
                       image_transform=tile_transform(model.image_size, model.mean, model.std, train=False,
                                                      augment=AugmentConfig()),
                       tokenize=CaptionTokenizer(model.tokenizer), train=False, with_meta=True)


def generate_captions(manifest: Manifest, split: str, model: LoadedModel, cfg: CaptionConfig, *,
                      loader_workers: int = 0, thumbs: int = 0, progress: bool = True) -> Captions:
    """Caption every tile of `split` (at most cfg.max_tiles); keep `thumbs` evenly spaced thumbnails."""
    check_captioner(model, cfg)
    start = time.perf_counter()
    source = spread_shards(manifest, split, cfg.max_tiles) if cfg.max_tiles else manifest
    loader = _loader(source, split, model, cfg, loader_workers)
    expected = min(cfg.max_tiles or sys.maxsize, source.samples(split))
    want = set(np.linspace(0, expected - 1, thumbs).round().astype(int).tolist()) if thumbs and expected else set()
    pad_id = int(getattr(model.module, "pad_id", 0))
    out = Captions(split=split)
    with tqdm(total=expected, desc=f"caption {split}", unit="tile", disable=not progress, leave=False) as bar:
        for index, batch in enumerate(loader):
            take = min(len(batch.keys), expected - len(out.rows))
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(cfg.seed + index)
                ids = generate_ids(model.module, batch.images[:take], cfg)
            first = len(out.rows)
            for key, meta, seq in zip(batch.keys[:take], batch.meta or [], ids.tolist()):
                out.rows.append(CaptionRow(key=key, image=str(meta.get("image", "")),
                                           generated=decode(model.tokenizer, seq, pad_id),
                                           references=[str(s) for s in meta.get("sentences") or []]))
            for row in sorted(r for r in want if first <= r < len(out.rows)):
                px = denormalise(batch.images[row - first:row - first + 1], model.mean, model.std)[0]
                out.thumbs[row] = (px.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            bar.update(take)
            if len(out.rows) >= expected:
                break
    out.skipped, out.seconds = dict(loader.skipped_total), time.perf_counter() - start
    return out


def caption_section(captions: Captions, cfg: CaptionConfig) -> dict:
    """The report's `captioning` entry: metrics, tile count, settings, and the thumbnailed rows as examples
    (`row` is the caption row; the caller maps it to its own row numbering)."""
    examples = [{"row": row, "key": captions.rows[row].key, "generated": captions.rows[row].generated,
                 "references": captions.rows[row].references} for row in sorted(captions.thumbs)]
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("enabled", "examples")}
    return {"metrics": captions.metrics(), "tiles": len(captions.rows), "split": captions.split,
            "method": cfg.method(), "settings": settings, "skipped": captions.skipped,
            "seconds": captions.seconds, "examples": examples}


def csv_bytes(rows: list[CaptionRow]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows([r.key, r.image, r.generated, REFERENCE_SEP.join(r.references)] for r in rows)
    return buf.getvalue().encode("utf-8")


# ----------------------------------------------------------------------------- command line

# option -> (CaptionConfig field, argparse kwargs); help texts and defaults come from the config's own fields
_FLAGS = {"--top-p": ("top_p", {"type": float}), "--max-len": ("max_len", {"type": int}),
          "--beam": ("beam", {"type": int}), "--max-tiles": ("max_tiles", {"type": int, "metavar": "N"}),
          "--seed": ("seed", {"type": int}), "--batch-size": ("batch_size", {"type": int})}
# `cityscale caption` captions the whole split unless --max-tiles caps it (the report's default caps at 200)
_COMMAND_DEFAULTS = {"max_tiles": 0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscale caption", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="exported CoCa checkpoint folder (local or s3://)")
    p.add_argument("--shards", required=True, help="shard folder holding manifest.json")
    p.add_argument("--out", required=True, help="CSV to write (local or s3://): key,image,generated,references")
    p.add_argument("--split", default="test", help="split to caption (default test)")
    add_config_flags(p, CaptionConfig, _FLAGS)
    p.add_argument("--workers", type=int, default=1, help="reader DataLoader workers (0 = decode here)")
    p.add_argument("--land-use-truth", default=None, metavar="CSV",
                   help="a synthetic city's truth/{City}.csv: also report how often captions name the tile's "
                        "dominant land use, against chance (eval/land_use.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _print_land_use(rows: list[CaptionRow], truth_uri: str) -> None:
    found = mention_rate({r.key: r.generated for r in rows}, read_truth(truth_uri))
    print(f"dominant land use named in {100 * found['mention_rate']:.1f}% of {found['tiles']} captions "
          f"(chance {100 * found['chance']:.1f}%, permutation p = {found['p_value']:.4f}); by land use: "
          + ", ".join(f"{use} {100 * v['mention_rate']:.0f}% of {v['tiles']}" for use, v in found["by_land_use"].items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = from_dict(CaptionConfig, apply_flags(_COMMAND_DEFAULTS, args))
    manifest = read_manifest(args.shards)
    manifest.split_shards(args.split)  # ConfigError naming the split when it has no shards
    ref = ref_from_uri(args.checkpoint)
    try:
        with local_workdir() as folder:
            model = load_model(fetch(ref, folder))
            captions = generate_captions(manifest, args.split, model, cfg, loader_workers=args.workers,
                                         progress=not args.no_progress)
    except CheckpointError as e:
        print(f"cityscale caption: {ref.uri}: {e}", file=sys.stderr)
        return 1
    write_bytes_atomic(args.out, csv_bytes(captions.rows))
    metrics = captions.metrics()
    skipped = f", skipped {captions.skipped}" if any(captions.skipped.values()) else ""
    print(f"{len(captions.rows)} captions of split {args.split!r} ({cfg.method()}, seed {cfg.seed}) in "
          f"{captions.seconds:.1f} s{skipped}")
    print("  ".join(f"{m} {metrics[m]:.4f}" if metrics[m] is not None else f"{m} -" for m in METRICS))
    if args.land_use_truth:
        _print_land_use(captions.rows, args.land_use_truth)
    print(f"-> {args.out}")
    return 0


__all__ = ["CSV_COLUMNS", "REFERENCE_SEP", "CaptionRow", "Captions", "can_caption", "check_captioner",
           "generate_ids", "decode", "generate_captions", "caption_section", "csv_bytes", "main"]


if __name__ == "__main__":
    run_module(main, "cityscale caption")

