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

CoCa (UrbanCLIP's objective, open_clip's CoCaLoss): weighted InfoNCE + weighted captioning cross-entropy of
the text decoder (teacher forcing, pad tokens ignored). The captioning term is per sample, not pooled: each
micro-batch adds its token losses (`summed_terms`), divided by the step's token count over all ranks / ranks
(one all-reduce per step, in `start_step`), so ranks x micro-batches again equal one process on the whole
batch (open_clip averages per rank, which differs when ranks hold different token counts).

The logit scale is clamped inside the loss (`logit_scale_max`, open_clip's ln 100): the effective scale is
the same as clamping the parameter after each step, and it needs no access to the parameter, which under
ZeRO lives in fp32 master partitions (bf16) or is partitioned across ranks (ZeRO-3). The exporter clamps
the stored parameter (trainer/model.py), so the exported model scores as trained.
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
    summed_terms: tuple[str, ...]  # terms whose step value is the sum over micro-batches (others: whole pool)

    def start_step(self, texts: torch.Tensor) -> None: ...

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def logit_scale(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


def clamp_scale(scale: torch.Tensor, max_scale: float) -> torch.Tensor:
    """The logit scale the loss uses: within [1, max_scale] (ln scale in [0, ln max]); 0 = unclamped."""
    return scale.float().clamp(1.0, max_scale) if max_scale else scale.float()


class _Contrastive:
    """What the two contrastive losses share: no per-step preparation, the clamped logit scale."""
    max_scale: float

    def start_step(self, texts: torch.Tensor) -> None:
        pass

    def logit_scale(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return clamp_scale(outputs["logit_scale"], self.max_scale)


@dataclass
class InfoNCE(_Contrastive):
    rank: int
    world_size: int
    local_loss: bool = True
    max_scale: float = 0.0
    gather: Gather = field(default=dist.gather_with_grad, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features", "text_features")
    shared_keys: tuple[str, ...] = ("logit_scale",)
    summed_terms: tuple[str, ...] = ()

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img, txt = outputs["image_features"].float(), outputs["text_features"].float()
        scale = self.logit_scale(outputs)
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
class SigLIP(_Contrastive):
    rank: int
    world_size: int
    max_scale: float = 0.0
    gather: Gather = field(default=dist.gather_with_grad, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features", "text_features")
    shared_keys: tuple[str, ...] = ("logit_scale", "logit_bias")
    summed_terms: tuple[str, ...] = ()

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img, txt = outputs["image_features"].float(), outputs["text_features"].float()
        all_txt = self.gather(txt)  # sync point: all ranks gather in step
        logits = self.logit_scale(outputs) * img @ all_txt.T + outputs["logit_bias"].float()
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        signs[torch.arange(n), torch.arange(n) + self.rank * n] = 1.0
        return {"contrastive": -F.logsigmoid(signs * logits).sum() / n}


@dataclass
class CoCa:
    """weight x InfoNCE + weight x captioning cross-entropy (token sum / the step's tokens per rank)."""
    contrastive: InfoNCE
    contrastive_weight: float
    caption_weight: float
    world_size: int
    pad_id: int = 0
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=dist.all_reduce_sum, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features", "text_features")
    shared_keys: tuple[str, ...] = ("logit_scale",)
    summed_terms: tuple[str, ...] = ("caption",)
    _tokens: float = field(default=1.0, init=False, repr=False)

    def start_step(self, texts: torch.Tensor) -> None:
        """Count the tokens to predict (labels = texts[:, 1:] that are not padding) over all ranks."""
        count = (texts[:, 1:] != self.pad_id).sum().to(torch.float64)
        self._tokens = max(float(self.all_reduce(count)) / self.world_size, 1.0)  # sync point: all ranks

    def logit_scale(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.contrastive.logit_scale(outputs)

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, labels = outputs["logits"].float(), outputs["labels"]
        token_sum = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.pad_id, reduction="sum")
        terms = {"caption": self.caption_weight * token_sum / self._tokens}
        if self.contrastive_weight:
            terms["contrastive"] = self.contrastive_weight * self.contrastive(outputs)["contrastive"]
        return terms


def build_loss(cfg: LossConfig, *, rank: int, world_size: int, captioning: bool = False, pad_id: int = 0) -> Loss:
    """The configured loss; `captioning` (a CoCa model, see trainer/model.py) adds the decoder's term."""
    if cfg.kind == "siglip":
        return SigLIP(rank=rank, world_size=world_size, max_scale=cfg.logit_scale_max)
    infonce = InfoNCE(rank=rank, world_size=world_size, local_loss=cfg.local_loss, max_scale=cfg.logit_scale_max)
    if not captioning:
        return infonce
    return CoCa(contrastive=infonce, contrastive_weight=cfg.contrastive_weight, caption_weight=cfg.caption_weight,
                world_size=world_size, pad_id=pad_id)


def model_kwargs(cfg: LossConfig) -> dict[str, Any]:
    """Extra open_clip model arguments the loss needs (SigLIP: a learnable bias, its usual init)."""
    if cfg.kind == "siglip":
        return {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    return {}


__all__ = ["Loss", "InfoNCE", "SigLIP", "CoCa", "clamp_scale", "build_loss", "model_kwargs"]
