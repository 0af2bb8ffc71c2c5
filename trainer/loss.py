"""Contrastive losses over negatives gathered from all ranks.

The losses take the model's named outputs and return named terms (the total is their sum), so a CoCa
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

SimCLR (NT-Xent, Chen et al. 2020; the image-only control): the loader gives two augmented views of each
tile, `model_inputs` interleaves them (rows 2i and 2i+1 are tile i) and drops the text, so the text tower
is not run. Each of the 2N views is scored against every other view of the step gathered from all ranks
(self-similarity masked) at a fixed temperature; its positive is its twin. Rank r's rows sit at r x 2B_local
in the gathered pool, and feature-cache micro-batches keep each pair together, so ranks x micro-batches
again equal one process on the whole batch. `trained_prefixes` freezes everything but the image tower.

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

    def model_inputs(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the model's forward gets for one micro-batch of the loader (text None: no text tower)."""
        ...

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

    def model_inputs(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return images, texts

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

    def model_inputs(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.contrastive.model_inputs(images, texts)

    def logit_scale(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.contrastive.logit_scale(outputs)

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, labels = outputs["logits"].float(), outputs["labels"]
        token_sum = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.pad_id, reduction="sum")
        terms = {"caption": self.caption_weight * token_sum / self._tokens}
        if self.contrastive_weight:
            terms["contrastive"] = self.contrastive_weight * self.contrastive(outputs)["contrastive"]
        return terms


@dataclass
class SimCLR:
    """NT-Xent over the two views of each tile, negatives from every rank, at a fixed temperature."""
    rank: int
    world_size: int
    temperature: float = 0.5
    gather: Gather = field(default=dist.gather_with_grad, repr=False)
    pooled_keys: tuple[str, ...] = ("image_features",)
    shared_keys: tuple[str, ...] = ()
    summed_terms: tuple[str, ...] = ()

    def start_step(self, texts: torch.Tensor) -> None:
        pass

    def model_inputs(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, None]:
        """[B, 2, 3, H, W] -> [2B, 3, H, W] with the views of tile i at rows 2i, 2i + 1; no text."""
        if images.dim() < 3 or images.shape[1] != 2:
            raise ValueError(f"simclr needs two views per tile, images [B, 2, ...] (data.views: 2), "
                             f"got shape {tuple(images.shape)}")
        return images.flatten(0, 1), None

    def logit_scale(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tensor(1.0 / self.temperature)

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = F.normalize(outputs["image_features"].float(), dim=-1)  # cosine similarity (model output is unit)
        pool = self.gather(views)  # sync point: all ranks gather in step
        n = views.shape[0]
        rows = torch.arange(n, device=views.device)
        own = torch.zeros(n, pool.shape[0], dtype=torch.bool, device=views.device)
        own[rows, rows + self.rank * n] = True
        logits = (views @ pool.T / self.temperature).masked_fill(own, float("-inf"))  # no self-similarity
        return {"contrastive": F.cross_entropy(logits, (rows ^ 1) + self.rank * n)}  # positive: the twin view


def build_loss(cfg: LossConfig, *, rank: int, world_size: int, captioning: bool = False, pad_id: int = 0) -> Loss:
    """The configured loss; `captioning` (a CoCa model, see trainer/model.py) adds the decoder's term."""
    if cfg.kind == "siglip":
        return SigLIP(rank=rank, world_size=world_size, max_scale=cfg.logit_scale_max)
    if cfg.kind == "simclr":  # image only: a CoCa model's decoder is not trained either
        return SimCLR(rank=rank, world_size=world_size, temperature=cfg.temperature)
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


def trained_prefixes(cfg: LossConfig) -> tuple[str, ...]:
    """Names of the parameters the loss trains, by prefix (the rest is frozen, trainer/model.py `freeze`):
    simclr trains the image tower only (open_clip's `visual.*`); the others train everything."""
    return ("visual.",) if cfg.kind == "simclr" else ("",)


__all__ = ["Loss", "InfoNCE", "SigLIP", "CoCa", "SimCLR", "clamp_scale", "build_loss", "model_kwargs",
           "trained_prefixes"]
