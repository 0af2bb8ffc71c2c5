"""`cityscale eval text-probe` end to end on a synthetic city, with the real bundled MiniLM encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.eval import TextProbeConfig
from data_shards.splits import block_of
from data_shards.synth import synthesize
from eval.text_probe import read_tables, split_rows
from launcher.cli import main as cli


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(str(out), "Testville", tiles=240, seed=3, size=32, progress=False)
    return out


def _files(city):
    return [str(city / "captions" / "Testville_captions.json")], [str(city / "downstream_task" / "Testville.csv")]


def test_tables_group_every_sentence_of_an_image(city):
    captions, indicators = _files(city)
    (table,) = read_tables(captions, indicators)
    raw = json.loads((city / "captions" / "Testville_captions.json").read_text())[0]
    assert len(table.keys) == 240
    assert sum(map(len, table.sentences)) == len(raw)
    assert set(table.indicators) == {"carbon", "population", "gdp"}


def test_spatial_split_keeps_blocks_whole(city):
    (table,) = read_tables(*_files(city))
    cfg = TextProbeConfig(split="spatial", block_size=4, test_share=0.3)
    train, test = split_rows(table, cfg)
    assert len(train) + len(test) == len(table.keys) and len(test) > 0
    blocks = lambda rows: {block_of(int(x), int(y), 4) for x, y in table.xy[rows]}
    assert not blocks(train) & blocks(test)


def test_cli_prints_json_with_test_metrics(city, capsys, tmp_path):
    captions, indicators = _files(city)
    code = cli(["eval", "text-probe", "--captions", *captions, "--indicators", *indicators, "--json",
                "--cache", str(tmp_path), "--set", "probe.seeds=[0]", "--set", "probe.max_epochs=60"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pop = result["cities"]["Testville"]["indicators"]["population"]
    assert pop["n_test"] > 20
    # synthetic captions describe density and land use, which drive population: the text carries signal
    assert pop["ridge"]["r2"] > 0.2
    assert np.isfinite(pop["mlp"]["rmse"])
    assert list(tmp_path.glob("*.npy")), "embeddings were cached"


def test_missing_encoder_folder_is_one_clear_line(city, capsys):
    captions, indicators = _files(city)
    code = cli(["eval", "text-probe", "--captions", *captions, "--indicators", *indicators,
                "--encoder", "/nonexistent/encoder"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "/nonexistent/encoder" in err
