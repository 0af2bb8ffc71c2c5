"""`cityscale eval run --checkpoint URL --shards URL --out DIR`: evaluate one checkpoint and write its report.

The same `evaluate` runs inside the watcher (eval/worker.py) for every published checkpoint. Steps:

    fetch + load the exported model, and a random-init twin of the same architecture   (failure -> failed report)
    fetch + load the SimCLR twin when `baselines.simclr_checkpoint` names one          (failure -> a note)
    embed train (capped) / val / test once: checkpoint towers, random-init towers, colour histograms, the SimCLR
      twin's image tower; the caption baseline's sentence embeddings (cached on local disk between reports)
    indicator probes per city x indicator x feature set; the margin of the image probe over the best baseline;
      the image probe on a random re-split of the same rows (split gap); cross-city transfer (several cities)
    retrieval on test (checkpoint and random init), a few examples with thumbnails
    CoCa checkpoints: captions of test tiles (capped) with BLEU/ROUGE-L/CIDEr, a few examples (eval/captioning.py)
    report.json (+ report.html and figures); its schema is eval/report_schema.py

A checkpoint that cannot be loaded gives a report with status "failed" and the reason (exit code 1 here);
shards without indicators skip the regression probes and say so in the report's notes. The report records what
the checkpoint was trained on when its run folder says (eval/provenance.py), so probing a checkpoint of city A
on the shards of city B reads "trained on A, probed on B".
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np

from configs.eval import EvalConfig, urbanclip_probe
from configs.loader import load, run_module, to_dict
from data_shards.format import REPORT_NAME, caption_text
from data_shards.reader import Manifest, read_manifest
from data_shards.run_layout import CheckpointRef, ref_from_uri
from data_shards.storage import join, url_to_fs
from eval.baselines import (ClipFeatures, ColorHistogram, caption_features, check_twin, same_preprocessing,
                            sentence_encoder, twin_checkpoint, twin_source)
from eval.captioning import can_caption, caption_section, generate_captions
from eval.checkpoints import CheckpointError, LoadedModel, fetch, load_model, local_workdir
from eval.comparisons import margins, split_gap
from eval.embed import SplitData, embed_splits
from eval.memo import EvalMemo
from eval.probes import feature_sets, indicator_probes, resplit_probes, transfer_probes
from eval.provenance import data_fingerprint, provenance_note, training_data
from eval.report import write_report
from eval.report_schema import BASELINE_SETS, CAPTION_MINILM, HEADLINE, URBANCLIP_SET, Report
from eval.retrieval import retrieval, top_matches

PROTOCOL = ("probe fit on train-split tiles (capped), early stopping on val, metrics on test; log targets "
            "z-scored with train statistics")


def check_shards(manifest: Manifest) -> None:
    """Eval needs train (to fit probes) and test (to score them) shards; ConfigError otherwise."""
    for split in ("train", "test"):
        manifest.split_shards(split)


def check_baselines(cfg: EvalConfig) -> None:
    """Fail fast (ConfigError) on a SimCLR twin folder that does not exist, before any work."""
    if cfg.baselines.simclr_checkpoint:
        check_twin(cfg.baselines.simclr_checkpoint)


def base_report(ref: CheckpointRef, shards_uri: str, cfg: EvalConfig) -> Report:
    return {"status": "running", "checkpoint": {"name": ref.name, "uri": ref.uri, "step": ref.step,
                                                 "published_at": ref.published_at},
            "data": {"uri": shards_uri}, "seeds": list(cfg.probe.seeds), "protocol": PROTOCOL,
            "config": to_dict(cfg), "notes": [], "timing": {}}


def finish(report: Report, started: float, status: str, reason: str | None = None) -> Report:
    now = time.time()
    report.update(status=status, finished_at=now,
                  finished_at_utc=datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    report["timing"]["total_seconds"] = now - started
    published = report["checkpoint"].get("published_at")
    report["lag_seconds"] = now - published if published else None
    if reason:
        report["reason"] = reason
    return report


def _load_twin(cfg: EvalConfig, model: LoadedModel, report: Report) -> LoadedModel | None:
    """The SimCLR twin's model, or None with a note saying why there is none."""
    uri = cfg.baselines.simclr_checkpoint
    if not uri:
        report["notes"].append("no SimCLR twin configured (baselines.simclr_checkpoint): the image-only "
                               "self-supervised control is not among the baselines")
        return None
    try:
        ref = twin_checkpoint(uri)
        with local_workdir() as folder:
            twin = load_model(fetch(ref, folder))
    except CheckpointError as e:
        report["notes"].append(f"SimCLR twin not probed: {e}")
        return None
    if not same_preprocessing(model, twin):
        report["notes"].append(f"SimCLR twin {ref.uri} not probed: its image size or normalisation differs from "
                               "the checkpoint's (train it with the same model config)")
        return None
    report["baselines"]["simclr"] = twin_source(ref)
    return twin


