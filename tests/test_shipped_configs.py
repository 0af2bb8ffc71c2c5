"""Every YAML file shipped under configs/ is loaded by a test (shared STYLE.md habit 12): train and shards files
by their own suites, eval worker files here; a new folder without a loader test fails this file."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.eval import WorkerConfig
from configs.loader import load

ROOT = Path(__file__).resolve().parents[1] / "configs"
LOADED_ELSEWHERE = {"train": "tests/test_train_config.py", "shards": "tests/test_shards_units.py"}


@pytest.mark.parametrize("path", sorted((ROOT / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_every_eval_worker_yaml_loads(path):
    cfg = load(WorkerConfig, str(path))
    assert cfg.poll_seconds > 0


def test_every_config_folder_has_a_loader_test():
    folders = {p.parent.name for p in ROOT.rglob("*.yaml")}
    assert folders <= {"eval", *LOADED_ELSEWHERE}, f"configs/ folders without a loader test: {folders}"
