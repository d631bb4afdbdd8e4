"""The rated library: a JSONL file of rows {"text": str, "score": int 0..5} (the mixture
builder's `rated.jsonl`: originals 5, degraded variants lower), and its cached embeddings.

Every quality backend that learns from the library (knn, learned) reads it here. Legend:
L library rows, D embedding dim.

The library's embeddings are cached on disk under $LMMIXUP_CACHE/quality_library/, keyed by
the SHA-256 of the library file and the embedder's content key (embedder.py `content_key`: a
hash of the model folder's files, not its path, so a fresh clone or venv reuses the cache);
written to a temporary file and renamed, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, List, Mapping, Sequence, Tuple, Union

import torch

from lmmixup.data.jsonl import iter_jsonl, sha256_file
from lmmixup.errors import LmmixupError
from lmmixup.models import cache_dir

NUM_SCORES = 6  # S: scores 0..5
MAX_SCORE = NUM_SCORES - 1


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
    emb = hashlib.sha256(embedder_key.encode()).hexdigest()[:12]
    return cache_dir() / "quality_library" / f"{sha256_file(library)[:24]}-{emb}.pt"


def atomic_torch_save(obj, final: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `final`."""
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
                    f"embedder {embedder.name!r} gives {embedder.dim}-dim vectors (a stale "
                    f"cache); delete the file to rebuild it")
            if emb.shape[0] != len(texts):
                raise LmmixupError(f"{cache}: holds {emb.shape[0]} rows but {library} has "
                                   f"{len(texts)}; delete the file to rebuild it")
            return emb.to(embedder.device)
    emb = embedder.encode_many(list(texts))  # (L, D)
    atomic_torch_save({"embeddings": emb.cpu(), "embedder": embedder.cache_key,
                       "library": str(library)}, cache)
    return emb
