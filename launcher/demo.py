"""`cityscale demo` (`make demo`): synthetic city -> Ray shards -> 2-rank DeepSpeed training beside an eval worker.

The one-command tour of the three services on embedded defaults, sized for a 2-core laptop-class machine:

1. draw a synthetic city (`cityscale synth --nuisance realistic`: season, sun, haze, district palettes, so colour
   alone does not give the indicators away), reused when the same one is already there;
2. build shards with Ray into the default object store, a local folder (`DEMO_S3=1`: a local S3 API server
   on 127.0.0.1 and `s3://`); the builder skips shards already published, so a second demo reuses them;
3. train the recipe's image-only SimCLR twin (the control for "text helps"), then the tiny CPU recipe on 2 gloo
   ranks (ZeRO-2, bf16) while an eval worker probes each checkpoint against the twin and the other baselines;
4. print a summary: throughput, final test R2 per indicator beside the random-init, colour-histogram, SimCLR
   and caption-only baselines, the margin over the best of them, retrieval R@5, and the path of the HTML
   report index.

Each step runs as a child process in its own process group; Ctrl-C (or any failure) stops every one of them,
and what was already published (shards, checkpoints, reports) stays intact because each is published atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from configs.loader import ConfigError
from configs.train import load_train_config
from data_shards.jsonl_log import read_jsonl
from data_shards.run_layout import list_complete, train_log_uri
from eval.report import EVAL_DIR, has_report, read_json, report_uri, write_index
from eval.report_schema import (CAPTION_MINILM, COLOR_HIST, HEADLINE, RANDOM_INIT, SIMCLR, Report, margin_rows, mlp_r2,
                                probe_rows, recall)

ROOT = Path(__file__).resolve().parents[1]
CITY = "Demoville"
NUISANCE = "realistic"
DEMO_CONFIG = str(ROOT / "configs/train/demo-cpu.yaml")
DEMO_EVAL_CONFIG = str(ROOT / "configs/eval/demo-cpu.yaml")


# ----------------------------------------------------------------------------- child processes

class Children:
    """Child processes, each in its own session, all stopped on exit (SIGTERM, then SIGKILL after a grace)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT if out else None)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run a step to completion; a non-zero exit stops the demo with that step named."""
        code = self.start(argv, env).wait()
        if code != 0:
            raise DemoStepFailed(f"step `{' '.join(argv[1:4])} ...` exited with code {code}")

    def stop_all(self, grace: float = 15.0) -> None:
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.time() + grace
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()


class DemoStepFailed(RuntimeError):
    """A step of the demo failed; the message names it."""


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _cli(*words: str) -> list[str]:
    return [sys.executable, "-m", "launcher.cli", *words]


# ----------------------------------------------------------------------------- object store

@contextmanager
def object_store(out: Path, use_s3: bool):
    """(store URI, env for children): a local folder, or a local S3 API server with a bucket (DEMO_S3=1)."""
    if not use_s3:
        yield str(out / "store"), {}
        return
    from moto.server import ThreadedMotoServer  # only the DEMO_S3 path needs the local S3 server
    import boto3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "demo",
           "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)  # this process reads the reports from the same store
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="cityscale-demo")
    try:
        yield "s3://cityscale-demo", env
    finally:
        server.stop()


# ----------------------------------------------------------------------------- steps

def synth_city(children: Children, folder: Path, tiles: int, seed: int) -> None:
    """Draw the city unless the same one (tiles, seed) is already there."""
    marker = folder / "demo-city.json"
    want = {"city": CITY, "tiles": tiles, "seed": seed, "nuisance": NUISANCE}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        print(f"[demo] reusing the synthetic city in {folder}")
        return
    children.run(_cli("synth", "--out", str(folder), "--city", CITY, "--tiles", str(tiles), "--seed", str(seed),
                      "--nuisance", NUISANCE))
    marker.write_text(json.dumps(want))


def build_shards(children: Children, city: Path, shards: str, env: dict[str, str]) -> None:
    children.run(_cli("shards", "build", "--source", "urbanclip",
                      "--captions", str(city / "captions" / f"{CITY}_captions.json"),
                      "--images", str(city / "images"),
                      "--indicators", str(city / "downstream_task" / f"{CITY}.csv"),
                      "--poi", str(city / "poi" / f"{CITY}.csv"),
                      "--out", shards, "--workers", "2", "--set", "split.block_size=4"), env)


# the image-only control of the demo recipe: the same config with the SimCLR objective (docs/methods/simclr-control.md)
TWIN_OVERRIDES = ("loss.kind=simclr", "data.views=2")


def train_twin(children: Children, shards: str, run: str, steps: int, env: dict[str, str]) -> None:
    """The SimCLR twin of the demo recipe (same model, steps, batch, data), trained first so that every report
    of the main run carries it as a baseline."""
    print("[demo] training the image-only SimCLR twin (the control for 'text helps')")
    sets = [item for kv in TWIN_OVERRIDES for item in ("--set", kv)]
    children.run(_cli("train", "--config", DEMO_CONFIG, "--shards", shards, "--run", run, "--steps", str(steps),
                      "--nproc", "2", *sets, "--set", "metrics.progress=false"), env)


def train_and_watch(children: Children, shards: str, run: str, twin: str, steps: int, env: dict[str, str],
                    logs: Path) -> int:
    """Training in the foreground, the eval worker beside it; returns training's exit code."""
    train = children.start(_cli("train", "--config", DEMO_CONFIG, "--shards", shards,
                                "--run", run, "--steps", str(steps), "--nproc", "2"), env)
    watcher = children.start(_cli("eval", "watch", "--run", run, "--shards", shards, "--no-progress",
                                  "--config", DEMO_EVAL_CONFIG,  # caption embeddings kept for the next demo
                                  "--set", f"eval.baselines.cache_dir={logs.parent / 'eval-cache'}",
                                  "--set", f"eval.baselines.simclr_checkpoint={twin}"),
                             env, log=logs / "eval-worker.log")
    print(f"[demo] eval worker running beside training (log: {logs / 'eval-worker.log'})")
    code = train.wait()
    if code == 0:
        wait_for_reports(run, watcher)
    return code


