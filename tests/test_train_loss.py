"""Gathered-negative losses and feature-cache accumulation equal one process on the concatenated batch.

Two real gloo ranks (torch.multiprocessing spawn, no DeepSpeed) each take half of a batch, compute the loss
with features gathered with gradient, backward, and average gradients as data parallelism does; one process
computes the same loss on the whole batch. Loss and every gradient must agree, for InfoNCE (local and full
form), SigLIP, CoCa (InfoNCE + captioning cross-entropy, ranks holding different token counts), SimCLR (two
views per sample, image tower only, the rest frozen as the trainer freezes it), and with the step split into
micro-batches through the feature cache. A small two-tower model stands in for open_clip here (the maths is
the point; the DeepSpeed test trains the real model). SimCLR's value and gradients are also checked against a
direct NT-Xent written from the paper's formula, and on the real open_clip towers (CLIP and CoCa).
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from configs.train import LossConfig, ModelConfig
from trainer import dist
from trainer.accum import split_micro, train_step
from trainer.loss import CoCa, InfoNCE, SigLIP, SimCLR, build_loss, clamp_scale, model_kwargs, trained_prefixes
from trainer.model import build, freeze

N, DIM, TOKENS = 16, 12, 6  # whole batch, image feature size, text length
CASES = {  # name -> (loss config, micro-batches per rank)
    "infonce-local": (LossConfig(kind="infonce", local_loss=True), 1),
    "infonce-local-accum": (LossConfig(kind="infonce", local_loss=True), 2),
    "infonce-full-accum": (LossConfig(kind="infonce", local_loss=False), 4),
    "siglip-accum": (LossConfig(kind="siglip"), 2),
    "coca-accum": (LossConfig(kind="infonce", contrastive_weight=0.5, caption_weight=2.0), 2),
    "simclr": (LossConfig(kind="simclr"), 1),
    "simclr-accum": (LossConfig(kind="simclr", temperature=0.1), 2),
}
VOCAB = 50


class Towers(torch.nn.Module):
    """Image MLP + text embedding bag, normalised features, learnable logit scale (and bias for SigLIP)."""

    def __init__(self, siglip: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.visual = torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
        self.text = torch.nn.EmbeddingBag(50, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0)) if siglip else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        text = None if texts is None else torch.nn.functional.normalize(self.text(texts), dim=-1)  # as open_clip
        out = {"image_features": torch.nn.functional.normalize(self.visual(images), dim=-1), "text_features": text,
               "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


class CaptionTowers(Towers):
    """Towers plus a tiny captioning decoder: next-token logits from the token embedding and the image."""

    def __init__(self) -> None:
        super().__init__(siglip=False)
        self.token = torch.nn.Embedding(VOCAB, 8)
        self.image_to_decoder = torch.nn.Linear(DIM, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images, texts)
        hidden = torch.tanh(self.token(texts[:, :-1]) + self.image_to_decoder(images)[:, None])
        out["logits"] = self.head(hidden)  # no labels: train_step derives them from texts (open_clip > 3.3)
        return out


class PlainStepper:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def forward(self, images, texts):
        return self.module(images, texts)

    def backward(self, loss):
        loss.backward()


def _data(views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ([N, DIM], or [N, views, DIM]: perturbed copies as augmented views) and texts; texts are padded
    with 0 after a random length, so ranks hold different token counts."""
    g = torch.Generator().manual_seed(1)
    texts = torch.randint(1, VOCAB, (N, TOKENS), generator=g)
    lengths = torch.randint(2, TOKENS + 1, (N,), generator=g)
    texts[torch.arange(TOKENS)[None, :] >= lengths[:, None]] = 0
    images = torch.randn(N, DIM, generator=g)
    if views == 1:
        return images, texts
    return images[:, None] + 0.3 * torch.randn(N, views, DIM, generator=g), texts


