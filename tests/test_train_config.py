"""Trainer config, the DeepSpeed dict, and `cityscale train` on bad input and in dry-run mode (no process starts).

Bad input must give one line naming the key and the fix, exit code 2, before any process group starts: the
launcher runs every check before it builds the deepspeed command, and `trainer.main` runs them again on each
rank before `init_distributed`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from configs.loader import ConfigError, to_dict
from configs.train import BatchConfig, TrainConfig, load_train_config
from launcher import cli
from launcher.train import deepspeed_env_file, hostfile_ranks, launch_env, prometheus_targets
from tests.shard_fixtures import into_shards, make_samples, write_shard_folder
from trainer.ds_config import deepspeed_config
from trainer.preflight import model_names

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/train/tiny-cpu.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards")
    write_shard_folder(root, {"train": into_shards(make_samples(64), [32, 32])})
    return str(root)


def _ds(cfg: TrainConfig, world_size: int, overrides: dict | None = None) -> dict:
    return deepspeed_config(batch=cfg.batch, optim=cfg.optim, schedule=cfg.schedule, zero=cfg.deepspeed,
                            steps=cfg.run.steps, world_size=world_size, overrides=overrides)


# ----------------------------------------------------------------------------- config and DeepSpeed dict

@pytest.mark.parametrize("path", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_train_config_loads(path):
    cfg = load_train_config(str(path))
    assert cfg.model.name in model_names()
    cfg.batch.check(1)


def test_simclr_recipe_is_the_tiny_recipe_with_only_its_loss_and_views():
    """The image-only control must differ from the CLIP recipe in nothing but the objective."""
    tiny, twin = (to_dict(load_train_config(str(ROOT / f"configs/train/{name}.yaml")))
                  for name in ("tiny-cpu", "simclr-tiny-cpu"))
    assert (twin["loss"]["kind"], twin["data"]["views"], tiny["data"]["views"]) == ("simclr", 2, 1)
    for cfg in (tiny, twin):
        del cfg["loss"]["kind"], cfg["loss"]["temperature"], cfg["data"]["views"]
    assert twin == tiny


def test_our_model_configs_are_known_to_open_clip():
    from trainer.model import MODELS_DIR  # imports open_clip and registers configs/models

    import open_clip
    ours = sorted(p.stem for p in MODELS_DIR.glob("*.json"))
    assert ours and set(ours) <= set(open_clip.list_models()) and set(ours) <= set(model_names())


@pytest.mark.parametrize("world,accum", [(1, 4), (2, 2), (4, 1)])
def test_deepspeed_batch_arithmetic_comes_from_the_batch_section(world, accum):
    cfg = load_train_config(TINY)  # global 32, micro 8
    ds = _ds(cfg, world)
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == accum == cfg.batch.accum_steps(world)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * accum * world


def test_deepspeed_dict_maps_stage_precision_clip_and_schedule():
    cfg = load_train_config(TINY, ["deepspeed.zero_stage=3", "deepspeed.precision=fp32", "optim.grad_clip=0.5",
                                   "schedule.kind=constant", "schedule.warmup_steps=3"])
    ds = _ds(cfg, 2)
    assert ds["zero_optimization"] == {"stage": 3} and ds["bf16"] == {"enabled": False}
    assert not ds["torch_autocast"]["enabled"]
    assert ds["gradient_clipping"] == 0.5
    assert ds["scheduler"]["type"] == "WarmupLR" and ds["scheduler"]["params"]["warmup_num_steps"] == 3
    assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr and ds["optimizer"]["params"]["torch_adam"]
    assert ds["optimizer"]["params"]["fused"]  # torch's fused AdamW (CPU and GPU)
    cosine = _ds(load_train_config(TINY), 2)["scheduler"]
    assert cosine["type"] == "WarmupCosineLR" and cosine["params"]["total_num_steps"] == 40


@pytest.mark.parametrize("precision,bf16,autocast", [("bf16", True, False), ("amp_bf16", False, True)])
def test_bf16_modes_map_to_deepspeed_bf16_or_torch_autocast(precision, bf16, autocast):
    ds = _ds(load_train_config(TINY, [f"deepspeed.precision={precision}"]), 2)
    assert ds["bf16"] == {"enabled": bf16}
    assert ds["torch_autocast"] == {"enabled": autocast, "dtype": "bfloat16"}


def test_one_rank_runs_stage_zero_unless_the_override_tunes_zero():
    cfg = load_train_config(TINY, ["deepspeed.zero_stage=2"])
    assert _ds(cfg, 1)["zero_optimization"] == {"stage": 0} and _ds(cfg, 2)["zero_optimization"] == {"stage": 2}
    offload = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    assert _ds(cfg, 1, offload)["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}


def test_expert_overrides_merge_but_cannot_touch_batch_sizes():
    cfg = load_train_config(TINY)
    merged = _ds(cfg, 2, {"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5})
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True} and merged["steps_per_print"] == 5
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu.*batch.global_batch"):
        _ds(cfg, 2, {"train_micro_batch_size_per_gpu": 4})


def test_exponent_floats_from_the_command_line_are_floats():
    assert load_train_config(TINY, ["optim.lr=2e-3"]).optim.lr == 0.002  # YAML 1.1 reads 2e-3 as a string
    with pytest.raises(ConfigError, match=r"'optim.lr': expected float, got 'fast'"):
        load_train_config(TINY, ["optim.lr=fast"])


def test_micro_batch_must_divide_per_rank_share():
    with pytest.raises(ConfigError, match=r"'batch.micro_batch'.*8 x 3.*multiple of 24"):
        BatchConfig(global_batch=32, micro_batch=8).check(3)
    with pytest.raises(ConfigError, match=r"'batch.micro_batch': 5 does not divide"):
        load_train_config(TINY, ["batch.micro_batch=5"])


# ----------------------------------------------------------------------------- cityscale train: bad input

def _train(capsys, shards: str, run: Path, *extra: str) -> tuple[int, str]:
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(run), "--nproc", "2", *extra])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("extra,expected", [
    (["--set", "optim.lrr=1"], "unknown config key 'optim.lrr': valid keys here are"),
    (["--set", "batch.global_batch=many"], "config key 'batch.global_batch': expected int, got 'many'"),
    (["--set", "batch.micro_batch=12"], "config key 'batch.micro_batch': 12 does not divide"),
    (["--set", "batch.micro_batch=32"], "config key 'batch.micro_batch': micro_batch x ranks = 32 x 2"),
    (["--set", "model.name=ViT-Nope-1"], "config key 'model.name': unknown model 'ViT-Nope-1'"),
    (["--set", "deepspeed.zero_stage=4"], "config key 'deepspeed.zero_stage': 4 is not one of 0, 1, 2, 3"),
    (["--set", "model.name=cityscale-coca-nano-32", "--set", "loss.kind=siglip"],
     "config key 'loss.kind': cityscale-coca-nano-32 is a CoCa model"),
    (["--set", "loss.caption_weight=-1"], "config key 'loss.caption_weight': -1.0 must be >= 0"),
    (["--set", "loss.logit_scale_max=0.5"], "config key 'loss.logit_scale_max': 0.5 must be 0 (no clamp) or >= 1"),
    (["--set", "data.caption=first"], "config key 'data.caption'"),
    (["--set", "loss.kind=simclr"], "config key 'data.views': loss.kind simclr takes 2 view(s) of each tile, got 1"),
    (["--set", "data.views=2"], "config key 'data.views': loss.kind infonce takes 1 view(s) of each tile, got 2"),
    (["--set", "loss.kind=simclr", "--set", "data.views=2", "--set", "loss.temperature=0"],
     "config key 'loss.temperature': 0.0 must be > 0"),
])
def test_bad_config_is_one_line_exit_2_and_nothing_starts(capsys, shards, tmp_path, extra, expected):
    code, err = _train(capsys, shards, tmp_path / "run", *extra)
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_a_config_error(capsys, shards, tmp_path):
    code, err = _train(capsys, shards, tmp_path / "run", "--set", "metrics.tensorboard=true")
    assert code == 2 and "'metrics.tensorboard' is true but tensorboard is not installed: `pip install" in err


def test_missing_and_empty_manifest_name_the_path_and_the_fix(capsys, tmp_path):
    code, err = _train(capsys, str(tmp_path / "nowhere"), tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1
    assert "no manifest at" in err and "nowhere/manifest.json" in err and "cityscale shards build" in err
    empty = tmp_path / "empty"
    write_shard_folder(empty, {"val": into_shards(make_samples(4), [4])})  # no train shards
    code, err = _train(capsys, str(empty), tmp_path / "run")
    assert code == 2 and "lists no 'train' shards" in err and "cityscale shards build" in err


def test_trainer_main_rejects_bad_config_before_any_process_group(capsys, shards, tmp_path):
    from trainer import main as trainer_main  # imports deepspeed and open_clip: one test pays for it

    code = trainer_main.main(["--config", TINY, "--set", f"run.shards={shards}", "--set", f"run.dir={tmp_path}",
                              "--set", "model.name=nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("trainer: config key 'model.name'") and len(err.splitlines()) == 1
    import torch.distributed
    assert not torch.distributed.is_initialized()
    code = trainer_main.main(["--config", TINY, "--set", f"run.shards={shards}", "--set", f"run.dir={tmp_path}",
                              "--set", "model.pretrained=no-such-tag"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'model.pretrained'" in err and "nor a pretrained tag of cityscale-nano-32" in err


# ----------------------------------------------------------------------------- cityscale train: dry run

def test_dry_run_prints_command_config_and_deepspeed_dict(capsys, shards, tmp_path):
    run = tmp_path / "run"
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(run), "--steps", "7",
                     "--nproc", "2", "--set", "deepspeed.zero_stage=3", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not run.exists()
    command = out.split("# resolved config")[0]
    assert "deepspeed --num_gpus 2 --master_port" in command and "--module trainer.main" in command
    assert "--no_local_rank" in command and "--set run.steps=7" in command
    assert "DS_ACCELERATOR" not in command, "auto: the accelerator is detected on the target, not on the launcher"
    resolved = yaml.safe_load(out.split("# resolved config")[1].split("# deepspeed config")[0])
    assert resolved["run"] == {"shards": shards, "dir": str(run), "steps": 7, "seed": 0}
    ds = json.loads(out.split("# deepspeed config")[1])
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_accumulation_steps"] == 2


def test_accelerator_flag_reaches_the_ranks_env_and_the_config(capsys, shards, tmp_path):
    code = cli.main(["train", "--config", TINY, "--shards", shards, "--run", str(tmp_path / "r"), "--nproc", "2",
                     "--accelerator", "cpu", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "DS_ACCELERATOR=cpu" in out.split("# resolved config")[0]
    assert yaml.safe_load(out.split("# resolved config")[1].split("# deepspeed config")[0])[
        "deepspeed"]["accelerator"] == "cpu"
    assert launch_env("auto", 2, hostfile=True) == {}, "multi-node auto: nothing decided on the launcher"
    assert launch_env("cuda", 4, hostfile=True) == {"DS_ACCELERATOR": "cuda"}


def test_hostfile_runs_carry_a_named_accelerator_in_a_deepspeed_env_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / ".deepspeed_env").write_text("NCCL_DEBUG=INFO\nDS_ACCELERATOR=cpu\n")
    added = deepspeed_env_file({"DS_ACCELERATOR": "cuda"}, str(tmp_path))
    lines = open(added["DS_ENV_FILE"]).read().splitlines()
    assert lines == ["NCCL_DEBUG=INFO", "DS_ACCELERATOR=cuda"], "the user's file is kept, the accelerator replaced"
    assert deepspeed_env_file({}, str(tmp_path)) == {}


def test_cuda_accelerator_on_a_host_without_cuda_is_one_line_exit_2(capsys, shards, tmp_path):
    from trainer import main as trainer_main  # imports deepspeed and open_clip

    code = trainer_main.main(["--config", TINY, "--set", f"run.shards={shards}", "--set", f"run.dir={tmp_path}",
                              "--set", "deepspeed.accelerator=cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'deepspeed.accelerator' is cuda" in err and "\n" not in err


def test_hostfile_world_size_and_prometheus_targets(tmp_path, shards):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two machines\nworker-0 slots=2\nworker-1 slots=1\n")
    hosts = hostfile_ranks(str(hostfile))
    assert hosts == [("worker-0", 2), ("worker-1", 1)]
    cfg = load_train_config(TINY, ["run.dir=s3://b/runs/r7", "metrics.port_base=9500"])
    assert prometheus_targets(cfg, hosts) == [{"targets": ["worker-0:9500", "worker-0:9501", "worker-1:9502"],
                                               "labels": {"job": "cityscale-train", "run": "r7"}}]
    assert prometheus_targets(cfg, [("localhost", 2)])[0]["targets"] == ["127.0.0.1:9500", "127.0.0.1:9501"]
    hostfile.write_text("worker-0 gpus=2\n")
    with pytest.raises(ConfigError, match="bad line"):
        hostfile_ranks(str(hostfile))


def test_pretrained_tag_offline_says_how_to_point_at_local_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from configs.train import ModelConfig
    from trainer.model import resolve_weights

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub's own offline mode
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(ConfigError, match=r"'model.pretrained': weights ViT-B-32/openai are neither in the Hugging Face cache nor reachable "
                                          r".*set model.pretrained=/path/to/open_clip_model.safetensors"):
        resolve_weights(ModelConfig(name="ViT-B-32", pretrained="openai"))
    local = tmp_path / "w.safetensors"
    local.write_bytes(b"")
    assert resolve_weights(ModelConfig(name="ViT-B-32", pretrained=str(local))) == str(local)
