"""Embedding and rating pool samples 0-5 with the project's quality scorer.

The rater is the quality reward's *continuous* estimate, not its binary reward: for the kNN
backend the expected score E = sum_s s * posterior(s) over its rated library (quality.py), for
the judge the expected digit under the LLM judge rubric (judge.py). Both are in [0, 5]. The
rater is chosen by `rate.backend`:
    quality   whatever `rate.quality` configures (rate.quality.backend: learned by default)
    judge     the LLM judge rubric with `rate.quality.judge` (its model, batch size, ...)
`RATERS` maps a quality backend to a function that builds the rater; a new quality backend
adds one entry here.

Every sample is embedded once (rate.embedder, the quality reward's embedder by default): the
kNN rater scores those embeddings directly, and clustering and the long-tail score reuse them.
`rate.embedder.name=hash` is a bag-of-words hashing embedder (no model) for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
import torch

from lmmixup.data.cluster import hash_embed
from lmmixup.errors import LmmixupError, require
from lmmixup.rewards.embedder import EmbedderConfig, get_embedder
from lmmixup.rewards.judge import load_judge
from lmmixup.rewards.quality import KnnQuality, QualityConfig, knn_posterior
from lmmixup.rewards.quality_model import LearnedQuality, expected_score

RATE_BACKENDS = ("quality", "judge")


@dataclass
class RateConfig:
    backend: str = "quality"
    """quality: the scorer rate.quality configures (the learned scorer over a rated library by default) |
    judge: the LLM judge rubric (rate.quality.judge)"""
    high_threshold: float = 4.0
    """samples rated at or above this are high quality (kept as they are); the rest are distilled"""
    batch_size: int = 64
    """samples embedded and rated per batch"""
    shard_size: int = 512
    """samples per resumable shard of the rating stage"""
    quality: QualityConfig = field(default_factory=lambda: QualityConfig(
        library="data/mixture/rated.jsonl"))
    """the quality scorer (the reward's config; its library is a MIXTURE rated.jsonl)"""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """sentence embedder of the samples (and of the kNN library): the packaged MiniLM; hash = no model"""

    def validate(self) -> None:
        require(self.backend in RATE_BACKENDS, "rate.backend",
                f"unknown backend {self.backend!r}; known: {', '.join(RATE_BACKENDS)}")
        require(0 <= self.high_threshold <= 5, "rate.high_threshold", "must be in [0, 5]")
        require(self.batch_size > 0, "rate.batch_size", "must be > 0")
        require(self.shard_size > 0, "rate.shard_size", "must be > 0")
        self.quality.validate()
        self.embedder.validate()


class HashEmbedder:
    """Bag-of-words feature hashing (lmmixup.data.cluster.hash_embed) behind the Embedder
    interface: no model, the same vectors on every machine. For tests only."""

    name = path = cache_key = "hash"
    dim = 512
    device = torch.device("cpu")

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(hash_embed(list(texts), self.dim))  # (n, D)

    encode_many = encode


def load_embedder(cfg: EmbedderConfig):
    return HashEmbedder() if cfg.name == "hash" else get_embedder(cfg)


class Ratings(NamedTuple):
    scores: List[float]  # (n,) in [0, 5], rounded to 4 decimals
    details: List[Dict]  # (n,) what the rater saw: backend, posterior over 0..5 (knn)


Rater = Callable[[Sequence[str], torch.Tensor], Ratings]  # texts (n,), embeddings (n, D)


def _knn_rater(cfg: RateConfig, embedder) -> Rater:
    model = KnnQuality(cfg.quality, embedder).model  # reads, embeds (cached) and fits the library

    def rate(texts: Sequence[str], emb: torch.Tensor) -> Ratings:
        posterior, expected = knn_posterior(emb.to(model.embeddings.device), model)  # (n, S), (n,)
        details = [{"backend": "knn", "posterior": [round(float(p), 4) for p in row]}
                   for row in posterior.cpu()]
        return Ratings([round(float(e), 4) for e in expected.cpu()], details)

    return rate


def _learned_rater(cfg: RateConfig, embedder) -> Rater:
    scorer = LearnedQuality(cfg.quality.library, cfg.quality.learned, embedder)  # loads or fits

    def rate(texts: Sequence[str], emb: torch.Tensor) -> Ratings:
        # The stage embedded every sample once already: reuse those vectors for the features.
        features = scorer._features(list(texts), emb.cpu() if scorer.cfg.embedding else None)
        expected = expected_score(features, scorer.model)  # (n,) in (0, 5)
        return Ratings([round(float(e), 4) for e in expected],
                       [{"backend": "learned"} for _ in texts])

    return rate


def _judge_rater(cfg: RateConfig, embedder) -> Rater:
    judge = load_judge(cfg.quality.judge)

    def rate(texts: Sequence[str], emb: torch.Tensor) -> Ratings:
        scores = [round(float(e), 4) for e in judge.judge_scores(list(texts))]
        return Ratings(scores, [{"backend": "judge"} for _ in texts])

    return rate


RATERS: Dict[str, Callable[[RateConfig, object], Rater]] = {
    "learned": _learned_rater,
    "knn": _knn_rater,
    "judge": _judge_rater,
}


def build_rater(cfg: RateConfig, embedder) -> Rater:
    backend = "judge" if cfg.backend == "judge" else cfg.quality.backend
    if backend not in RATERS:
        raise LmmixupError(f"rate.quality.backend: {backend!r} has no distill rater; known: "
                           f"{', '.join(RATERS)}")
    return RATERS[backend](cfg, embedder)


def check_rater(cfg: RateConfig) -> None:
    """Start-up check (before anything is written): the kNN rater's library exists."""
    backend = "judge" if cfg.backend == "judge" else cfg.quality.backend
    if backend in ("knn", "learned"):
        require(bool(cfg.quality.library), "rate.quality.library",
                f"the {backend} rater needs a rated library JSONL, e.g. a MIXTURE rated.jsonl")
        require(Path(cfg.quality.library).is_file(), "rate.quality.library",
                f"no library file at {cfg.quality.library!r}; build one with `python -m "
                "lmmixup.data.build_mixture out=data/mixture` or point rate.quality.library "
                "at a MIXTURE rated.jsonl")


def embed_texts(embedder, texts: Sequence[str]) -> np.ndarray:
    """(n,) texts -> (n, D) float32 unit vectors (bypasses the embedder's memo)."""
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return embedder.encode_many(list(texts)).float().cpu().numpy()
