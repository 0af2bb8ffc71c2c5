"""Config sections of the trainer (`trainer/`, `cityscale train`): one frozen, keyword-only dataclass per component.

Each component receives only its own section (shared STYLE.md habit 3). Batch arithmetic lives in one place,
`BatchConfig`: the global batch is split into `world_size` ranks x `accum_steps` micro-batches of `micro_batch`;
the DeepSpeed dict is derived from it (`trainer/ds_config.py`), so the two can never disagree. Checks that need
the world size (`BatchConfig.check`) run in the launcher and in `trainer.main`, before any process group starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from configs.data import LoaderConfig
from configs.loader import ConfigError, doc, key_path, load


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where the data comes from, where the run goes, how long it lasts."""

    shards: str = doc("shard folder holding manifest.json (local path, file:// or s3://)", default="")
    dir: str = doc("run folder receiving logs and checkpoints (local path or s3://)", default="")
    steps: int = doc("optimizer steps to train (the LR schedule spans them)", default=100)
    seed: int = doc("seed of model init and torch RNG (the data order has its own data.seed)", default=0)

    def validate(self, path: str) -> None:
        if self.steps < 1:
            raise ConfigError(f"config key {key_path(path, 'steps')!r}: {self.steps} must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which open_clip architecture, and from which weights."""

    name: str = doc("open_clip model name (open_clip.list_models()) or a configs/models/*.json file stem",
                    default="cityscale-nano-32")
    pretrained: str = doc("'' = random init; an open_clip pretrained tag; or a local weights file "
                          "(.safetensors / .bin / .pt)", default="")


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Samples per optimizer step, and how they are cut into micro-batches."""

    global_batch: int = doc("samples per optimizer step over all ranks (the contrastive negative pool)", default=64)
    micro_batch: int = doc("samples per forward/backward on one rank; global_batch / (micro_batch x ranks) "
                           "micro-batches are accumulated with the feature cache", default=32)

    def validate(self, path: str) -> None:
        for name in ("global_batch", "micro_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {key_path(path, name)!r}: {getattr(self, name)} must be >= 1")
        if self.global_batch % self.micro_batch:
            raise ConfigError(f"config key {key_path(path, 'micro_batch')!r}: {self.micro_batch} does not divide "
                              f"{key_path(path, 'global_batch')}={self.global_batch}: pick a divisor")

    def check(self, world_size: int, path: str = "batch") -> None:
        """Raise ConfigError unless micro_batch x world_size divides global_batch."""
        if self.global_batch % (self.micro_batch * world_size):
            raise ConfigError(
                f"config key {key_path(path, 'micro_batch')!r}: micro_batch x ranks = {self.micro_batch} x {world_size} "
                f"does not divide {key_path(path, 'global_batch')}={self.global_batch}: pick global_batch as a "
                f"multiple of {self.micro_batch * world_size}")

    def per_rank(self, world_size: int) -> int:
        """Samples one rank contributes to one optimizer step."""
        self.check(world_size)
        return self.global_batch // world_size

    def accum_steps(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.per_rank(world_size) // self.micro_batch


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW (weight decay on weight matrices only, as open_clip does)."""

    lr: float = doc("peak learning rate", default=5e-4)
    weight_decay: float = doc("AdamW weight decay for weight matrices (not for gains, biases, logit scale)",
                              default=0.1)
    betas: tuple[float, float] = doc("AdamW betas", default=(0.9, 0.98))
    eps: float = doc("AdamW epsilon", default=1e-6)
    grad_clip: float = doc("clip the global gradient norm to this value (0 = off)", default=1.0)

    def validate(self, path: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key {key_path(path, 'lr')!r}: {self.lr} must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"config key {key_path(path, 'betas')!r}: {list(self.betas)} must be two values in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError(f"config key {key_path(path, 'grad_clip')!r} / 'weight_decay' must be >= 0")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule over `run.steps` optimizer steps."""

    kind: Literal["cosine", "constant"] = doc("linear warmup, then cosine decay or constant", default="cosine")
    warmup_steps: int = doc("linear warmup steps from 0 to optim.lr (>= 1)", default=10)
    min_lr_ratio: float = doc("cosine: final LR as a fraction of optim.lr", default=0.0)

    def validate(self, path: str) -> None:
        if self.warmup_steps < 1:
            raise ConfigError(f"config key {key_path(path, 'warmup_steps')!r}: {self.warmup_steps} must be >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"config key {key_path(path, 'min_lr_ratio')!r}: {self.min_lr_ratio} must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Contrastive objective over negatives gathered from all ranks (+ the captioning term of CoCa models)."""

    kind: Literal["infonce", "siglip", "simclr"] = doc(
        "infonce (CLIP softmax), siglip (pairwise sigmoid) or simclr (image-only NT-Xent between two augmented "
        "views of each tile, the 'does text help' control: trains the image tower only, needs data.views: 2)",
        default="infonce")
    local_loss: bool = doc("infonce: B_local x B_global logits per rank (default); false = every rank computes "
                           "the full B_global x B_global matrix. siglip always uses the local form", default=True)
    logit_scale_max: float = doc("the loss uses the logit scale clamped to [1, this] (open_clip and UrbanCLIP clamp "
                                 "ln(scale) to [0, ln 100] after each step); 0 = no clamp", default=100.0)
    contrastive_weight: float = doc("CoCa models: weight of the contrastive term (open_clip's clip_loss_weight)",
                                    default=1.0)
    caption_weight: float = doc("CoCa models: weight of the captioning cross-entropy of the text decoder "
                                "(open_clip's caption_loss_weight)", default=1.0)
    temperature: float = doc("simclr: fixed NT-Xent temperature tau (SimCLR's 0.5 for 32 px CIFAR-10, 0.1 for "
                             "ImageNet at batch 4096; docs/methods/simclr-control.md)", default=0.5)

    def views(self) -> int:
        """Augmented views of each tile the loss needs from the loader (data.views)."""
        return 2 if self.kind == "simclr" else 1

    def validate(self, path: str) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"config key {key_path(path, 'temperature')!r}: {self.temperature} must be > 0")
        if self.logit_scale_max != 0 and self.logit_scale_max < 1:
            raise ConfigError(f"config key {key_path(path, 'logit_scale_max')!r}: {self.logit_scale_max} must be 0 "
                              "(no clamp) or >= 1")
        for name in ("contrastive_weight", "caption_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {key_path(path, name)!r}: {getattr(self, name)} must be >= 0")
        if self.contrastive_weight == 0 and self.caption_weight == 0:
            raise ConfigError(f"config key {key_path(path, 'contrastive_weight')!r}: both loss weights are 0: "
                              "set at least one above 0")


@dataclass(frozen=True, kw_only=True)
class DeepSpeedConfig:
    """ZeRO and precision; the rest of the DeepSpeed dict is derived from the other sections."""

    zero_stage: Literal[0, 1, 2, 3] = doc("ZeRO stage: 0 (plain data parallel), 1, 2 or 3", default=2)
    precision: Literal["bf16", "amp_bf16", "fp32"] = doc(
        "bf16 (bf16 weights, fp32 master weights in the optimizer: DeepSpeed's bf16 mode), amp_bf16 (fp32 "
        "weights, bf16 compute under torch.autocast: open_clip_train's amp_bf16) or fp32", default="bf16")
    overrides: str = doc("expert JSON/YAML file merged last into the generated DeepSpeed dict (batch keys are "
                         "refused: set batch.* instead)", default="")
    accelerator: Literal["auto", "cuda", "cpu"] = doc(
        "what the ranks run on: auto (DeepSpeed detects it on each target host: CUDA where there are GPUs, else "
        "CPU ranks talking gloo), cuda or cpu (set DS_ACCELERATOR for every rank; `cityscale train "
        "--accelerator` sets this)", default="auto")


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Publishing checkpoints under RUN/checkpoints/step_{N}/ and resuming from them."""

    every_steps: int = doc("publish a checkpoint every N optimizer steps and at the end (0 = only at the end)",
                           default=0)
    keep_last: int = doc("keep the last K published checkpoints (older ones are deleted)", default=2)
    resume: bool = doc("continue from RUN/checkpoints/latest when it exists", default=True)

    def validate(self, path: str) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"config key {key_path(path, 'every_steps')!r}: {self.every_steps} must be >= 0")
        if self.keep_last < 1:
            raise ConfigError(f"config key {key_path(path, 'keep_last')!r}: {self.keep_last} must be >= 1")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Prometheus endpoint per rank, JSONL log, optional TensorBoard, rank-0 progress bar."""

    port_base: int = doc("Prometheus port of rank 0; rank r serves base + r (0 = no endpoint)", default=9400)
    host: str = doc("address the Prometheus endpoints bind to", default="127.0.0.1")
    log_every: int = doc("write a JSONL / TensorBoard record every N steps", default=1)
    tensorboard: bool = doc("also write TensorBoard events under RUN/tensorboard (needs `pip install "
                            "tensorboard`)", default=False)
    progress: bool = doc("rank-0 progress bar with ETA on stderr", default=True)

    def validate(self, path: str) -> None:
        if not (self.port_base == 0 or 1024 <= self.port_base <= 65000):
            raise ConfigError(f"config key {key_path(path, 'port_base')!r}: {self.port_base} must be 0 or in 1024..65000")
        if self.log_every < 1:
            raise ConfigError(f"config key {key_path(path, 'log_every')!r}: {self.log_every} must be >= 1")


@dataclass(frozen=True, kw_only=True)
class DebugConfig:
    """Diagnostics that cost I/O; off by default."""

    log_sample_keys: bool = doc("write the sample keys of every step to RUN/debug/keys-rank{r}.jsonl "
                                "(used to check exact resume)", default=False)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The whole trainer config (configs/train/*.yaml)."""

    run: RunConfig = doc("data, run folder, length", default=RunConfig())
    model: ModelConfig = doc("model architecture and weights", default=ModelConfig())
    data: LoaderConfig = doc("shard streaming", default=LoaderConfig())
    batch: BatchConfig = doc("batch sizes", default=BatchConfig())
    optim: OptimConfig = doc("optimizer", default=OptimConfig())
    schedule: ScheduleConfig = doc("learning-rate schedule", default=ScheduleConfig())
    loss: LossConfig = doc("contrastive loss", default=LossConfig())
    deepspeed: DeepSpeedConfig = doc("ZeRO stage and precision", default=DeepSpeedConfig())
    checkpoint: CheckpointConfig = doc("checkpoints and resume", default=CheckpointConfig())
    metrics: MetricsConfig = doc("metrics and logs", default=MetricsConfig())
    debug: DebugConfig = doc("diagnostics", default=DebugConfig())

    def validate(self, path: str) -> None:
        if self.data.split != "train":
            raise ConfigError(f"config key {key_path(path, 'data.split')!r}: the trainer reads the 'train' split, "
                              f"got {self.data.split!r}")
        if self.data.views != self.loss.views():
            raise ConfigError(f"config key {key_path(path, 'data.views')!r}: loss.kind {self.loss.kind} takes "
                              f"{self.loss.views()} view(s) of each tile, got {self.data.views}: set data.views: "
                              f"{self.loss.views()}")
        if self.schedule.warmup_steps > self.run.steps:
            raise ConfigError(f"config key {key_path(path, 'schedule.warmup_steps')!r}: {self.schedule.warmup_steps} "
                              f"exceeds run.steps={self.run.steps}: lower it")

    def check_runnable(self, world_size: int) -> None:
        """Checks that need the launch: paths given, batch divisible by the ranks."""
        for name in ("shards", "dir"):
            if not getattr(self.run, name):
                raise ConfigError(f"config key 'run.{name}' is empty: pass --{'run' if name == 'dir' else name} "
                                  f"URL to `cityscale train` or --set run.{name}=URL")
        self.batch.check(world_size)


def load_train_config(uri: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file plus `key=value` overrides; ConfigError names the dotted key."""
    return load(TrainConfig, uri, overrides)


__all__ = ["TrainConfig", "RunConfig", "ModelConfig", "BatchConfig", "OptimConfig", "ScheduleConfig", "LossConfig",
           "DeepSpeedConfig", "CheckpointConfig", "MetricsConfig", "DebugConfig", "load_train_config"]