def _embed_all(manifest: Manifest, folder: str, model: LoadedModel, twin: LoadedModel | None, cfg: EvalConfig,
               progress: bool) -> dict[str, SplitData]:
    random = load_model(folder, weights=False, seed=cfg.seed)
    extractors = [ClipFeatures(model.module), ClipFeatures(random.module, prefix="random_"),
                  ColorHistogram(model.mean, model.std, cfg.color_bins)]
    if twin is not None:
        extractors.append(ClipFeatures(twin.module, prefix="simclr_", text=False))
    return embed_splits(manifest, extractors, model, cfg, progress=progress)


def _sentence_features(splits: dict[str, SplitData], key: str, path: str, cfg: EvalConfig, memo: EvalMemo | None,
                       progress: bool) -> str:
    """features[key] of every split: a sentence encoder's mean embedding of each tile's captions; its name."""
    encoder = sentence_encoder(path, cfg.baselines, memo)
    for data in splits.values():
        data.features[key] = caption_features(data.sentences, encoder, progress)
    return encoder.name


def _caption_baseline(splits: dict[str, SplitData], cfg: EvalConfig, report: Report, memo: EvalMemo | None,
                      progress: bool) -> None:
    """The caption-only baseline's features (`caption_minilm`), when enabled."""
    if not cfg.baselines.caption:
        report["notes"].append("caption-only baseline off (baselines.caption=false)")
        return
    name = _sentence_features(splits, CAPTION_MINILM, cfg.baselines.caption_encoder, cfg, memo, progress)
    report["baselines"]["caption_encoder"] = name


def _text_features(splits: dict[str, SplitData], cfg: EvalConfig, memo: EvalMemo | None = None,
                   progress: bool = True) -> str:
    """Name of the feature used as 'text' in the probes: the tower's, or a sentence encoder's ('sentence')."""
    if not cfg.text_encoder:
        return "text"
    _sentence_features(splits, "sentence", cfg.text_encoder, cfg, memo, progress)
    return "sentence"


def _examples(test: SplitData, cfg: EvalConfig) -> list[dict]:
    rows = sorted(test.thumbs)
    tops = top_matches(test.features["image"], test.features["text"], rows, cfg.retrieval.top_captions)
    return [{"row": row, "key": test.keys[row], "caption": caption_text(test.sentences[row]),
             "top": [{"caption": caption_text(test.sentences[j]), "correct": j == row} for j in top]}
            for row, top in zip(rows, tops)]


def spike_notes(shards_uri: str) -> list[str]:
    """Notes on fill values the shard builder found (e.g. the toolkit's GDP 10000.0): they show as stripes in
    the scatter plots, and a reader should know why."""
    fs, path = url_to_fs(join(shards_uri, REPORT_NAME))
    try:
        spikes = json.loads(fs.cat_file(path)).get("indicator_spikes") or []
    except (FileNotFoundError, ValueError, AttributeError):
        return []
    return [f"{s['indicator']}: {100 * s['share']:.0f}% of the rows are 0, left out of the probes" if s["value"] == 0
            else f"{s['indicator']}: the value {s['value']:g} holds {100 * s['share']:.0f}% of the rows (a fill value? "
            "it shows as a vertical stripe in the scatter plot)" for s in spikes]


def _split_gap(report: Report, splits: dict[str, SplitData], manifest: Manifest, sets: dict, cfg: EvalConfig,
               memo: EvalMemo | None) -> None:
    """report["split_gap"]: the image probe on a random re-split of the same rows against the spatial split."""
    if not cfg.split_gap.enabled:
        return
    random = resplit_probes(splits["train"], splits.get("val"), splits["test"], manifest.indicators,
                            sets[HEADLINE], cfg.probe, cfg.split_gap.seed, memo)
    gaps: dict = {}
    for city, by_indicator in random.items():
        for name, (result, n_val) in by_indicator.items():
            gap = split_gap(report["regression"][city][name][HEADLINE], result, n_val)
            gaps.setdefault(city, {})[name] = gap or {"skipped": result.get("skipped", "spatial probe skipped")}
    report["split_gap"] = {"features": HEADLINE, "seed": cfg.split_gap.seed, "gaps": gaps}


def _probe_section(report: Report, splits: dict[str, SplitData], manifest: Manifest, text_key: str,
                   cfg: EvalConfig, progress: bool, memo: EvalMemo | None) -> None:
    train, val, test = splits["train"], splits.get("val"), splits["test"]
    if not manifest.indicators:
        report["notes"].append("the shards hold no indicators: regression probes skipped")
        return
    if val is None:
        report["notes"].append("no val split: early stopping on a share of the train tiles")
    report["notes"] += spike_notes(manifest.uri)
    sets = feature_sets(text_key, test.features)
    report["regression"] = indicator_probes(train, val, test, manifest.indicators, sets, cfg.probe, progress, memo)
    if cfg.urbanclip_probe:  # the paper's protocol beside ours, on the same embeddings and rows
        official = indicator_probes(train, val, test, manifest.indicators, {URBANCLIP_SET: sets[HEADLINE]},
                                    urbanclip_probe(), progress, memo)
        for city, by_indicator in official.items():
            for name, results in by_indicator.items():
                report["regression"][city][name].update(results)
    if not report["regression"]:
        report["notes"].append("no test tile has an indicator value: regression probes skipped")
        return
    report["baselines"].update(sets=[b for b in BASELINE_SETS if b in sets], margins=margins(report["regression"]))
    _split_gap(report, splits, manifest, sets, cfg, memo)
    if len(set(test.cities)) > 1:
        report["transfer"] = transfer_probes(train, val, test, manifest.indicators, sets[HEADLINE], cfg.probe)


