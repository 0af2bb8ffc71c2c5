"""The trainer's step against a bare PyTorch step, paired in one process: what the step costs beyond the compute.

    .venv/bin/python bench/train_step_pairs.py [--steps 40] [--threads 2]
    # ~2 min on 2 idle cores; needs the shards of bench/train_throughput.py (bench_out/train/shards)

bench/train_throughput.py runs its contenders one after another, and the project VM's speed drifts by more than
the few percent that separate them. Here the contenders take turns step by step in one process over the same
in-memory batches, so drift hits them alike and the ratio of each step to the bare step next to it means
something. No loader runs: what is left is the step itself.

- bare: the model under torch.autocast (bf16), open_clip's ClipLoss, `clip_grad_norm_`, torch's fused AdamW
  (train_throughput.py's `autocast` ceiling);
- cityscale <precision>: the trainer's `Engine` (DeepSpeed on one gloo rank, stage 0), loss and `train_step`, as
  `cityscale train` runs them, for each of --precisions.

Same model JSON (configs/models/cityscale-tiny-64.json), batch 64, AdamW settings and clipping as
train_throughput.py; 4 real batches of the benchmark shards, decoded once and cycled.

Each round also draws one batch from the trainer's loader in this process on one thread (as a DataLoader worker
runs it) and records its CPU time L. On a machine whose cores all run compute threads, the loader takes them
from the compute: torch splits each op evenly between its threads, so while the loader holds one core the
other thread waits at the op's end, and each millisecond of loader CPU lengthens the step by about a
millisecond (bench/train_throughput.py measured 12-16% lost to an L of ~11% of the step on the project VM).
The line "loader bound" is therefore S / (S + L) for the bare step S: about the best fraction of the bare
loop that a trainer with this loader can reach on such a machine, whatever its own step costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from open_clip.loss import ClipLoss

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.*`

from bench.common import REPO  # noqa: E402
from bench.train_throughput import BASE_CONFIG, MODEL, _decay_groups, _free_port  # noqa: E402
from configs.train import load_train_config  # noqa: E402
from data_shards.reader import read_manifest  # noqa: E402
from trainer import engine, model  # noqa: E402
from trainer.accum import train_step  # noqa: E402
from trainer.data import build_stream  # noqa: E402
from trainer.ds_config import deepspeed_config  # noqa: E402
from trainer.loss import build_loss  # noqa: E402

BATCH = 64


def bare_stepper(cfg):
    """One bare autocast step over a batch (fresh model with seed 0)."""
    torch.manual_seed(0)
    module = model.build(cfg.model, None, {}).module
    opt = torch.optim.AdamW(_decay_groups(module, list(module.parameters())), lr=cfg.optim.lr,
                            betas=cfg.optim.betas, eps=cfg.optim.eps, fused=True)
    loss_fn = ClipLoss()

    def step(images: torch.Tensor, texts: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def trainer_stepper(cfg):
    """One trainer step (Engine + loss + train_step) over a batch, as `cityscale train` on one rank."""
    torch.manual_seed(0)
    built = model.build(cfg.model, None, {})
    ds_dict = deepspeed_config(batch=cfg.batch, optim=cfg.optim, schedule=cfg.schedule, zero=cfg.deepspeed,
                               steps=10_000, world_size=1)
    eng = engine.build_engine(built.module, model.param_groups(built.module, cfg.optim.weight_decay), ds_dict)
    loss = build_loss(cfg.loss, rank=0, world_size=1)

    def step(images: torch.Tensor, texts: torch.Tensor) -> None:
        train_step(eng, loss, [(images, texts)])
        eng.grad_norm()  # the loop reads it for the metrics every step
    return step


def loader_cpu_seconds(stream) -> float:
    """CPU seconds the loader spends on one batch, on one thread as in a DataLoader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.process_time()
    stream.next()
    seconds = time.process_time() - start
    torch.set_num_threads(threads)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="steps per contender (the first 3 are dropped)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--precisions", nargs="+", default=["bf16", "amp_bf16"], choices=["bf16", "amp_bf16"])
    p.add_argument("--shards", default=os.path.join(REPO, "bench_out", "train", "shards"))
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.shards, "manifest.json")):
        sys.exit(f"bench: no manifest.json in {args.shards}: run bench/train_throughput.py once (it builds them)")
    torch.set_num_threads(args.threads)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))
    engine.init_distributed(0)
    sets = [f"model.name={MODEL}", f"batch.global_batch={BATCH}", f"batch.micro_batch={BATCH}", "data.workers=0"]
    cfg = load_train_config(os.path.join(REPO, BASE_CONFIG), sets)
    steppers = {"bare": bare_stepper(cfg)}
    for precision in args.precisions:
        steppers[f"cityscale {precision}"] = trainer_stepper(
            load_train_config(os.path.join(REPO, BASE_CONFIG), [*sets, f"deepspeed.precision={precision}"]))
    stream = build_stream(cfg.data, read_manifest(args.shards), model.build(cfg.model, None, {}),
                          per_rank_batch=BATCH, rank=0, world_size=1)
    batches = [stream.next() for _ in range(4)]
    seconds: dict[str, list[float]] = {name: [] for name in steppers}
    loader: list[float] = []
    for i in range(args.steps):  # turns: every contender steps once per round, the order rotating
        names = list(steppers)[i % len(steppers):] + list(steppers)[:i % len(steppers)]
        for name in names:
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            steppers[name](batch.images, batch.texts)
            seconds[name].append(time.perf_counter() - start)
        loader.append(loader_cpu_seconds(stream))
    bare = seconds["bare"][3:]
    print(f"model {MODEL}, batch {BATCH}, {args.threads} thread(s), {args.steps - 3} paired steps")
    print("| contender | median ms/step | median ratio to the bare step next to it | quartiles |")
    print("|---|---:|---:|---|")
    for name, times in seconds.items():
        ratios = [t / b for t, b in zip(times[3:], bare)]
        q = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {statistics.median(times[3:]) * 1e3:.1f} | {statistics.median(ratios):.3f} | "
              f"{q[0]:.3f}-{q[2]:.3f} |")
    bound = [b / (b + l) for b, l in zip(bare, loader[3:])]
    print(f"loader: {statistics.median(loader[3:]) * 1e3:.1f} ms CPU per batch of {BATCH} on one thread "
          f"({statistics.median(loader[3:]) / BATCH * 1e6:.0f} us per sample); loader bound S / (S + L) against "
          f"the bare step of the same round: median {statistics.median(bound):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
