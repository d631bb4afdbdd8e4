"""Capacity-limited k-means: every low-quality sample of a source into a cluster of 2-5.

The paper clusters the low-quality samples of each source with embeddings and capacity-limited
k-means, cluster sizes 2-5 with mean 3. Our version, per source, with n unit vectors X (n, D)
(legend: n points, k clusters, D embedding dim, m candidate centres per point):

  1. Sizes. k = round(n / mean_size), clamped to [ceil(n / size_max), floor(n / size_min)] so
     that n points fit. k sizes are drawn i.i.d. from p(s) ~ exp(-(s - mean_size)^2 / 2) on
     size_min..size_max, then nudged one unit at a time (a random size that can still move)
     until they sum to exactly n. So the sizes scatter around the mean, and capacity equals
     the number of points.
  2. Centres. Spherical k-means (cosine): k distinct points drawn at random as the start (no
     k-means++: its k sequential passes cost as much as all Lloyd iterations together), then
     `kmeans_iters` Lloyd steps: assign each point to its most similar centre, centre = the
     normalised mean of its points; a centre that loses every point keeps its place.
  3. Capacities. The largest drawn size goes to the centre with the most k-means members,
     and so on down (ties by centre index).
  4. Greedy assignment by similarity. Each point's m most similar centres are candidates; all
     (point, centre) pairs are taken in order of decreasing cosine (ties: lower point index,
     then the point's better candidate), a pair is accepted while the point is free and the
     centre has room. Points whose candidates all filled up get a new round over the centres
     that still have room, with m doubled, until every point is placed (each round places at
     least the best remaining pair, so it ends).
  5. Repair. The paper repairs clusters the greedy pass left below size_min. Here the sizes
     sum to n, so the greedy pass fills every cluster to exactly its drawn size and none can
     end below size_min. What is left to repair is a source whose n cannot be written as a sum
     of sizes in size_min..size_max (only with a narrow range, e.g. 4..5 and n = 7), or with
     n < size_min: those points go to unclustered.jsonl with the reason.

`cluster.method=agglomerative` is an alternative for pools of near-duplicates (our measure on
MIXTURE's flattened test clusters: seed purity 0.95 at min_similarity 0.5 against 0.77-0.81
for k-means over three seeds; docs/LOG.md, issue 27). Per source:
  1. each point's m = `candidates` most similar points are its candidate edges;
  2. edges are taken by decreasing cosine (ties by index); an edge joins its two groups when
     the cosine is >= min_similarity, the joined group has <= size_max members, and the mean
     cosine over every pair across the two groups is >= min_similarity too (average link:
     a chain of near neighbours does not pull two different items together);
  3. groups of >= size_min members are the clusters; the rest go to unclustered.jsonl as
     no_similar_sample. The sizes are what the data gives (mean_size is not used).

Memory: similarities are computed `chunk_size` points at a time against the k centres (chunk x k
floats), never n x n; the candidate lists are n x m. Every random draw comes from a generator
seeded with (seed, source), and ties are broken by index, so the same input gives the same
clusters.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch

from lmmixup.errors import require


CLUSTER_METHODS = ("kmeans", "agglomerative")


@dataclass
class PoolClusterConfig:
    method: str = "kmeans"
    """kmeans: the paper's capacity-limited k-means, sizes drawn around mean_size |
    agglomerative: average-link merging of near neighbours up to size_max, at min_similarity
    (purer clusters on pools of near-duplicates; module docstring)"""
    size_min: int = 2
    """fewest samples in a cluster (the paper: 2)"""
    size_max: int = 5
    """most samples in a cluster (the paper: 5)"""
    mean_size: float = 3.0
    """sizes are drawn around this mean (the paper: 3)"""
    kmeans_iters: int = 10
    """Lloyd iterations of the spherical k-means that places the centres"""
    candidates: int = 8
    """m: nearest centres per point in the first greedy round (doubled each later round)"""
    chunk_size: int = 1024
    """points per similarity block (memory: chunk_size x k floats)"""
    min_similarity: float = -1.0
    """a sample whose most similar same-source sample has a lower cosine stays unclustered
    (reason no_similar_sample): it has nothing to merge with; -1 clusters every sample (the paper)"""

    def validate(self) -> None:
        require(2 <= self.size_min <= self.size_max, "cluster.size_min",
                f"must be >= 2 and <= cluster.size_max, got {self.size_min}")
        require(self.size_max <= 5, "cluster.size_max", f"must be <= 5 (the distiller's "
                f"prompt holds 2-5 samples), got {self.size_max}")
        require(self.size_min <= self.mean_size <= self.size_max, "cluster.mean_size",
                f"must lie in [size_min, size_max] = [{self.size_min}, {self.size_max}]")
        require(self.kmeans_iters >= 0, "cluster.kmeans_iters", "must be >= 0")
        require(self.candidates > 0, "cluster.candidates", "must be > 0")
        require(self.chunk_size > 0, "cluster.chunk_size", "must be > 0")
        require(-1 <= self.min_similarity <= 1, "cluster.min_similarity",
                f"must be a cosine in [-1, 1], got {self.min_similarity}")
        require(self.method in CLUSTER_METHODS, "cluster.method",
                f"unknown method {self.method!r}; known: {', '.join(CLUSTER_METHODS)}")


class Clustering(NamedTuple):
    clusters: List[List[int]]  # member indices into the input points, each sorted, 2-5 long
    leftover: List[int]  # indices that could not be placed
    reason: str  # why the leftovers were not placed ('' when none)


def draw_sizes(n: int, cfg: PoolClusterConfig, rng: np.random.Generator) -> np.ndarray:
    """k cluster sizes in size_min..size_max summing to n (or to the most that fits)."""
    lo, hi = math.ceil(n / cfg.size_max), n // cfg.size_min
    k = hi if lo > hi else min(max(round(n / cfg.mean_size), lo), hi)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    values = np.arange(cfg.size_min, cfg.size_max + 1)  # (S,)
    weights = np.exp(-0.5 * (values - cfg.mean_size) ** 2)  # (S,)
    sizes = rng.choice(values, size=k, p=weights / weights.sum())  # (k,)
    target = min(n, k * cfg.size_max)
    while sizes.sum() != target:
        step = -1 if sizes.sum() > target else 1
        movable = np.flatnonzero(sizes > cfg.size_min) if step < 0 else np.flatnonzero(sizes < cfg.size_max)
        sizes[movable[rng.integers(len(movable))]] += step
    return sizes


def _best_centres(x: torch.Tensor, centres: torch.Tensor, m: int, chunk: int):
    """(n, D), (k, D) -> top-m (similarities, centre indices), both (n, m); chunked over n."""
    sims, idx = [], []
    for s in range(0, x.shape[0], chunk):
        block = x[s:s + chunk] @ centres.T  # (c, k)
        top = block.topk(m, dim=1)  # (c, m)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)  # (n, m), (n, m)


def spherical_kmeans(x: torch.Tensor, k: int, iters: int, rng: np.random.Generator,
                     chunk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors (n, D) -> (centres (k, D), member counts (k,)); module docstring, step 2."""
    n = x.shape[0]
    centres = x[torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))].clone()  # (k, D)
    assign = None
    for _ in range(iters + 1):
        new_assign = _best_centres(x, centres, 1, chunk)[1][:, 0]  # (n,)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centres).index_add_(0, assign, x)  # (k, D)
        norms = sums.norm(dim=1, keepdim=True)  # (k, 1)
        centres = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centres)  # (k, D)
    counts = torch.bincount(assign, minlength=k)  # (k,)
    return centres, counts


