"""Nuisance levels of the synthetic city: does `--nuisance` take the indicators out of colour, and leave them in
structure? And how fast is the drawing at each level?

    .venv/bin/python bench/nuisance.py probes     # ~10 min on 2 cores; everything under bench_out/nuisance/
    .venv/bin/python bench/nuisance.py speed      # synth tiles/s per level, 500 tiles of 64 px

probes
- the same city layout (`cityscale synth`, 2,500 tiles of 64 px, seed 0) drawn at each level and built into
  shards with the default 80/10/10 spatial-block split (bench/common.py `prepare_shards`);
- features as an eval report computes them (`eval.embed.embed_splits` with the report's extractors): colour
  histograms (`eval.baselines.ColorHistogram`, `color_bins` of the default EvalConfig) and the random-init
  image tower, at the preprocessing (32 px, mean/std) of the tiny CLIP recipe's model `cityscale-nano-32`
  (exported untrained with the trainer's own export, as bench/eval.py does);
- a colour-blind structure check: histograms of the tile's grey levels and gradient magnitudes after a per-tile
  z-score (so brightness, contrast and colour cannot help), from the same tensors;
- probes exactly as the report runs them (`eval.probes.indicator_probes`, default ProbeConfig: MLP over probe
  seeds 0, 1, 2, and ridge) on test tiles; the table gives MLP test R2 mean +- std over the probe seeds.

speed
- `data_shards.synth.synthesize` in this process, best of `--repeats` runs per level: tiles/s (wall) and
  tiles per CPU second (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import REPO, machine_load, prepare_shards  # noqa: E402
from bench.eval import export_checkpoint  # noqa: E402
from configs.eval import EvalConfig, ProbeConfig  # noqa: E402
from data_shards.reader import read_manifest  # noqa: E402
from data_shards.run_layout import list_complete  # noqa: E402
from data_shards.synth import synthesize  # noqa: E402
from data_shards.synth_nuisance import LEVELS  # noqa: E402
from eval.baselines import ClipFeatures, ColorHistogram, denormalise  # noqa: E402
from eval.checkpoints import load_model  # noqa: E402
from eval.embed import embed_splits  # noqa: E402
from eval.probes import feature_sets, indicator_probes  # noqa: E402

OUT = os.path.join(REPO, "bench_out", "nuisance")
SETS = ("color_hist", "random_init", "grey_structure")


class GreyStructure:
    """Colour-blind structure features: 8-bin histograms of the z-scored grey tile and of its gradient
    magnitudes (so a shift in brightness, contrast or colour changes nothing)."""

    name = "grey_structure"

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
        grey = denormalise(images, self.mean, self.std).mean(dim=1)  # [B, H, W]
        z = (grey - grey.mean(dim=(1, 2), keepdim=True)) / (grey.std(dim=(1, 2), keepdim=True) + 1e-6)
        grad = torch.hypot(z[:, 1:, :-1] - z[:, :-1, :-1], z[:, :-1, 1:] - z[:, :-1, :-1])
        levels = [torch.histc(t, bins=8, min=-2.5, max=2.5) / t.numel() for t in z]
        edges = [torch.histc(t, bins=8, min=0.0, max=3.0) / t.numel() for t in grad]
        return {self.name: torch.cat([torch.stack(levels), torch.stack(edges)], dim=1).numpy()}


def probe_level(shards: str, folder: str, cfg: EvalConfig) -> dict:
    """Embed train/val/test as a report does and probe each feature set: indicator -> set -> MLP/ridge R2."""
    model, random = load_model(folder), load_model(folder, weights=False, seed=cfg.seed)
    extractors = [ColorHistogram(model.mean, model.std, cfg.color_bins), ClipFeatures(random.module, "random_"),
                  GreyStructure(model.mean, model.std)]
    manifest = read_manifest(shards)
    splits = embed_splits(manifest, extractors, model, cfg, progress=False)
    sets = {k: v for k, v in feature_sets("text").items() if k in SETS}
    sets["grey_structure"] = lambda d: d.features["grey_structure"]
    result = indicator_probes(splits["train"], splits.get("val"), splits["test"], manifest.indicators, sets,
                              cfg.probe, progress=False)
    (city, by_indicator), = result.items()
    return {"city": city, "tiles": {k: len(d) for k, d in splits.items()},
            "r2": {ind: {s: {"mlp": r["mlp"]["r2"], "mlp_std": r["mlp"]["r2_std"], "ridge": r["ridge"]["r2"],
                             "n_test": r["n_test"]} for s, r in sets_.items()}
                   for ind, sets_ in by_indicator.items()}}


def table(results: dict[str, dict]) -> str:
    levels = list(results)
    lines = ["| indicator | features | " + " | ".join(levels) + " |", "|---|---|" + "---|" * len(levels)]
    first = results[levels[0]]["r2"]
    for ind in first:
        for s in SETS:
            cells = [f"{results[lv]['r2'][ind][s]['mlp']:.3f} ± {results[lv]['r2'][ind][s]['mlp_std']:.3f} "
                     f"(ridge {results[lv]['r2'][ind][s]['ridge']:.3f})" for lv in levels]
            lines.append(f"| {ind} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_probes(args: argparse.Namespace) -> None:
    cfg = EvalConfig(probe=ProbeConfig(seeds=tuple(args.probe_seeds)))
    run = tempfile.mkdtemp(prefix="bench-nuisance-")
    export_checkpoint(run, 1, complete=True)
    folder = list_complete(run)[0].uri
    results = {}
    for level in args.levels:
        shards = prepare_shards(os.path.join(args.out, level), args.tiles, args.size, nuisance=level)
        start = time.perf_counter()
        results[level] = probe_level(shards, folder, cfg)
        results[level]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"bench: {level}: embedded and probed in {results[level]['seconds']} s ({machine_load()})", flush=True)
    print(table(results))
    pop = {lv: results[lv]["r2"]["population"]["color_hist"]["mlp"] for lv in results}
    if "none" in pop:
        print("colour-histogram drop on log population from none: "
              + ", ".join(f"{lv} {pop['none'] - v:+.3f}" for lv, v in pop.items() if lv != "none"))
    with open(os.path.join(args.out, "probes.json"), "w") as f:
        json.dump(results, f, indent=2)


def run_speed(args: argparse.Namespace) -> None:
    print(f"bench: {machine_load()}")
    for level in args.levels:
        best, best_cpu = 0.0, 0.0
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                s = synthesize(out, "Speedton", args.tiles, seed=0, size=args.size, progress=False, nuisance=level)
            best, best_cpu = max(best, s["tiles_per_second"]), max(best_cpu, s["cpu_tiles_per_second"])
        print(f"synth {level}: {args.tiles} tiles of {args.size} px: best {best} tiles/s, {best_cpu} per CPU second")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/nuisance.py", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("probes", "speed"))
    p.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    p.add_argument("--tiles", type=int, default=None, help="tiles (default: 2500 for probes, 500 for speed)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3, help="speed: runs per level (best is kept)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    args.tiles = args.tiles or (2500 if args.what == "probes" else 500)
    os.makedirs(args.out, exist_ok=True)
    (run_probes if args.what == "probes" else run_speed)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
