"""Trainer throughput, side by side in one run on the same shards: how close is `cityscale train` to the compute
ceiling, and how does it compare with open_clip_train 3.3?

    .venv/bin/python bench/train_throughput.py [--repeats 2] [--threads 2] [--only ceiling peer x1 x2]
    # ~7 min on 2 idle cores (more on a busy machine); logs, runs and shards under bench_out/train/

Contenders (same model JSON, global batch 64, bf16, AdamW, CLIP InfoNCE loss, gradient clipping at 1.0):

- ceiling: a bare PyTorch loop over in-memory random tensors, one process: no data loading, no framework.
  torch's fused AdamW, as our trainer uses (open_clip_train uses the default per-tensor loop). Two arithmetic
  variants run and the faster one is the ceiling: `autocast` (fp32 weights, bf16 autocast, as
  open_clip_train's `amp_bf16`) and `bf16-master` (bf16 weights, fp32 master weights and AdamW state, as
  DeepSpeed's bf16 mode that our trainer uses).
- open_clip_train: `python -m open_clip_train.main`, single process (its only CPU mode, docs/pitfalls.md),
  `--precision amp_bf16`, in its own venv (bench/peer_venv.sh; webdataset <= 0.2.86, docs/pitfalls.md). The
  model JSON reaches it through open_clip's `local-dir:` model schema. Its per-step `Batch (t)` is parsed.
- cityscale x1 / x2: `cityscale train` with 1 rank (micro batch 64) and 2 ranks (micro batch 32 each, the same
  global batch of 64 and so the same negatives per step), rates from the time stamps in RUN/logs/train.jsonl;
  each in both bf16 modes (--precisions): `bf16` (DeepSpeed's: bf16 weights, fp32 master weights, as the
  `bf16-master` ceiling) and `amp_bf16` (fp32 weights under torch.autocast, as the `autocast` ceiling and
  open_clip_train).

Every contender reads the same shards (built here by `cityscale synth` + `cityscale shards build`, 2,000 train
tiles at 128 px, cached in bench_out/train/shards) except the ceiling. Threads: a one-process contender gets
OMP_NUM_THREADS = MKL_NUM_THREADS = --threads (default: the cores, 2 here); with 2 ranks each rank gets half.
Loader worker processes: 1 per process (torch runs them on one thread).

Figures. Each contender's wall seconds per optimizer step (end to end: data wait included) are collected, the
first --warmup steps of each run dropped. Rounds interleave the contenders (--repeats). Three statistics: the
mean rate of the contender's best round, and the quiet-step rate (batch over the first-quartile step time of
all rounds; see bench.common.quiet_rate), which is much less sensitive to other processes on a shared machine,
each with ratios against the faster ceiling variant and against open_clip_train; and the per-round ratio: the
median over rounds of the contender's rate over the ceiling's (open_clip_train's) in the same round, which
holds up best when the machine's speed drifts from one minute to the next (the project VM's does, by up to
+-20%). The load average at the start of each contender is printed with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import sys
from dataclasses import dataclass, replace

import open_clip
import torch
from open_clip.loss import ClipLoss

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import REPO, Stopwatch, machine_load, quiet_rate, rate, run_logged, thread_env  # noqa: E402

MODEL = "cityscale-tiny-64"  # configs/models/cityscale-tiny-64.json: ViT 4 x 256 at 64 px, text 2 x 128
MODELS_DIR = os.path.join(REPO, "configs", "models")
BASE_CONFIG = "configs/train/tiny-cpu.yaml"
CEILING_MODES = ("autocast", "bf16-master")
PEER_STEP = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.eE+-]+)/s")


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What every contender shares."""

    out: str        # bench output folder (logs, runs, shards, peer venv)
    shards: str     # shard folder holding manifest.json
    model: str      # a configs/models/*.json stem (the trainer resolves the same name)
    batch: int      # global batch per optimizer step
    warmup: int     # steps dropped before measuring
    steps: int      # steps measured
    threads: int    # torch threads of a one-process contender
    trainer_sets: tuple[str, ...] = ()  # extra `--set k=v` for cityscale train (experiments)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def model_json(self) -> str:
        return os.path.join(MODELS_DIR, f"{self.model}.json")


