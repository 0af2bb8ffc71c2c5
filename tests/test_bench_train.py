"""bench/train_throughput.py keeps working as the trainer and the peer evolve: its `cityscale train` command
passes the launcher's own checks (dry run, nothing starts), its open_clip_train 3.3 command parses with the
peer's own argument parser, and the log parsers read the lines both programs write. No timing here."""

from __future__ import annotations

import json

import pytest
import yaml
from open_clip_train.params import parse_args as peer_parse_args

from bench.common import quiet_rate, rate
from bench.train_throughput import (MODEL, Run, Setup, cityscale_command, jsonl_step_seconds, peer_command,
                                    peer_step_seconds, summarize, table)
from launcher import cli
from tests.shard_fixtures import into_shards, make_samples, write_shard_folder

PEER_LINE = ("2026-11-23,16:07:17 | INFO | Train Epoch: 0 [128/640 (20%)] Data (t): 0.019 Batch (t): 9.393, "
             "{rate}/s, {rate}/s/gpu LR: 0.000500 Logit Scale: 14.282 Contrastive_loss: 4.3134 (4.3084)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("shards")
    write_shard_folder(root, {"train": into_shards(make_samples(128), [32, 32, 32, 32])})
    return Setup(out=str(tmp_path_factory.mktemp("out")), shards=str(root), model=MODEL, batch=64,
                 warmup=3, steps=15, threads=2)


@pytest.mark.parametrize("nproc,precision", [(1, "amp_bf16"), (2, "bf16")])
def test_trainer_command_passes_the_launcher_dry_run(setup, nproc, precision, capsys, tmp_path):
    argv = cityscale_command(setup, nproc, str(tmp_path / "run"), precision)
    assert argv[1:4] == ["-m", "launcher.cli", "train"]
    assert cli.main(argv[3:] + ["--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out.split("# resolved config")[1].split("# deepspeed config")[0])
    assert resolved["model"]["name"] == MODEL and resolved["run"]["steps"] == 18
    assert resolved["batch"] == {"global_batch": 64, "micro_batch": 64 // nproc}  # same negatives per step
    assert resolved["deepspeed"]["precision"] == precision


def test_peer_command_parses_with_open_clip_train(setup):
    argv = peer_command(setup, "python", "/m", "/logs")
    assert argv[1:3] == ["-m", "open_clip_train.main"]
    args = peer_parse_args(argv[3:])
    assert (args.model, args.precision, args.batch_size, args.workers) == ("local-dir:/m", "amp_bf16", 64, 1)
    assert args.train_data == f"{setup.shards}/train-{{000000..000003}}.tar" and args.train_num_samples == 64 * 18
    assert args.report_to == "" and args.log_every_n_steps == 1


def test_log_parsers_give_step_seconds():
    text = "\n".join(PEER_LINE.format(rate=r) for r in ("6.40000", "32.0000", "64.0000"))
    assert peer_step_seconds(text, 64) == pytest.approx([10.0, 2.0, 1.0])
    lines = [json.dumps({"step": i + 1, "time": 100.0 + t, "step_seconds": 9.0}) for i, t in enumerate([5, 7, 8])]
    assert jsonl_step_seconds(lines + [""]) == pytest.approx([9.0, 2.0, 1.0])


def test_rates():
    assert rate([1.0, 3.0], 64) == pytest.approx(32.0)
    assert quiet_rate([1.0, 1.0, 1.0, 1.0, 9.0], 64) == pytest.approx(64.0)  # a preempted step does not count


def test_per_round_ratios_pair_each_contender_with_the_same_round():
    """A machine twice as fast in round 1 moves every rate but not the per-round ratios."""
    def run(name: str, seconds: float, round_: int) -> Run:
        return Run(name, (seconds,) * 4, "", round=round_)
    runs = []
    for round_, speed in ((0, 1.0), (1, 2.0), (2, 1.0)):
        runs += [run("ceiling (autocast)", 1.0 / speed, round_), run("ceiling (bf16-master)", 1.1 / speed, round_),
                 run("open_clip_train 3.3", 1.25 / speed, round_), run("x1", 1.0 / (0.9 * speed), round_)]
    figures = {f.name: f for f in summarize(runs, batch=64, warmup=1)}
    assert figures["x1"].vs_ceiling == pytest.approx(0.9) and figures["x1"].vs_peer == pytest.approx(1.125)
    assert figures["x1"].mean == pytest.approx(64 * 0.9 * 2.0)  # best round
    assert "| 0.90 | 1.12 |" in table(list(figures.values()))
