"""The yardstick: does a recipe beat its controls, over training seeds, on a city where colour does not give the
answer away? And does a checkpoint trained on one city carry to another?

    .venv/bin/python bench/yardstick.py seeds    [--seeds 3 --steps 300 --nuisance realistic]
    .venv/bin/python bench/yardstick.py transfer [--seeds 3 --steps 300 --nuisance realistic]

seeds: one synthetic city (`cityscale synth --nuisance ...`, 2,500 tiles of 64 px, seed 0) built into shards
with the default 80/10/10 spatial-block split. For each training seed k: the recipe (`--recipe`, default the
shipped tiny CPU CLIP, configs/train/tiny-cpu.yaml, `--steps` steps, run.seed=k) and its image-only control
(`--control`, the SimCLR twin: same model, steps, data and seed), both with `cityscale train --nproc 2`; then
`cityscale eval run` on the recipe's last checkpoint with the twin as the report's SimCLR baseline. Every report
carries the random-init twin, colour histograms and the caption-only MiniLM probe beside them.
The table: test R2 (MLP probe, mean over the probe seeds) per indicator and feature set, mean +- std over the
training seeds; the margin of the checkpoint's image features over the best baseline of each seed; a paired
sign test over the seeds (one-sided: the recipe is better) and a paired bootstrap p-value that resamples the
test split's spatial blocks (the same resample for both sides and every seed; p = share of resamples whose mean
margin is <= 0).

transfer: two synthetic cities A and B (names `--city-a`, `--city-b`: different layouts, district palettes and
seasons). For each seed the recipe is trained on A and on B (B's runs are the seeds bench's, reused); both
checkpoints are probed on B's shards (probe fitted on B's train split, scored on B's test split): A->B
against B->B, per indicator, mean +- std over seeds.

Results go to `--out` (default bench_out/yardstick): runs, reports, `seeds.md`/`transfer.md` and JSON. Reruns
reuse finished runs and reports (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import CLI, machine_load, prepare_shards, run_logged, thread_env  # noqa: E402
from data_shards.splits import block_of  # noqa: E402

OUT = "bench_out/yardstick"
INDICATORS = ("population", "carbon", "gdp")
HEADLINE = "image"
BLOCK = 8  # tiles per side of a bootstrap block: the shard builder's default spatial block (split.block_size)


# ----------------------------------------------------------------------------- runs

def train(config: str, shards: str, run: str, steps: int, seed: int, log: str) -> str:
    """`cityscale train` on 2 CPU ranks unless the run already has its last checkpoint; returns that folder."""
    final = os.path.join(run, "checkpoints", f"step_{steps}")
    if not os.path.exists(os.path.join(final, "COMPLETE")):
        run_logged(CLI + ["train", "--config", config, "--shards", shards, "--run", run, "--steps", str(steps),
                          "--nproc", "2", "--set", f"run.seed={seed}", "--set", "metrics.port_base=0",
                          "--set", "metrics.progress=false", "--set", f"schedule.warmup_steps={max(1, steps // 10)}",
                          "--set", f"checkpoint.every_steps={steps}"], log, env=thread_env(2), timeout=7200)
    return final


def evaluate(checkpoint: str, shards: str, out: str, log: str, overrides: list[str]) -> dict:
    """`cityscale eval run` unless its report.json exists; returns the report."""
    path = os.path.join(out, "report.json")
    if not os.path.exists(path):
        run_logged(CLI + ["eval", "run", "--checkpoint", checkpoint, "--shards", shards, "--out", out,
                          "--no-progress", *[a for s in overrides for a in ("--set", s)]], log, env=thread_env(2),
                   timeout=7200)
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- statistics

def sign_test_p(diffs: list[float]) -> float:
    """One-sided exact sign test: P(at least this many positive differences | no effect); ties count half."""
    n = len(diffs)
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs)
    k = math.ceil(wins)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


def r2(true: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((true - true.mean()) ** 2).sum())
    return 1.0 - float(((true - pred) ** 2).sum()) / ss if ss > 0 else float("nan")


def block_bootstrap_p(pairs: list[dict], resamples: int, seed: int = 0) -> float:
    """p of "mean margin <= 0" under a paired bootstrap over the test split's spatial blocks. `pairs` holds,
    per training seed, the test tiles' true values, both sides' predictions and the tiles' blocks (aligned)."""
    if not pairs:
        return float("nan")
    blocks = sorted(set.intersection(*[set(p["blocks"]) for p in pairs]))
    rows = [{b: np.flatnonzero(np.asarray(p["blocks"]) == b) for b in blocks} for p in pairs]
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(resamples):
        pick = rng.choice(len(blocks), size=len(blocks), replace=True)
        margins = []
        for p, by_block in zip(pairs, rows):
            idx = np.concatenate([by_block[blocks[i]] for i in pick])
            margins.append(r2(p["true"][idx], p["a"][idx]) - r2(p["true"][idx], p["b"][idx]))
        worse += float(np.mean(margins)) <= 0.0
    return (worse + 1) / (resamples + 1)


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