@dataclass(frozen=True)
class Run:
    """One contender's wall seconds per optimizer step in one round, warm-up steps included."""

    name: str
    step_seconds: tuple[float, ...]
    note: str
    load: float = 0.0  # 1-minute load average when the contender started
    round: int = 0     # which interleaved round it ran in


@dataclass(frozen=True)
class Figure:
    """A contender over all rounds: the best round's mean rate, and the quiet-step rate over all rounds."""

    name: str
    mean: float   # samples/s over the measured steps of the best round
    quiet: float  # samples/s of a first-quartile step over all rounds (what it does when not preempted)
    note: str
    load: float   # load at the start of the best round
    vs_ceiling: float = 0.0  # median over rounds of (rate / the faster ceiling's rate in the same round)
    vs_peer: float = 0.0     # median over rounds of (rate / open_clip_train's rate in the same round)


# ----------------------------------------------------------------------------- shards

def prepare_shards(out: str, tiles: int, seed: int) -> str:
    """Synthesise a city and build its shards with the project's own tools, once (reused while the manifest is)."""
    shards, synth = os.path.join(out, "shards"), os.path.join(out, "synth")
    stamp = {"tiles": tiles, "seed": seed, "image_size": 128, "max_samples": 256}
    stamp_path = os.path.join(out, "shards.stamp.json")
    if os.path.exists(os.path.join(shards, "manifest.json")) and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return shards
    shutil.rmtree(shards, ignore_errors=True)
    shutil.rmtree(synth, ignore_errors=True)
    cli = [sys.executable, "-m", "launcher.cli"]
    print(f"bench: synthesising {tiles} tiles and building shards in {shards} ...", flush=True)
    run_logged(cli + ["synth", "--out", synth, "--city", "Benchville", "--tiles", str(tiles), "--seed", str(seed),
                      "--size", "128", "--no-progress"], os.path.join(out, "logs", "synth.log"), env=thread_env(2))
    run_logged(cli + ["shards", "build", "--captions", f"{synth}/captions/Benchville_captions.json",
                      "--images", f"{synth}/images", "--indicators", f"{synth}/downstream_task/Benchville.csv",
                      "--caption-source", "synth", "--out", shards, "--image-size", "128", "--max-samples", "256",
                      "--no-progress"], os.path.join(out, "logs", "shards_build.log"), env=thread_env(2))
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return shards


def train_shards(shards: str) -> tuple[list[str], int]:
    """Train shard names and the number of train samples, from the manifest."""
    with open(os.path.join(shards, "manifest.json")) as f:
        manifest = json.load(f)
    names = sorted(s["name"] for s in manifest["shards"] if s["split"] == "train")
    return names, int(manifest["totals"]["train"])


# ----------------------------------------------------------------------------- ceiling

def ceiling_step_times(model_json: str, batch: int, total_steps: int, mode: str) -> list[float]:
    """Seconds of each optimizer step of a bare loop over random in-memory tensors (runs in a child process)."""
    with open(model_json) as f:
        model = open_clip.model.CLIP(**json.load(f))
    params = list(model.parameters())
    size = model.visual.image_size[0]
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(0, model.vocab_size, (batch, model.context_length))
    if mode == "bf16-master":
        master = [p.detach().clone().float().requires_grad_(False) for p in params]
        model.to(torch.bfloat16)
        images, ctx = images.to(torch.bfloat16), contextlib.nullcontext
    else:
        master, ctx = params, lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    opt = torch.optim.AdamW(_decay_groups(model, master), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=True)
    loss_fn, watch, times = ClipLoss(), Stopwatch(), []
    for _ in range(total_steps):
        with ctx():
            img, txt, scale = model(images, texts)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        if mode == "bf16-master":
            for p, m in zip(params, master):
                m.grad = p.grad.float()
                p.grad = None
        torch.nn.utils.clip_grad_norm_(master, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if mode == "bf16-master":
            with torch.no_grad():
                for p, m in zip(params, master):
                    p.copy_(m)
        times.append(watch.lap())
    return times


def _decay_groups(model, tensors: list) -> list[dict]:
    """AdamW groups as in open_clip_train and our trainer: no weight decay on gains, biases and logit scale."""
    names = [n for n, _ in model.named_parameters()]
    no_decay = [t for n, t in zip(names, tensors) if t.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n]
    ids = {id(t) for t in no_decay}
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": [t for t in tensors if id(t) not in ids], "weight_decay": 0.1}]


def run_ceiling(setup: Setup, mode: str) -> Run:
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "ceiling", "--ceiling-mode", mode,
           "--model", setup.model, "--batch", str(setup.batch), "--warmup", str(setup.warmup),
           "--steps", str(setup.steps), "--threads", str(setup.threads)]
    text = run_logged(cmd, os.path.join(setup.out, "logs", f"ceiling-{mode}.log"), env=thread_env(setup.threads))
    times = json.loads(text.strip().splitlines()[-1])["step_seconds"]
    return Run(f"ceiling ({mode})", tuple(times), f"bare loop, random tensors, {setup.threads} thread(s)")


