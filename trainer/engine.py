"""The only module that imports DeepSpeed: process group, engine, micro-step, checkpoint files.

`Engine` adapts a DeepSpeed engine to what the rest of the trainer needs: `forward`/`backward` for the
feature-cache accumulation (`backward` also calls DeepSpeed's `step`, which updates only at the
accumulation boundary, see `trainer/ds_config.py`), the learning rate and grad norm for metrics, a full
state dict for export (gathered under ZeRO-3), and save/load of DeepSpeed's own checkpoint files.

Two jobs DeepSpeed does poorly at ZeRO stage 0 are done here instead (docs/benchmarks.md, "Trainer throughput"):
- With fp32 weights (precision fp32 or amp_bf16) DeepSpeed clips gradients in `clip_fp32_gradients`, one
  tensor at a time, and fails on a 0-dim parameter such as open_clip's logit scale ("output with shape []
  doesn't match the broadcast shape [1]", DeepSpeed 0.19.7). The engine then gets gradient_clipping 0 and
  `Engine` clips with torch's foreach `clip_grad_norm_` at the accumulation boundary, after the gradients were
  reduced (stage 0 reduces them in `backward` at the boundary).
- On one rank at stage 0 there is nothing to reduce, but DeepSpeed would still flatten every gradient, all-reduce it
  over the one rank and copy it back (~5% of a step of the benchmark model): its backward all-reduce is off.

Loading is restricted to `torch.load(weights_only=True)`: DeepSpeed's stock checkpoint engine unpickles with
`weights_only=False`, so we swap in one that allowlists exactly the few DeepSpeed classes its files hold.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

# classes DeepSpeed pickles into its checkpoint files (model, optimizer states; ZeRO stages 0-3, bf16/fp32)
SAFE_GLOBALS = [LossScaler, ZeroStageEnum, fragment_address]


class SafeLoadCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True and an explicit allowlist."""

    def load(self, path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer"  # DeepSpeed's csrc/cpu/comm/shm.cpp SHM_BUFFER_NAME


def init_distributed(rank: int) -> None:
    """Join the process group the deepspeed launcher set up (env: MASTER_ADDR/PORT, RANK, WORLD_SIZE).

    On CPU, DeepSpeed also maps a 66 MB POSIX shared-memory all-reduce buffer per rank and never unlinks it:
    every run would leave ranks x 66 MB in /dev/shm until reboot. Once all ranks have mapped each other's
    buffers (the barrier), each rank unlinks its own name; the mappings stay valid until the process exits."""
    on_cuda = get_accelerator().device_name() == "cuda"  # DS_ACCELERATOR, or DeepSpeed's detection on this host
    deepspeed.init_distributed(dist_backend="nccl" if on_cuda else "gloo")
    if on_cuda:
        return
    deepspeed.comm.barrier()  # sync point: every rank has opened every other rank's buffer
    name = f"{SHM_BUFFER}_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{rank}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


class Engine:
    """A DeepSpeed engine seen as a feature-cache stepper (trainer/accum.py) plus checkpoint I/O."""

    def __init__(self, ds: Any, clip: float | None = None) -> None:
        self.ds = ds
        self.dtype = torch.bfloat16 if ds.bfloat16_enabled() else torch.float32
        self.clip = clip  # None: DeepSpeed clips; a max norm (0 = none): we do, see the module docstring
        self._grad_norm: torch.Tensor | None = None

    def forward(self, images: torch.Tensor, texts: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The model's named outputs; texts None (an image-only loss) leaves the text tower out."""
        return self.ds(images.to(self.ds.device, self.dtype), None if texts is None else texts.to(self.ds.device))

    def backward(self, loss: torch.Tensor) -> None:
        # our per-micro-batch losses are summed, not averaged: no 1/gas factor (trainer/ds_config.py)
        self.ds.backward(loss, scale_wrt_gas=False)
        if self.clip is not None and self.ds.is_gradient_accumulation_boundary():
            self._grad_norm = self._clip_gradients()
        self.ds.step()  # sync point at the accumulation boundary: gradient reduction across ranks, update

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps)

    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def grad_norm(self) -> float | None:
        norm = self._grad_norm if self.clip is not None else self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def _clip_gradients(self) -> torch.Tensor:
        """The global gradient norm, and the gradients scaled to `clip` when above it (fp32 weights, stage 0)."""
        params = [p for p in self.ds.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if self.clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.clip, norm, foreach=True)
        return norm

    def full_state_dict(self, keep: bool) -> dict[str, torch.Tensor]:
        """The whole model's weights where `keep` ({} elsewhere); gathered from the partitions under ZeRO-3.

        Collective: every rank calls it, the gather needs them all."""
        params = list(self.ds.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):  # sync point under ZeRO-3
            if not keep:
                return {}
            return {k: v.detach().clone() for k, v in self.ds.module.state_dict().items()}

    def save(self, folder: str, tag: str) -> None:
        """DeepSpeed checkpoint files of this rank under folder/tag (collective: every rank calls it)."""
        self.ds.save_checkpoint(folder, tag=tag, save_latest=False)

    def load(self, folder: str, tag: str) -> None:
        """Restore module, optimizer and LR schedule from folder/tag (collective)."""
        path, _ = self.ds.load_checkpoint(folder, tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder}/{tag}")


def clips_fp32_at_stage0(config: dict[str, Any]) -> bool:
    """Whether DeepSpeed would clip through its fp32 stage-0 path (`clip_fp32_gradients`): no ZeRO, no bf16/fp16."""
    return (config["zero_optimization"]["stage"] == 0 and not config.get("bf16", {}).get("enabled")
            and not config.get("fp16", {}).get("enabled"))


def build_engine(module: torch.nn.Module, param_groups: list[dict], config: dict[str, Any]) -> Engine:
    """deepspeed.initialize with optimizer and scheduler from `config` (trainer/ds_config.py)."""
    clip = float(config.get("gradient_clipping", 0.0)) if clips_fp32_at_stage0(config) else None
    if clip is not None:
        config = {**config, "gradient_clipping": 0.0}  # Engine clips instead (module docstring)
    ds, _, _, _ = deepspeed.initialize(model=module, model_parameters=param_groups, config=config)
    ds.checkpoint_engine = SafeLoadCheckpointEngine(ds._config)
    if deepspeed.comm.get_world_size() == 1 and config["zero_optimization"]["stage"] == 0:
        ds.enable_backward_allreduce = False  # one rank: no gradient all-reduce (module docstring)
    return Engine(ds, clip)


__all__ = ["Engine", "build_engine", "clips_fp32_at_stage0", "init_distributed", "SafeLoadCheckpointEngine",
           "SAFE_GLOBALS"]
