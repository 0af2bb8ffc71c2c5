"""Caption generation and caption metrics (issue 6): pycocoevalcap's scorers on hand-checkable cases, a tiny
CoCa export captioning a small shard folder (rows = tiles, reproducible with a seed, beam search), `cityscale
caption` writing its CSV to the test S3 server, its one-line errors (CLIP checkpoint, no manifest, bad
settings), and the captioning section of `cityscale eval run` reports (CoCa only)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import fsspec
import pytest

from configs.eval import CaptionConfig
from data_shards.reader import read_manifest
from eval.caption_metrics import METRICS, caption_scores, tokenize
from eval.captioning import REFERENCE_SEP, generate_captions
from eval.checkpoints import CheckpointError, load_model
from launcher.cli import main as cli
from tests.eval_fixtures import FAST, write_checkpoint
from tests.shard_fixtures import make_samples, write_shard_folder

COCA = "cityscale-coca-nano-32"
TEST_TILES = 12
SHORT = 8  # max_len of the tests: generation cost grows with it


def image_name(i: int) -> str:
    return f"testcity/16_{i}_7_s.jpg"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """40 train and 12 test tiles, no indicators (eval skips the probes); test samples carry `image`."""
    folder = tmp_path_factory.mktemp("caption-shards")
    test = make_samples(TEST_TILES, start=40, size=32, split="test")
    for i, sample in enumerate(test, start=40):
        sample["json"] = json.dumps({**json.loads(sample["json"]), "image": image_name(i)}).encode()
    manifest = write_shard_folder(folder, {"train": [make_samples(40, size=32)], "test": [test[:7], test[7:]]})
    manifest["indicators"] = []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    run = str(tmp_path_factory.mktemp("caption-run"))
    return {"coca": write_checkpoint(run, 1, seed=1, model=COCA), "clip": write_checkpoint(run, 2)}


# ----------------------------------------------------------------------------- metrics

REFS = {"a": ["A dense residential area with many tall buildings.", "Roads cross it."],
        "b": ["A green park with trees and a small lake."],
        "c": ["An industrial zone next to the river port."],
        "d": ["Farmland fields and scattered villages in the north."]}


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("It's a Big-road, with 3 CARS!") == "it's a big road with 3 cars"


def test_identical_captions_score_one_and_disjoint_ones_zero():
    same = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    assert set(same) == set(METRICS)
    assert same["bleu1"] == pytest.approx(1.0, abs=1e-6) and same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == pytest.approx(1.0)
    disjoint = caption_scores({"a": "zebra quantum violin", "b": "xylophone"}, REFS)
    assert all(disjoint[m] < 1e-6 for m in METRICS), disjoint


def test_cider_prefers_the_right_reference_and_empty_captions_score_zero():
    right = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    keys = sorted(REFS)
    shuffled = caption_scores({k: REFS[keys[(i + 1) % 4]][0] for i, k in enumerate(keys)}, REFS)
    assert right["cider"] > 1.0 > shuffled["cider"] and right["bleu2"] > shuffled["bleu2"]
    empty = caption_scores({"a": "!!", "b": ""}, REFS)  # no word: scored, as 0, instead of crashing ROUGE-L
    assert empty["rouge_l"] == 0.0 and empty["cider"] == 0.0
    assert all(v is None for v in caption_scores({"a": "x"}, {"a": ["..."]}).values())  # nothing to score


# ----------------------------------------------------------------------------- generation

def test_generation_covers_the_split_reproducibly_and_beam_works(shards, checkpoints):
    manifest, model = read_manifest(shards), load_model(checkpoints["coca"])
    cfg = CaptionConfig(max_len=SHORT, max_tiles=0)
    first = generate_captions(manifest, "test", model, cfg, thumbs=2, progress=False)
    assert [r.key for r in first.rows] == [f"testcity_16_{i}_7" for i in range(40, 40 + TEST_TILES)]
    assert all(isinstance(r.generated, str) and r.generated.strip() for r in first.rows)
    assert "<start_of_text>" not in first.rows[0].generated and "<end_of_text>" not in first.rows[0].generated
    assert first.rows[3].references == ["Tile 43 of testcity.", "It has roads."]
    assert first.rows[3].image == image_name(43) and sorted(first.thumbs) == [0, TEST_TILES - 1]
    again = generate_captions(manifest, "test", model, cfg, progress=False)
    assert [r.generated for r in again.rows] == [r.generated for r in first.rows]
    other = generate_captions(manifest, "test", model, replace(cfg, seed=1, max_tiles=4), progress=False)
    assert [r.generated for r in other.rows] != [r.generated for r in first.rows[:4]]
    # beam search, in batches of 4 with the last one cut at the cap
    beam = generate_captions(manifest, "test", model, replace(cfg, beam=2, max_tiles=5, batch_size=4),
                             progress=False)
    assert [r.key for r in beam.rows] == [r.key for r in first.rows[:5]] and all(r.generated for r in beam.rows)
    assert set(beam.metrics()) == set(METRICS)


def test_a_clip_checkpoint_cannot_caption(shards, checkpoints):
    with pytest.raises(CheckpointError, match="captioning needs a CoCa model"):
        generate_captions(read_manifest(shards), "test", load_model(checkpoints["clip"]), CaptionConfig(),
                          progress=False)


# ----------------------------------------------------------------------------- cityscale caption

def test_cli_writes_the_csv_to_s3_and_prints_metrics(shards, checkpoints, s3_server, capsys, tmp_path):
    out = s3_server.uri("captions", "test.csv")
    truth = tmp_path / "truth.csv"  # a synthetic city's truth file for the test tiles (testcity_16_{i}_7)
    truth.write_text("satellite_img_name,x,y,dominant\n" + "".join(
        f"testcity/16_{i}_7_s.jpg,{i},7,water\n" for i in range(40, 40 + TEST_TILES)))
    assert cli(["caption", "--checkpoint", checkpoints["coca"], "--shards", shards, "--out", out,
                "--max-len", str(SHORT), "--seed", "3", "--workers", "0", "--no-progress",
                "--land-use-truth", str(truth)]) == 0
    with fsspec.open(out, "r") as f:
        text = f.read()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["key", "image", "generated", "references"] and len(rows) == TEST_TILES
    assert rows[0]["image"] == image_name(40) and all(r["generated"] for r in rows)
    assert rows[0]["references"].split(REFERENCE_SEP) == ["Tile 40 of testcity.", "It has roads."]
    printed = capsys.readouterr().out
    assert f"{TEST_TILES} captions of split 'test' (top_p 0.1, seed 3)" in printed
    assert all(m in printed for m in METRICS) and out in printed
    assert "dominant land use named in" in printed and f"of {TEST_TILES} captions (chance" in printed


def test_cli_errors_are_one_line(shards, checkpoints, tmp_path, capsys):
    base = ["--shards", shards, "--out", str(tmp_path / "c.csv"), "--no-progress", "--workers", "0"]
    assert cli(["caption", "--checkpoint", checkpoints["clip"], *base]) == 1
    assert "captioning needs a CoCa model" in capsys.readouterr().err
    assert cli(["caption", "--checkpoint", str(tmp_path / "none"), *base]) == 1
    assert "no model config" in capsys.readouterr().err
    assert cli(["caption", "--checkpoint", checkpoints["coca"], *base, "--max-len", "60"]) == 2
    assert "'max_len' = 60 exceeds the checkpoint's text context length 48" in capsys.readouterr().err
    assert cli(["caption", "--checkpoint", checkpoints["coca"], *base, "--top-p", "0"]) == 2
    assert "'top_p' must be in (0, 1]" in capsys.readouterr().err
    assert cli(["caption", "--checkpoint", checkpoints["coca"], *base[2:], "--shards", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()


# ----------------------------------------------------------------------------- eval report

def _eval(checkpoint: str, shards: str, out: str) -> dict:
    settings = [*FAST, f"caption.max_len={SHORT}", "caption.examples=3", "caption.max_tiles=10"]
    assert cli(["eval", "run", "--checkpoint", checkpoint, "--shards", shards, "--out", out, "--no-progress",
                *[a for s in settings for a in ("--set", s)]]) == 0
    return json.loads(open(f"{out}/report.json").read())


def test_eval_report_of_a_coca_checkpoint_has_a_captioning_section(shards, checkpoints, tmp_path):
    report = _eval(checkpoints["coca"], shards, str(tmp_path / "coca"))
    section = report["captioning"]
    assert set(section["metrics"]) == set(METRICS) and section["tiles"] == 10 and section["method"] == "top_p 0.1"
    assert section["settings"]["max_len"] == SHORT and len(section["examples"]) == 3
    assert [ex["row"] for ex in section["examples"]] == [0, 4, 9]  # caption rows = test rows (manifest order)
    assert all(ex["generated"] and ex["references"] for ex in section["examples"])
    html = open(tmp_path / "coca" / "report.html").read()
    assert "Captioning (test split)" in html and "<th>CIDEr</th>" in html
    assert html.count("data:image/png;base64,") == 3 + 3  # retrieval and caption examples
    clip = _eval(checkpoints["clip"], shards, str(tmp_path / "clip"))
    assert clip["status"] == "ok" and "captioning" not in clip
    assert "Captioning" not in open(tmp_path / "clip" / "report.html").read()