# ----------------------------------------------------------------------------- open_clip_train

def peer_command(setup: Setup, python: str, model_dir: str, logs: str) -> list[str]:
    """The open_clip_train 3.3 command line: same model, shards, batch, optimizer; single process on CPU."""
    names, _ = train_shards(setup.shards)
    last = int(names[-1].split("-")[1].split(".")[0])
    return [python, "-m", "open_clip_train.main", "--model", f"local-dir:{model_dir}",
            "--dataset-type", "webdataset", "--train-data", f"{setup.shards}/train-{{000000..{last:06d}}}.tar",
            "--train-num-samples", str(setup.batch * setup.total_steps), "--batch-size", str(setup.batch),
            "--workers", "1", "--device", "cpu", "--precision", "amp_bf16", "--epochs", "1",
            "--lr", "5e-4", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--wd", "0.1",
            "--warmup", "2", "--grad-clip-norm", "1.0", "--log-every-n-steps", "1", "--save-frequency", "0",
            "--seed", "0", "--logs", logs, "--name", "peer"]


def peer_step_seconds(log_text: str, batch: int) -> list[float]:
    """Per-step wall seconds from open_clip_train's `Batch (t): avg, N/s` lines (N = batch / last step's time)."""
    return [batch / float(rate) for rate in PEER_STEP.findall(log_text)]


def run_peer(setup: Setup, venv: str) -> Run:
    run_logged(["bash", os.path.join(REPO, "bench", "peer_venv.sh"), venv],
               os.path.join(setup.out, "logs", "peer_venv.log"), env=dict(os.environ), timeout=1800)
    model_dir, logs = os.path.join(setup.out, "peer-model"), os.path.join(setup.out, "peer-logs")
    os.makedirs(model_dir, exist_ok=True)
    with open(setup.model_json) as f, open(os.path.join(model_dir, "open_clip_config.json"), "w") as g:
        json.dump({"model_cfg": json.load(f), "preprocess_cfg": {}}, g, indent=2)
    shutil.rmtree(logs, ignore_errors=True)  # open_clip_train refuses to reuse an experiment name
    cmd = peer_command(setup, os.path.join(venv, "bin", "python"), model_dir, logs)
    text = run_logged(cmd, os.path.join(setup.out, "logs", "open_clip_train.log"), env=thread_env(setup.threads))
    times = peer_step_seconds(text, setup.batch)
    if len(times) != setup.total_steps:
        sys.exit(f"bench: expected {setup.total_steps} step lines from open_clip_train, found {len(times)}")
    return Run("open_clip_train 3.3", tuple(times), f"amp_bf16, 1 process, 1 loader worker, {setup.threads} thread(s)")


