"""The land-use mention measure (eval/land_use.py) against the synthetic city's own truth and captions.

The generator's reference captions name the drawn land use, so their first sentences must score far above
chance, and the same sentences paired with the wrong tiles must score at chance: the measure can tell a
captioner that looks at the tile from one that does not.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

from data_shards.format import sample_key
from data_shards.synth import synthesize
from eval.land_use import mention_rate, mentioned, read_truth


def test_longer_phrases_win_and_villages_are_residential():
    assert mentioned("An industrial park beside a park.") == {"industrial", "green"}
    assert mentioned("an industrial park") == {"industrial"}  # 'park' inside it is consumed
    assert mentioned("A quiet village with small houses") == {"residential"}
    assert mentioned("the the image a a") == set()


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[dict[str, str], dict[str, str]]:
    """(first caption sentence per tile, truth) of a 300-tile synthetic city."""
    out = tmp_path_factory.mktemp("landuse")
    paths = synthesize(str(out), "Mentionton", 300, seed=5, size=32, progress=False)["paths"]
    sentences = defaultdict(list)
    for entry in json.load(open(paths["captions"]))[0]:
        city, name = entry["image"].split("/")
        _, x, y, _ = name.split("_")
        sentences[sample_key(city, 16, int(x), int(y))].append(entry["caption"])
    return {k: v[0] for k, v in sentences.items()}, read_truth(paths["truth"])


def test_reference_sentences_beat_chance_and_shuffled_ones_do_not(city):
    first, truth = city
    assert set(first) == set(truth) and len(truth) == 300
    right = mention_rate(first, truth, permutations=200)
    assert right["mention_rate"] > 0.9 and right["chance"] < 0.5 and right["p_value"] < 0.01
    keys = sorted(first)
    shuffled = dict(zip(keys, random.Random(0).sample([first[k] for k in keys], len(keys))))
    wrong = mention_rate(shuffled, truth, permutations=200)
    assert abs(wrong["mention_rate"] - wrong["chance"]) < 0.1 and wrong["p_value"] > 0.01
    assert sum(v["tiles"] for v in right["by_land_use"].values()) == 300


def test_captions_of_another_city_are_refused(city):
    with pytest.raises(ValueError, match="no captioned tile has a truth row"):
        mention_rate({"elsewhere_16_1_1": "a park"}, city[1])
