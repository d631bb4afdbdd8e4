"""Quality reward Q: a kNN Bayesian scorer over a rated library (no LLM during RL).

The library is a JSONL file of rows {"text": str, "score": int 0..5} (the mixture builder's
`rated.jsonl`: originals 5, degraded variants lower). Legend for the shape comments:
    N answers scored, L library rows, K neighbours (reward.quality.k), D embedding dim,
    S = 6 score values 0..5.

Fitting (once, at start-up), leave-one-out inside the library:
    for every row i, its K nearest other rows by cosine; C[s, j] counts "a row of score s has a
    neighbour of score j";  T[s, j] = (C[s, j] + alpha) / (sum_j' C[s, j'] + S*alpha)
    prior p(s) = (#rows with score s + alpha) / (L + S*alpha)
Scoring an answer:
    h[j] = how many of its K nearest library rows have score j         (histogram, sums to K)
    log posterior(s) = log p(s) + sum_j h[j] * log T[s, j]   (naive Bayes: neighbours independent)
    E = sum_s s * posterior(s)
    step (paper):  Q = 1 if E >= high_threshold (4); mid_value (0.3) if mid_low <= E < mid_high;
                   else 0
    expected:      Q = E / 5
"E is about 3" is our reading of the paper: the default mid band is [2.5, 4), i.e. everything
from "rounds to 3" up to the full-marks threshold. The literal |E - 3| <= 0.5 band
(mid_high=3.5) leaves E in (3.5, 4) at 0, below E = 3, which would reward getting worse.

The library's embeddings are cached on disk under $LMMIXUP_CACHE/quality_library/, keyed by
the SHA-256 of the library file and the embedder (its resolved path or hub name); written to a
temporary file and renamed, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Sequence, Tuple, Union

import torch

from lmmixup.data.jsonl import iter_jsonl, sha256_file
from lmmixup.errors import LmmixupError, require
from lmmixup.rewards.judge import JudgeConfig

NUM_SCORES = 6  # S: scores 0..5
MAX_SCORE = NUM_SCORES - 1
QUALITY_BACKENDS = ("knn", "judge")
QUALITY_MODES = ("step", "expected")


@dataclass
class QualityConfig:
    backend: str = "knn"
    """knn: kNN Bayesian scorer over the rated library (paper) | judge: an LLM judge"""
    library: str = ""
    """rated library JSONL ({"text", "score" 0..5} per line); required by the knn backend"""
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
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the LLM judge used when backend=judge"""

    def validate(self) -> None:
        require(self.backend in QUALITY_BACKENDS, "reward.quality.backend",
                f"unknown backend {self.backend!r}; known: {', '.join(QUALITY_BACKENDS)}")
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
        self.judge.validate()


# ---------------------------------------------------------------------------------------------
# The rated library file


def _is_score(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SCORE


def read_library(path: Union[str, Path]) -> Tuple[List[str], torch.Tensor]:
    """Rows of a rated library -> (texts (L,), scores (L,) long). Every malformed line is a
    one-line LmmixupError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LmmixupError(f"reward.quality.library: no library file at {str(path)!r}")
    texts, scores = [], []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise LmmixupError(f"{path}:{lineno}: a library row needs a non-empty \"text\"")
        if not _is_score(row.get("score")):
            raise LmmixupError(f"{path}:{lineno}: \"score\" must be an integer 0..5, "
                               f"got {row.get('score')!r}")
        texts.append(row["text"])
        scores.append(row["score"])
    if not texts:
        raise LmmixupError(f"{path}: the rated library is empty")
    return texts, torch.tensor(scores, dtype=torch.long)


def write_library(path: Union[str, Path], rows: Iterable[Union[Tuple[str, int], Mapping]]) -> Path:
    """Library builder: write (text, score) pairs or {"text", "score"} dicts as a rated JSONL,
    checking each row the way `read_library` will. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        text, score = (row["text"], row["score"]) if isinstance(row, Mapping) else row
        if not isinstance(text, str) or not text.strip() or not _is_score(score):
            raise LmmixupError(f"write_library: row {i} needs non-empty text and an integer "
                               f"score 0..5, got {(text, score)!r}")
        lines.append(json.dumps({"text": text, "score": score}, ensure_ascii=False))
    if not lines:
        raise LmmixupError("write_library: no rows to write")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def library_cache_path(library: Path, embedder_key: str) -> Path:
    """Where the embeddings of `library` under `embedder_key` are cached."""
    from lmmixup.models import cache_dir

    emb = hashlib.sha256(embedder_key.encode()).hexdigest()[:12]
    return cache_dir() / "quality_library" / f"{sha256_file(library)[:24]}-{emb}.pt"


def _atomic_torch_save(obj, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, final)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def library_embeddings(library: Union[str, Path], texts: Sequence[str], embedder) -> torch.Tensor:
    """(L,) library texts -> (L, D) unit vectors, from the disk cache or embedded once and cached.
    A cached tensor of the wrong shape is an error (a stale cache, or another model saved at the
    embedder's path), never silently used."""
    library = Path(library)
    cache = library_cache_path(library, embedder.cache_key)
    if cache.exists():
        try:
            emb = torch.load(cache, map_location="cpu", weights_only=True)["embeddings"]
        except Exception:  # unreadable (foreign file, torch version): rebuild it below
            emb = None
        if emb is not None:
            if emb.dim() != 2 or emb.shape[1] != embedder.dim:
                raise LmmixupError(
                    f"{cache}: cached embeddings of {library} are {tuple(emb.shape)} but "
                    f"embedder {embedder.name!r} gives {embedder.dim}-dim vectors (stale cache "
                    f"or a different model at that path); delete the file to rebuild it")
            if emb.shape[0] != len(texts):
                raise LmmixupError(f"{cache}: holds {emb.shape[0]} rows but {library} has "
                                   f"{len(texts)}; delete the file to rebuild it")
            return emb.to(embedder.device)
    emb = embedder.encode_many(list(texts))  # (L, D)
    _atomic_torch_save({"embeddings": emb.cpu(), "embedder": embedder.cache_key,
                        "library": str(library)}, cache)
    return emb


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
