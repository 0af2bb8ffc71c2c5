"""Which indicator probes a report runs, on which features and rows (the numerics are in eval/regression.py).

Protocol (documented in the report itself): for every city and indicator, the probe is fitted on the city's
TRAIN-split tiles (capped by `eval.max_train_rows`), early-stopped on its VAL-split tiles (or a carved share of
train when the shards have no val split), and scored on its TEST-split tiles. Using train-split embeddings is
sound: pretraining saw those images and captions but never an indicator. The spatial-block split of the shard
builder keeps neighbouring tiles out of train/test pairs.

Feature sets, each probed the same way:
  image        the checkpoint's image embeddings (the headline number)
  text         caption embeddings (the checkpoint's text tower, or a sentence encoder given by path)
  image+text   both concatenated ("does text help?")
  random_init  image embeddings of the same architecture with random weights (baseline)
  color_hist   colour histograms of the pixels (baseline)
  image (UrbanCLIP probe)   the image embeddings under UrbanCLIP's own probe (`eval.urbanclip_probe`)
Cross-city transfer: the image probe fitted on city A's train/val tiles and scored on city B's test tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from configs.eval import ProbeConfig
from eval.embed import SplitData
from eval.regression import probe_indicator

Features = Callable[[SplitData], np.ndarray]
HEADLINE = "image"
URBANCLIP_SET = "image (UrbanCLIP probe)"  # the image embeddings under configs.eval.urbanclip_probe()


def feature_sets(text_key: str) -> dict[str, Features]:
    """Name -> how to read that feature matrix from a split."""
    return {
        "image": lambda d: d.features["image"],
        "text": lambda d: d.features[text_key],
        "image+text": lambda d: np.concatenate([d.features["image"], d.features[text_key]], axis=1),
        "random_init": lambda d: d.features["random_image"],
        "color_hist": lambda d: d.features["color_hist"],
    }


@contextmanager
def single_thread() -> Iterator[None]:
    """Probe MLPs are tiny: one torch thread is several times faster than many (no sync per small matmul)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stack(parts: list[tuple[SplitData | None, np.ndarray]], read: Callable[[SplitData], np.ndarray]) -> np.ndarray:
    return np.concatenate([read(d)[rows] for d, rows in parts if d is not None and len(rows)])


def _probe(fit: list[tuple[SplitData | None, np.ndarray]], test: tuple[SplitData, np.ndarray], indicator: str,
           features: Features, cfg: ProbeConfig) -> dict:
    """One probe: rows of `fit` (train, val) to fit and early-stop, rows of `test` to score."""
    (tr_data, tr), (va_data, va) = fit
    te_data, te = test
    va = va if va_data is not None else np.array([], dtype=int)
    parts = [(tr_data, tr), (va_data, va), (te_data, te)]
    x = _stack(parts, features)
    values = _stack(parts, lambda d: d.values(indicator))
    n_tr, n_va = len(tr), len(va)
    return probe_indicator(x, values, np.arange(n_tr), np.arange(n_tr + n_va, len(x)), cfg,
                           val_idx=np.arange(n_tr, n_tr + n_va) if n_va else None)


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


def indicator_probes(train: SplitData, val: SplitData | None, test: SplitData, indicators: list[str],
                     sets: dict[str, Features], cfg: ProbeConfig, progress: bool = True) -> dict:
    """city -> indicator -> feature set -> probe result; predictions kept for the headline set only."""
    cities = sorted(set(test.cities))
    names = _usable_indicators(test, indicators)
    out: dict = {}
    total = len(cities) * len(names) * len(sets)
    with single_thread(), tqdm(total=total, desc="probes", disable=not progress, leave=False) as bar:
        for city in cities:
            tr, te = train.rows_of(city), test.rows_of(city)
            va = val.rows_of(city) if val is not None else np.array([], dtype=int)
            for name in names:
                for set_name, features in sets.items():
                    res = _probe([(train, tr), (val, va)], (test, te), name, features, cfg)
                    if set_name == HEADLINE:
                        _with_tiles(res, test, te, len(tr) + len(va))
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
            res = _probe([(train, train.rows_of(a)), (val, va)], (test, test.rows_of(b)), name, features, cfg)
            out.setdefault(f"{a}->{b}", {})[name] = res if "skipped" in res else {
                "mlp_r2": res["mlp"]["r2"], "mlp_r2_std": res["mlp"]["r2_std"], "ridge_r2": res["ridge"]["r2"],
                "n_train": res["n_train"], "n_test": res["n_test"]}
    return out


__all__ = ["HEADLINE", "URBANCLIP_SET", "feature_sets", "indicator_probes", "transfer_probes"]
