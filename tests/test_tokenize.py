"""The reader's caption tokenizer gives exactly open_clip's ids, with its per-word memo and early stop."""

from __future__ import annotations

import collections
import json
import os

import open_clip
import pytest
import torch

from data_shards.synth import synthesize
from data_shards.tokenize import CaptionTokenizer

EDGE_CASES = [
    "",
    "a",
    "Residential blocks &amp; a park, 3 schools; it's  dense\n\n(very) dense!!",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u201cquoted\u201d \u00e2\u20ac\u201d mojibake \u4e2d\u6587 \U0001f3d9\ufe0f tiles",
    "word " * 200,                   # far beyond the context: truncated with eot last
    "supercalifragilistic " * 37,    # words of several BPE pieces straddle the context end
    "x" * 300,                       # one word longer than the context
]


@pytest.fixture(scope="module")
def synthetic_captions(tmp_path_factory) -> list[str]:
    out = str(tmp_path_factory.mktemp("synth"))
    synthesize(out, "Tokville", 40, seed=3, size=32, progress=False)
    with open(os.path.join(out, "captions", "Tokville_captions.json")) as f:
        entries = json.load(f)[0]
    by_image = collections.defaultdict(list)
    for entry in entries:
        by_image[entry["image"]].append(entry["caption"])
    joined = [" ".join(sentences) for sentences in by_image.values()]
    return joined + [s for sentences in by_image.values() for s in sentences]


@pytest.mark.parametrize("model", ["ViT-B-32", "coca_ViT-B-32"])  # context 77 and CoCa's 76
def test_ids_equal_open_clips_tokenizer(synthetic_captions, model):
    reference = open_clip.get_tokenizer(model)
    fast = CaptionTokenizer(open_clip.get_tokenizer(model))
    assert fast.memoised
    captions = synthetic_captions + EDGE_CASES
    assert any(len(reference.encode(c)) > reference.context_length for c in captions)  # truncation exercised
    for _ in range(2):  # the second pass reads every word from the memo
        for caption in captions:
            ids = fast(caption)
            assert ids.dtype == torch.long and ids.shape == (reference.context_length,)
            assert torch.equal(ids, reference([caption])[0]), caption[:60]


def test_other_tokenizers_are_called_as_they_are():
    calls = []

    def byte_tokenize(texts):
        calls.append(texts)
        return torch.tensor([list(texts[0].encode()[:4])])

    tokenize = CaptionTokenizer(byte_tokenize)
    assert not tokenize.memoised
    assert tokenize("abcdef").tolist() == [97, 98, 99, 100] and calls == [["abcdef"]]
