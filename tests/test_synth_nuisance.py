"""`cityscale synth --nuisance`: each level is deterministic, changes pixels only (truth, indicators, POI counts and
captions are the same files at every level), `none` is the original drawing byte for byte, and `realistic` takes
the indicators out of colour (the colour-histogram baseline's R2 drops) while structure keeps them."""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from configs.data import AugmentConfig
from configs.eval import ProbeConfig
from configs.loader import ConfigError
from configs.shards import SplitConfig
from data_shards.augment import tile_transform
from data_shards.splits import assign_split
from data_shards.synth import synthesize
from data_shards.synth_nuisance import LEVELS
from eval.baselines import ColorHistogram
from eval.regression import probe_indicator
from launcher.cli import main as cli_main
from tests.test_synth import _tree_hashes

CITY = "Nuisanceville"
# sha256 over (path, file sha256) of a 12-tile, 32 px city (seed 5) drawn at level none: the original drawing as
# of the commit that added the nuisance levels (Pillow 13.0.0, numpy 2.4.6). A Pillow or numpy upgrade that
# changes drawing or JPEG bytes changes it too: then redraw with the drawer of that commit and update it.
NONE_DIGEST = "be394169d1128ada6ad6d5c0a13b3a1c20a4f9fdfc4b56dfb212eacf797765b6"


def _digest(tree: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(tree.items())).encode()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, dict[str, str]]:
    """A 16-tile city of 32 px at every level: level -> file tree hashes."""
    trees = {}
    for level in LEVELS:
        out = str(tmp_path_factory.mktemp(f"small-{level}"))
        synthesize(out, CITY, 16, seed=3, size=32, progress=False, nuisance=level)
        trees[level] = _tree_hashes(out)
    return trees


def test_every_level_gives_the_same_bytes_for_the_same_arguments(small, tmp_path):
    for level in LEVELS:
        again = str(tmp_path / level)
        synthesize(again, CITY, 16, seed=3, size=32, progress=False, nuisance=level)
        assert _tree_hashes(again) == small[level], level


def test_none_is_the_original_drawing_byte_for_byte(tmp_path):
    synthesize(str(tmp_path), "Refton", 12, seed=5, size=32, progress=False, nuisance="none")
    assert _digest(_tree_hashes(str(tmp_path))) == NONE_DIGEST, "level none no longer draws the original tiles"


def test_levels_change_pixels_only(small):
    tables = [k for k in small["none"] if not k.startswith("images")]
    images = [k for k in small["none"] if k.startswith("images")]
    assert len(tables) == 4 and len(images) == 16  # captions, downstream_task, poi, truth
    for level in ("realistic", "hard"):
        assert small[level].keys() == small["none"].keys()
        assert all(small[level][k] == small["none"][k] for k in tables), level  # truth, indicators, captions
        assert sum(small[level][k] != small["none"][k] for k in images) == len(images), level
    assert all(small["realistic"][k] != small["hard"][k] for k in images)


def test_bad_level_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["synth", "--out", str(tmp_path), "--city", "Zeta", "--tiles", "2", "--seed", "0",
                  "--nuisance", "extreme"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--nuisance" in err and "invalid choice" in err and "'realistic'" in err
    with pytest.raises(ConfigError, match="--nuisance 'extreme': use one of none, realistic, hard"):
        synthesize(str(tmp_path / "api"), "Zeta", 2, seed=0, size=32, progress=False, nuisance="extreme")


def test_help_documents_the_levels(capsys):
    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--nuisance {none,realistic,hard}" in text and "realistic (default)" in text and "hard =" in text


# ----------------------------------------------------------------------------- what the pixels carry

TILES, SIZE = 400, 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, str]:
    """The same 400-tile city layout drawn at none and at realistic: level -> folder."""
    out = {}
    for level in ("none", "realistic"):
        out[level] = str(tmp_path_factory.mktemp(f"pair-{level}"))
        synthesize(out[level], CITY, TILES, seed=11, size=SIZE, progress=False, nuisance=level)
    return out


def _rows(folder: str) -> list[dict]:
    with open(os.path.join(folder, "downstream_task", f"{CITY}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _histograms(folder: str, rows: list[dict]) -> np.ndarray:
    """The eval report's colour-histogram features of every tile, from the eval transform's tensors."""
    transform = tile_transform(SIZE, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, train=False, augment=AugmentConfig())
    images = torch.stack([transform(Image.open(os.path.join(folder, "images", r["satellite_img_name"])).convert("RGB"))
                          for r in rows])
    return ColorHistogram(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, 8)(images, torch.zeros(len(rows), 1))["color_hist"]


def _population_r2(folder: str) -> float:
    """Test R2 of the report's probe (MLP, one seed) on log population, spatial blocks of 4 x 4 tiles."""
    rows = _rows(folder)
    cfg = SplitConfig(block_size=4, ratios={"train": 0.7, "val": 0.0, "test": 0.3})
    split = np.array([assign_split(CITY.lower(), *map(int, r["BD09 coordinate"].strip("()").split(",")), cfg)
                      for r in rows])
    probe = ProbeConfig(seeds=(0,), max_epochs=80, patience=10)
    values = np.array([float(r["population (unit)"]) for r in rows])
    res = probe_indicator(_histograms(folder, rows), values, np.flatnonzero(split == "train"),
                          np.flatnonzero(split == "test"), probe)
    return res["mlp"]["r2"]


def test_colour_histograms_lose_population_at_realistic(pair):
    none, realistic = _population_r2(pair["none"]), _population_r2(pair["realistic"])
    assert none > 0.3, f"the plain city should carry population in colour (R2 {none:.3f})"
    assert realistic < none - 0.15, f"colour histograms: R2 {none:.3f} at none, {realistic:.3f} at realistic"


@pytest.mark.parametrize("level", ["none", "realistic"])
def test_population_stays_visible_as_structure(pair, level):
    """Buildings and streets make edges: the tile's contrast-normalised gradient rises with its population."""
    rows = _rows(pair[level])
    edges, pops = [], []
    for r in rows:
        grey = np.asarray(Image.open(os.path.join(pair[level], "images", r["satellite_img_name"])).convert("L"),
                          float)
        grey = (grey - grey.mean()) / (grey.std() + 1e-6)
        edges.append(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
        pops.append(float(r["population (unit)"]))
    assert np.corrcoef(edges, np.log1p(pops))[0, 1] > 0.3
