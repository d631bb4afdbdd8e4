"""Quality backend `learned`: an ordinal model of the 0-5 score, trained on the rated library.

Why it exists (docs/LOG.md, 2026-12-02, issue 10): the paper's kNN-Bayes scorer (quality.py,
`reward.quality.backend=knn`) cannot tell a clean pair from its degraded copies on MIXTURE.
Each seed puts one score-5 original and its 2-20 variants into the library, and MiniLM places
texts by topic, so the K nearest rows of any answer are that topic's original and variants,
whatever the answer's own quality. This backend learns instead which *features* separate the
scores, from the same library, and is the default of `reward=paper`.

Legend: N texts, D embedding dim, H hashed n-gram buckets, U surface statistics,
F = [D +] H + U features, S = 6 scores, M = S - 1 = 5 thresholds.

Features z(x) of a text (standardised with the training rows' mean and std):
    - hashed word/punctuation uni- and bigrams, log(1 + count), H buckets (CRC32, stable across
      processes): filler and hedging phrases, vague words, templated rewordings, "...";
    - U surface statistics (SURFACE below): out-of-vocabulary word rate against the embedder's
      own tokenizer vocabulary (typos), capitals, inner capitals, punctuation runs, ellipses,
      repeated trigrams (an answer said twice), length, a last line left open (a cut);
    - the reward embedder's sentence embedding (D; `reward.quality.learned.embedding=false`
      drops it): embedding the library once costs minutes, cached by content, and it adds
      ~0.01-0.02 of paired AUC (docs/LOG.md).
Model: all-threshold ordinal regression (Rennie & Srebro 2005, "Loss functions for preference
levels: regression with discrete ordered labels"), linear in z:
    f = w . z + c;   P(s > t) = sigmoid(f - b_t), t = 0..4,  b_t = b_0 + sum_{u<=t} softplus(d_u)
    loss = sum_rows v_row sum_t BCE(P(s > t), [s > t]) / sum v  +  l2 * |w|^2
    rows: the library's, plus (learned.degenerate) one score-0 degenerate text per clean row
    (rewards/degenerate_rows.py: template echoes, notes, repeats, cuts, question as answer)
    v_row = 1, or (balance) L / (#classes * #rows of its score): each score counts equally, so
    the ~6 degraded rows per original do not pull every clean-looking text's E below 4
    E = sum_t P(s > t)  in (0, 5)      (the expected score: ordered b make P(s > t) a survival
                                        function, so E is a mean; the paper's step mapping
                                        and `expected` mode apply unchanged)
A linear model because it trains in seconds, deterministically (full-batch L-BFGS), and its
weights can be read; docs/LOG.md records what a larger one would add.

The fitted model is saved beside the library, `<library>.learned-<key>.pt` (or under
$LMMIXUP_CACHE/quality_model/ if that folder is read-only), written to a temporary file and
renamed; <key> hashes the library's SHA-256, the embedder's content key (when the embedding or
its vocabulary is used), the training config and FEATURES_VERSION. A stale file is never read:
any change to those gives another name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Union

import torch

from lmmixup.data.jsonl import sha256_file
from lmmixup.errors import LmmixupError, require
from lmmixup.models import cache_dir
from lmmixup.rewards.degenerate_rows import degenerate_texts
from lmmixup.rewards.quality_library import (NUM_SCORES, atomic_torch_save, library_embeddings,
                                             read_library)

FEATURES_VERSION = 2  # bump when a feature's definition changes: old model files go stale
# 2: ends_open (a text cut mid-sentence); score-0 degenerate rows (learned.degenerate)


@dataclass
class LearnedQualityConfig:
    buckets: int = 2048
    """H: hashed word uni+bigram buckets"""
    embedding: bool = True
    """also feed the embedder's sentence embedding (embeds the whole library once, cached)"""
    l2: float = 0.1
    """L2 penalty on the weights (features are standardised, so one scale fits all)"""
    balance: bool = True
    """weight rows so every score 0..5 counts equally (MIXTURE has ~6 degraded rows per original)"""
    max_iter: int = 200
    """L-BFGS iterations of the full-batch fit"""
    degenerate: bool = True
    """also train on one score-0 degenerate text per clean library text (template echoes,
    think notes, repeats, cuts, the question as its answer; rewards/degenerate_rows.py), so
    text that is not an answer scores low"""

    def validate(self) -> None:
        require(self.buckets > 0, "reward.quality.learned.buckets", "must be > 0")
        require(self.l2 >= 0 and math.isfinite(self.l2), "reward.quality.learned.l2",
                "must be finite and >= 0")
        require(self.max_iter > 0, "reward.quality.learned.max_iter", "must be > 0")


