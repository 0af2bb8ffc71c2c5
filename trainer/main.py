"""Trainer entry point, run on every rank by the deepspeed launcher:

    deepspeed [--hostfile H] [--num_gpus G] --module trainer.main --config configs/train/X.yaml [--set k=v ...]

(`cityscale train` builds that command). Order matters: load and check the config, the manifest, the model
name and the weights first, so a mistake is one line and exit code 2 before any process group starts; then
join the process group, build, restore the latest checkpoint if any, train, close.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from configs.loader import ConfigError, dump_yaml, read_yaml
from configs.train import TrainConfig, load_train_config
from data_shards.reader import Manifest
from data_shards.run_layout import CONFIG_FILE, DEEPSPEED_FILE
from data_shards.storage import join, write_text
from trainer import dist, engine, model, preflight
from trainer.checkpoint import Checkpointer
from trainer.data import build_stream, key_log
from trainer.ds_config import deepspeed_config
from trainer.loop import Trainer, train
from trainer.loss import build_loss, model_kwargs, trained_prefixes
from trainer.metrics import build_sink

log = logging.getLogger("trainer")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainer.main", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="trainer YAML (configs/train/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed adds it; we read the env
    return p


def prepare(cfg: TrainConfig, world_size: int) -> tuple[Manifest, str | None, dict]:
    """Every check that can fail on user input: manifest, model name, weights, override file."""
    manifest = preflight.check(cfg, world_size)
    if cfg.deepspeed.accelerator == "cuda" and not torch.cuda.is_available():  # checked here, on the target host
        raise ConfigError("config key 'deepspeed.accelerator' is cuda but this host has no usable CUDA device: "
                          "run on GPU hosts, or pass --accelerator auto (or cpu)")
    weights = model.resolve_weights(cfg.model)
    overrides = read_yaml(cfg.deepspeed.overrides) if cfg.deepspeed.overrides else {}
    return manifest, weights, overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    info = dist.env_info()
    try:
        cfg = load_train_config(args.config, args.set)
        manifest, weights, overrides = prepare(cfg, info.world_size)
    except ConfigError as e:
        print(f"trainer: {e}", file=sys.stderr)
        return 2
    # open_clip logs through the root logger at INFO: keep ours at INFO, the libraries' at WARNING
    logging.basicConfig(level=logging.WARNING, format=f"[rank {info.rank}] %(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    run(cfg, info, manifest, weights, overrides)
    return 0


def run(cfg: TrainConfig, info: dist.DistInfo, manifest: Manifest, weights: str | None, overrides: dict) -> None:
    engine.init_distributed(info.rank)
    torch.manual_seed(cfg.run.seed)
    built = model.build(cfg.model, weights, model_kwargs(cfg.loss))
    model.freeze(built.module, trained_prefixes(cfg.loss))
    ds_dict = deepspeed_config(batch=cfg.batch, optim=cfg.optim, schedule=cfg.schedule, zero=cfg.deepspeed,
                               steps=cfg.run.steps, world_size=info.world_size, overrides=overrides)
    if info.is_main:
        _write_run_files(cfg, ds_dict)
    eng = engine.build_engine(built.module, model.param_groups(built.module, cfg.optim.weight_decay), ds_dict)
    data = build_stream(cfg.data, manifest, built, per_rank_batch=cfg.batch.per_rank(info.world_size),
                        rank=info.rank, world_size=info.world_size)
    checkpointer = Checkpointer(cfg.checkpoint, cfg.run.dir, total_steps=cfg.run.steps, info=info, engine=eng,
                                export=lambda weights_, folder: model.export(weights_, built, folder,
                                                                             cfg.loss.logit_scale_max))
    restored = checkpointer.restore()
    start = 0
    if restored is not None:
        data.load_state_dict(restored.loader)
        start = restored.step
        log.info("resumed from step %d (engine step %d)", start, eng.global_steps)
    loss = build_loss(cfg.loss, rank=info.rank, world_size=info.world_size,
                      captioning=model.is_captioner(built.module), pad_id=model.pad_id(built.module))
    trainer = Trainer(engine=eng, loss=loss, data=data,
                      checkpointer=checkpointer, keys=key_log(cfg.debug.log_sample_keys, cfg.run.dir, info.rank),
                      sink=build_sink(cfg.metrics, run_dir=cfg.run.dir, info=info, total_steps=cfg.run.steps,
                                      start_step=start), micro_batch=cfg.batch.micro_batch)
    train(trainer, start_step=start, total_steps=cfg.run.steps)
    log.info("done: %d steps, latest checkpoint %s", cfg.run.steps, checkpointer.latest())


def _write_run_files(cfg: TrainConfig, ds_dict: dict) -> None:
    """The resolved config and the generated DeepSpeed dict, next to the run's logs and checkpoints."""
    write_text(join(cfg.run.dir, CONFIG_FILE), dump_yaml(cfg))
    write_text(join(cfg.run.dir, DEEPSPEED_FILE), json.dumps(ds_dict, indent=1))


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "prepare", "run"]