def wait_for_reports(run: str, watcher: subprocess.Popen, timeout: float = 600.0) -> None:
    """Block until every published checkpoint has a report (the worker is still finishing the last ones)."""
    eval_root, deadline = f"{run}/{EVAL_DIR}", time.time() + timeout
    print("[demo] training done; waiting for the eval worker to report the last checkpoints")
    while time.time() < deadline:
        pending = [c.name for c in list_complete(run) if not has_report(eval_root, c.name)]
        if not pending:
            return
        if watcher.poll() is not None:
            raise DemoStepFailed(f"the eval worker exited with code {watcher.returncode} before reporting {pending}")
        time.sleep(3)
    raise DemoStepFailed(f"no eval report after {timeout:.0f} s for {pending}")


# ----------------------------------------------------------------------------- summary

def throughput(run: str) -> dict[str, float]:
    """Mean samples/s of rank 0 over the second half of training, and the whole-job figure (x ranks)."""
    rows = read_jsonl(train_log_uri(run))
    rates = [r["samples_per_second"] for r in rows if "samples_per_second" in r]
    tail = rates[len(rates) // 2:] or rates
    per_rank = sum(tail) / max(1, len(tail))
    return {"per_rank": per_rank, "total": per_rank * 2, "steps": len(rows)}


def final_report(run: str) -> Report:
    done = list_complete(run)
    if not done:
        raise DemoStepFailed(f"no checkpoint was published under {run}/checkpoints")
    report = read_json(report_uri(f"{run}/{EVAL_DIR}", done[-1].name))
    if report is None or report.get("status") != "ok":
        raise DemoStepFailed(f"the report of {done[-1].name} is missing or failed: {report and report.get('reason')}")
    return report


def summary_lines(report: Report, speed: dict[str, float], index: str) -> list[str]:
    """The closing table: population/carbon/GDP test R2 beside the baselines and the margin over the best one,
    retrieval, where to look."""
    lines = [f"throughput: {speed['total']:.0f} samples/s over 2 ranks ({speed['per_rank']:.0f} per rank)",
             f"final checkpoint: step {report['checkpoint']['step']}",
             f"{'city':<10} {'indicator':<11} {'pretrained':>10} {'random-init':>11} {'colour-hist':>11} "
             f"{'simclr':>11} {'caption':>11}  {'margin over the best baseline':<40}"]
    margin = {(c, i): m for c, i, m in margin_rows(report)}
    for city, indicator in sorted({(r.city, r.indicator) for r in probe_rows(report)}):
        r2 = [mlp_r2(report, city, indicator, k) for k in (HEADLINE, RANDOM_INIT, COLOR_HIST, SIMCLR, CAPTION_MINILM)]
        cells = " ".join(f"{v:>11.3f}" if v is not None else f"{'-':>11}" for v in r2)
        m = margin.get((city, indicator))
        best = f"{m['margin']:+.3f} ± {m['margin_std']:.3f} over {m['best']} ({m['best_r2']:.3f})" if m else "-"
        lines.append(f"{city:<10} {indicator:<11}{cells}  {best}")
    r5 = {(e, d): recall(report, e, d, 5) for e in ("checkpoint", "random_init")
          for d in ("image_to_text", "text_to_image")}
    n = report["retrieval"]["checkpoint"]["image_to_text"]["n"]
    lines.append(f"retrieval R@5 image->text {r5['checkpoint', 'image_to_text']:.3f} (random-init "
                 f"{r5['random_init', 'image_to_text']:.3f}), text->image {r5['checkpoint', 'text_to_image']:.3f} "
                 f"(random-init {r5['random_init', 'text_to_image']:.3f}) over {n:.0f} test tiles")
    lines.append(f"reports: {index}")
    return lines


# ----------------------------------------------------------------------------- entry

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscale demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="folder for the city, the local store and logs [demo_out]")
    p.add_argument("--tiles", type=int, default=3000, help="tiles of the synthetic city [3000]")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: configs/train/demo-cpu.yaml)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic city [0]")
    p.add_argument("--s3", action="store_true", default=os.environ.get("DEMO_S3") == "1",
                   help="use a local S3 API server and s3:// (also DEMO_S3=1)")
    return p.parse_args(argv)


