"""One rank at ZeRO stage 0 takes the same step as plain PyTorch, in fp32 and in amp_bf16.

With fp32 weights `trainer/engine.py` clips the gradients itself (DeepSpeed's stage-0 fp32 clipping fails on
open_clip's 0-dim logit scale) and turns DeepSpeed's backward all-reduce off on one rank. A spawned process
(one real gloo rank, real DeepSpeed) trains the nano CLIP model for four steps through `Engine`, with a
clipping norm small enough to bite; this process runs the same steps in plain PyTorch (same init, AdamW
groups and per-step learning rate, torch.autocast for amp_bf16, `clip_grad_norm_`). Weights and grad norms
must agree; the same steps without clipping must not (so the clipping was applied). The run's DeepSpeed
checkpoint reloads into a fresh engine with the same weights. DeepSpeed's own bf16 mode keeps its clipping.
"""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from configs.train import load_train_config
from trainer import model
from trainer.loss import build_loss

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "train", "tiny-cpu.yaml")
CLIP = 0.05  # below the nano model's first gradient norms (~3-5), so clipping scales every step
BATCH, STEPS = 8, 4


def _config(precision: str):
    return load_train_config(TINY, [f"deepspeed.precision={precision}", f"optim.grad_clip={CLIP}",
                                    f"batch.global_batch={BATCH}", f"batch.micro_batch={BATCH}",
                                    "schedule.warmup_steps=1"])


def _batches(context_length: int, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(1, vocab, (BATCH, context_length), generator=g))
            for _ in range(STEPS)]


def _built(precision: str):
    torch.manual_seed(0)
    return model.build(_config(precision).model, None, {})


def _worker(rank: int, port: int, out_path: str) -> None:
    """The DeepSpeed side: every precision on one rank, four steps each, then a checkpoint round trip."""
    from trainer import engine
    from trainer.accum import train_step
    from trainer.ds_config import deepspeed_config

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    engine.init_distributed(0)
    results = {}
    for precision in ("fp32", "amp_bf16", "bf16"):
        cfg = _config(precision)
        ds_dict = deepspeed_config(batch=cfg.batch, optim=cfg.optim, schedule=cfg.schedule, zero=cfg.deepspeed,
                                   steps=10, world_size=1)

        def fresh():
            built = _built(precision)
            return built, engine.build_engine(built.module, model.param_groups(built.module, 0.1), ds_dict)

        built, eng = fresh()
        loss = build_loss(cfg.loss, rank=0, world_size=1)
        lrs, norms = [], []
        for images, texts in _batches(built.module.context_length, built.module.vocab_size):
            lrs.append(eng.ds.optimizer.param_groups[0]["lr"])  # the rate this step uses
            train_step(eng, loss, [(images, texts)])
            norms.append(eng.grad_norm())
        weights = {k: v.detach().float().clone() for k, v in built.module.state_dict().items()}
        folder = os.path.join(os.path.dirname(out_path), precision)
        eng.save(folder, "t")
        reloaded, eng2 = fresh()
        eng2.load(folder, "t")
        results[precision] = {"lrs": lrs, "norms": norms, "weights": weights, "engine_clips": eng.clip is not None,
                              "reloaded": {k: v.detach().float().clone()
                                           for k, v in reloaded.module.state_dict().items()}}
    torch.save(results, out_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("engine") / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=1, join=True)
    return torch.load(out, weights_only=True)


def _reference(precision: str, lrs: list[float], clip: float | None) -> tuple[dict, list[float]]:
    """The same steps in plain PyTorch: fused AdamW, torch.autocast for amp_bf16, clip_grad_norm_."""
    cfg = _config(precision)
    built = _built(precision)
    module, loss = built.module, build_loss(cfg.loss, rank=0, world_size=1)
    opt = torch.optim.AdamW(model.param_groups(module, 0.1), lr=lrs[0], betas=cfg.optim.betas, eps=cfg.optim.eps,
                            fused=True)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "amp_bf16" \
        else contextlib.nullcontext
    norms = []
    for lr, (images, texts) in zip(lrs, _batches(module.context_length, module.vocab_size)):
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast():
            outputs = module(images, texts)
        sum(loss(outputs).values()).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(module.parameters(), clip or float("inf"))))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().float() for k, v in module.state_dict().items()}, norms


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_one_rank_stage0_step_equals_plain_pytorch_with_clipping(deepspeed_runs, precision):
    got = deepspeed_runs[precision]
    assert got["engine_clips"], "fp32 weights at stage 0: the engine, not DeepSpeed, must clip"
    assert sum(lr > 0 for lr in got["lrs"]) >= 2, f"learning rates {got['lrs']}: too few updates to compare"
    ref, ref_norms = _reference(precision, got["lrs"], CLIP)
    assert min(ref_norms) > CLIP, f"gradient norms {ref_norms} never exceed {CLIP}: clipping would not bite"
    assert got["norms"] == pytest.approx(ref_norms, rel=1e-4)
    for name, value in ref.items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-5, atol=1e-6, msg=f"weights {name}")
    unclipped, _ = _reference(precision, got["lrs"], None)
    assert any(not torch.allclose(got["weights"][n], unclipped[n], rtol=1e-5, atol=1e-6) for n in unclipped)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
def test_stage0_checkpoint_reloads_the_same_weights(deepspeed_runs, precision):
    got = deepspeed_runs[precision]
    initial = _built(precision).module.state_dict()
    assert any(not torch.equal(got["weights"][n], initial[n].float()) for n in initial), "training changed nothing"
    for name, value in got["weights"].items():
        torch.testing.assert_close(got["reloaded"][name], value, msg=f"reloaded {name}")


@pytest.mark.slow
def test_bf16_keeps_deepspeed_clipping_and_reports_the_norm(deepspeed_runs):
    got = deepspeed_runs["bf16"]
    assert not got["engine_clips"]
    assert all(n is not None and n > CLIP for n in got["norms"])
