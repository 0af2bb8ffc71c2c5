"""The report's comparisons and its schema on their own, against hand-computed numbers: the margin over the best
baseline (per-seed differences, which baseline wins), the split gap, the random re-split, the schema check and
its reading helpers (old reports too), what a checkpoint was trained on, and the probe memo of a watcher."""

from __future__ import annotations

import numpy as np
import pytest

from configs.eval import EvalConfig, ProbeConfig
from configs.loader import ConfigError, load
from configs.train import load_train_config
from data_shards.reader import read_manifest
from eval.comparisons import margin_over_best, margins, split_gap
from eval.embed import SplitData
from eval.memo import EvalMemo, digest
from eval.probes import random_resplit, resplit_probes
from eval.provenance import provenance_note, run_of, training_data
from eval.report_schema import best_baseline, gap_rows, margin_rows, mean_r2, problems, recall
from tests.shard_fixtures import make_samples, write_shard_folder
from trainer.main import _write_run_files


def _result(*r2: float) -> dict:
    """A probe result with these per-seed MLP test R2 values (other metrics fixed)."""
    per_seed = [{"r2": v, "rmse": 1.0, "mae": 1.0, "mape": 10.0} for v in r2]
    mean = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}
    spread = {f"{k}_std": float(np.std([s[k] for s in per_seed])) for k in per_seed[0]}
    return {"n_train": 80, "n_test": 20, "mlp": mean | spread, "mlp_per_seed": per_seed,
            "ridge": {"r2": 0.0, "rmse": 1.0, "mae": 1.0, "mape": 10.0, "alpha": 1.0}}


# ----------------------------------------------------------------------------- margin over the best baseline


def test_margin_over_the_best_baseline_by_hand():
    sets = {"image": _result(0.70, 0.74, 0.66), "random_init": _result(0.50, 0.52, 0.48),
            "color_hist": _result(0.80, 0.78, 0.82), "caption_minilm": {"skipped": "too few rows"}}
    m = margin_over_best(sets)
    # colour histograms win (mean 0.80 > 0.50); differences per seed: -0.10, -0.04, -0.16
    assert m["best"] == "color_hist" and m["best_r2"] == pytest.approx(0.80) and m["r2"] == pytest.approx(0.70)
    assert m["per_seed"] == pytest.approx([-0.10, -0.04, -0.16])
    assert m["margin"] == pytest.approx(-0.10)
    assert m["margin_std"] == pytest.approx(np.sqrt((0.0 + 0.06 ** 2 + 0.06 ** 2) / 3))  # population std, as seeds
    assert set(m["candidates"]) == {"random_init", "color_hist"}  # skipped and absent baselines are no candidates


def test_best_baseline_ties_missing_sides_and_cities():
    tie = {"image": _result(0.6), "color_hist": _result(0.5), "simclr": _result(0.5)}
    assert margin_over_best(tie)["best"] == "color_hist"  # ties go to the baseline listed first
    assert margin_over_best({"image": {"skipped": "x"}, "color_hist": _result(0.5)}) is None
    assert margin_over_best({"image": _result(0.5), "text": _result(0.9)}) is None  # text is no baseline
    regression = {"A": {"population": {"image": _result(0.9), "simclr": _result(0.7), "random_init": _result(0.2)},
                        "gdp": {"image": {"skipped": "no values"}, "simclr": _result(0.1)}},
                  "B": {"population": {"image": _result(0.3), "caption_minilm": _result(0.5)}}}
    out = margins(regression)
    assert set(out) == {"A", "B"} and set(out["A"]) == {"population"}
    assert out["A"]["population"]["best"] == "simclr" and out["B"]["population"]["best"] == "caption_minilm"
    report = {"regression": regression, "baselines": {"sets": [], "margins": out}}
    best = best_baseline(report, "population")  # over cities: both names, mean R2 and mean margin
    assert best.names == "caption_minilm/simclr" and best.r2 == pytest.approx(0.6)
    assert best.margin == pytest.approx((0.2 - 0.2) / 2) and best_baseline(report, "gdp") is None
    assert mean_r2(report, "population", "image") == pytest.approx(0.6)


def test_split_gap_by_hand():
    g = split_gap(_result(0.40, 0.50), _result(0.70, 0.60), n_val=12)
    assert g["per_seed"] == pytest.approx([0.30, 0.10]) and g["gap"] == pytest.approx(0.20)
    assert g["gap_std"] == pytest.approx(0.10) and g["spatial_r2"] == pytest.approx(0.45) and g["n_val"] == 12
    assert split_gap({"skipped": "x"}, _result(0.5), 0) is None


def test_random_resplit_deals_the_same_rows_into_the_same_sizes():
    parts = [np.arange(0, 60), np.arange(60, 75), np.arange(75, 100)]
    a, b = random_resplit(parts, seed=3), random_resplit(parts, seed=3)
    assert [len(p) for p in a] == [60, 15, 25] and np.array_equal(np.sort(np.concatenate(a)), np.arange(100))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # seeded
    assert not np.array_equal(np.sort(a[2]), parts[2])  # not the spatial split again
    assert not all(np.array_equal(x, y) for x, y in zip(a, random_resplit(parts, seed=4)))


