"""Paired comparisons inside one report: the checkpoint against its best baseline, and spatial against random splits.

Both compare two probes fitted with the same probe seeds on the same embeddings, so each difference is taken
per seed (seed s of one against seed s of the other) and summarised as mean +- standard deviation over seeds.
The spread is that of the probe fits only: one checkpoint, one test split; the variation between training runs
is what `bench/` scripts measure with several training seeds.

- Margin over the best baseline: among the baseline feature sets that ran (random-init twin, colour histograms,
  SimCLR twin, caption-only sentence encoder), the best is the one with the highest mean MLP test R2; the
  margin is R2(checkpoint image) - R2(best baseline).
- Split gap: R2(random tile-level re-split) - R2(spatial-block split) of the image probe. Neighbouring tiles
  look alike and share indicator values, so a random split leaks neighbours into test; a positive gap is the
  optimism a random split would add, i.e. how much harder spatial generalisation is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eval.report_schema import BASELINE_SETS, HEADLINE, Gap, Margin, ProbeOutcome, ProbeResult, Regression, ran


def _paired(a: ProbeResult, b: ProbeResult) -> np.ndarray:
    """Per-seed differences of MLP test R2, a minus b (same probe seeds, same order)."""
    return np.array([x["r2"] - y["r2"] for x, y in zip(a["mlp_per_seed"], b["mlp_per_seed"], strict=True)])


def margin_over_best(sets: dict[str, ProbeOutcome], features: str = HEADLINE,
                     baselines: Sequence[str] = BASELINE_SETS) -> Margin | None:
    """The margin of `features` over the best baseline among those that ran; None when either side is missing.
    Ties go to the baseline listed first in `baselines`."""
    own = sets.get(features, {})
    candidates = {name: sets[name] for name in baselines if ran(sets.get(name, {}))}
    if not ran(own) or not candidates:
        return None
    best = max(candidates, key=lambda name: candidates[name]["mlp"]["r2"])
    diffs = _paired(own, candidates[best])
    return {"features": features, "r2": own["mlp"]["r2"], "best": best, "best_r2": candidates[best]["mlp"]["r2"],
            "margin": float(diffs.mean()), "margin_std": float(diffs.std()), "per_seed": diffs.tolist(),
            "candidates": {name: res["mlp"]["r2"] for name, res in candidates.items()}}


def margins(regression: Regression, features: str = HEADLINE,
            baselines: Sequence[str] = BASELINE_SETS) -> dict[str, dict[str, Margin]]:
    """city -> indicator -> margin over the best baseline (indicators without one are left out)."""
    out: dict[str, dict[str, Margin]] = {}
    for city, by_indicator in regression.items():
        for indicator, sets in by_indicator.items():
            margin = margin_over_best(sets, features, baselines)
            if margin is not None:
                out.setdefault(city, {})[indicator] = margin
    return out


def split_gap(spatial: ProbeOutcome, random: ProbeOutcome, n_val: int) -> Gap | None:
    """R2(random re-split) - R2(spatial split) per seed and summarised; None when either probe was skipped."""
    if not (ran(spatial) and ran(random)):
        return None
    diffs = _paired(random, spatial)
    return {"spatial_r2": spatial["mlp"]["r2"], "random_r2": random["mlp"]["r2"],
            "random_r2_std": random["mlp"]["r2_std"], "gap": float(diffs.mean()), "gap_std": float(diffs.std()),
            "per_seed": diffs.tolist(), "n_train": random["n_train"], "n_val": n_val, "n_test": random["n_test"]}


__all__ = ["margin_over_best", "margins", "split_gap"]
