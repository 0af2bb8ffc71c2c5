"""Which indicator probes a report runs, on which features and rows (the numerics are in eval/regression.py).

Protocol (documented in the report itself): for every city and indicator, the probe is fitted on the city's
TRAIN-split tiles (capped by `eval.max_train_rows`), early-stopped on its VAL-split tiles (or a carved share of
train when the shards have no val split), and scored on its TEST-split tiles. Using train-split embeddings is
sound: pretraining saw those images and captions but never an indicator. The spatial-block split of the shard
builder keeps neighbouring tiles out of train/test pairs.

Feature sets, each probed the same way (names in eval/report_schema.py):
  image        the checkpoint's image embeddings (the headline number)
  text         caption embeddings (the checkpoint's text tower, or a sentence encoder given by path)
  image+text   both concatenated ("does text help?")
  baselines    random_init (same architecture, random weights), color_hist (pixel colour histograms), simclr
               (an image-only SimCLR twin, when configured), caption_minilm (a sentence encoder on the captions)
  image (UrbanCLIP probe)   the image embeddings under UrbanCLIP's own probe (`eval.urbanclip_probe`)
Cross-city transfer: the image probe fitted on city A's train/val tiles and scored on city B's test tiles.
Split gap: the image probe refitted on a seeded random tile-level re-split of the same usable rows, with the
spatial split's train/val/test sizes (eval/comparisons.py turns both into the gap).

With an `EvalMemo` (eval/memo.py), a probe whose inputs are byte-identical to one already fitted in this process
returns that result instead of fitting again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from configs.eval import ProbeConfig
from eval.embed import SplitData
from eval.memo import EvalMemo, digest
from eval.regression import probe_indicator, usable_rows
from eval.report_schema import (CAPTION_MINILM, COLOR_HIST, HEADLINE, IMAGE_TEXT, RANDOM_INIT, SIMCLR, TEXT,
                                URBANCLIP_SET)

Features = Callable[[SplitData], np.ndarray]
Part = tuple[SplitData | None, np.ndarray]  # a split and some of its rows


def feature_sets(text_key: str, present: Collection[str] = ()) -> dict[str, Features]:
    """Name -> how to read that feature matrix from a split; the SimCLR and caption baselines only when embedded
    (`present` holds the feature names of the splits)."""
    sets: dict[str, Features] = {
        HEADLINE: lambda d: d.features["image"],
        TEXT: lambda d: d.features[text_key],
        IMAGE_TEXT: lambda d: np.concatenate([d.features["image"], d.features[text_key]], axis=1),
        RANDOM_INIT: lambda d: d.features["random_image"],
        COLOR_HIST: lambda d: d.features["color_hist"],
        SIMCLR: lambda d: d.features["simclr_image"],
        CAPTION_MINILM: lambda d: d.features[CAPTION_MINILM],
    }
    optional = {SIMCLR: "simclr_image", CAPTION_MINILM: CAPTION_MINILM}
    return {name: read for name, read in sets.items() if name not in optional or optional[name] in present}


@contextmanager
def single_thread() -> Iterator[None]:
    """Probe MLPs are tiny: one torch thread is several times faster than many (no sync per small matmul)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stack(parts: list[Part], read: Callable[[SplitData], np.ndarray]) -> np.ndarray:
    return np.concatenate([read(d)[rows] for d, rows in parts if d is not None and len(rows)])


def _fit(x: np.ndarray, values: np.ndarray, rows: tuple[np.ndarray, np.ndarray | None, np.ndarray],
         cfg: ProbeConfig, memo: EvalMemo | None) -> dict:
    """One probe over rows of `x` (train, val or None, test); through the memo when there is one."""
    train, val, test = rows

    def run() -> dict:
        return probe_indicator(x, values, train, test, cfg, val_idx=val)

    if memo is None:
        return run()
    empty = np.array([], dtype=int)
    return memo.probe(digest(x, values, train, empty if val is None else val, test, repr(cfg)), run)


