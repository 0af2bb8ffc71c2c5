"""Eval workers: embedding throughput and publish-to-report lag on a 2,000-tile split, and whether a briefly
pretrained tiny model beats its random-init twin on the population probe.

    .venv/bin/python bench/eval.py throughput     # ~5 min on 2 cores; everything under bench_out/eval/
    .venv/bin/python bench/eval.py signal --train-steps 300

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

signal
- `cityscale train` (configs/train/tiny-cpu.yaml, 2 CPU ranks) for `--train-steps` on the train split, then
  `cityscale eval run` on its last checkpoint with the default probe (3 seeds): test R2 for population of the
  image probe against the random-init and colour-histogram baselines.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import CLI, REPO, machine_load, prepare_shards, run_logged, thread_env  # noqa: E402
from configs.eval import EvalConfig  # noqa: E402
from configs.train import ModelConfig  # noqa: E402
from data_shards.reader import read_manifest  # noqa: E402
from eval.baselines import ClipFeatures, ColorHistogram  # noqa: E402
from data_shards.run_layout import list_complete  # noqa: E402
from eval.checkpoints import fetch, load_model, local_workdir  # noqa: E402
from eval.embed import embed_split  # noqa: E402
from trainer import model as trainer_model  # noqa: E402

OUT = os.path.join(REPO, "bench_out", "eval")
MODEL = "cityscale-nano-32"


def export_checkpoint(run: str, step: int, complete: bool) -> str:
    """A random-init checkpoint in the trainer's layout (the trainer's own export)."""
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
    city = next(iter(report["regression"]))
    pop = report["regression"][city]["population"]
    return {"train_seconds": trained, "report": report_dir, "seeds": report["seeds"],
            "population": {k: {"mlp_r2": v["mlp"]["r2"], "mlp_r2_std": v["mlp"]["r2_std"], "ridge_r2": v["ridge"]["r2"]}
                           for k, v in pop.items()},
            "retrieval_r@5": {e: report["retrieval"][e]["image_to_text"]["r@5"] for e in report["retrieval"]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["throughput", "signal"])
    p.add_argument("--tiles", type=int, default=2500, help="synthetic tiles (about 80%% land in train)")
    p.add_argument("--size", type=int, default=64, help="tile size in px")
    p.add_argument("--repeats", type=int, default=3, help="embedding passes; the best counts")
    p.add_argument("--train-steps", type=int, default=300, help="signal: optimizer steps of the tiny model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="eval config override (EvalConfig keys for signal, WorkerConfig keys for the lag)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"bench: {machine_load()}", flush=True)
    shards = prepare_shards(args.out, args.tiles, args.size)
    if args.what == "throughput":
        result = {"embedding_tiles_per_second": embedding_rates(shards, args.repeats),
                  "publish_to_report": publish_lag(shards, args.out, args.set)}
    else:
        result = signal_run(shards, args.out, args.train_steps, args.set)
    result["load_after"] = machine_load()
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.out, f"{args.what}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