# ---------------------------------------------------------------------------------------------
# Features: pure functions of the text

_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")  # lowercased words, and each other symbol alone
_WORD = re.compile(r"[A-Za-z']+")
_LETTERS = re.compile(r"[A-Za-z]{3,}")
_PUNCT_RUN = re.compile(r"([!?,;:])\1+|\.{4,}")  # "!!!", "??", ",," ... ("..." is an ellipsis)
_ELLIPSIS = re.compile(r"\.\.\.|\u2026")


def _words(text: str) -> List[str]:
    return _WORD.findall(text)


def oov_rate(text: str, vocab: FrozenSet[str]) -> float:
    """Fraction of words of >= 3 letters that are not one token of the embedder's vocabulary
    (lowercased): typos, dropped or doubled letters. A vocabulary of ~30K word pieces knows
    most English words and many names, so a clean text scores low but rarely 0."""
    words = [w.lower() for w in _LETTERS.findall(text)]
    return sum(w not in vocab for w in words) / max(1, len(words))


def _upper_char_rate(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(1, len(letters))


def _caps_word_rate(text: str) -> float:
    words = [w for w in _words(text) if len(w) >= 2]
    return sum(w.isupper() for w in words) / max(1, len(words))


def _inner_caps_rate(text: str) -> float:
    """rANdOm casing: an upper-case letter after the first, in a word that is not all caps"""
    words = [w for w in _words(text) if len(w) >= 2]
    return sum(any(c.isupper() for c in w[1:]) and not w.isupper() for w in words) / max(1, len(words))


def _lower_start_rate(text: str) -> float:
    """lines and sentences that start with a lower-case letter (an all-lower-case copy)"""
    starts = re.findall(r"(?:^|[.?!]\s+|\n)\s*([A-Za-z])", text)
    return sum(c.islower() for c in starts) / max(1, len(starts))


def _punct_run_rate(text: str) -> float:
    return len(_PUNCT_RUN.findall(text)) / max(1, len(_words(text)))


def _punct_rate(text: str) -> float:
    """punctuation marks per word: 0 when punctuation was stripped"""
    return sum(c in ".,;:?!" for c in text) / max(1, len(_words(text)))


def _ellipses(text: str) -> float:
    return float(len(_ELLIPSIS.findall(text)))


def _repeat_trigram_rate(text: str) -> float:
    """word trigrams seen earlier in the same text: an answer said twice"""
    words = [w.lower() for w in _words(text)]
    grams = list(zip(words, words[1:], words[2:]))
    return (len(grams) - len(set(grams))) / max(1, len(grams))


def _log_words(text: str) -> float:
    return math.log1p(len(_words(text)))


def _ends_open(text: str) -> float:
    """1 when the last line has >= 4 words and no closing mark: a text cut mid-sentence
    ("Answer: C" and other short last lines do not count)"""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return float(bool(lines) and len(_words(lines[-1])) >= 4 and lines[-1][-1] not in ".?!)\"'`]*:")


def _last_line_share(text: str) -> float:
    """words on the last line / all words: a cut or a doubled answer moves it"""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(_words(lines[-1])) / max(1, len(_words(text))) if lines else 0.0


# name -> fn(text) -> float; oov_rate also needs the vocabulary and is added in `surface`
SURFACE: Dict[str, Callable[[str], float]] = {
    "upper_char_rate": _upper_char_rate,
    "caps_word_rate": _caps_word_rate,
    "inner_caps_rate": _inner_caps_rate,
    "lower_start_rate": _lower_start_rate,
    "punct_run_rate": _punct_run_rate,
    "punct_rate": _punct_rate,
    "ellipses": _ellipses,
    "repeat_trigram_rate": _repeat_trigram_rate,
    "log_words": _log_words,
    "last_line_share": _last_line_share,
    "ends_open": _ends_open,
}
SURFACE_NAMES = ("oov_rate",) + tuple(SURFACE)  # the U columns, in order


def surface(texts: Sequence[str], vocab: FrozenSet[str]) -> torch.Tensor:
    """(N,) texts -> (N, U) surface statistics, columns in SURFACE_NAMES order."""
    rows = [[oov_rate(t, vocab)] + [fn(t) for fn in SURFACE.values()] for t in texts]
    return torch.tensor(rows, dtype=torch.float32).view(len(texts), len(SURFACE_NAMES))  # (N, U)


def hashed_ngrams(texts: Sequence[str], buckets: int) -> torch.Tensor:
    """(N,) texts -> (N, H) log(1 + count) of lowercased word/symbol uni- and bigrams, hashed
    with CRC32 (Python's hash() is salted per process, which would scramble a saved model)."""
    cells: List[int] = []  # n * H + bucket, one entry per n-gram occurrence
    for n, text in enumerate(texts):
        toks = _TOKEN.findall(text.lower())
        grams = toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])]
        cells.extend(n * buckets + zlib.crc32(g.encode()) % buckets for g in grams)
    counts = torch.bincount(torch.tensor(cells, dtype=torch.long), minlength=len(texts) * buckets)
    return counts.view(len(texts), buckets).float().log1p()  # (N, H)