def _spans(parts: list[Part]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Row ranges of the stacked (train, val, test) parts; val None when there are no val rows."""
    n_tr, n_va, n_te = (len(rows) if d is not None else 0 for d, rows in parts)
    val = np.arange(n_tr, n_tr + n_va) if n_va else None
    return np.arange(n_tr), val, np.arange(n_tr + n_va, n_tr + n_va + n_te)


def _with_tiles(result: dict, test: SplitData, test_rows: np.ndarray, offset: int) -> dict:
    """Replace probe-local row indices by the test tiles' keys and x/y (for maps and scatter plots)."""
    pred = result.get("predictions")
    if pred is None:
        return result
    rows = test_rows[np.asarray(pred.pop("rows"), dtype=int) - offset]
    pred.update(keys=[test.keys[r] for r in rows], x=[test.xy[r][0] for r in rows], y=[test.xy[r][1] for r in rows])
    return result


def _usable_indicators(test: SplitData, names: list[str]) -> list[str]:
    return [n for n in names if np.isfinite(test.values(n)).any()]


def _city_parts(train: SplitData, val: SplitData | None, test: SplitData, city: str) -> list[Part]:
    va = val.rows_of(city) if val is not None else np.array([], dtype=int)
    return [(train, train.rows_of(city)), (val, va), (test, test.rows_of(city))]


def indicator_probes(train: SplitData, val: SplitData | None, test: SplitData, indicators: list[str],
                     sets: dict[str, Features], cfg: ProbeConfig, progress: bool = True,
                     memo: EvalMemo | None = None) -> dict:
    """city -> indicator -> feature set -> probe result; test predictions kept for the headline set only, or for
    every set with `probe.keep_predictions: all`."""
    cities = sorted(set(test.cities))
    names = _usable_indicators(test, indicators)
    out: dict = {}
    total = len(cities) * len(names) * len(sets)
    with single_thread(), tqdm(total=total, desc="probes", disable=not progress, leave=False) as bar:
        for city in cities:
            parts = _city_parts(train, val, test, city)
            spans = _spans(parts)
            for set_name, features in sets.items():
                x = _stack(parts, features)
                for name in names:
                    res = _fit(x, _stack(parts, lambda d: d.values(name)), spans, cfg, memo)
                    if set_name == HEADLINE or cfg.keep_predictions == "all":
                        _with_tiles(res, test, parts[2][1], len(x) - len(spans[2]))
                    else:
                        res.pop("predictions", None)
                    out.setdefault(city, {}).setdefault(name, {})[set_name] = res
                    bar.update()
    return out


def transfer_probes(train: SplitData, val: SplitData | None, test: SplitData, indicators: list[str],
                    features: Features, cfg: ProbeConfig) -> dict:
    """'A->B' -> indicator -> {mlp_r2, ridge_r2, n_train, n_test}, for every ordered pair of cities."""
    cities = sorted(set(test.cities) & set(train.cities))
    pairs = [(a, b, name) for a in cities for b in cities if a != b for name in _usable_indicators(test, indicators)]
    out: dict = {}
    with single_thread():
        for a, b, name in pairs:
            va = val.rows_of(a) if val is not None else np.array([], dtype=int)
            parts = [(train, train.rows_of(a)), (val, va), (test, test.rows_of(b))]
            res = _fit(_stack(parts, features), _stack(parts, lambda d: d.values(name)), _spans(parts), cfg, None)
            out.setdefault(f"{a}->{b}", {})[name] = res if "skipped" in res else {
                "mlp_r2": res["mlp"]["r2"], "mlp_r2_std": res["mlp"]["r2_std"], "ridge_r2": res["ridge"]["r2"],
                "n_train": res["n_train"], "n_test": res["n_test"]}
    return out


def random_resplit(parts: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """The rows of `parts` (train, val, test) pooled and dealt again at random into parts of the same sizes."""
    pool = np.random.default_rng(seed).permutation(np.concatenate(parts))
    return np.split(pool, np.cumsum([len(p) for p in parts])[:-1])


def resplit_probes(train: SplitData, val: SplitData | None, test: SplitData, indicators: list[str],
                   features: Features, cfg: ProbeConfig, seed: int,
                   memo: EvalMemo | None = None) -> dict[str, dict[str, tuple[dict, int]]]:
    """city -> indicator -> (probe result, val rows) on a random tile-level re-split of the spatial split's usable
    rows (value present and > 0), with its train/val/test sizes: what a random split would have reported."""
    out: dict[str, dict[str, tuple[dict, int]]] = {}
    with single_thread():
        for city in sorted(set(test.cities)):
            parts = _city_parts(train, val, test, city)
            x, (tr, va, te) = _stack(parts, features), _spans(parts)
            for name in _usable_indicators(test, indicators):
                values = _stack(parts, lambda d: d.values(name))
                ok = usable_rows(values)
                spatial = [np.intersect1d(ok, span) for span in (tr, np.arange(0) if va is None else va, te)]
                new_tr, new_va, new_te = random_resplit(spatial, seed)
                res = _fit(x, values, (new_tr, new_va if va is not None else None, new_te), cfg, memo)
                res.pop("predictions", None)
                out.setdefault(city, {})[name] = (res, len(new_va))
    return out


__all__ = ["HEADLINE", "URBANCLIP_SET", "feature_sets", "indicator_probes", "transfer_probes", "random_resplit",
           "resplit_probes"]