# ----------------------------------------------------------------------------- cityscale train

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cityscale_command(setup: Setup, nproc: int, run_dir: str, precision: str) -> list[str]:
    sets = [f"model.name={setup.model}", f"deepspeed.precision={precision}", f"batch.global_batch={setup.batch}",
            f"batch.micro_batch={setup.batch // nproc}", "data.workers=1", "checkpoint.every_steps=0",
            "schedule.warmup_steps=2", "metrics.progress=false", f"metrics.port_base={_free_port()}",
            *setup.trainer_sets]
    cmd = [sys.executable, "-m", "launcher.cli", "train", "--config", BASE_CONFIG, "--shards", setup.shards,
           "--run", run_dir, "--steps", str(setup.total_steps), "--nproc", str(nproc)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def jsonl_step_seconds(lines: list[str]) -> list[float]:
    """Per-step wall seconds from RUN/logs/train.jsonl: differences of the records' time stamps (a record is
    written when its step ends), the first step from its own `step_seconds`."""
    records = [json.loads(line) for line in lines if line.strip()]
    stamps = [r["time"] for r in records]
    return [records[0]["step_seconds"]] + [b - a for a, b in zip(stamps, stamps[1:])] if records else []


def run_cityscale(setup: Setup, nproc: int, precision: str) -> Run:
    run_dir = os.path.join(setup.out, f"run-x{nproc}-{precision}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no resume from an earlier bench
    threads = max(1, setup.threads // nproc)
    run_logged(cityscale_command(setup, nproc, run_dir, precision),
               os.path.join(setup.out, "logs", f"cityscale-x{nproc}-{precision}.log"), env=thread_env(threads))
    with open(os.path.join(run_dir, "logs", "train.jsonl")) as f:
        times = jsonl_step_seconds(f.readlines())
    if len(times) != setup.total_steps:
        sys.exit(f"bench: expected {setup.total_steps} records in {run_dir}/logs/train.jsonl, found {len(times)}")
    extra = "".join(f", {s}" for s in setup.trainer_sets)
    stage = "ZeRO-2" if nproc > 1 else "stage 0 on one rank"
    return Run(f"cityscale train x{nproc} {precision}", tuple(times), f"{nproc} rank(s) x micro "
               f"{setup.batch // nproc}, {BASE_CONFIG} ({stage}){extra}, 1 loader worker/rank, "
               f"{threads} thread(s)/rank")


# ----------------------------------------------------------------------------- report

def summarize(runs: list[Run], batch: int, warmup: int) -> list[Figure]:
    """One figure per contender, in order of first appearance (warm-up steps of every round dropped)."""
    def round_rate(r: Run) -> float:
        return rate(r.step_seconds[warmup:], batch)

    ceilings = {}  # round -> the faster ceiling variant's rate
    for r in runs:
        if r.name.startswith("ceiling"):
            ceilings[r.round] = max(ceilings.get(r.round, 0.0), round_rate(r))
    peers = {r.round: round_rate(r) for r in runs if r.name.startswith("open_clip_train")}

    def paired(mine: list[Run], against: dict[int, float]) -> float:
        ratios = [round_rate(r) / against[r.round] for r in mine if r.round in against]
        return statistics.median(ratios) if ratios else 0.0

    figures = []
    for name in dict.fromkeys(r.name for r in runs):
        mine = [r for r in runs if r.name == name]
        best = max(mine, key=round_rate)
        pooled = [t for r in mine for t in r.step_seconds[warmup:]]
        figures.append(Figure(name=name, mean=round_rate(best), quiet=quiet_rate(pooled, batch), note=best.note,
                              load=best.load, vs_ceiling=paired(mine, ceilings), vs_peer=paired(mine, peers)))
    return figures


def table(figures: list[Figure]) -> str:
    """Markdown table; ratios against the faster ceiling variant and against open_clip_train, per statistic."""
    ceilings = [f for f in figures if f.name.startswith("ceiling")]
    peer = next((f for f in figures if f.name.startswith("open_clip_train")), None)

    def ratios(value: float, stat: str) -> str:
        top = max((getattr(c, stat) for c in ceilings), default=None)
        against = [f"{value / top:.2f}" if top else "-", f"{value / getattr(peer, stat):.2f}" if peer else "-"]
        return " | ".join(against)

    lines = ["| contender | samples/s | x ceiling | x open_clip_train | quiet-step samples/s | x ceiling | "
             "x open_clip_train | per-round x ceiling | per-round x open_clip_train | load at start | setup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for f in figures:
        lines.append(f"| {f.name} | {f.mean:.1f} | {ratios(f.mean, 'mean')} | {f.quiet:.1f} | "
                     f"{ratios(f.quiet, 'quiet')} | {f.vs_ceiling:.2f} | {f.vs_peer:.2f} | {f.load:.2f} | {f.note} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "bench_out", "train"), help="output folder")
    p.add_argument("--model", default=MODEL, help="a configs/models/*.json stem, for every contender")
    p.add_argument("--batch", type=int, default=64, help="global batch per optimizer step")
    p.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    p.add_argument("--steps", type=int, default=15, help="steps measured")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of a one-process run")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds over all contenders (interleaved); each contender's best round is reported")
    p.add_argument("--tiles", type=int, default=2500, help="synthetic tiles (~80%% land in train)")
    p.add_argument("--trainer-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for cityscale train, e.g. deepspeed.zero_stage=1 (repeatable)")
    p.add_argument("--peer-venv", default=os.path.join(REPO, "bench_out", "peer-venv"))
    p.add_argument("--precisions", nargs="+", choices=["bf16", "amp_bf16"], default=["bf16", "amp_bf16"],
                   help="deepspeed.precision values each cityscale contender runs with")
    p.add_argument("--only", nargs="+", choices=["ceiling", "peer", "x1", "x2"],
                   default=["ceiling", "peer", "x1", "x2"], help="contenders to run")
    p.add_argument("--role", choices=["ceiling"], help=argparse.SUPPRESS)  # child process of the ceiling
    p.add_argument("--ceiling-mode", choices=CEILING_MODES, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "ceiling":
        torch.set_num_threads(args.threads)
        times = ceiling_step_times(os.path.join(MODELS_DIR, f"{args.model}.json"), args.batch,
                                   args.warmup + args.steps, args.ceiling_mode)
        print(json.dumps({"step_seconds": times}))
        return 0
    print(f"bench: start, {machine_load()}", flush=True)
    out = os.path.abspath(args.out)
    shards = prepare_shards(out, args.tiles, seed=0)
    _, n_train = train_shards(shards)
    setup = Setup(out=out, shards=shards, model=args.model, batch=args.batch,
                  warmup=args.warmup, steps=args.steps, threads=args.threads,
                  trainer_sets=tuple(args.trainer_set))
    if not os.path.exists(setup.model_json):
        sys.exit(f"bench: --model {args.model}: no {setup.model_json}; pick a configs/models/*.json stem")
    if n_train < setup.batch * setup.total_steps:
        sys.exit(f"bench: {n_train} train samples < {setup.total_steps} steps x {setup.batch}: raise --tiles")
    runs = {"ceiling": lambda: [run_ceiling(setup, m) for m in CEILING_MODES],
            "peer": lambda: [run_peer(setup, os.path.abspath(args.peer_venv))],
            "x1": lambda: [run_cityscale(setup, 1, p) for p in args.precisions],
            "x2": lambda: [run_cityscale(setup, 2, p) for p in args.precisions]}
    done: list[Run] = []
    for round_ in range(1, args.repeats + 1):  # rounds interleave the contenders, so load drifts hit all alike
        for name in args.only:
            print(f"bench: round {round_}/{args.repeats}, running {name} ({machine_load()}) ...", flush=True)
            load = os.getloadavg()[0]
            for r in runs[name]():
                done.append(replace(r, load=load, round=round_))
                print(f"bench:   {r.name}: {rate(r.step_seconds[setup.warmup:], setup.batch):.1f} samples/s",
                      flush=True)
    print(f"\nmodel {os.path.basename(setup.model_json)}, global batch {setup.batch}, bf16, "
          f"{setup.steps} steps measured after {setup.warmup} warm-up, {args.repeats} round(s); "
          f"shards {shards}\n")
    print(table(summarize(done, setup.batch, setup.warmup)))
    print(f"\nsamples/s: mean over the measured steps of the contender's best round. quiet-step samples/s: batch "
          f"over the first-quartile step time of all rounds. per-round: median over rounds of the contender's rate "
          f"over the faster ceiling's (open_clip_train's) in the same round. bench: end, {machine_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
