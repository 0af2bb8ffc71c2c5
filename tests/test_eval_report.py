"""`cityscale eval run` on shards built from two synthetic cities: every probe lands in report.json (indicators x
feature sets incl. every baseline, the margin over the best baseline, the spatial-vs-random split gap,
cross-city transfer, retrieval both ways, examples), the report validates against eval/report_schema.py, and
report.html and the index show what it holds. The checkpoint sits in a run trained on another city's shards, so
the report says "trained on A, probed on B". Bad input: a checkpoint of another architecture or without weights
gives a failed report with the reason (exit 1); a SimCLR twin that does not exist is one line (exit 2); shards
without indicators skip the regression probes and say so."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from configs.train import load_train_config
from eval.report import write_index
from eval.report_schema import (BASELINE_SETS, HEADLINE, best_baseline, gap_rows, margin_rows, mean_r2, problems,
                                probe_rows)
from launcher.cli import main as cli
from tests.eval_fixtures import FAST, synthetic_shards, write_checkpoint
from tests.shard_fixtures import make_samples, write_shard_folder
from trainer.main import _write_run_files

CITIES = {"Alphaville": 100, "Betatown": 100}
SETS = {"image", "text", "image+text", "random_init", "color_hist", "simclr", "caption_minilm",
        "image (UrbanCLIP probe)"}


def _settings() -> list[str]:
    return [arg for s in FAST for arg in ("--set", s)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> str:
    work = tmp_path_factory.mktemp("eval-synth")
    return synthetic_shards(str(work / "shards"), str(work / "synth"), CITIES)


def _run_trained_on(run: str, shards: str) -> None:
    """The run folder as the trainer leaves it: its resolved config (naming its shards) written at start."""
    _write_run_files(load_train_config(None, [f"run.shards={shards}", f"run.dir={run}"]), {})


@pytest.fixture(scope="module")
def evaluated(shards, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("eval-run")
    trained_on = str(work / "other-city-shards")  # the checkpoint's training data: another city than probed
    write_shard_folder(trained_on, {"train": [make_samples(20, size=32)]})
    run, twin_run = str(work / "run"), str(work / "simclr-run")
    _run_trained_on(run, trained_on)
    folder = write_checkpoint(run, 12, seed=4)
    write_checkpoint(twin_run, 3, seed=8)
    write_checkpoint(twin_run, 5, seed=9)  # the twin's latest complete checkpoint is the one probed
    out = f"{run}/eval/step_12"
    code = cli(["eval", "run", "--checkpoint", folder, "--shards", shards, "--out", out, "--no-progress",
                *_settings(), "--set", "urbanclip_probe=true", "--set", "probe.seeds=[0, 1]",
                "--set", f"baselines.simclr_checkpoint={twin_run}", "--set", "baselines.caption=true",
                "--set", f"baselines.cache_dir={work / 'cache'}"])
    report = json.loads(open(f"{out}/report.json").read())
    return {"code": code, "report": report, "out": out, "run": run, "trained_on": trained_on}


def test_report_holds_every_probe(evaluated):
    report = evaluated["report"]
    assert evaluated["code"] == 0 and report["status"] == "ok", report.get("reason")
    assert problems(report) == []  # the writer's output is what eval/report_schema.py describes
    assert report["checkpoint"]["step"] == 12 and report["seeds"] == [0, 1] and report["lag_seconds"] >= 0
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


def test_every_baseline_and_the_margin_over_the_best(evaluated):
    report = evaluated["report"]
    section = report["baselines"]
    assert section["sets"] == list(BASELINE_SETS) and section["caption_encoder"] == "all-MiniLM-L6-v2"
    assert section["simclr"]["step"] == 5 and section["simclr"]["uri"].endswith("checkpoints/step_5")
    assert not any("SimCLR" in n for n in report["notes"])
    rows = list(margin_rows(report))
    assert len(rows) == len(CITIES) * 3
    for city, ind, m in rows:
        sets = report["regression"][city][ind]
        r2 = {name: sets[name]["mlp"]["r2"] for name in BASELINE_SETS}
        assert m["candidates"] == pytest.approx(r2) and m["best"] == max(r2, key=r2.get)
        image, best = sets[HEADLINE]["mlp_per_seed"], sets[m["best"]]["mlp_per_seed"]
        assert m["per_seed"] == pytest.approx([a["r2"] - b["r2"] for a, b in zip(image, best)]) and len(image) == 2
        assert m["margin"] == pytest.approx(np.mean(m["per_seed"])) and m["margin_std"] == pytest.approx(
            np.std(m["per_seed"]))
        assert m["margin"] == pytest.approx(sets[HEADLINE]["mlp"]["r2"] - sets[m["best"]]["mlp"]["r2"])


def test_spatial_vs_random_split_gap(evaluated):
    report = evaluated["report"]
    assert report["split_gap"]["features"] == HEADLINE and report["split_gap"]["seed"] == 0
    gaps = list(gap_rows(report))
    assert len(gaps) == len(CITIES) * 3
    for city, ind, g in gaps:
        spatial = report["regression"][city][ind][HEADLINE]
        assert (g["n_train"], g["n_test"]) == (spatial["n_train"], spatial["n_test"])  # same sizes, re-dealt
        assert g["spatial_r2"] == spatial["mlp"]["r2"]
        assert g["gap"] == pytest.approx(g["random_r2"] - g["spatial_r2"]) and len(g["per_seed"]) == 2


def test_checkpoint_of_another_city_says_what_it_was_trained_on(evaluated):
    report = evaluated["report"]
    trained = report["checkpoint"]["trained_on"]
    assert trained["shards"] == evaluated["trained_on"] and trained["cities"] == ["testcity"]
    assert len(trained["fingerprint"]) == 16 and trained["fingerprint"] != report["data"]["fingerprint"]
    assert report["data"]["cities"] == sorted(CITIES) and set(report["regression"]) == set(CITIES)
    assert any(n.startswith("trained on testcity") and "probed on Alphaville, Betatown" in n for n in report["notes"])


def test_html_report_and_index_read_well(evaluated, tmp_path):
    out, report = evaluated["out"], evaluated["report"]
    html = open(f"{out}/report.html").read()
    figures = re.findall(r"src='([^']+\.png)'", html)
    assert "scatter.png" in figures and len(figures) == 1 + 2 * 3  # scatter + a map per city x indicator
    for name in figures:
        assert open(f"{out}/{name}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == 3  # example thumbnails
    assert "random_init" in html and "color_hist" in html and "Alphaville-&gt;Betatown" in html
    assert "image (UrbanCLIP probe)" in html and "simclr" in html and "caption_minilm" in html
    assert "Against the best baseline" in html and "Spatial vs random split" in html and "trained on" in html
    # the index over two reports (the second a copy published at a later step): image R2 beside the best baseline
    root = str(tmp_path / "eval")
    for step in (12, 24):
        shutil.copytree(out, f"{root}/step_{step}")
        copy = dict(report, checkpoint=dict(report["checkpoint"], name=f"step_{step}", step=step))
        open(f"{root}/step_{step}/report.json", "w").write(json.dumps(copy))
    assert write_index(root) == 2
    index = open(f"{root}/index.html").read()
    assert "step_12/report.html" in index and "step_24/report.html" in index and "trend.png" in index
    best = best_baseline(report, "population")
    assert f"best {best.names} {best.r2:.3f}, margin {best.margin:+.3f}" in index
    assert f"{mean_r2(report, 'population', HEADLINE):.3f}" in index
    assert open(f"{root}/trend.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert {r.features for r in probe_rows(report)} == SETS


def test_checkpoint_of_another_architecture_fails_with_the_reason(shards, tmp_path, capsys):
    run = str(tmp_path)
    bad = write_checkpoint(run, 3, config_patch={"width": 32})
    assert cli(["eval", "run", "--checkpoint", bad, "--shards", shards, "--out", f"{run}/out", "--no-progress"]) == 1
    report = json.loads(open(f"{run}/out/report.json").read())
    assert report["status"] == "failed" and "size mismatch" in report["reason"] and problems(report) == []
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
    assert "regression" not in report and sum("no indicators" in n for n in report["notes"]) == 1
    assert any(n.startswith("no SimCLR twin configured") for n in report["notes"])  # absent baselines are said
    assert report["baselines"]["margins"] == {} and "split_gap" not in report and problems(report) == []
    assert report["retrieval"]["checkpoint"]["image_to_text"]["n"] == 12


def test_missing_simclr_twin_is_one_line_and_an_empty_run_a_note(tmp_path, capsys):
    folder = tmp_path / "shards"
    write_shard_folder(folder, {"train": [make_samples(20, size=32)],
                                "test": [make_samples(8, start=20, size=32, split="test")]})
    ck = write_checkpoint(str(tmp_path / "run"), 1)
    assert cli(["eval", "run", "--checkpoint", ck, "--shards", str(folder), "--out", str(tmp_path / "out"),
                "--set", f"baselines.simclr_checkpoint={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'baselines.simclr_checkpoint'" in err and "loss.kind: simclr" in err and len(err.splitlines()) == 1
    (tmp_path / "simclr-run").mkdir()  # a twin run that has not published a checkpoint yet
    assert cli(["eval", "run", "--checkpoint", ck, "--shards", str(folder), "--out", str(tmp_path / "out"),
                "--no-progress", *_settings(), "--set", f"baselines.simclr_checkpoint={tmp_path / 'simclr-run'}"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(n.startswith("SimCLR twin not probed") and "complete checkpoint" in n for n in report["notes"])
    assert "simclr" not in report["baselines"] and "simclr" not in report["regression"]["testcity"]["population"]


def test_missing_shards_is_a_config_error(tmp_path, capsys):
    ck = write_checkpoint(str(tmp_path / "run"), 1)
    assert cli(["eval", "run", "--checkpoint", ck, "--shards", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "cityscale shards build" in capsys.readouterr().err
