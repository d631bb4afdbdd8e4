"""Quality reward Q: an expected score E in [0, 5] from a backend, mapped to Q (no LLM during RL).

Backends (`reward.quality.backend`, the QUALITY_BACKENDS registry at the end of this file):
    learned  (default) an ordinal model of the score trained on the rated library in seconds
             (quality_model.py): sees typos, casing, filler, cuts; docs/LOG.md 2026-12-02
    knn      the paper's kNN Bayesian scorer over the rated library, below: the faithful
             reproduction and the ablation baseline. On MIXTURE it is nearly blind (same log)
    judge    an LLM judge (judge.py)
The rated library (rows {"text", "score" 0..5}) and its embedding cache: quality_library.py.
Legend for the shape comments:
    N answers scored, L library rows, K neighbours (reward.quality.k), D embedding dim,
    S = 6 score values 0..5.

kNN fitting (once, at start-up), leave-one-out inside the library:
    for every row i, its K nearest other rows by cosine; C[s, j] counts "a row of score s has a
    neighbour of score j";  T[s, j] = (C[s, j] + alpha) / (sum_j' C[s, j'] + S*alpha)
    prior p(s) = (#rows with score s + alpha) / (L + S*alpha)
kNN scoring of an answer:
    h[j] = how many of its K nearest library rows have score j         (histogram, sums to K)
    log posterior(s) = log p(s) + sum_j h[j] * log T[s, j]   (naive Bayes: neighbours independent)
    E = sum_s s * posterior(s)
E -> Q, for every backend:
    step (paper):  Q = 1 if E >= high_threshold (4); mid_value (0.3) if mid_low <= E < mid_high;
                   else 0
    expected:      Q = E / 5
"E is about 3" is our reading of the paper: the default mid band is [2.5, 4), i.e. everything
from "rounds to 3" up to the full-marks threshold. The literal |E - 3| <= 0.5 band
(mid_high=3.5) leaves E in (3.5, 4) at 0, below E = 3, which would reward getting worse.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Sequence, Tuple

import torch

from lmmixup.errors import LmmixupError, require
from lmmixup.rewards.embedder import get_embedder
from lmmixup.rewards.judge import JudgeConfig, load_judge
from lmmixup.rewards.quality_library import (  # noqa: F401  (re-exported: the library's API)
    MAX_SCORE, NUM_SCORES, atomic_torch_save, library_cache_path, library_embeddings,
    read_library, write_library)
from lmmixup.rewards.quality_model import LearnedQuality, LearnedQualityConfig

QUALITY_MODES = ("step", "expected")


@dataclass
class QualityConfig:
    backend: str = "learned"
    """learned: ordinal model fitted to the rated library | knn: the paper's kNN-Bayes | judge"""
    library: str = ""
    """rated library JSONL ({"text", "score" 0..5} per line); required by learned and knn"""
    k: int = 16
    """neighbours per answer, and per library row when fitting T and p"""
    alpha: float = 1.0
    """additive (Laplace) smoothing of the prior and of each row of T; must be > 0"""
    mode: str = "step"
    """step: paper's 1 / mid_value / 0 thresholds on E | expected: E / 5"""
    high_threshold: float = 4.0
    """E at or above this gives Q = 1"""
    mid_low: float = 2.5
    """lower end (inclusive) of the band where Q = mid_value ("E is about 3")"""
    mid_high: float = 4.0
    """upper end (exclusive) of that band; 3.5 gives the literal |E - 3| <= 0.5 reading"""
    mid_value: float = 0.3
    """Q inside the mid band"""
    library_chunk: int = 1024
    """library rows per similarity block when fitting (bounds memory to chunk x L floats)"""
    learned: LearnedQualityConfig = field(default_factory=LearnedQualityConfig)
    """the ordinal model used when backend=learned"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the LLM judge used when backend=judge"""

    def validate(self) -> None:
        require(self.backend in QUALITY_BACKEND_NAMES, "reward.quality.backend",
                f"unknown backend {self.backend!r}; known: {', '.join(QUALITY_BACKEND_NAMES)}")
        require(self.mode in QUALITY_MODES, "reward.quality.mode",
                f"unknown mode {self.mode!r}; known: {', '.join(QUALITY_MODES)}")
        require(self.k > 0, "reward.quality.k", "must be > 0")
        require(self.alpha > 0 and math.isfinite(self.alpha), "reward.quality.alpha",
                "must be > 0 (T and p enter the posterior as logs)")
        require(0 <= self.mid_low <= self.mid_high <= self.high_threshold <= MAX_SCORE,
                "reward.quality", "need 0 <= mid_low <= mid_high <= high_threshold <= 5, got "
                f"{self.mid_low}, {self.mid_high}, {self.high_threshold}")
        require(0 <= self.mid_value <= 1, "reward.quality.mid_value", "must be in [0, 1]")
        require(self.library_chunk > 0, "reward.quality.library_chunk", "must be > 0")
        self.learned.validate()
        self.judge.validate()

    @property
    def needs_library(self) -> bool:
        """True for the backends that learn from the rated library (all but the judge)."""
        return self.backend != "judge"