def tokenizer_vocabulary(embedder) -> FrozenSet[str]:
    """Whole-word entries of the embedder's tokenizer vocabulary, lowercased: WordPiece
    continuations (##x) dropped, SentencePiece/BPE word-start marks (\u2581, \u0120) removed."""
    vocab = embedder.model.tokenizer.get_vocab()
    words = (tok.lstrip("\u2581\u0120").lower() for tok in vocab if not tok.startswith("##"))
    return frozenset(w for w in words if w.isalpha())


# ---------------------------------------------------------------------------------------------
# The model: pure tensor functions


@dataclass
class OrdinalModel:
    """A fitted all-threshold ordinal model over standardised features (module docstring)."""

    mean: torch.Tensor  # (F,) feature means of the training rows
    std: torch.Tensor  # (F,) feature stds (floored), so z = (x - mean) / std
    weight: torch.Tensor  # (F,) w
    thresholds: torch.Tensor  # (M,) b_0 < ... < b_4 (the bias c is folded into them)


def ordered_thresholds(raw: torch.Tensor) -> torch.Tensor:
    """(M,) unconstrained -> (M,) strictly increasing: b_0 = raw_0, b_t = b_{t-1} + softplus(raw_t)."""
    steps = torch.cat([raw[:1], torch.nn.functional.softplus(raw[1:])])  # (M,)
    return steps.cumsum(0)  # (M,)


def survival(features: torch.Tensor, model: OrdinalModel) -> torch.Tensor:
    """(N, F) raw features -> (N, M) P(s > t) for t = 0..4, non-increasing in t."""
    z = (features - model.mean) / model.std  # (N, F)
    f = z @ model.weight  # (N,)
    return torch.sigmoid(f[:, None] - model.thresholds[None, :])  # (N, M)


def expected_score(features: torch.Tensor, model: OrdinalModel) -> torch.Tensor:
    """(N, F) -> E (N,) = sum_t P(s > t), in (0, 5)."""
    return survival(features, model).sum(dim=1)  # (N,)


def balanced_weights(scores: torch.Tensor) -> torch.Tensor:
    """(N,) scores -> (N,) row weights, mean 1, every present score class with equal total."""
    counts = torch.bincount(scores, minlength=NUM_SCORES).float()  # (S,)
    present = (counts > 0).sum()  # classes in the library
    return (scores.numel() / (present * counts))[scores]  # (N,)


def fit_ordinal(features: torch.Tensor, scores: torch.Tensor, l2: float, max_iter: int,
                row_weights: Optional[torch.Tensor] = None) -> OrdinalModel:
    """Full-batch L-BFGS on the all-threshold loss (module docstring), each row's loss times
    row_weights (N,) (default 1). Deterministic: the same inputs give the same model."""
    M = NUM_SCORES - 1
    if row_weights is None:
        row_weights = torch.ones(scores.shape[0])  # (N,)
    mean = features.mean(dim=0)  # (F,)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-3)  # (F,) constant columns stay 0
    z = (features - mean) / std  # (N, F)
    above = (scores[:, None] > torch.arange(M)[None, :]).float()  # (N, M) [s > t]
    weight = torch.zeros(features.shape[1], requires_grad=True)  # (F,)
    # start the thresholds at the training rows' own logit(P(s > t)), so the first step is sane
    rate = (row_weights[:, None] * above).sum(0) / row_weights.sum()  # (M,) weighted P(s > t)
    rate = rate.clamp(1e-3, 1 - 1e-3)  # (M,)
    start = -torch.logit(rate)  # (M,) b_t with w = 0
    start = torch.cummax(start, dim=0).values + 1e-3 * torch.arange(M)  # (M,) increasing
    raw = torch.cat([start[:1], (start.diff().exp() - 1).clamp_min(1e-6).log()])  # softplus^-1
    raw.requires_grad_(True)
    opt = torch.optim.LBFGS([weight, raw], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20)

    def closure():
        opt.zero_grad()
        logits = (z @ weight)[:, None] - ordered_thresholds(raw)[None, :]  # (N, M)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, above, reduction="none").sum(dim=1)  # (N,) all-threshold loss per row
        loss = (row_weights * bce).sum() / row_weights.sum() + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return OrdinalModel(mean=mean, std=std, weight=weight.detach().clone(),
                        thresholds=ordered_thresholds(raw.detach()).clone())