def test_resplit_probe_keeps_usable_sizes_and_learns_a_local_signal():
    """Values follow x smoothly; the spatial test split is one strip at the far end. The random re-split keeps
    the split's sizes counted over usable rows (zeros and missing values dropped first)."""
    rng = np.random.default_rng(0)
    xy = [(i % 20, i // 20) for i in range(200)]
    feats = np.array([[x / 20, y / 10] for x, y in xy]) + rng.normal(0, 0.01, (200, 2))
    values = np.exp(np.array([x / 5 + y / 10 for x, y in xy]))
    values[::17] = 0.0  # dropped by the probe, and not counted in the sizes
    order = np.argsort([x for x, _ in xy], kind="stable")  # train: x < 14, val: x 14-15, test: x >= 16
    cut = [order[:140], order[140:160], order[160:]]

    def split(name: str, rows: np.ndarray) -> SplitData:
        d = SplitData(split=name, keys=[f"k{i}" for i in rows], cities=["C"] * len(rows),
                      xy=[xy[i] for i in rows], indicators={"population": values[rows].tolist()})
        d.features = {"image": feats[rows]}
        return d

    train, val, test = (split(n, r) for n, r in zip(("train", "val", "test"), cut))
    cfg = ProbeConfig(seeds=(0,), max_epochs=30, patience=5)
    result, n_val = resplit_probes(train, val, test, ["population"], lambda d: d.features["image"], cfg, 0)["C"][
        "population"]
    usable = [int((values[r] > 0).sum()) for r in cut]
    assert (result["n_train"], n_val, result["n_test"]) == tuple(usable)
    assert result["ridge"]["r2"] > 0.8  # tiles of every x in train: a random split is easy here


# ----------------------------------------------------------------------------- schema


def test_schema_finds_missing_extra_and_mistyped_keys():
    report = {"status": "ok", "checkpoint": {"name": "step_1", "uri": "r/checkpoints/step_1", "step": 1,
                                             "published_at": None},
              "data": {"uri": "s"}, "seeds": [0], "protocol": "p", "config": {}, "notes": [], "timing": {},
              "regression": {"C": {"population": {"image": _result(0.5), "simclr": {"skipped": "few rows"}}}},
              "retrieval": {"checkpoint": {"image_to_text": {"r@1": 0.5, "n": 10}}}}
    assert problems(report) == []  # a report from before the baselines and split-gap sections still conforms
    assert list(margin_rows(report)) == [] and list(gap_rows(report)) == [] and best_baseline(report, "x") is None
    assert recall(report, "checkpoint", "image_to_text", 1) == 0.5 and recall(report, "random_init", "x", 1) is None
    broken = dict(report, status="done", seeds=[True], extra=1, data={})
    broken["regression"] = {"C": {"population": {"image": dict(_result(0.5), n_test="20")}}}
    found = problems(broken)
    assert any(p.startswith("report.status: 'done'") for p in found)
    assert any(p.startswith("report.seeds[0]: expected int") for p in found)
    assert "report.extra: not in the schema (Report)" in found and "report.data.uri: missing (DataInfo)" in found
    assert any(p.startswith("report.regression.C.population.image") for p in found)


# ----------------------------------------------------------------------------- provenance


def test_training_data_comes_from_the_run_folder(tmp_path):
    shards = str(tmp_path / "shards")
    write_shard_folder(shards, {"train": [make_samples(4, size=24)]})
    run = str(tmp_path / "run")
    _write_run_files(load_train_config(None, [f"run.shards={shards}", f"run.dir={run}"]), {})
    assert run_of(f"{run}/checkpoints/step_3") == run and run_of(f"{tmp_path}/exported/step_3") is None
    trained = training_data(f"{run}/checkpoints/step_3")
    assert trained["shards"] == shards and trained["cities"] == ["testcity"] and len(trained["fingerprint"]) == 16
    assert "no readable config.yaml" in training_data(f"{tmp_path}/other/checkpoints/step_1")["note"]
    assert training_data(f"{tmp_path}/exported") is None
    manifest = read_manifest(shards)  # the probed side: the same shards
    assert provenance_note(trained, manifest, trained["fingerprint"]).startswith("trained and probed on the same")
    assert provenance_note(None, manifest, "x").startswith("probed on testcity; training data unknown")


# ----------------------------------------------------------------------------- memo and config


def test_memo_returns_the_stored_result_for_identical_inputs_only():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(120, 4)), np.exp(rng.normal(size=120))
    calls = []
    memo = EvalMemo(max_probes=2)

    def fit(tag: str) -> dict:
        calls.append(tag)
        return {"mlp": {"r2": float(len(calls))}}

    first = memo.probe(digest(x, y, "cfg"), lambda: fit("a"))
    first["mlp"]["r2"] = -1.0  # callers edit their copy, never the stored result
    assert memo.probe(digest(x, y, "cfg"), lambda: fit("b")) == {"mlp": {"r2": 1.0}} and memo.hits == 1
    assert memo.probe(digest(x + 1e-9, y, "cfg"), lambda: fit("c"))["mlp"]["r2"] == 2.0
    assert calls == ["a", "c"]


def test_new_config_sections_load_and_name_the_bad_key():
    cfg = load(EvalConfig, None, ["baselines.simclr_checkpoint=s3://b/runs/simclr", "split_gap.seed=3"])
    assert cfg.baselines.simclr_checkpoint == "s3://b/runs/simclr" and cfg.baselines.caption and cfg.split_gap.seed == 3
    with pytest.raises(ConfigError, match="'split_gap.seed'"):
        load(EvalConfig, None, ["split_gap.seed=-1"])