# ---------------------------------------------------------------------------------------------
# The math: pure tensor functions


def knn_indices(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool = False,
                chunk: int = 1024) -> torch.Tensor:
    """Unit vectors queries (Q, D), keys (L, D) -> indices (Q, K) of the k most cosine-similar
    keys, most similar first. exclude_self: queries ARE the keys (Q == L) and row i may not pick
    itself (leave-one-out). Processed `chunk` queries at a time: memory chunk x L."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ keys.T  # (c, L)
        if exclude_self:
            rows = torch.arange(sims.shape[0], device=sims.device)  # (c,)
            sims[rows, rows + start] = float("-inf")
        out.append(sims.topk(k, dim=1).indices)  # (c, K)
    return torch.cat(out)  # (Q, K)


@dataclass
class KnnQualityModel:
    """The fitted scorer: the library and the prior/transition estimated inside it."""

    embeddings: torch.Tensor  # (L, D) unit vectors
    scores: torch.Tensor  # (L,) long in 0..5
    log_prior: torch.Tensor  # (S,) log p(s)
    log_transition: torch.Tensor  # (S, S) log T[s, j] = log P(neighbour has j | item has s)
    k: int  # K


def fit_knn_quality(embeddings: torch.Tensor, scores: torch.Tensor, k: int, alpha: float,
                    chunk: int = 1024) -> KnnQualityModel:
    """Estimate p and T from leave-one-out kNN inside the library (module docstring)."""
    L = embeddings.shape[0]
    if L == 0:
        raise LmmixupError("reward.quality.library: the rated library is empty")
    if k > L - 1:
        raise LmmixupError(f"reward.quality.k: k={k} needs at least {k + 1} library rows "
                           f"(k neighbours besides the row itself), the library has {L}")
    scores = scores.to(embeddings.device)
    S = NUM_SCORES
    nbr = knn_indices(embeddings, embeddings, k, exclude_self=True, chunk=chunk)  # (L, K)
    own = scores[:, None].expand(L, k)  # (L, K) score s of the row
    their = scores[nbr]  # (L, K) score j of each neighbour
    counts = torch.bincount((own * S + their).reshape(-1), minlength=S * S)  # (S*S,)
    counts = counts.view(S, S).float()  # (S, S) C[s, j]
    transition = (counts + alpha) / (counts.sum(dim=1, keepdim=True) + S * alpha)  # (S, S)
    prior = (torch.bincount(scores, minlength=S).float() + alpha) / (L + S * alpha)  # (S,)
    return KnnQualityModel(embeddings=embeddings, scores=scores, log_prior=prior.log(),
                           log_transition=transition.log(), k=k)


def knn_posterior(queries: torch.Tensor, model: KnnQualityModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors (N, D) -> (posterior (N, S), expected score E (N,))."""
    S = NUM_SCORES
    nbr = knn_indices(queries, model.embeddings, model.k)  # (N, K)
    hist = torch.nn.functional.one_hot(model.scores[nbr], S).sum(dim=1).float()  # (N, S) h[n, j]
    # log_post[n, s] = log p(s) + sum_j h[n, j] * log T[s, j]
    log_post = model.log_prior[None, :] + hist @ model.log_transition.T  # (N, S)
    posterior = log_post.softmax(dim=1)  # (N, S)
    values = torch.arange(S, dtype=posterior.dtype, device=posterior.device)  # (S,)
    return posterior, posterior @ values  # (N, S), (N,)


