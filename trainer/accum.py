"""Gradient accumulation that enlarges the negative pool: the feature cache (open_clip's accum_freq pattern).

Plain gradient accumulation (DeepSpeed's own included) scores each micro-batch only against itself, so the
negative pool stays one micro-batch. Here one optimizer step sees all its micro-batches as one batch:

1. forward every micro-batch without gradients and cache the pooled outputs (the features);
2. for each micro-batch j: forward again with gradients, splice its live rows into the cache, compute the
   loss over the whole pool and backward. Only micro-batch j's rows carry gradient, so summing over j
   gives exactly the gradient of the whole-pool loss.

Per-sample terms that are not pooled (CoCa's captioning, `loss.summed_terms`) are computed on micro-batch j
alone; their step value is the sum over j, as is their gradient.

Per-step parameters (`loss.shared_keys`: logit scale and bias) are live only for j == 0 and detached
otherwise, so their gradient is counted once (open_clip counts it accum_freq times). With one micro-batch
the cache pass is skipped. The recomputed forward must equal the cached one: the models have no dropout
(a model with dropout would need its RNG replayed).

The model's inputs are the loss's business (`loss.model_inputs`): the text losses pass the micro-batch through;
SimCLR flattens its two views per tile into adjacent rows and passes no text, which keeps each tile's pair in
one micro-batch and so in the pool. The stepper is anything with `forward(images, texts) -> outputs` and
`backward(loss)`; `trainer/engine.py` provides the DeepSpeed one (which also counts the micro-step), tests a
plain module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from trainer.loss import Loss

Micro = tuple[torch.Tensor, torch.Tensor]  # (images, texts)


class Stepper(Protocol):
    def forward(self, images: torch.Tensor, texts: torch.Tensor | None) -> dict[str, torch.Tensor]: ...

    def backward(self, loss: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class StepResult:
    losses: dict[str, float]   # the whole-pool loss terms and their sum under "loss"
    logit_scale: float


def split_micro(images: torch.Tensor, texts: torch.Tensor, micro_batch: int) -> list[Micro]:
    """Cut one rank's step batch into micro-batches of `micro_batch` rows."""
    return list(zip(images.split(micro_batch), texts.split(micro_batch)))


def _cache(stepper: Stepper, loss_fn: Loss, micro: list[Micro]) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        outputs = [stepper.forward(*loss_fn.model_inputs(im, tx)) for im, tx in micro]
    return [{k: v for k, v in out.items() if k in loss_fn.pooled_keys} for out in outputs]


def _pool(cached: list[dict[str, torch.Tensor]], live: dict[str, torch.Tensor], j: int,
          pooled: tuple[str, ...], shared: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Outputs of the whole step with micro-batch j's rows (and, for j == 0, the shared scalars) live;
    per-sample outputs that are not pooled (CoCa's decoder logits and labels) stay micro-batch j's own."""
    out = {k: v for k, v in live.items() if k not in pooled and k not in shared}
    out.update({k: v if j == 0 else v.detach() for k, v in live.items() if k in shared})
    for k in pooled:
        out[k] = torch.cat([c[k] for c in cached[:j]] + [live[k]] + [c[k] for c in cached[j + 1:]])
    return out


def _forward(stepper: Stepper, loss_fn: Loss, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's outputs on the loss's inputs; a captioning model gets its labels from the text when it does
    not return them (open_clip after 3.3, docs/pitfalls.md): the next token at every position."""
    outputs = stepper.forward(*loss_fn.model_inputs(images, texts))
    if "logits" in outputs and "labels" not in outputs:
        outputs["labels"] = texts[:, 1:].to(outputs["logits"].device)
    return outputs


def train_step(stepper: Stepper, loss_fn: Loss, micro: list[Micro]) -> StepResult:
    """Forward/backward of one optimizer step over `micro` (the optimizer update is the stepper's business)."""
    loss_fn.start_step(torch.cat([texts for _, texts in micro]))
    cached = _cache(stepper, loss_fn, micro) if len(micro) > 1 else [{}]
    summed: dict[str, float] = {}
    for j, (images, texts) in enumerate(micro):
        live = _forward(stepper, loss_fn, images, texts)
        outputs = _pool(cached, live, j, loss_fn.pooled_keys, loss_fn.shared_keys) if len(micro) > 1 else live
        terms = loss_fn(outputs)
        stepper.backward(sum(terms.values()))
        for k in loss_fn.summed_terms:
            summed[k] = summed.get(k, 0.0) + float(terms[k].detach())  # host sync per micro-batch (CoCa only)
    values = {k: float(v.detach()) for k, v in terms.items()}  # host sync: once per step
    values.update(summed)
    values["loss"] = sum(values.values())
    return StepResult(losses=values, logit_scale=float(loss_fn.logit_scale(outputs).detach()))


__all__ = ["Stepper", "StepResult", "split_micro", "train_step"]
