"""Do distill.py's clusters hold something to merge? Cluster coherence on the first N rows of a
pool, for several N over the same rows, beside random clusters of the same sizes.

    python -m benchmarks.cluster_coherence [--pool sharegpt:16000] [--sizes 1000,4000,16000]
        [--method kmeans --method agglomerative:0.5] [--cache runs/coherence_emb.npy]

Every row of the pool is embedded once, as distill.py embeds it (its task's pair text, the
reward embedder), and cached. For each N and each method the first N rows are clustered as one
source, the way distill.py's cluster stage does (lmmixup.distill.cluster; the rating split is
left out so that every N sees the same rows), and the table gives: clusters, samples left
unclustered, the mean and median coherence (mean pairwise cosine within a cluster), the share
of clusters at >= 0.5, and the same for random clusters of the same sizes (the floor a
clustering that finds nothing would read). More rows give each sample more candidates of its
own kind, so coherence should rise with N; by how much is the question.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np


def pool_embeddings(pool: str, cache: Path) -> np.ndarray:
    from lmmixup.distill.formats import PoolConfig, iter_pool, pair_text, parse_input
    from lmmixup.distill.task import member_task
    from lmmixup.distill.formats import question_text
    from lmmixup.rewards.embedder import EmbedderConfig, get_embedder

    if cache.is_file():
        return np.load(cache)
    texts = []
    for r in iter_pool(parse_input(pool), PoolConfig()):
        task = member_task(question_text(r.instruction, r.input), r.output)
        texts.append(pair_text({"instruction": r.instruction, "input": r.input, "output": r.output,
                                "task": task}))
    emb = get_embedder(EmbedderConfig()).encode_many(texts).float().numpy()  # (n, D)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, emb)
    return emb


def summarise(values: List[float]) -> Dict:
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "share_ge_0.5": round(float((v >= 0.5).mean()), 4)}


def main(argv=None) -> int:
    from lmmixup.distill.cluster import PoolClusterConfig, cluster_by_source, coherence, random_coherence

    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_coherence")
    p.add_argument("--pool", default="sharegpt:16000")
    p.add_argument("--sizes", default="1000,4000,16000")
    p.add_argument("--method", action="append", help="kmeans | agglomerative:<min_similarity>")
    p.add_argument("--cache", default="runs/coherence_emb.npy")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    emb = pool_embeddings(args.pool, Path(args.cache))
    print(f"embedded {len(emb)} rows of {args.pool} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        x = emb[:n]
        for spec in args.method or ["kmeans", "agglomerative:0.5"]:
            name, _, sim = spec.partition(":")
            cfg = PoolClusterConfig(method=name, min_similarity=float(sim) if sim else -1.0)
            t0 = time.perf_counter()
            groups, left = cluster_by_source(["pool"] * len(x), x, cfg, seed=0)
            seconds = time.perf_counter() - t0
            coh = [coherence(x, ms) for _, ms in groups]
            rnd = random_coherence(x, ["pool"] * len(x), groups, seed=0)
            results.append({"rows": len(x), "method": spec, "clusters": len(groups),
                            "unclustered": len(left), "seconds": round(seconds, 1),
                            "coherence": summarise(coh), "random": summarise(rnd)})
    print("| rows | method | clusters | unclustered | coherence mean / median / >=0.5 | "
          "random same sizes mean / median / >=0.5 | s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        c, q = r["coherence"], r["random"]
        print(f"| {r['rows']} | {r['method']} | {r['clusters']} | {r['unclustered']} | "
              f"{c['mean']} / {c['median']} / {c['share_ge_0.5']} | {q['mean']} / {q['median']} / "
              f"{q['share_ge_0.5']} | {r['seconds']} |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