def _run(cfg: LossConfig, micro_per_rank: int, rank: int, world: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of `rank` on its slice of the batch (gradients not yet averaged)."""
    captioning = cfg.caption_weight != LossConfig().caption_weight
    model = CaptionTowers() if captioning else Towers(siglip=bool(model_kwargs(cfg)))
    freeze(model, trained_prefixes(cfg))
    images, texts = (t.chunk(world)[rank] for t in _data(cfg.views()))
    result = train_step(PlainStepper(model), build_loss(cfg, rank=rank, world_size=world, captioning=captioning),
                        split_micro(images, texts, images.shape[0] // micro_per_rank))
    return result.losses["loss"], {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, port: int, out_path: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for name, (cfg, micro) in CASES.items():
            loss, grads = _run(cfg, micro, rank, 2)
            mean_loss = dist.all_reduce_sum(torch.tensor(loss)) / 2
            grads = {n: dist.all_reduce_sum(g) / 2 for n, g in grads.items()}  # what data parallelism does
            results[name] = {"loss": float(mean_loss), "grads": grads}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(loss, grads, ref_loss, ref_grads):
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == ref_grads.keys()
    for n in ref_grads:
        assert ref_grads[n].abs().sum() > 0, f"{n}: reference gradient is zero, the test would be vacuous"
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"gradient of {n}")


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> dict:
    """Every case run once on two spawned gloo ranks (one spawn for all cases: process start is the cost)."""
    out = tmp_path_factory.mktemp("gloo") / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(name, two_rank_results):
    got = two_rank_results[name]
    ref_loss, ref_grads = _run(CASES[name][0], 1, 0, 1)
    _assert_same(got["loss"], got["grads"], ref_loss, ref_grads)


@pytest.mark.parametrize("name", ["infonce-local", "siglip-accum", "coca-accum", "simclr-accum"])
def test_feature_cache_accumulation_equals_one_big_batch(name):
    cfg = CASES[name][0]
    ref = _run(cfg, 1, 0, 1)
    got = _run(cfg, 4, 0, 1)
    _assert_same(*got, *ref)


def test_plain_accumulation_would_differ():
    """Guards the test above: scoring each micro-batch alone (DeepSpeed's accumulation) changes the loss."""
    images, texts = _data()
    model, loss_fn = Towers(siglip=False), InfoNCE(rank=0, world_size=1)
    with torch.no_grad():
        whole = float(loss_fn(model(images, texts))["contrastive"])
        parts = sum(float(loss_fn(model(i, t))["contrastive"]) for i, t in split_micro(images, texts, N // 4)) / 4
    assert abs(whole - parts) > 1e-3


def test_local_labels_are_offset_by_rank():
    """Rank 1 of 2, without a process group: the fake gather puts rank 0's rows first."""
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    outputs = {"image_features": feats, "text_features": feats, "logit_scale": torch.tensor(100.0),
               "logit_bias": torch.tensor(0.0)}
    gather = lambda x: torch.cat([other, x])  # noqa: E731 - a stand-in for the all_gather of rank 1
    right = InfoNCE(rank=1, world_size=2, gather=gather)(outputs)["contrastive"]
    wrong = InfoNCE(rank=0, world_size=2, gather=gather)(outputs)["contrastive"]
    assert right < 0.1 < wrong
    assert SigLIP(rank=1, world_size=2, gather=gather)(outputs)["contrastive"] < \
        SigLIP(rank=0, world_size=2, gather=gather)(outputs)["contrastive"]


def test_coca_terms_are_weighted_and_the_caption_term_ignores_padding():
    images, texts = _data()
    model = CaptionTowers()
    plain = CoCa(contrastive=InfoNCE(rank=0, world_size=1), contrastive_weight=1.0, caption_weight=1.0,
                 world_size=1)
    weighted = CoCa(contrastive=InfoNCE(rank=0, world_size=1), contrastive_weight=0.5, caption_weight=2.0,
                    world_size=1)
    with torch.no_grad():
        out = model(images, texts)
        out["labels"] = texts[:, 1:]
        for loss in (plain, weighted):
            loss.start_step(texts)
        a, b = plain(out), weighted(out)
        mask = texts[:, 1:] != 0
        expected = torch.nn.functional.cross_entropy(out["logits"][mask], texts[:, 1:][mask])
    assert float(a["caption"]) == pytest.approx(float(expected), rel=1e-5)  # open_clip's CoCaLoss, one rank
    assert float(b["caption"]) == pytest.approx(2.0 * float(a["caption"]), rel=1e-6)
    assert float(b["contrastive"]) == pytest.approx(0.5 * float(a["contrastive"]), rel=1e-6)


def test_logit_scale_is_clamped_in_the_loss_and_its_gradient_stops_there():
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    raw = torch.tensor(150.0, requires_grad=True)
    outputs = {"image_features": feats, "text_features": feats, "logit_scale": raw}
    loss = InfoNCE(rank=0, world_size=1, max_scale=100.0)
    assert float(loss.logit_scale(outputs).detach()) == 100.0
    loss(outputs)["contrastive"].backward()
    assert raw.grad == 0  # above the clamp: the parameter is not pushed further
    assert float(clamp_scale(torch.tensor(0.5), 100.0)) == 1.0 and float(clamp_scale(raw, 0.0).detach()) == 150.0


# ----------------------------------------------------------------------------- SimCLR (NT-Xent)

def _nt_xent_rows(z: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's per-view loss, written out: z = [first views of N tiles; their second views], the positive
    of view i is view (i + N) mod 2N, l(i) = -log(exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau)), s = cosine."""
    n2 = z.shape[0]
    rows = []
    for i in range(n2):
        s = torch.stack([torch.nn.functional.cosine_similarity(z[i], z[k], dim=0) for k in range(n2)]) / tau
        others = torch.stack([s[k].exp() for k in range(n2) if k != i]).sum()
        rows.append(-torch.log(s[(i + n2 // 2) % n2].exp() / others))
    return torch.stack(rows)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_simclr_equals_the_direct_nt_xent_formula_on_each_rank_with_gradients(tau):
    """Two ranks without a process group: each scores its tiles' views against the pool of both (a stand-in for
    the all_gather); the mean of the two equals the paper's loss over all 2N views, and so do the gradients."""
    g = torch.Generator().manual_seed(3)
    first, second = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    first, second = first.requires_grad_(), (first.detach() + 0.5 * second).requires_grad_()
    expected = _nt_xent_rows(torch.cat([first, second]), tau)
    ref_grads = torch.autograd.grad(expected.mean(), [first, second])
    unit = torch.nn.functional.normalize(torch.stack([first, second], dim=1), dim=-1)  # model outputs: unit rows
    local = [unit[r * 4:(r + 1) * 4].flatten(0, 1) for r in range(2)]  # rank r's tiles, their views adjacent
    pool = torch.cat(local)  # what the all_gather returns on both ranks
    got = [SimCLR(rank=r, world_size=2, temperature=tau, gather=lambda x: pool)(
        {"image_features": local[r]})["contrastive"] for r in range(2)]
    views_of = [torch.tensor([*range(r * 4, r * 4 + 4), *range(8 + r * 4, 8 + r * 4 + 4)]) for r in range(2)]
    for r in range(2):
        assert float(got[r].detach()) == pytest.approx(float(expected[views_of[r]].mean().detach()), rel=1e-5)
    grads = torch.autograd.grad((got[0] + got[1]) / 2, [first, second])
    for got_g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(got_g, ref_g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["cityscale-nano-32", "cityscale-coca-nano-32"])
def test_simclr_trains_only_the_image_tower_of_the_open_clip_models(name):
    torch.manual_seed(0)
    module = build(ModelConfig(name=name), None, {}).module
    cfg = LossConfig(kind="simclr")
    freeze(module, trained_prefixes(cfg))
    images = torch.randn(4, 2, 3, 32, 32)
    result = train_step(PlainStepper(module), build_loss(cfg, rank=0, world_size=1, captioning=True),
                        split_micro(images, torch.ones(4, 32, dtype=torch.long), 2))
    assert 0 < result.losses["loss"] < 10 and result.logit_scale == 2.0  # 1 / temperature
    named = dict(module.named_parameters())
    visual = {n for n in named if n.startswith("visual.")}
    assert visual and all(named[n].grad is not None for n in visual)
    assert sum(float(named[n].grad.abs().sum()) for n in visual) > 0
    assert all(named[n].grad is None and not named[n].requires_grad for n in set(named) - visual)
