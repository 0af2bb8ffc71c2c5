"""The synthetic city generator writes the UrbanCLIP toolkit layout exactly, and its data carries the signals later
stages rely on: LLM-like captions, log-normal spatially correlated indicators with zeros, population visible in
the pixels, POI counts that follow land use, and byte-identical output for the same arguments."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import math
import os
import re

import numpy as np
import open_clip
import pytest
from PIL import Image

from data_shards.geo import baidu_tile_center
from data_shards.synth import DOWNSTREAM_HEADER, POI, synthesize
from data_shards.synth_draw import LAND_USES
from launcher.cli import main as cli_main

TILES, SIZE, CITY = 64, 64, "Testville"


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    summary = synthesize(out, CITY, TILES, seed=7, size=SIZE, progress=False)
    return out, summary


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _captions(out: str) -> dict[str, list[str]]:
    with open(os.path.join(out, "captions", f"{CITY}_captions.json")) as f:
        data = json.load(f)
    assert isinstance(data, list) and len(data) == 1 and isinstance(data[0], list)
    by_image = collections.defaultdict(list)
    for entry in data[0]:
        assert set(entry) == {"caption", "image"}
        by_image[entry["image"]].append(entry["caption"])
    return by_image


def _tree_hashes(root: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _grid(rows: list[dict], column: str) -> dict[tuple[int, int], float]:
    return {tuple(int(v) for v in r["BD09 coordinate"].strip("()").split(",")): float(r[column]) for r in rows}


# ----------------------------------------------------------------------------- layout

def test_layout_and_downstream_columns_match_the_toolkit(city):
    out, summary = city
    with open(os.path.join(out, "downstream_task", f"{CITY}.csv"), newline="") as f:
        assert f.readline() == ",".join(DOWNSTREAM_HEADER) + "\r\n"
    assert DOWNSTREAM_HEADER == ("satellite_img_name", "BD09 coordinate", "WGS84 coordinate",
                                 "carbon_emissions (ton)", "population (unit)", "gdp (million yuan)")
    rows = _rows(os.path.join(out, "downstream_task", f"{CITY}.csv"))
    assert len(rows) == TILES == summary["tiles"]
    cells = set()
    for r in rows:
        m = re.fullmatch(rf"{CITY}/16_(\d+)_(\d+)_s\.jpg", r["satellite_img_name"])
        assert m, r["satellite_img_name"]
        x, y = int(m.group(1)), int(m.group(2))
        assert r["BD09 coordinate"] == f"({x},{y})"
        assert r["WGS84 coordinate"] == "({}, {})".format(*baidu_tile_center(x, y, 16))
        assert int(r["population (unit)"]) >= 0 and float(r["carbon_emissions (ton)"]) >= 0
        img = Image.open(os.path.join(out, "images", r["satellite_img_name"]))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (SIZE, SIZE))
        cells.add((x, y))
    xs, ys = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    side = math.ceil(math.sqrt(TILES))
    assert len(cells) == TILES and xs == list(range(xs[0], xs[0] + side)) and len(ys) == math.ceil(TILES / side)
    assert sorted(os.listdir(os.path.join(out, "images", CITY))) == sorted(
        r["satellite_img_name"].split("/")[1] for r in rows)


def test_poi_and_truth_tables(city):
    out, _ = city
    poi = _rows(os.path.join(out, "poi", f"{CITY}.csv"))
    truth = {r["satellite_img_name"]: r for r in _rows(os.path.join(out, "truth", f"{CITY}.csv"))}
    assert list(poi[0]) == ["satellite_img_name"] + list(POI) and len(poi) == TILES
    assert list(next(iter(truth.values())))[:3 + len(LAND_USES)] == ["satellite_img_name", "x", "y", *LAND_USES]
    for r in truth.values():
        shares = [float(r[k]) for k in LAND_USES]
        assert abs(sum(shares) - 1) < 1e-4 and r["dominant"] == LAND_USES[int(np.argmax(shares))]
    industry = np.array([int(r["industry"]) for r in poi])
    share = np.array([float(truth[r["satellite_img_name"]]["industrial"]) for r in poi])
    assert (industry >= 0).all() and np.corrcoef(industry, share)[0, 1] > 0.3


# ----------------------------------------------------------------------------- captions

def test_captions_look_like_llm_captions(city):
    out, _ = city
    by_image = _captions(out)
    rows = _rows(os.path.join(out, "downstream_task", f"{CITY}.csv"))
    assert set(by_image) == {r["satellite_img_name"] for r in rows}
    counts = [len(v) for v in by_image.values()]
    assert min(counts) >= 1 and max(counts) <= 7 and 3.5 <= np.mean(counts) <= 5.5
    for sentences in by_image.values():
        assert sentences[-1].endswith(".") and not any(s.endswith(".") for s in sentences[:-1])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    lengths = [len(tokenizer.encode(" ".join(v))) + 2 for v in by_image.values()]  # + start/end tokens
    assert np.mean([n > 77 for n in lengths]) > 0.3
    words = {w.lower().strip(",.") for v in by_image.values() for s in v for w in s.split()}
    assert len(words) > 200


def test_captions_name_the_dominant_land_use_with_varied_words(city):
    out, _ = city
    by_image = _captions(out)
    truth = _rows(os.path.join(out, "truth", f"{CITY}.csv"))
    residential = [" ".join(by_image[r["satellite_img_name"]][:1]).lower() for r in truth
                   if r["dominant"] == "residential" and float(r["residential"]) > 0.6]
    assert residential, "the test city should have clearly residential tiles"
    words = ("residential", "housing", "apartment", "homes", "houses", "village", "settlement", "neighborhood",
             "town")
    hits = collections.Counter(w for c in residential for w in words if w in c)
    assert sum(any(w in c for w in words) for c in residential) >= 0.8 * len(residential)
    assert len(hits) >= 3


# ----------------------------------------------------------------------------- indicators

def test_indicators_are_log_normal_with_zeros_and_the_gdp_fill_value(city):
    out, summary = city
    rows = _rows(os.path.join(out, "downstream_task", f"{CITY}.csv"))
    pop = np.array([float(r["population (unit)"]) for r in rows])
    gdp = np.array([float(r["gdp (million yuan)"]) for r in rows])
    assert 0.02 <= (pop == 0).mean() <= 0.1 and summary["zeros"]["population"] == (pop == 0).sum()
    positive = pop[pop > 0]
    assert positive.mean() > 1.5 * np.median(positive)  # heavy right tail...
    logs = np.log(positive)
    assert abs(logs.mean() - np.median(logs)) < 0.5 * logs.std() and logs.std() > 0.8  # ...symmetric in log
    assert 0.03 <= (gdp == 10000.0).mean() <= 0.35


def test_population_is_spatially_correlated(city):
    out, _ = city
    grid = _grid(_rows(os.path.join(out, "downstream_task", f"{CITY}.csv")), "population (unit)")
    cells = sorted(grid)
    values = np.log1p([grid[c] for c in cells])

    def neighbour_r(v: np.ndarray) -> float:
        lookup = dict(zip(cells, v))
        pairs = [(lookup[c], lookup[(c[0] + 1, c[1])]) for c in cells if (c[0] + 1, c[1]) in lookup]
        pairs += [(lookup[c], lookup[(c[0], c[1] + 1)]) for c in cells if (c[0], c[1] + 1) in lookup]
        return float(np.corrcoef(np.array(pairs).T)[0, 1])

    shuffled = np.random.default_rng(0).permutation(values)
    assert neighbour_r(values) > 0.3 and neighbour_r(values) > neighbour_r(shuffled) + 0.2


def test_population_is_visible_in_the_pixels(city):
    """Buildings make edges: the mean brightness gradient of a tile rises with its population."""
    out, _ = city
    rows = _rows(os.path.join(out, "downstream_task", f"{CITY}.csv"))
    edges, pops = [], []
    for r in rows:
        grey = np.asarray(Image.open(os.path.join(out, "images", r["satellite_img_name"])).convert("L"), float)
        edges.append(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
        pops.append(float(r["population (unit)"]))
    assert np.corrcoef(edges, np.log1p(pops))[0, 1] > 0.3


# ----------------------------------------------------------------------------- determinism and CLI

def test_same_arguments_give_the_same_bytes(city, tmp_path):
    out, _ = city
    again = str(tmp_path / "again")
    synthesize(again, CITY, TILES, seed=7, size=SIZE, progress=False)
    assert _tree_hashes(again) == _tree_hashes(out)
    other = str(tmp_path / "other")
    synthesize(other, CITY, TILES, seed=8, size=SIZE, progress=False)
    assert _tree_hashes(other).keys() == _tree_hashes(out).keys() and _tree_hashes(other) != _tree_hashes(out)


def test_cli_writes_a_city_and_reruns_replace_only_that_city(tmp_path, capsys):
    out = str(tmp_path / "cities")
    assert cli_main(["synth", "--out", out, "--city", "Alpha", "--tiles", "6", "--seed", "1", "--size", "32",
                     "--no-progress"]) == 0
    assert "6 tiles of Alpha" in capsys.readouterr().out
    assert cli_main(["synth", "--out", out, "--city", "Beta", "--tiles", "3", "--seed", "1", "--size", "32",
                     "--no-progress"]) == 0
    assert cli_main(["synth", "--out", out, "--city", "Alpha", "--tiles", "2", "--seed", "1", "--size", "32",
                     "--no-progress"]) == 0
    assert len(os.listdir(os.path.join(out, "images", "Alpha"))) == 2
    assert len(os.listdir(os.path.join(out, "images", "Beta"))) == 3
    assert sorted(os.listdir(os.path.join(out, "downstream_task"))) == ["Alpha.csv", "Beta.csv"]


@pytest.mark.parametrize("args,needle", [
    (["--tiles", "0"], "--tiles"),
    (["--size", "16"], "--size"),
    (["--seed", "-1"], "--seed"),
    (["--city", "../x"], "--city"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, needle):
    base = {"--out": str(tmp_path / "o"), "--city": "Gamma", "--tiles": "4", "--seed": "0", "--size": "32"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["synth", "--no-progress"] + [v for kv in base.items() for v in kv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_refuses_a_folder_that_is_not_a_toolkit_layout(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert cli_main(["synth", "--out", str(tmp_path), "--city", "Delta", "--tiles", "2", "--seed", "0",
                     "--no-progress"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "notes.txt").exists()


def test_missing_required_flag_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli_main(["synth", "--out", str(tmp_path), "--city", "Eps"])
    assert exc.value.code == 2