# ----------------------------------------------------------------------------- reading reports

def probe_sets(report: dict, indicator: str) -> dict[str, dict]:
    """Feature set -> probe result of the report's (single) city for one indicator."""
    regression = report.get("regression") or {}
    if len(regression) != 1:
        raise SystemExit(f"bench: expected one city in the report, found {sorted(regression)}")
    return next(iter(regression.values())).get(indicator, {})


def predictions(result: dict, block: int) -> dict | None:
    pred = result.get("predictions")
    if not pred:
        return None
    return {"true": np.asarray(pred["true_log"]), "pred": np.asarray(pred["mlp_log"]), "keys": pred["keys"],
            "blocks": ["{}_{}".format(*block_of(int(x), int(y), block)) for x, y in zip(pred["x"], pred["y"])]}


def best_of(report: dict, indicator: str) -> str:
    """The report's own best baseline of the (single) city for one indicator (eval/report_schema.py Margin)."""
    margins = next(iter(report["baselines"]["margins"].values()))
    return margins[indicator]["best"]


def compare(reports: list[dict], indicator: str, other: str | None, resamples: int) -> dict | None:
    """The headline image features against `other` (None: each report's best baseline) over the training seeds:
    per-seed margins (mean R2 over probe seeds), sign test, paired block bootstrap."""
    margins, names, pairs = [], [], []
    for report in reports:
        sets = probe_sets(report, indicator)
        name = other or best_of(report, indicator)
        if HEADLINE not in sets or name not in sets or "mlp" not in sets[name]:
            return None
        margins.append(sets[HEADLINE]["mlp"]["r2"] - sets[name]["mlp"]["r2"])
        names.append(name)
        a, b = predictions(sets[HEADLINE], BLOCK), predictions(sets[name], BLOCK)
        if a and b and a["keys"] == b["keys"]:
            pairs.append({"true": a["true"], "a": a["pred"], "b": b["pred"], "blocks": a["blocks"]})
    return {"margin": margins, "against": names, "sign_p": sign_test_p(margins),
            "bootstrap_p": block_bootstrap_p(pairs, resamples) if len(pairs) == len(margins) else None}


COMPARISONS = (None, "color_hist", "random_init", "simclr", "caption_minilm")


def seed_table(reports: list[dict], resamples: int) -> dict:
    """indicator -> {"sets": {feature set: [R2 per seed]}, "vs": {comparison: compare(...)}}."""
    out = {}
    for ind in INDICATORS:
        per_set: dict[str, list[float]] = {}
        for report in reports:
            for name, res in probe_sets(report, ind).items():
                if "mlp" in res:
                    per_set.setdefault(name, []).append(res["mlp"]["r2"])
        if HEADLINE not in per_set:
            continue
        vs = {other or "best baseline": compare(reports, ind, other, resamples) for other in COMPARISONS}
        out[ind] = {"sets": per_set, "vs": {k: v for k, v in vs.items() if v is not None}}
    return out


