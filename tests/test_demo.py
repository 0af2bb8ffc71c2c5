"""The demo pipeline at CI size: synth -> Ray shards -> 2-rank DeepSpeed training beside an eval worker -> summary.

Real parts throughout (Ray, the deepspeed launcher with 2 CPU ranks, the eval worker process); only the size
differs from `make demo`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "demo", "--out", str(out), "--tiles", "400",
                           "--steps", "30"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.split("== cityscale demo summary ==")[1]
    assert "throughput:" in summary and "retrieval R@5" in summary and "population" in summary
    assert "margin over the best baseline" in summary
    index = Path(summary.split("reports: ")[1].split()[0])
    assert index.is_file() and "step_30" in index.read_text()
    run = index.parent.parent
    assert (run / "checkpoints" / "step_30" / "COMPLETE").is_file()
    report = json.loads((run / "eval" / "step_30" / "report.json").read_text())
    assert report["status"] == "ok" and {"random_init", "color_hist", "image", "simclr", "caption_minilm"} <= set(
        report["regression"]["Demoville"]["population"])
    assert report["baselines"]["simclr"]["uri"].startswith(str(run) + "-simclr"), "the twin trained by the demo"
    assert report["baselines"]["margins"]["Demoville"]["population"]["best"] in report["baselines"]["sets"]
    assert json.loads((out / "city" / "demo-city.json").read_text())["nuisance"] == "realistic"
    manifest = json.loads((out / "store" / "shards" / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["shards"]) == 400


def test_demo_rejects_a_city_too_small_for_its_splits(capsys):
    from launcher import cli

    assert cli.main(["demo", "--tiles", "10"]) == 2
    assert "--tiles 10" in capsys.readouterr().err