def greedy_assign(x: torch.Tensor, centres: torch.Tensor, capacity: np.ndarray, m: int,
                  chunk: int) -> np.ndarray:
    """Unit vectors (n, D), centres (k, D), capacity (k,) summing to >= n -> centre of each
    point (n,), -1 where no room was left; module docstring, step 4."""
    n, k = x.shape[0], centres.shape[0]
    owner = np.full(n, -1, dtype=np.int64)  # (n,)
    room = capacity.astype(np.int64).copy()  # (k,)
    free = np.arange(n)
    rounds = 0
    while len(free) and room.sum() > 0:
        open_c = np.flatnonzero(room > 0)  # (k',) centres with room
        width = int(min(len(open_c), m << rounds, max(1, (1 << 24) // len(free))))
        sims, idx = _best_centres(x[torch.from_numpy(free)], centres[torch.from_numpy(open_c)],
                                  width, chunk)  # (f, w) each
        sims, idx = sims.numpy(), open_c[idx.numpy()]  # centre ids of the candidates
        order = np.argsort(-sims, axis=None, kind="stable")  # pairs by decreasing cosine
        for flat in order:
            p, c = free[flat // width], idx.flat[flat]
            if owner[p] < 0 and room[c] > 0:
                owner[p] = c
                room[c] -= 1
        free = np.flatnonzero(owner < 0)
        rounds += 1
    return owner


def capacity_kmeans(emb: np.ndarray, cfg: PoolClusterConfig, rng: np.random.Generator) -> Clustering:
    """Unit vectors (n, D) of one source -> clusters of size_min..size_max covering every point
    that fits (module docstring)."""
    n = emb.shape[0]
    if n < cfg.size_min:
        return Clustering([], list(range(n)), f"the source has {n} low-quality sample(s), "
                          f"fewer than cluster.size_min={cfg.size_min}")
    sizes = draw_sizes(n, cfg, rng)  # (k,)
    k = len(sizes)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))  # (n, D)
    centres, counts = spherical_kmeans(x, k, cfg.kmeans_iters, rng, cfg.chunk_size)  # (k, D), (k,)
    by_members = np.argsort(-counts.numpy(), kind="stable")  # (k,) most members first
    capacity = np.zeros(k, dtype=np.int64)
    capacity[by_members] = np.sort(sizes)[::-1]  # largest size to the fullest centre
    owner = greedy_assign(x, centres, capacity, min(cfg.candidates, k), cfg.chunk_size)  # (n,)
    members: Dict[int, List[int]] = {}
    for p, c in enumerate(owner.tolist()):
        if c >= 0:
            members.setdefault(c, []).append(p)
    clusters = sorted(members.values(), key=lambda ms: ms[0])  # by first member: pool order
    leftover = np.flatnonzero(owner < 0).tolist()
    reason = (f"{n} samples cannot be split into clusters of {cfg.size_min}..{cfg.size_max}"
              if leftover else "")
    return Clustering(clusters, leftover, reason)


def similarity_blocks(x: torch.Tensor, chunk: int):
    """Unit vectors (n, D) -> (start, (c, n) cosines of points start..start+c to all) blocks, each
    point's cosine to itself set to -2 so that it is never its own neighbour."""
    for s in range(0, x.shape[0], chunk):
        block = x[s:s + chunk] @ x.T  # (c, n)
        block[torch.arange(block.shape[0]), torch.arange(s, s + block.shape[0])] = -2.0
        yield s, block


def agglomerative(emb: np.ndarray, cfg: PoolClusterConfig) -> Clustering:
    """Unit vectors (n, D) of one source -> average-link clusters of size_min..size_max whose
    members are at least min_similarity alike (module docstring)."""
    n = emb.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))  # (n, D)
    m = min(cfg.candidates, n - 1)
    edges = []  # (-cosine, i, j) with i < j
    for s, block in similarity_blocks(x, cfg.chunk_size):  # (c, n) each
        if m > 0:
            top = block.topk(m, dim=1)  # (c, m)
            for r, (sims, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                edges += [(-c, min(s + r, j), max(s + r, j)) for c, j in zip(sims, idx)]
    members: Dict[int, List[int]] = {i: [i] for i in range(n)}  # group id -> points
    owner = list(range(n))
    for neg, i, j in sorted(set(edges)):
        if -neg < cfg.min_similarity:
            break
        a, b = owner[i], owner[j]
        if a == b or len(members[a]) + len(members[b]) > cfg.size_max:
            continue
        link = (x[members[a]] @ x[members[b]].T).mean().item()  # average over cross pairs
        if link < cfg.min_similarity:
            continue
        a, b = min(a, b), max(a, b)  # the group keeps its lowest id: order-free
        members[a] += members.pop(b)
        for p in members[a]:
            owner[p] = a
    clusters = sorted(sorted(g) for g in members.values() if len(g) >= cfg.size_min)
    leftover = sorted(p for g in members.values() if len(g) < cfg.size_min for p in g)
    return Clustering(clusters, leftover, "no_similar_sample" if leftover else "")


def nearest_similarity(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Unit vectors (n, D) -> (n,) each point's highest cosine to another point (-1 when alone);
    chunk x n similarities at a time."""
    n = x.shape[0]
    best = torch.full((n,), -1.0)
    for s, block in similarity_blocks(x, chunk):  # (c, n) each
        if n > 1:
            best[s:s + chunk] = block.max(dim=1).values  # (c,)
    return best  # (n,)


def coherence(emb: np.ndarray, members: Sequence[int]) -> float:
    """Mean pairwise cosine of a cluster's unit vectors (n, D)[members]: how alike its members
    are (1 = identical texts, ~0 = unrelated)."""
    x = np.asarray(emb[list(members)], dtype=np.float64)  # (m, D)
    sims = x @ x.T  # (m, m)
    m = len(members)
    return float((sims.sum() - np.trace(sims)) / (m * (m - 1)))


def random_coherence(emb: np.ndarray, sources: Sequence[str], clusters: Sequence[Tuple[str, List[int]]],
                     seed: int) -> List[float]:
    """The coherence of random clusters of the same sizes drawn from the same sources' points:
    what `coherence` reads when clustering finds nothing (the report's baseline)."""
    rng = np.random.default_rng([seed, 1])
    by_source: Dict[str, List[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    return [coherence(emb, rng.choice(by_source[s], size=len(ms), replace=False).tolist())
            for s, ms in clusters]


def source_rng(seed: int, source: str) -> np.random.Generator:
    """One generator per (seed, source): a source's clusters do not depend on the others."""
    return np.random.default_rng([seed, zlib.crc32(source.encode("utf-8"))])


def cluster_by_source(sources: Sequence[str], emb: np.ndarray, cfg: PoolClusterConfig,
                      seed: int) -> Tuple[List[Tuple[str, List[int]]], List[Tuple[int, str]]]:
    """Points with their source (n,) and unit vectors (n, D) -> ([(source, member indices)],
    [(index, reason)] for the points left out). Sources in sorted order. With
    cfg.min_similarity above -1, a point whose best same-source cosine is below it is left out
    first (no_similar_sample), and the rest are clustered."""
    groups: Dict[str, List[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s, []).append(i)
    clusters, unclustered = [], []
    for source in sorted(groups):
        index = np.asarray(groups[source])  # (n_s,) positions in the input
        if cfg.min_similarity > -1:  # samples with nothing similar to merge with stay out
            x = torch.from_numpy(np.ascontiguousarray(emb[index], dtype=np.float32))  # (n_s, D)
            alike = (nearest_similarity(x, cfg.chunk_size) >= cfg.min_similarity).numpy()  # (n_s,)
            unclustered += [(int(i), "no_similar_sample") for i in index[~alike]]
            index = index[alike]
        if cfg.method == "agglomerative":
            result = agglomerative(emb[index], cfg)
        else:
            result = capacity_kmeans(emb[index], cfg, source_rng(seed, source))
        clusters += [(source, [int(index[i]) for i in ms]) for ms in result.clusters]
        unclustered += [(int(index[i]), result.reason) for i in result.leftover]
    return clusters, unclustered
