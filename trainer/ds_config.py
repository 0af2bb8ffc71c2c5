"""The DeepSpeed config dict, computed from our config sections by one pure function.

Batch arithmetic comes from `BatchConfig` only: train_batch_size = global_batch,
train_micro_batch_size_per_gpu = micro_batch, gradient_accumulation_steps = global / (micro x ranks).

Accumulation and the feature cache. Our accumulation (`trainer/accum.py`) runs every micro-batch of a step
inside one call and backpropagates, per micro-batch j, the whole-pool loss with only j's rows live; the sum
of those gradients is the gradient of the step's loss. DeepSpeed still counts the micro-batches: we declare
gradient_accumulation_steps = micro-batches per rank, call `engine.backward(loss, scale_wrt_gas=False)`
(no 1/gas factor: our per-micro losses must be summed, not averaged) and `engine.step()` after each
backward, so DeepSpeed reduces gradients, clips and updates exactly once per step, at its accumulation
boundary, with its batch bookkeeping (train_batch_size, samples seen) consistent with ours.

One rank has nothing to partition: there the ZeRO stage is 0 whatever `deepspeed.zero_stage` says (the same
update: bf16 weights with fp32 master weights and AdamW state), because DeepSpeed's ZeRO-1/2 optimizer costs a
single rank 13-20% of its step on CPU (docs/benchmarks.md, "Trainer throughput") in bucketing, flattening and
partition bookkeeping. An override file that sets any `zero_optimization` key
(offloading, say) keeps the configured stage.

Precision: `bf16` is DeepSpeed's bf16 section (bf16 weights and gradients, fp32 master weights in its
optimizer wrapper); `amp_bf16` its `torch_autocast` section (fp32 weights, the forward under torch.autocast,
the optimizer unwrapped; at stage 0 `trainer/engine.py` clips the gradients).

Optimizer and LR schedule are in the dict too, so DeepSpeed builds, steps and checkpoints them (exact
resume of the schedule comes from its checkpoint): torch's own AdamW (`torch_adam`, no DeepSpeed op build
needed) in its fused form, one kernel per step on CPU and GPU (on the project VM 9 ms instead of 55 ms for the
10 M parameters of the benchmark model, ~7% of its step), and WarmupCosineLR or WarmupLR. An expert override
dict is merged in last; it may not touch the batch keys.
"""

from __future__ import annotations

from typing import Any

from configs.loader import ConfigError
from configs.train import BatchConfig, DeepSpeedConfig, OptimConfig, ScheduleConfig

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def deepspeed_config(*, batch: BatchConfig, optim: OptimConfig, schedule: ScheduleConfig, zero: DeepSpeedConfig,
                     steps: int, world_size: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepSpeed dict for `world_size` ranks and `steps` optimizer steps."""
    config: dict[str, Any] = {
        "train_batch_size": batch.global_batch,
        "train_micro_batch_size_per_gpu": batch.micro_batch,
        "gradient_accumulation_steps": batch.accum_steps(world_size),
        "gradient_clipping": optim.grad_clip,
        "bf16": {"enabled": zero.precision == "bf16"},
        "torch_autocast": {"enabled": zero.precision == "amp_bf16", "dtype": "bfloat16"},
        "zero_optimization": {"stage": zero_stage(zero, world_size, overrides or {})},
        "optimizer": {"type": "AdamW", "params": {
            "lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay,
            "torch_adam": True, "fused": True}},
        "scheduler": _scheduler(schedule, steps, optim.lr),
        "steps_per_print": 2**31 - 1,  # our metrics report; keep DeepSpeed's own progress lines out of the log
        "wall_clock_breakdown": False,
    }
    return _merge(config, overrides or {})


def zero_stage(zero: DeepSpeedConfig, world_size: int, overrides: dict[str, Any]) -> int:
    """The configured stage, or 0 on one rank unless the override file tunes ZeRO itself."""
    return zero.zero_stage if world_size > 1 or "zero_optimization" in overrides else 0


def _scheduler(schedule: ScheduleConfig, steps: int, lr: float) -> dict[str, Any]:
    if schedule.kind == "cosine":
        return {"type": "WarmupCosineLR", "params": {
            "total_num_steps": steps, "warmup_num_steps": schedule.warmup_steps, "warmup_type": "linear",
            "warmup_min_ratio": 0.0, "cos_min_ratio": schedule.min_lr_ratio}}
    return {"type": "WarmupLR", "params": {"warmup_num_steps": schedule.warmup_steps, "warmup_type": "linear",
                                           "warmup_min_lr": 0.0, "warmup_max_lr": lr}}


def _merge(base: dict[str, Any], extra: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        where = f"{path}.{key}" if path else key
        if where in BATCH_KEYS:
            raise ConfigError(f"deepspeed.overrides sets {where!r}: batch sizes come from batch.global_batch and "
                              "batch.micro_batch only: remove it from the override file")
        out[key] = _merge(out[key], value, where) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


__all__ = ["deepspeed_config", "zero_stage", "BATCH_KEYS"]
