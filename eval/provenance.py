"""Which data a checkpoint was trained on, and which data it is probed on: fingerprints and cities.

A report says "trained on A, probed on B" when it can, because a checkpoint may be probed on another city's
shards (`cityscale eval run --checkpoint RUN_A/checkpoints/step_N --shards SHARDS_B`: the probe is fitted on B's
train split and scored on B's test split, as for any shards). The training side comes from the run folder the
checkpoint was published in: RUN/config.yaml (written by the trainer at start, `run.shards` names its shards),
then that shard folder's manifest. A checkpoint outside a run layout, or whose training shards are no longer
readable, says so in `trained_on.note` instead; eval never fails for it.

The data fingerprint is a sha256 over the shard builder's source fingerprint and every shard's checksum: the
same number on both sides means the same bytes were trained on and probed.
"""

from __future__ import annotations

import hashlib

import yaml

from configs.loader import ConfigError
from data_shards.reader import Manifest, read_manifest
from data_shards.run_layout import CHECKPOINTS_DIR, CONFIG_FILE
from data_shards.storage import join, read_text
from eval.report_schema import TrainingData


def data_fingerprint(manifest: Manifest) -> str:
    """sha256 over the source fingerprint and the shard checksums: same number = same bytes evaluated."""
    parts = [str(manifest.raw.get("source_fingerprint", ""))] + sorted(
        f"{s['name']}:{s.get('sha256', '')}" for s in manifest.shards)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def run_of(checkpoint_uri: str) -> str | None:
    """RUN for RUN/checkpoints/step_N, else None (a checkpoint folder outside a run layout)."""
    parts = checkpoint_uri.rstrip("/").rsplit("/", 2)
    return parts[0] if len(parts) == 3 and parts[1] == CHECKPOINTS_DIR else None


def training_data(checkpoint_uri: str) -> TrainingData | None:
    """The shards (fingerprint, cities) the checkpoint's run trained on; None outside a run layout."""
    run = run_of(checkpoint_uri)
    if run is None:
        return None
    try:
        config = yaml.safe_load(read_text(join(run, CONFIG_FILE)))
        shards = str((config.get("run") or {}).get("shards") or "")
    except (FileNotFoundError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return {"shards": "", "note": f"no readable {CONFIG_FILE} in the run folder {run}"}
    if not shards:
        return {"shards": "", "note": f"{run}/{CONFIG_FILE} names no run.shards"}
    try:
        manifest = read_manifest(shards)
    except (ConfigError, OSError) as e:
        return {"shards": shards, "note": f"training shards not readable now ({str(e)[:200]})"}
    return {"shards": shards, "fingerprint": data_fingerprint(manifest), "cities": manifest.cities}


def provenance_note(trained: TrainingData | None, probed: Manifest, probed_fingerprint: str) -> str:
    """One line for the report's notes: trained on what, probed on what."""
    probed_cities = ", ".join(probed.cities) or "?"
    if trained is None:
        return f"probed on {probed_cities}; training data unknown (the checkpoint is not in a run folder)"
    if "fingerprint" not in trained:
        return f"probed on {probed_cities}; training data unknown: {trained.get('note', '')}"
    if trained["fingerprint"] == probed_fingerprint:
        return f"trained and probed on the same shards ({probed_cities})"
    return (f"trained on {', '.join(trained.get('cities', [])) or '?'} ({trained['shards']}), probed on "
            f"{probed_cities} ({probed.uri}): the probe is fitted on the probed shards' train split and scored "
            "on their test split")


__all__ = ["data_fingerprint", "run_of", "training_data", "provenance_note"]
