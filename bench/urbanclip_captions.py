"""UrbanCLIP location descriptions on the synthetic city: after a short CPU training of the tiny CoCa, how often
does a generated caption name the tile's dominant land use, against chance?

    .venv/bin/python bench/urbanclip_captions.py                       # ~12 min on 2 cores
    .venv/bin/python bench/urbanclip_captions.py --caption join --steps 400

Steps (everything under bench_out/urbanclip/, logs in logs/):
1. one synthetic city (`cityscale synth`, `--tiles` tiles of `--size` px, seed 0) built into shards with the
   default 80/10/10 spatial split; the generator's truth file knows each tile's dominant land use;
2. `cityscale train` with configs/train/urbanclip-tiny-cpu.yaml on 2 CPU ranks for `--steps` steps (its
   caption policy, fixed_sentence, and learning rate unless given here);
3. `cityscale caption` on every test tile (top_p 0.1, 30 tokens: UrbanCLIP's settings) with
   `--land-use-truth`: the mention rate of the dominant land use against chance (the same captions paired
   with the land uses of other tiles, eval/land_use.py), plus BLEU/ROUGE-L/CIDEr; a summary JSON is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `bench.common`

from bench.common import CLI, machine_load, prepare_shards, run_logged, thread_env  # noqa: E402
from eval.caption_metrics import caption_scores  # noqa: E402
from eval.captioning import REFERENCE_SEP  # noqa: E402
from eval.land_use import mention_rate, read_truth  # noqa: E402

CITY = "Captionville"


def train(shards: str, run: str, args: argparse.Namespace) -> float:
    shutil.rmtree(run, ignore_errors=True)
    started = time.time()
    run_logged(CLI + ["train", "--config", "configs/train/urbanclip-tiny-cpu.yaml", "--shards", shards,
                      "--run", run, "--steps", str(args.steps), "--nproc", "2",
                      "--set", f"data.caption={args.caption}",
                      *(["--set", f"optim.lr={args.lr}"] if args.lr else []),
                      "--set", f"schedule.warmup_steps={max(1, args.steps // 20)}",
                      "--set", f"checkpoint.every_steps={args.steps}", "--set", "metrics.port_base=0",
                      "--set", "metrics.progress=false"],
               os.path.join(args.out, "logs", "train.log"), env=thread_env(2), timeout=7200)
    return time.time() - started


def losses(run: str) -> dict[str, float]:
    """Mean contrastive and captioning loss over the first and the last 10 steps."""
    with open(os.path.join(run, "logs", "train.jsonl")) as f:
        records = [json.loads(line) for line in f]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    return {f"{k}_{when}": mean(rs, k) for k in ("contrastive", "caption")
            for when, rs in (("first10", records[:10]), ("last10", records[-10:]))}


def caption(shards: str, checkpoint: str, out: str) -> list[dict]:
    csv_path = os.path.join(out, "captions.csv")
    text = run_logged(CLI + ["caption", "--checkpoint", checkpoint, "--shards", shards, "--out", csv_path,
                             "--no-progress", "--land-use-truth", os.path.join(out, "synth", "truth", f"{CITY}.csv")],
                      os.path.join(out, "logs", "caption.log"), env=thread_env(2), timeout=3600)
    print("\n".join(line for line in text.splitlines() if line.startswith(("bleu", "dominant"))))
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=2000, help="synthetic tiles (about 80%% land in train)")
    p.add_argument("--size", type=int, default=64, help="tile size in px")
    p.add_argument("--steps", type=int, default=600, help="training steps (global batch 32)")
    p.add_argument("--caption", default="fixed_sentence", choices=["join", "fixed_sentence", "random_sentence"],
                   help="data.caption policy of the training run (the recipe's: fixed_sentence)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--out", default=os.path.join("bench_out", "urbanclip"))
    args = p.parse_args(argv)
    print(f"bench: {machine_load()}", flush=True)
    shards = prepare_shards(args.out, args.tiles, args.size, CITY)
    run = os.path.join(args.out, f"run-{args.caption}-{args.steps}")
    seconds = train(shards, run, args)
    print(f"trained {args.steps} steps ({args.caption}, lr {args.lr or 'of the recipe'}) in {seconds:.0f} s",
          flush=True)
    rows = caption(shards, os.path.join(run, "checkpoints", f"step_{args.steps}"), args.out)
    truth = read_truth(os.path.join(args.out, "synth", "truth", f"{CITY}.csv"))
    summary = {"args": vars(args), "train_seconds": seconds, "losses": losses(run),
               "land_use": mention_rate({r["key"]: r["generated"] for r in rows}, truth),
               "caption_metrics": caption_scores({r["key"]: r["generated"] for r in rows},
                                                 {r["key"]: r["references"].split(REFERENCE_SEP) for r in rows}),
               "examples": rows[:5]}
    with open(os.path.join(args.out, f"summary-{args.caption}-{args.steps}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: summary[k] for k in ("losses", "land_use")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
