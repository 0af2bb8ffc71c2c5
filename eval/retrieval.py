"""Image<->text retrieval on a split: recall at k both ways, mean and median rank, in bounded memory.

Row i of the image embeddings matches row i of the text embeddings (a tile and its own caption). The
similarity matrix of a 100k-tile split would not fit in memory, so queries are scored `chunk` rows at a time
against all candidates: memory is chunk x N floats. The rank of the true match is 1 + the number of candidates
scoring strictly higher (ties go in the query's favour, which matters only for identical embeddings).
"""

from __future__ import annotations

import numpy as np
import torch


def match_ranks(queries: np.ndarray, candidates: np.ndarray, chunk: int) -> np.ndarray:
    """1-based rank of candidate i among all candidates for query i; [N] int64."""
    q = torch.as_tensor(queries, dtype=torch.float32)
    c = torch.as_tensor(candidates, dtype=torch.float32)
    ranks = torch.empty(len(q), dtype=torch.int64)
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ c.T  # [chunk, N]
        rows = torch.arange(len(sims))
        own = sims[rows, rows + start]
        ranks[start:start + chunk] = (sims > own[:, None]).sum(1) + 1
    return ranks.numpy()


def rank_summary(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """R@k (share of queries whose match ranks within k), mean and median rank, and the pool size."""
    out = {f"r@{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(mean_rank=float(ranks.mean()), median_rank=float(np.median(ranks)), n=int(len(ranks)))
    return out


def retrieval(image: np.ndarray, text: np.ndarray, ks: tuple[int, ...], chunk: int) -> dict[str, dict[str, float]]:
    """Both directions: image queries against all texts, text queries against all images."""
    return {"image_to_text": rank_summary(match_ranks(image, text, chunk), ks),
            "text_to_image": rank_summary(match_ranks(text, image, chunk), ks)}


def top_matches(queries: np.ndarray, candidates: np.ndarray, rows: list[int], k: int) -> list[list[int]]:
    """Indices of the k best candidates for each query row in `rows` (for the report's examples)."""
    if not rows:
        return []
    sims = torch.as_tensor(queries[rows], dtype=torch.float32) @ torch.as_tensor(candidates, dtype=torch.float32).T
    return torch.topk(sims, min(k, sims.shape[1]), dim=1).indices.tolist()


__all__ = ["match_ranks", "rank_summary", "retrieval", "top_matches"]