def run_demo(args: argparse.Namespace, children: Children) -> list[str]:
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with object_store(out, args.s3) as (store, env):
        print(f"[demo] object store: {store}")
        synth_city(children, out / "city", args.tiles, args.seed)
        shards = f"{store}/shards"
        build_shards(children, out / "city", shards, env)
        run = f"{store}/runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
        steps = args.steps or load_train_config(DEMO_CONFIG, []).run.steps
        train_twin(children, shards, f"{run}-simclr", steps, env)
        code = train_and_watch(children, shards, run, f"{run}-simclr", steps, env, logs)
        if code != 0:
            raise DemoStepFailed(f"training exited with code {code}")
        report = final_report(run)
        # the worker rebuilds the index right after each report.json, but the demo stops it as soon as the last
        # report exists: rebuild it here (from the reports, as the worker does) so the printed link is complete
        write_index(f"{run}/{EVAL_DIR}")
        lines = summary_lines(report, throughput(run), f"{run}/{EVAL_DIR}/index.html")
    lines.append(f"demo took {time.time() - started:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiles < 200:
        raise ConfigError(f"--tiles {args.tiles}: the demo needs at least 200 tiles for its splits")
    children = Children()
    try:
        lines = run_demo(args, children)
    except DemoStepFailed as e:
        print(f"cityscale demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cityscale demo: interrupted; stopping every process it started (published files stay)",
              file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    print("\n".join(["", "== cityscale demo summary ==", *lines]))
    return 0
