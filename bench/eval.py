"""Eval workers: embedding throughput and publish-to-report lag on a 2,000-tile split, and whether a briefly
pretrained tiny model beats its random-init twin on the population probe.

    .venv/bin/python bench/eval.py throughput     # ~5 min on 2 cores; everything under bench_out/eval/
    .venv/bin/python bench/eval.py signal --train-steps 300
    .venv/bin/python bench/eval.py cost           # ~10 min: what the baselines and the split gap add to a report

Data: one synthetic city (`cityscale synth`, 2,500 tiles of 64 px, seed 0) built into shards with the default
80/10/10 spatial split (about 2,000 train tiles), cached in bench_out/eval/shards.

throughput
- embedding: `eval.embed.embed_split` over the train split (about 2,000 tiles) as a report runs it (checkpoint
  towers + random-init towers + colour histograms, one decode per tile) and with the checkpoint towers only;
  tiles/s, best of `--repeats`, reader in-process (`loader_workers=0`) and with 1 worker process; in-process
  also as tiles per CPU second of this process (steadier than wall time on a shared machine).
- lag: a worker (`python -m eval.worker`, default config unless `--set`) watches a run folder; once it is
  idle, a checkpoint is published (COMPLETE marker written); the lag is the report's `lag_seconds` (marker
  time to report written), split into embedding and probe time from the report's `timing`.

cost
- two checkpoints (random init, seeds 1 and 2) evaluated one after the other in one process, as a watcher does,
  with the default probe (3 seeds) and an in-process reader: (a) the report as it was before the SimCLR,
  caption and split-gap additions (5 feature sets, no memo) and (b) the defaults with a SimCLR twin (another
  random-init export) and the watcher's memo; a fresh sentence cache per variant, so the first report pays
  the caption embeddings and the second reads them back. Per report: wall and CPU seconds, split into
  embedding, caption features and probes, and the probe results the memo served.

signal
- `cityscale train` (configs/train/tiny-cpu.yaml, 2 CPU ranks) for `--train-steps` on the train split, then
  `cityscale eval run` on its last checkpoint with the default probe (3 seeds): test R2 for population of every
  feature set (the image probe and the baselines), the margin over the best baseline and the spatial-vs-random
  split gap per indicator, and the report's timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import CLI, REPO, machine_load, prepare_shards, run_logged, thread_env  # noqa: E402
from configs.eval import EvalConfig  # noqa: E402
from configs.loader import load  # noqa: E402
from configs.train import ModelConfig  # noqa: E402
from data_shards.reader import read_manifest  # noqa: E402
from data_shards.run_layout import list_complete  # noqa: E402
from eval.baselines import ClipFeatures, ColorHistogram  # noqa: E402
from eval.checkpoints import fetch, load_model, local_workdir  # noqa: E402
from eval.embed import embed_split  # noqa: E402
from eval.memo import EvalMemo  # noqa: E402
from eval.report_schema import gap_rows, margin_rows, probe_rows, recall  # noqa: E402
from eval.run import evaluate  # noqa: E402
from trainer import model as trainer_model  # noqa: E402

OUT = os.path.join(REPO, "bench_out", "eval")
MODEL = "cityscale-nano-32"


def export_checkpoint(run: str, step: int, complete: bool, seed: int = 0) -> str:
    """A random-init checkpoint in the trainer's layout (the trainer's own export)."""
    torch.manual_seed(seed)
    built = trainer_model.build(ModelConfig(name=MODEL), None, {})
    folder = os.path.join(run, "checkpoints", f"step_{step}")
    os.makedirs(folder, exist_ok=True)
    trainer_model.export(built.module.state_dict(), built, folder)
    if complete:
        publish(folder, step)
    return folder


def publish(folder: str, step: int) -> None:
    with open(os.path.join(folder, "COMPLETE"), "w") as f:
        json.dump({"step": step, "world_size": 1}, f)


# ----------------------------------------------------------------------------- throughput

def embedding_rates(shards: str, repeats: int) -> dict[str, float]:
    """Best tiles/s of the train-split embedding pass, all extractors vs checkpoint towers only."""
    run = tempfile.mkdtemp(prefix="bench-eval-")
    export_checkpoint(run, 1, complete=True)
    manifest = read_manifest(shards)
    rates = {}
    with local_workdir() as folder:
        fetch(list_complete(run)[0], folder)
        model, random = load_model(folder), load_model(folder, weights=False)
        report_set = [ClipFeatures(model.module), ClipFeatures(random.module, "random_"),
                      ColorHistogram(model.mean, model.std, 8)]
        for workers in (0, 1):
            cfg = EvalConfig(loader_workers=workers)
            for label, extractors in (("report extractors", report_set), ("checkpoint only", report_set[:1])):
                best, best_cpu = 0.0, 0.0
                for _ in range(repeats):
                    cpu = time.process_time()
                    data = embed_split(manifest, "train", extractors, model, cfg, progress=False)
                    best = max(best, len(data) / data.seconds)
                    best_cpu = max(best_cpu, len(data) / (time.process_time() - cpu))
                rates[f"{label}, loader_workers={workers} ({len(data)} tiles)"] = best
                if workers == 0:  # CPU time of this process covers all the work only without worker processes
                    rates[f"{label}, per CPU second"] = best_cpu
    shutil.rmtree(run, ignore_errors=True)
    return rates


def publish_lag(shards: str, out: str, overrides: list[str]) -> dict:
    """Start a watching worker, publish a checkpoint once it is idle, read the lag from the report."""
    run = os.path.join(out, "lag-run")
    shutil.rmtree(run, ignore_errors=True)
    folder = export_checkpoint(run, 100, complete=False)
    log_path = os.path.join(out, "logs", "worker.log")
    cmd = [sys.executable, "-m", "eval.worker", "--run", run, "--shards", shards, "--no-progress",
           "--set", "poll_seconds=1", *[a for s in overrides for a in ("--set", s)]]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=thread_env(2))
    try:
        while "watching" not in open(log_path).read():
            assert proc.poll() is None, open(log_path).read()[-2000:]
            time.sleep(0.5)
        time.sleep(2)  # idle: at least one empty poll done
        publish(folder, 100)
        report_path = os.path.join(run, "eval", "step_100", "report.json")
        while not os.path.exists(report_path):
            assert proc.poll() is None, open(log_path).read()[-2000:]
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait()
    with open(report_path) as f:
        report = json.load(f)
    timing = report["timing"]
    return {"lag_seconds": report["lag_seconds"], "eval_seconds": timing["total_seconds"],
            "embed_seconds": timing["embed_seconds"], "probe_seconds": timing["probe_seconds"],
            "tiles": report["data"]["tiles"], "seeds": report["seeds"], "status": report["status"]}


# ----------------------------------------------------------------------------- cost

def _timed_reports(run: str, shards: str, cfg: EvalConfig, memo: EvalMemo | None) -> list[dict]:
    rows = []
    for ref in list_complete(run):
        wall, cpu, hits = time.time(), time.process_time(), memo.hits if memo else 0
        report, _ = evaluate(ref, shards, cfg, progress=False, memo=memo)
        timing = report["timing"]
        rows.append({"checkpoint": ref.name, "status": report["status"], "wall_seconds": time.time() - wall,
                     "cpu_seconds": time.process_time() - cpu, "embed_seconds": sum(timing["embed_seconds"].values()),
                     "caption_features_seconds": timing.get("caption_features_seconds", 0.0),
                     "probe_seconds": timing["probe_seconds"], "memo_hits": (memo.hits if memo else 0) - hits,
                     "feature_sets": sorted({r.features for r in probe_rows(report)}),
                     "split_gaps": len(list(gap_rows(report)))})
    return rows


def report_cost(shards: str, out: str, overrides: list[str]) -> dict:
    """Wall/CPU time of two consecutive reports before and after the baselines and split gap were added."""
    run, twin = os.path.join(out, "cost-run"), os.path.join(out, "cost-twin")
    for folder in (run, twin):
        shutil.rmtree(folder, ignore_errors=True)
    for step, seed in ((100, 1), (200, 2)):
        export_checkpoint(run, step, complete=True, seed=seed)
    export_checkpoint(twin, 50, complete=True, seed=3)
    variants = {"before: 5 feature sets, no memo": (["baselines.caption=false", "split_gap.enabled=false"], False),
                "now: defaults + SimCLR twin, memo": ([f"baselines.simclr_checkpoint={twin}"], True)}
    result = {}
    for label, (extra, use_memo) in variants.items():
        cache = tempfile.mkdtemp(prefix="bench-eval-cache-")
        cfg = load(EvalConfig, None, ["loader_workers=0", f"baselines.cache_dir={cache}", *extra, *overrides])
        result[label] = _timed_reports(run, shards, cfg, EvalMemo() if use_memo else None)
        shutil.rmtree(cache, ignore_errors=True)
        print(json.dumps({label: result[label]}), flush=True)
    return result


# ----------------------------------------------------------------------------- signal

def signal_run(shards: str, out: str, steps: int, overrides: list[str]) -> dict:
    """Train briefly, evaluate the last checkpoint, return population R2 by feature set."""
    run = os.path.join(out, f"signal-run-{steps}")
    shutil.rmtree(run, ignore_errors=True)
    started = time.time()
    run_logged(CLI + ["train", "--config", "configs/train/tiny-cpu.yaml", "--shards", shards, "--run", run,
                      "--steps", str(steps), "--nproc", "2", "--set", "metrics.port_base=0",
                      "--set", "metrics.progress=false", "--set", f"schedule.warmup_steps={max(1, steps // 10)}"],
               os.path.join(out, "logs", "signal-train.log"), env=thread_env(2), timeout=7200)
    trained = time.time() - started
    report_dir = os.path.join(out, f"signal-report-{steps}")
    run_logged(CLI + ["eval", "run", "--checkpoint", os.path.join(run, "checkpoints", f"step_{steps}"),
                      "--shards", shards, "--out", report_dir, "--no-progress",
                      *[a for s in overrides for a in ("--set", s)]],
               os.path.join(out, "logs", "signal-eval.log"), env=thread_env(2), timeout=7200)
    with open(os.path.join(report_dir, "report.json")) as f:
        report = json.load(f)
    pop = [r for r in probe_rows(report) if r.indicator == "population"]
    return {"train_seconds": trained, "report": report_dir, "seeds": report["seeds"],
            "population": {r.features: {"mlp_r2": r.result["mlp"]["r2"], "mlp_r2_std": r.result["mlp"]["r2_std"],
                                        "ridge_r2": r.result["ridge"]["r2"]} for r in pop if r.city == pop[0].city},
            "margin_over_best_baseline": {f"{c}/{i}": {k: m[k] for k in ("best", "margin", "margin_std")}
                                          for c, i, m in margin_rows(report)},
            "split_gap": {f"{c}/{i}": {"gap": g["gap"], "gap_std": g["gap_std"]} for c, i, g in gap_rows(report)},
            "timing": report["timing"],
            "retrieval_r@5": {e: recall(report, e, "image_to_text", 5) for e in ("checkpoint", "random_init")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["throughput", "signal", "cost"])
    p.add_argument("--tiles", type=int, default=2500, help="synthetic tiles (about 80%% land in train)")
    p.add_argument("--size", type=int, default=64, help="tile size in px")
    p.add_argument("--repeats", type=int, default=3, help="embedding passes; the best counts")
    p.add_argument("--train-steps", type=int, default=300, help="signal: optimizer steps of the tiny model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="eval config override (EvalConfig keys for signal and cost, WorkerConfig keys for the lag)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"bench: {machine_load()}", flush=True)
    shards = prepare_shards(args.out, args.tiles, args.size)
    if args.what == "throughput":
        result = {"embedding_tiles_per_second": embedding_rates(shards, args.repeats),
                  "publish_to_report": publish_lag(shards, args.out, args.set)}
    elif args.what == "cost":
        result = report_cost(shards, args.out, args.set)
    else:
        result = signal_run(shards, args.out, args.train_steps, args.set)
    result["load_after"] = machine_load()
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.out, f"{args.what}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
