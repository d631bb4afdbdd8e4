"""The long-tail diversity score: how far a sample sits from its nearest neighbours.

As in the paper's downstream pipeline: for each kept distilled pair (unit embedding e_i, n of
them), the mean cosine distance to its k nearest other kept pairs,

    d_i = (1/k') * sum_{j in kNN(i), j != i} (1 - e_i . e_j),      k' = min(k, n - 1)
    long_tail_i = (d_i - min_j d_j) / (max_j d_j - min_j d_j)     (min-max normalised; all 0
                                                                   when every d_i is equal)

A pair with no close neighbours is in the long tail of the distribution and scores near 1.
Candidates are ranked by quality first, then by this score (higher first), then by cluster id.
The neighbours come from the same chunked top-k the quality reward uses (no n x n matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from lmmixup.errors import require
from lmmixup.rewards.quality import knn_indices


@dataclass
class LongTailConfig:
    k: int = 15
    """neighbours of the long-tail score (the paper: 15)"""
    chunk_size: int = 1024
    """rows per similarity block"""

    def validate(self) -> None:
        require(self.k > 0, "longtail.k", "must be > 0")
        require(self.chunk_size > 0, "longtail.chunk_size", "must be > 0")


def mean_knn_distance(emb: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Unit vectors (n, D) -> d (n,): mean cosine distance to the k' nearest other rows."""
    n = emb.shape[0]
    if n < 2:
        return np.zeros(n)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))  # (n, D)
    kk = min(k, n - 1)
    nbr = knn_indices(x, x, kk, exclude_self=True, chunk=chunk)  # (n, k')
    sims = (x[:, None, :] * x[nbr]).sum(dim=2)  # (n, k') cosine to each neighbour
    return (1.0 - sims).mean(dim=1).double().numpy()  # (n,)


def long_tail_scores(emb: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Unit vectors (n, D) -> long-tail score (n,) in [0, 1] (module docstring)."""
    d = mean_knn_distance(emb, k, chunk)  # (n,)
    if d.size == 0 or d.max() == d.min():
        return np.zeros_like(d)
    return (d - d.min()) / (d.max() - d.min())  # (n,)


def rank_order(scores: Sequence[float], long_tail: Sequence[float], ids: Sequence[str]) -> List[int]:
    """Indices best first: higher quality, then higher long-tail score, then smaller id."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], -long_tail[i], ids[i]))