def quality_from_expected(expected: torch.Tensor, cfg: QualityConfig) -> torch.Tensor:
    """E (N,) in [0, 5] -> Q (N,): the paper's step, or E / 5 in expected mode."""
    if cfg.mode == "expected":
        return expected / MAX_SCORE  # (N,)
    mid = (expected >= cfg.mid_low) & (expected < cfg.mid_high)  # (N,)
    q = torch.where(mid, torch.full_like(expected, cfg.mid_value), torch.zeros_like(expected))
    return torch.where(expected >= cfg.high_threshold, torch.ones_like(expected), q)  # (N,)


# ---------------------------------------------------------------------------------------------
# Start-up: library file -> fitted scorer


class KnnQuality:
    """The knn backend: `expected(answers) -> E (n,)`; loads, embeds (cached) and fits once."""

    def __init__(self, cfg: QualityConfig, embedder):
        if not cfg.library:
            raise LmmixupError("reward.quality.library: the knn quality backend needs a rated "
                               "library JSONL ({\"text\", \"score\"} rows)")
        texts, scores = read_library(cfg.library)
        if cfg.k > len(texts) - 1:
            raise LmmixupError(f"reward.quality.k: k={cfg.k} needs at least {cfg.k + 1} library "
                               f"rows, {cfg.library} has {len(texts)}")
        self.embedder = embedder
        emb = library_embeddings(cfg.library, texts, embedder)  # (L, D)
        self.model = fit_knn_quality(emb, scores, cfg.k, cfg.alpha, chunk=cfg.library_chunk)

    def expected(self, answers: Sequence[str]) -> torch.Tensor:
        """(n,) answer texts -> E (n,) on CPU; one embedder call for the whole batch."""
        if not answers:
            return torch.zeros(0)
        _, expected = knn_posterior(self.embedder.encode(answers), self.model)
        return expected.cpu()


# ---------------------------------------------------------------------------------------------
# Backends by name: builder(quality config, embedder config) -> expected(texts) -> E (n,) in [0, 5]

ExpectedFn = Callable[[Sequence[str]], torch.Tensor]


def _build_learned(cfg: QualityConfig, embedder_cfg) -> ExpectedFn:
    return LearnedQuality(cfg.library, cfg.learned, get_embedder(embedder_cfg)).expected


def _build_knn(cfg: QualityConfig, embedder_cfg) -> ExpectedFn:
    return KnnQuality(cfg, get_embedder(embedder_cfg)).expected


def _build_judge(cfg: QualityConfig, embedder_cfg) -> ExpectedFn:
    judge = load_judge(cfg.judge)
    return lambda texts: torch.tensor(judge.judge_scores(list(texts)), dtype=torch.float32)


QUALITY_BACKENDS: Dict[str, Callable[[QualityConfig, object], ExpectedFn]] = {
    "learned": _build_learned,
    "knn": _build_knn,
    "judge": _build_judge,
}
QUALITY_BACKEND_NAMES: Tuple[str, ...] = tuple(QUALITY_BACKENDS)


_SCORERS: Dict[str, ExpectedFn] = {}


def build_quality_scorer(cfg: QualityConfig, embedder_cfg) -> ExpectedFn:
    """The configured backend's `expected(texts) -> E (n,)` on CPU. One per (quality config,
    embedder config) per process, like `get_embedder`: the reward and the scorer CLI's
    per-row dump share one fitted model."""
    if cfg.needs_library and not cfg.library:
        raise LmmixupError(f"reward.quality.library: the {cfg.backend} quality backend needs a "
                           f"rated library JSONL ({{\"text\", \"score\"}} rows)")
    key = json.dumps([asdict(cfg), asdict(embedder_cfg)], sort_keys=True, default=str)
    if key not in _SCORERS:
        _SCORERS[key] = QUALITY_BACKENDS[cfg.backend](cfg, embedder_cfg)
    return _SCORERS[key]