def _caption_section(report: Report, manifest: Manifest, model: LoadedModel, test: SplitData, cfg: EvalConfig,
                     progress: bool) -> dict[int, np.ndarray]:
    """report["captioning"] for a CoCa checkpoint (nothing for others); returns the examples' thumbnails keyed
    by test row, the numbering of the retrieval examples' thumbnails."""
    if not (cfg.caption.enabled and can_caption(model)):
        return {}
    captions = generate_captions(manifest, "test", model, cfg.caption, loader_workers=cfg.loader_workers,
                                 thumbs=cfg.caption.examples, progress=progress)
    section = caption_section(captions, cfg.caption)
    row_of = {key: row for row, key in enumerate(test.keys)}
    thumbs = {row_of[ex["key"]]: captions.thumbs[ex["row"]] for ex in section["examples"] if ex["key"] in row_of}
    for ex in section["examples"]:
        ex["row"] = row_of.get(ex["key"])
    report["captioning"] = section
    report["timing"]["caption_seconds"] = captions.seconds
    return thumbs


def _describe_data(report: Report, ref: CheckpointRef, manifest: Manifest) -> None:
    """What is probed (fingerprint, indicators, cities), and what the checkpoint was trained on when known."""
    fingerprint = data_fingerprint(manifest)
    report["data"].update(fingerprint=fingerprint, indicators=manifest.indicators, cities=manifest.cities)
    trained = training_data(ref.uri)
    if trained is not None:
        report["checkpoint"]["trained_on"] = trained
    report["notes"].append(provenance_note(trained, manifest, fingerprint))


def evaluate(ref: CheckpointRef, shards_uri: str, cfg: EvalConfig, *, progress: bool = True,
             memo: EvalMemo | None = None) -> tuple[Report, dict]:
    """(report, test thumbnails) of one checkpoint; a checkpoint that cannot be loaded gives status 'failed'.
    `memo` (a watcher's, kept between checkpoints) reuses baseline probe results and sentence encoders."""
    started = time.time()
    report = base_report(ref, shards_uri, cfg)
    manifest = read_manifest(shards_uri)
    check_shards(manifest)
    _describe_data(report, ref, manifest)
    report["baselines"] = {"sets": [], "margins": {}}
    try:
        with local_workdir() as folder:
            model = load_model(fetch(ref, folder))
            twin = _load_twin(cfg, model, report)
            splits = _embed_all(manifest, folder, model, twin, cfg, progress)
    except CheckpointError as e:
        del report["baselines"]
        return finish(report, started, "failed", str(e)), {}
    caption_start = time.time()
    _caption_baseline(splits, cfg, report, memo, progress)
    report["timing"]["caption_features_seconds"] = time.time() - caption_start
    report["timing"]["embed_seconds"] = {k: d.seconds for k, d in splits.items()}
    report["data"].update(tiles={k: len(d) for k, d in splits.items()},
                          skipped={k: d.skipped for k, d in splits.items() if d.skipped})
    text_key = _text_features(splits, cfg, memo, progress)
    report["text_features"] = cfg.text_encoder or "checkpoint text tower"
    probe_start = time.time()
    _probe_section(report, splits, manifest, text_key, cfg, progress, memo)
    report["timing"]["probe_seconds"] = time.time() - probe_start
    test, ks, chunk = splits["test"], cfg.retrieval.ks, cfg.retrieval.chunk
    report["retrieval"] = {"checkpoint": retrieval(test.features["image"], test.features["text"], ks, chunk),
                           "random_init": retrieval(test.features["random_image"], test.features["random_text"],
                                                    ks, chunk)}
    report["examples"] = _examples(test, cfg)
    caption_thumbs = _caption_section(report, manifest, model, test, cfg, progress)
    return finish(report, started, "ok"), {**test.thumbs, **caption_thumbs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cityscale eval run", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (RUN/checkpoints/step_N, local or s3://)")
    p.add_argument("--shards", required=True, help="shard folder holding manifest.json")
    p.add_argument("--out", required=True, help="folder receiving report.json, report.html and figures")
    p.add_argument("--config", default=None, help="YAML with EvalConfig fields (configs/eval.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load(EvalConfig, args.config, args.set)
    check_baselines(cfg)
    ref = ref_from_uri(args.checkpoint)
    report, thumbs = evaluate(ref, args.shards, cfg, progress=not args.no_progress)
    write_report(args.out, report, thumbs)
    print(f"{ref.name}: {report['status']}{' (' + report['reason'] + ')' if 'reason' in report else ''} "
          f"-> {args.out}")
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    run_module(main, "cityscale eval run")
