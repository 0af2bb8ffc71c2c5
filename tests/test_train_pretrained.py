"""Real open_clip weights from disk: a weights file, a folder holding one, and the Hugging Face cache offline.

The weights are saved by the test itself from a tiny CoCa (nothing is downloaded): the model built from them
must carry exactly those tensors, not a fresh random init. The hub case lays the file out as huggingface_hub's
cache does (models--org--repo/snapshots/<commit>/ + refs/main) and turns the hub's offline mode on, which is
what a cluster node without internet sees after `open_clip.create_model(..., pretrained=...)` ran once
elsewhere with the same HF_HOME.
"""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from configs.loader import ConfigError
from configs.train import ModelConfig
from data_shards.run_layout import EXPORT_WEIGHTS
from trainer.model import build, export, resolve_weights

NAME = "cityscale-coca-nano-32"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """An exported tiny CoCa (seeded) and its weights."""
    folder = tmp_path_factory.mktemp("saved")
    torch.manual_seed(123)
    built = build(ModelConfig(name=NAME), None, {})
    export(built.module.state_dict(), built, str(folder))
    return str(folder), {k: v.clone() for k, v in built.module.state_dict().items()}


def _loads_exactly(weights: str, expected: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)  # a different init: only loading can make the tensors equal
    module = build(ModelConfig(name=NAME, pretrained=weights), weights, {}).module
    got = module.state_dict()
    assert got.keys() == expected.keys()
    for k in ("visual.conv1.weight", "text_decoder.resblocks.0.attn.in_proj_weight", "logit_scale"):
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)


def test_weights_file_and_folder_load_into_the_model(saved):
    folder, expected = saved
    file = f"{folder}/{EXPORT_WEIGHTS}"
    assert resolve_weights(ModelConfig(name=NAME, pretrained=file)) == file
    assert resolve_weights(ModelConfig(name=NAME, pretrained=folder)) == file
    _loads_exactly(file, expected)


def test_folder_without_weights_names_the_files_it_looked_for(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.pretrained': folder .* holds none of open_clip_model.safetensors"):
        resolve_weights(ModelConfig(name=NAME, pretrained=str(tmp_path)))


def test_hf_hub_weights_load_offline_from_the_local_cache(saved, tmp_path, monkeypatch):
    folder, expected = saved
    snapshot = tmp_path / "models--cityscale--coca-nano-32" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / EXPORT_WEIGHTS).write_bytes(open(f"{folder}/{EXPORT_WEIGHTS}", "rb").read())
    (tmp_path / "models--cityscale--coca-nano-32" / "refs").mkdir()
    (tmp_path / "models--cityscale--coca-nano-32" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    weights = resolve_weights(ModelConfig(name=NAME, pretrained="hf-hub:cityscale/coca-nano-32"))
    assert weights == str(snapshot / EXPORT_WEIGHTS)
    _loads_exactly(weights, expected)
    with pytest.raises(ConfigError, match=r"cityscale/other are neither in the Hugging Face cache nor reachable"):
        resolve_weights(ModelConfig(name=NAME, pretrained="hf-hub:cityscale/other"))


def test_export_stores_the_logit_scale_clamped_as_the_loss_used_it(tmp_path):
    from safetensors.torch import load_file

    built = build(ModelConfig(name=NAME), None, {})
    state = built.module.state_dict()
    state["logit_scale"] = torch.tensor(6.0)  # exp(6) = 403 > 100
    export(state, built, str(tmp_path), logit_scale_max=100.0)
    assert float(load_file(f"{tmp_path}/{EXPORT_WEIGHTS}")["logit_scale"]) == pytest.approx(torch.log(torch.tensor(100.0)).item())
