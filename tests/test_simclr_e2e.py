"""The image-only SimCLR twin end to end: `cityscale train` with configs/train/simclr-tiny-cpu.yaml runs the real
deepspeed launcher with 2 CPU ranks (ZeRO-2, bf16, the recipe's own settings) on a tiny shard folder.

- The NT-Xent loss falls and the logged scale is the fixed 1 / temperature.
- The published checkpoint is a normal open_clip checkpoint: `eval.checkpoints.load_model` builds it and its
  image tower embeds a tile.
- Only the image tower trained: every other weight (text tower, logit scale) is exactly the seeded init as
  DeepSpeed's bf16 holds it, so neither a missing gradient nor weight decay touched it; the image tower moved.

One launch (the launcher and two ranks importing torch, DeepSpeed and open_clip cost tens of seconds on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configs.train import load_train_config
from eval.checkpoints import load_model
from tests.shard_fixtures import into_shards, make_samples, write_shard_folder
from trainer.model import build

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/train/simclr-tiny-cpu.yaml")
STEPS = 16


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory) -> Path:
    """256 tiles (distinct colours, one white pixel each) in 4 shards; 16 steps, checkpoints at 8 and 16."""
    work = tmp_path_factory.mktemp("simclr")
    write_shard_folder(work / "shards", {"train": into_shards(make_samples(256, size=40), [64] * 4)})
    run = work / "run"
    cmd = [sys.executable, "-m", "launcher.cli", "train", "--config", CONFIG, "--shards", str(work / "shards"),
           "--run", str(run), "--steps", str(STEPS), "--nproc", "2", "--set", f"checkpoint.every_steps={STEPS // 2}",
           "--set", "metrics.port_base=0", "--set", "metrics.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


def test_nt_xent_falls_at_the_fixed_temperature(simclr_run):
    records = [json.loads(line) for line in (simclr_run / "logs/train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    first, last = (sum(r["loss"] for r in part) / 4 for part in (records[:4], records[-4:]))
    print(f"simclr loss: first 4 steps {first:.3f}, last 4 steps {last:.3f}")
    assert last < first - 0.3, [r["loss"] for r in records]
    assert all(r["logit_scale"] == pytest.approx(2.0) for r in records)  # 1 / loss.temperature (0.5)


def test_checkpoint_loads_for_eval_and_only_the_image_tower_trained(simclr_run):
    folder = simclr_run / "checkpoints" / f"step_{STEPS}"
    assert (folder / "COMPLETE").is_file()
    loaded = load_model(str(folder))
    tile = torch.rand(1, 3, loaded.image_size, loaded.image_size)
    with torch.no_grad():
        assert loaded.module.encode_image(tile).shape == (1, 64)
    cfg = load_train_config(CONFIG)
    torch.manual_seed(cfg.run.seed)  # the trainer's init (trainer/main.py)
    init = build(cfg.model, None, {}).module.state_dict()
    trained = load_file(str(folder / "open_clip_model.safetensors"))
    frozen = [k for k in trained if not k.startswith("visual.")]
    assert "logit_scale" in frozen and any(k.startswith("transformer.") for k in frozen)
    for k in frozen:  # DeepSpeed's bf16 engine holds the module in bf16: the init rounded once, nothing else
        torch.testing.assert_close(trained[k], init[k].to(torch.bfloat16).float(), rtol=0, atol=0, msg=k)
    moved = [k for k in trained if k.startswith("visual.") and not torch.equal(
        trained[k], init[k].to(torch.bfloat16).float())]
    assert len(moved) > 0.9 * sum(k.startswith("visual.") for k in trained), moved
