"""Contrastive losses over negatives gathered from all ranks.

Both losses take the model's named outputs and return named terms (the total is their sum), so a CoCa
captioning term is one more loss class, not a change to the loop. Each loss declares:

- `pooled_keys`: per-sample outputs whose rows form the negative pool. The feature-cache accumulation
  (`trainer/accum.py`) concatenates them over the micro-batches of a step before calling the loss.
- `shared_keys`: per-step parameters (logit scale, bias) that must take part in the gradient once per step.

InfoNCE, local form (default, open_clip's `local_loss=True, gather_with_grad=True`): rank r scores its
B_local rows against all B_global columns, labels offset by r x B_local. Because the gather carries
gradients, the mean of the per-rank losses (what data-parallel gradient averaging optimises) equals the loss
of one process on the concatenated batch, and so do the gradients. `local_loss=False` computes the full
B_global x B_global matrix on every rank (same value and gradient, more compute).

SigLIP (pairwise sigmoid): local images against all gathered texts, +1 on the offset diagonal, -1
elsewhere, summed and divided by B_local (open_clip's normalisation), again equal to one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from configs.train import LossConfig
from trainer import dist

Gather = Callable[[torch.Tensor], torch.Tensor]


class Loss(Protocol):
    pooled_keys: tuple[str, ...]
    shared_keys: tuple[str, ...]

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@dataclass
class InfoNCE:
    rank: int
    world_size: int
    local_loss: bool = True
    gather: Gather = field(default=dist.gather_with_grad, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features", "text_features")
    shared_keys: tuple[str, ...] = ("logit_scale",)

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img, txt = outputs["image_features"].float(), outputs["text_features"].float()
        scale = outputs["logit_scale"].float()
        all_img, all_txt = self.gather(img), self.gather(txt)  # sync point: all ranks gather in step
        n = img.shape[0]
        if self.local_loss:
            logits_img, logits_txt = scale * img @ all_txt.T, scale * txt @ all_img.T
            labels = torch.arange(n, device=img.device) + self.rank * n
        else:
            logits_img = scale * all_img @ all_txt.T
            logits_txt = logits_img.T
            labels = torch.arange(all_img.shape[0], device=img.device)
        return {"contrastive": (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_txt, labels)) / 2}


@dataclass
class SigLIP:
    rank: int
    world_size: int
    gather: Gather = field(default=dist.gather_with_grad, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features", "text_features")
    shared_keys: tuple[str, ...] = ("logit_scale", "logit_bias")

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img, txt = outputs["image_features"].float(), outputs["text_features"].float()
        all_txt = self.gather(txt)  # sync point: all ranks gather in step
        logits = outputs["logit_scale"].float() * img @ all_txt.T + outputs["logit_bias"].float()
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        signs[torch.arange(n), torch.arange(n) + self.rank * n] = 1.0
        return {"contrastive": -F.logsigmoid(signs * logits).sum() / n}


def build_loss(cfg: LossConfig, *, rank: int, world_size: int) -> Loss:
    if cfg.kind == "siglip":
        return SigLIP(rank=rank, world_size=world_size)
    return InfoNCE(rank=rank, world_size=world_size, local_loss=cfg.local_loss)


def model_kwargs(cfg: LossConfig) -> dict[str, Any]:
    """Extra open_clip model arguments the loss needs (SigLIP: a learnable bias, its usual init)."""
    if cfg.kind == "siglip":
        return {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    return {}


__all__ = ["Loss", "InfoNCE", "SigLIP", "build_loss", "model_kwargs"]