def seeds_markdown(table: dict, meta: dict) -> str:
    order = ("image", "text", "image+text", "random_init", "color_hist", "simclr", "caption_minilm")
    names = [n for n in order if any(n in row["sets"] for row in table.values())]
    lines = [f"test R2 (MLP probe, mean over probe seeds), mean ± std over {meta['seeds']} training seeds; "
             f"{meta['what']}", "", "| indicator | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for ind, row in table.items():
        cells = ["{:.3f} ± {:.3f}".format(*mean_std(row["sets"][n])) if n in row["sets"] else "-" for n in names]
        lines.append(f"| {ind} | " + " | ".join(cells) + " |")
    lines += ["", "image features minus the other, per training seed (mean ± std); one-sided p-values that the "
              "image features are not better", "", "| indicator | against | margin | per seed | sign test p | "
              "block bootstrap p |", "|---|---|---|---|---|---|"]
    for ind, row in table.items():
        for label, c in row["vs"].items():
            m, s = mean_std(c["margin"])
            against = label if label != "best baseline" else f"best baseline ({', '.join(sorted(set(c['against'])))})"
            boot = f"{c['bootstrap_p']:.4f}" if c["bootstrap_p"] is not None else "-"
            seeds = ", ".join(f"{v:+.3f}" for v in c["margin"])
            lines.append(f"| {ind} | {against} | **{m:+.3f} ± {s:.3f}** | {seeds} | {c['sign_p']:.3f} | {boot} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the two benches

def seeds_bench(args: argparse.Namespace) -> dict:
    shards = prepare_shards(os.path.join(args.out, "data"), args.tiles, args.size, nuisance=args.nuisance)
    reports = []
    for k in range(args.seeds):
        logs = os.path.join(args.out, "logs")
        print(f"bench: seed {k}: recipe, control, eval ({machine_load()})", flush=True)
        recipe = train(args.recipe, shards, os.path.join(args.out, "runs", f"recipe-s{k}"), args.steps, k,
                       os.path.join(logs, f"recipe-s{k}.log"))
        control = train(args.control, shards, os.path.join(args.out, "runs", f"control-s{k}"), args.steps, k,
                        os.path.join(logs, f"control-s{k}.log"))
        if args.train_only:
            continue
        reports.append(evaluate(recipe, shards, os.path.join(args.out, "reports", f"s{k}"),
                                os.path.join(logs, f"eval-s{k}.log"),
                                [f"baselines.simclr_checkpoint={control}", "probe.keep_predictions=all", *args.set]))
    if args.train_only:
        return {"markdown": f"trained {args.seeds} seeds of the recipe and the control\n"}
    table = seed_table(reports, args.bootstrap)
    meta = {"seeds": args.seeds, "what": f"{args.recipe} vs controls, {args.steps} steps, {args.tiles} tiles of "
                                        f"{args.size} px, nuisance {args.nuisance}, spatial-block test split"}
    return {"meta": meta, "table": table, "markdown": seeds_markdown(table, meta)}


def transfer_bench(args: argparse.Namespace) -> dict:
    """A->B against B->B; B is the seeds bench's city and its recipe runs are reused (same data, same runs)."""
    target = prepare_shards(os.path.join(args.out, "data"), args.tiles, args.size, city=args.city_b,
                            nuisance=args.nuisance)
    source = prepare_shards(os.path.join(args.out, f"data-{args.city_a.lower()}"), args.tiles, args.size,
                            city=args.city_a, nuisance=args.nuisance)
    rows: dict[str, dict[str, list[float]]] = {}
    for k in range(args.seeds):
        runs = {args.city_a: (source, f"recipe-{args.city_a.lower()}-s{k}"), args.city_b: (target, f"recipe-s{k}")}
        for city, (shards, tag) in runs.items():
            ckpt = train(args.recipe, shards, os.path.join(args.out, "runs", tag), args.steps, k,
                         os.path.join(args.out, "logs", f"{tag}.log"))
            if args.train_only:
                continue
            report = evaluate(ckpt, target, os.path.join(args.out, "reports", f"{tag}-on-{args.city_b.lower()}"),
                              os.path.join(args.out, "logs", f"eval-{tag}-on-{args.city_b.lower()}.log"),
                              ["split_gap.enabled=false", "baselines.caption=false", *args.set])
            for ind in INDICATORS:
                sets = probe_sets(report, ind)
                if HEADLINE in sets:
                    rows.setdefault(ind, {}).setdefault(f"{city}->{args.city_b}", []).append(
                        sets[HEADLINE]["mlp"]["r2"])
    if args.train_only:
        return {"markdown": f"trained {args.seeds} seeds on {args.city_a} and {args.city_b}\n"}
    cols = [f"{args.city_a}->{args.city_b}", f"{args.city_b}->{args.city_b}"]
    lines = [f"test R2 on {args.city_b} (image features, MLP probe), mean +- std over {args.seeds} training seeds; "
             f"{args.steps} steps, {args.tiles} tiles of {args.size} px per city, nuisance {args.nuisance}", "",
             "| indicator | " + " | ".join(cols) + " | A->B minus B->B |", "|---|---|---|---|"]
    for ind, by in rows.items():
        a, b = mean_std(by[cols[0]]), mean_std(by[cols[1]])
        lines.append(f"| {ind} | {a[0]:.3f} ± {a[1]:.3f} | {b[0]:.3f} ± {b[1]:.3f} | {a[0] - b[0]:+.3f} |")
    return {"rows": rows, "markdown": "\n".join(lines) + "\n"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["seeds", "transfer"])
    p.add_argument("--seeds", type=int, default=3, help="training seeds (0..K-1)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every run")
    p.add_argument("--tiles", type=int, default=2500)
    p.add_argument("--size", type=int, default=64, help="tile size in px")
    p.add_argument("--nuisance", default="realistic", choices=["none", "realistic", "hard"])
    p.add_argument("--recipe", default="configs/train/tiny-cpu.yaml")
    p.add_argument("--control", default="configs/train/simclr-tiny-cpu.yaml")
    p.add_argument("--city-a", default="Trainville")
    p.add_argument("--city-b", default="Evalton")
    p.add_argument("--bootstrap", type=int, default=2000, help="block bootstrap resamples")
    p.add_argument("--train-only", action="store_true", help="train every run, evaluate nothing yet")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="eval config override")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    print(f"bench: {machine_load()}", flush=True)
    result = seeds_bench(args) if args.what == "seeds" else transfer_bench(args)
    result["load_after"] = machine_load()
    print(result["markdown"])
    with open(os.path.join(args.out, f"{args.what}.md"), "w") as f:
        f.write(result["markdown"])
    with open(os.path.join(args.out, f"{args.what}.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