# ---------------------------------------------------------------------------------------------
# Start-up: library file -> fitted (or loaded) model


def model_key(library_sha: str, embedder_key: str, cfg: LearnedQualityConfig) -> str:
    """12 hex digits naming the model file: library content, embedder content, config, version."""
    blob = json.dumps({"library": library_sha, "embedder": embedder_key, "config": asdict(cfg),
                       "features": FEATURES_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_path(library: Path, key: str) -> Path:
    """Beside the library when its folder is writable, else under $LMMIXUP_CACHE."""
    name = f"{library.name}.learned-{key}.pt"
    if os.access(library.parent, os.W_OK):
        return library.parent / name
    return cache_dir() / "quality_model" / name


class LearnedQuality:
    """The learned backend: `expected(answers) -> E (n,)`. Loads the model saved beside the
    library, or trains it (seconds) and saves it."""

    def __init__(self, library: Union[str, Path], cfg: LearnedQualityConfig, embedder):
        cfg.validate()
        if not library:
            raise LmmixupError("reward.quality.library: the learned quality backend trains on a "
                               "rated library JSONL ({\"text\", \"score\"} rows)")
        library = Path(library)
        texts, scores = read_library(library)  # checks the file, line by line
        self.cfg, self.embedder = cfg, embedder
        self.vocab = tokenizer_vocabulary(embedder)
        self.path = model_path(library, model_key(sha256_file(library), embedder.cache_key, cfg))
        self.trained = False  # True when this start-up fitted the model (tests read it)
        self.model: Optional[OrdinalModel] = None
        if self.path.exists():
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
                self.model = OrdinalModel(**{k: state[k] for k in
                                             ("mean", "std", "weight", "thresholds")})
            except Exception:  # unreadable (foreign file, torch version): retrain below
                self.model = None
        if self.model is None:
            emb = library_embeddings(library, texts, embedder).cpu() if cfg.embedding else None
            if cfg.degenerate:  # score-0 rows of text that is not an answer (module docstring)
                extra = degenerate_texts(texts, scores.tolist())
                if cfg.embedding:
                    emb = torch.cat([emb, embedder.encode_many(extra).float().cpu()])
                texts = list(texts) + extra
                scores = torch.cat([scores, torch.zeros(len(extra), dtype=torch.long)])
            self.model = fit_ordinal(self._features(texts, emb), scores, l2=cfg.l2,
                                     max_iter=cfg.max_iter,
                                     row_weights=balanced_weights(scores) if cfg.balance else None)
            atomic_torch_save({**asdict(self.model), "library": str(library),
                                "embedder": embedder.cache_key}, self.path)
            self.trained = True

    def _features(self, texts: Sequence[str], emb: Optional[torch.Tensor]) -> torch.Tensor:
        """(N,) texts [+ (N, D) embeddings] -> (N, F)."""
        parts = [hashed_ngrams(texts, self.cfg.buckets), surface(texts, self.vocab)]
        if self.cfg.embedding:
            parts.insert(0, emb)
        return torch.cat(parts, dim=1)  # (N, F)

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts -> (N, F), embedding them (through the memo) if the model uses it."""
        emb = self.embedder.encode(list(texts)).cpu() if self.cfg.embedding else None
        return self._features(texts, emb)

    def expected(self, answers: Sequence[str]) -> torch.Tensor:
        """(n,) answer texts -> E (n,) in (0, 5), on CPU."""
        if not answers:
            return torch.zeros(0)
        return expected_score(self.features(answers), self.model)
