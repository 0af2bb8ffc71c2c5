"""`cityscale eval run` on shards built from two synthetic cities: every probe of issue 4 lands in report.json
(indicators x feature sets incl. both baselines, cross-city transfer, retrieval both ways, examples) and
report.html shows the figures it references. Bad input: a checkpoint of another architecture or without
weights gives a failed report with the reason (exit 1); shards without indicators skip the regression probes
and say so."""

from __future__ import annotations

import json
import re

import pytest

from eval.report import write_index
from launcher.cli import main as cli
from tests.eval_fixtures import FAST, synthetic_shards, write_checkpoint
from tests.shard_fixtures import make_samples, write_shard_folder

CITIES = {"Alphaville": 100, "Betatown": 100}
SETS = {"image", "text", "image+text", "random_init", "color_hist", "image (UrbanCLIP probe)"}


def _settings() -> list[str]:
    return [arg for s in FAST for arg in ("--set", s)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> str:
    work = tmp_path_factory.mktemp("eval-synth")
    return synthetic_shards(str(work / "shards"), str(work / "synth"), CITIES)


@pytest.fixture(scope="module")
def evaluated(shards, tmp_path_factory) -> dict:
    run = str(tmp_path_factory.mktemp("eval-run"))
    folder = write_checkpoint(run, 12, seed=4)
    out = f"{run}/eval/step_12"
    code = cli(["eval", "run", "--checkpoint", folder, "--shards", shards, "--out", out, "--no-progress",
                *_settings(), "--set", "urbanclip_probe=true"])
    report = json.loads(open(f"{out}/report.json").read())
    return {"code": code, "report": report, "out": out, "run": run}


def test_report_holds_every_probe(evaluated):
    report = evaluated["report"]
    assert evaluated["code"] == 0 and report["status"] == "ok", report.get("reason")
    assert report["checkpoint"]["step"] == 12 and report["seeds"] == [0] and report["lag_seconds"] >= 0
    assert set(report["data"]["tiles"]) == {"train", "val", "test"} and len(report["data"]["fingerprint"]) == 16
    assert set(report["regression"]) == set(CITIES)
    for city, by_ind in report["regression"].items():
        assert set(by_ind) == {"carbon", "gdp", "population"}
        for ind, sets in by_ind.items():
            assert set(sets) == SETS
            for name, res in sets.items():
                assert {"r2", "r2_std", "rmse", "mae", "mape"} <= set(res["mlp"]) and "r2" in res["ridge"], (city, ind)
            pred = sets["image"]["predictions"]
            assert len(pred["keys"]) == len(pred["x"]) == len(pred["mlp_log"]) == sets["image"]["n_test"] > 0
            assert all(k.startswith(city.lower()) for k in pred["keys"])  # test tiles of this city only
    assert set(report["transfer"]) == {"Alphaville->Betatown", "Betatown->Alphaville"}
    assert "mlp_r2" in report["transfer"]["Alphaville->Betatown"]["population"]
    for encoder in ("checkpoint", "random_init"):
        for direction in ("image_to_text", "text_to_image"):
            m = report["retrieval"][encoder][direction]
            assert 0 <= m["r@1"] <= m["r@5"] <= m["r@10"] <= 1 and m["n"] == report["data"]["tiles"]["test"]
    assert len(report["examples"]) == 3 and all(len(e["top"]) == 3 for e in report["examples"])
    assert any(n.startswith("gdp: the value 10000 holds") for n in report["notes"])  # the toolkit's fill value


def test_html_report_and_index_read_well(evaluated):
    out = evaluated["out"]
    html = open(f"{out}/report.html").read()
    figures = re.findall(r"src='([^']+\.png)'", html)
    assert "scatter.png" in figures and len(figures) == 1 + 2 * 3  # scatter + a map per city x indicator
    for name in figures:
        assert open(f"{out}/{name}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == 3  # example thumbnails
    assert "random_init" in html and "color_hist" in html and "Alphaville-&gt;Betatown" in html
    assert "image (UrbanCLIP probe)" in html
    assert write_index(f"{evaluated['run']}/eval") == 1
    index = open(f"{evaluated['run']}/eval/index.html").read()
    assert "step_12/report.html" in index and "trend.png" in index


def test_checkpoint_of_another_architecture_fails_with_the_reason(shards, tmp_path, capsys):
    run = str(tmp_path)
    bad = write_checkpoint(run, 3, config_patch={"width": 32})
    assert cli(["eval", "run", "--checkpoint", bad, "--shards", shards, "--out", f"{run}/out", "--no-progress"]) == 1
    report = json.loads(open(f"{run}/out/report.json").read())
    assert report["status"] == "failed" and "size mismatch" in report["reason"]
    assert "failed" in open(f"{run}/out/report.html").read()
    assert "size mismatch" in capsys.readouterr().out
    assert cli(["eval", "run", "--checkpoint", f"{run}/nothing", "--shards", shards, "--out", f"{run}/o2",
                "--no-progress"]) == 1
    assert "no model config" in json.loads(open(f"{run}/o2/report.json").read())["reason"]


def test_shards_without_indicators_skip_regression(tmp_path):
    folder = tmp_path / "shards"
    manifest = write_shard_folder(folder, {"train": [make_samples(40, size=32)],
                                           "test": [make_samples(12, start=40, size=32, split="test")]})
    manifest["indicators"] = []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    ck = write_checkpoint(str(tmp_path / "run"), 1)
    out = str(tmp_path / "out")
    assert cli(["eval", "run", "--checkpoint", ck, "--shards", str(folder), "--out", out, "--no-progress",
                *_settings()]) == 0
    report = json.loads(open(f"{out}/report.json").read())
    assert "regression" not in report and any("no indicators" in n for n in report["notes"])
    assert len(report["notes"]) == 1
    assert report["retrieval"]["checkpoint"]["image_to_text"]["n"] == 12


def test_missing_shards_is_a_config_error(tmp_path, capsys):
    ck = write_checkpoint(str(tmp_path / "run"), 1)
    assert cli(["eval", "run", "--checkpoint", ck, "--shards", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "cityscale shards build" in capsys.readouterr().err
