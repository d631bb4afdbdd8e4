"""Distil a real, imperfect instruction pool into a small high-quality training set.

    python distill.py input=sharegpt:2000 out=runs/distill/sharegpt model.name_or_path=MODEL
    python distill.py input=pool.jsonl out=DIR mix.size=1000 mix.distilled_fraction=0.3
    python distill.py -m mix.distilled_fraction=0.3,0.5,0.7 'out=runs/distill/f${mix.distilled_fraction}'

The paper's downstream pipeline (shared/PAPER.md, "Downstream use"), top to bottom. Each stage
writes its files into `out` atomically and is skipped when they are complete (.work/state.json):
  1. normalized.jsonl   one row per pool sample {id (content hash), source, instruction, input,
                        output}; exact duplicates dropped and counted
  2. rated.jsonl        every sample embedded and rated 0-5 by the configured quality scorer
                        (or the LLM judge, rate.backend=judge), with the rater's detail
  3. high.jsonl, low.jsonl   the split at rate.high_threshold
  4. clusters.jsonl     the low-quality samples of each source in clusters of 2-5 (capacity-limited
                        k-means); unclustered.jsonl names every sample left out and why
  5. generated.jsonl    each cluster in training's prompt layout, distilled greedily in batches by
                        the rollout engine (a failed pair sampled again, distill.retries);
                        <answer> parsed into instruction/output, failures kept with their reason
  6. rerated.jsonl      each distilled pair rated; kept when it has no surface defect, is
                        >= distill.keep_threshold (and, if distill.min_gain is set, beats its
                        cluster's best member by that much)
  7. distilled.jsonl    plus the long-tail diversity score and the rank (quality, then long tail)
  8. mix.jsonl          original high-quality rows + top distilled rows: exactly mix.size rows at
                        mix.distilled_fraction, shuffled with the seed
  9. report.json, report.md, *.png   counts, score and cluster-size histograms, failures, times
Rating and generation run in shards with a done-list, so a kill at any moment loses at most one
shard; the same input, config and seed give byte-identical files, resumed or not.
`torchrun --nproc_per_node=N distill.py ...` splits the shards of rating, generation and
re-rating across N ranks (shard j on rank j % N); rank 0 runs the other stages, keeps the state
and merges the shards in shard order, so N ranks write the same bytes as one.
"""

from __future__ import annotations

import json
import sys
import time
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Sequence

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.config import to_typed_config
from lmmixup.data.jsonl import atomic_open, atomic_write_jsonl, atomic_write_text, dumps_row, iter_jsonl
from lmmixup.distill.cluster import cluster_by_source, coherence, random_coherence
from lmmixup.distill.config import DistillConfig, register_distill_configs
from lmmixup.distill.formats import check_input, iter_pool, pair_text, parse_input, question_text, sample_id
from lmmixup.distill.defects import pair_defects
from lmmixup.distill.generate import GenerateConfig, cluster_prompt, distill_clusters, member_pairs
from lmmixup.distill.longtail import long_tail_scores, rank_order
from lmmixup.distill.mix import build_mix
from lmmixup.distill.rate import build_rater, check_rater, embed_texts, load_embedder
from lmmixup.distill.report import PLOTS, write_report
from lmmixup.distill.task import cluster_task
from lmmixup.distill.state import (STAGES, RunState, check_out_folder, kill_point, reuse_stages,
                                   run_sharded)
from lmmixup.dist.context import LOCAL, DistContext, close_distributed, join_torchrun
from lmmixup.dist.shard import group_seed
from lmmixup.device import resolve_device
from lmmixup.errors import LmmixupError
from lmmixup.models import EMBEDDED_PREFIX, load_model, load_tokenizer, resolve_path
from lmmixup.precision import resolve_precision
from lmmixup.rollout_batch import RolloutConfig
from lmmixup.sampling.policy import Policy

register_distill_configs()


class Parts:
    """The heavy pieces, each loaded on first use: a resumed run that only has the mix left
    never loads the distiller."""

    def __init__(self, cfg: DistillConfig, dist: DistContext = LOCAL):
        self.cfg, self.dist = cfg, dist

    @cached_property
    def embedder(self):
        return load_embedder(self.cfg.rate.embedder)

    @cached_property
    def rater(self):
        return build_rater(self.cfg.rate, self.embedder)

    @cached_property
    def distiller(self):
        cfg = self.cfg
        device = resolve_device(cfg.device)
        if device.type == "cuda" and self.dist.distributed:
            device = torch.device("cuda", self.dist.local_rank)  # one GPU per rank
        tokenizer = load_tokenizer(cfg.model)
        model = load_model(cfg.model, tokenizer).to(device).eval()
        # the sampler's precision, as train.py's evaluation decodes (only the static engine
        # samples in a precision of its own)
        dtype = (resolve_precision(cfg.precision.rollout, device, "rollout")
                 if cfg.distill.engine == "static" else torch.float32)
        # each attempt passes its own rollout settings (lmmixup/distill/generate.py); the
        # policy's are the engine's defaults
        return Policy.build(model, tokenizer, device, RolloutConfig(engine=cfg.distill.engine),
                            dtype=dtype)


def chunks(items: Iterable, size: int) -> Iterator[List]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def concat_shards(paths: Sequence[Path], out: Path) -> int:
    """Shard files -> one file, streamed, atomically; returns the row count."""
    n = 0
    with atomic_open(out, "w") as f:
        for path in paths:
            for _, row in iter_jsonl(path):
                f.write(dumps_row(row) + "\n")
                n += 1
    return n


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def rate_sharded(parts: Parts, folder: Path, rows: Iterable[Dict], total: int,
                 rated: Callable[[Dict], bool], desc: str) -> List[Path]:
    """Embed and rate rows in fixed shards: each shard_NNNNN.jsonl holds the rows with "score"
    and "rater" added (None for rows where rated(row) is False), emb_NNNNN.npy the embeddings
    of the rated rows, in order."""
    cfg = parts.cfg.rate

    def work(j: int, batch: List[Dict]) -> List[Dict]:
        idx = [i for i, r in enumerate(batch) if rated(r)]
        texts = [pair_text(batch[i]) for i in idx]
        embs, scores, details = [], [], []
        for s in range(0, len(texts), cfg.batch_size):
            emb = embed_texts(parts.embedder, texts[s:s + cfg.batch_size])  # (b, D)
            ratings = parts.rater(texts[s:s + cfg.batch_size], torch.from_numpy(emb))
            embs.append(emb)
            scores += ratings.scores
            details += ratings.details
        dim = parts.embedder.dim
        save_npy(folder / f"emb_{j:05d}.npy",
                 np.concatenate(embs) if embs else np.zeros((0, dim), dtype=np.float32))
        out = [dict(r, score=None, rater=None) for r in batch]
        for i, score, detail in zip(idx, scores, details):
            out[i].update(score=score, rater=detail)
        return out

    # one shard of rows in memory at a time, never the whole pool
    dist = parts.dist
    paths = run_sharded(folder, chunks(rows, cfg.shard_size), total, work, desc,
                        parts.cfg.progress and dist.is_main, desc, dist.rank, dist.world_size)
    dist.barrier()  # every rank's shards are on disk
    return paths


def shard_embeddings(paths: Sequence[Path]) -> np.ndarray:
    return np.concatenate([np.load(p.with_name(p.name.replace("shard_", "emb_").replace(".jsonl", ".npy")))
                           for p in paths])


def run(dcfg: DictConfig) -> None:
    cfg: DistillConfig = to_typed_config(dcfg)
    dist = join_torchrun()  # one process: a no-op context
    config = OmegaConf.to_container(dcfg, resolve=True)
    out = Path(cfg.out)
    work = out / ".work"
    # Every check that can fail on the user's input runs before anything is written.
    spec = parse_input(cfg.input)
    check_input(spec)
    check_rater(cfg.rate)
    check_model(cfg)
    state = RunState(out)
    if dist.is_main:  # rank 0 owns the out folder and its state; the others only write shards
        check_out_folder(out, config, state)
        if cfg.reuse and not (out / "config.json").is_file():  # a new folder: take what fits
            taken = reuse_stages(Path(cfg.reuse), out, config)
            state = RunState(out)
            print(f"distill: reused {', '.join(taken) or 'no stage'} from {cfg.reuse}",
                  file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        for stale in list(out.glob(".*.tmp")) + list(work.rglob(".*.tmp")):  # left by a kill
            stale.unlink()
        atomic_write_text(out / "config.json", json.dumps(config, indent=1, sort_keys=True) + "\n")
    dist.barrier()
    parts = Parts(cfg, dist)

    def stage(name: str, files: List[str], body: Callable[[], Dict], sharded: bool = False) -> Dict:
        """Run a stage unless it is done. Under torchrun a sharded stage runs on every rank
        (its body merges on rank 0 only), any other stage on rank 0 while the others wait.
        Every rank returns rank 0's counts."""
        if dist.gather_objects(state.done(name) if dist.is_main else None)[0]:
            return dist.gather_objects(state.counts(name) if dist.is_main else None)[0]
        if dist.is_main and name != STAGES[-1]:  # later stages read this one's files: redone too
            state.invalidate_from(STAGES[STAGES.index(name) + 1])
        dist.barrier()  # the invalidated shards are gone before any rank writes new ones
        counts = None
        if dist.is_main or sharded:
            t0 = time.perf_counter()
            counts = body()
            if dist.is_main:
                kill_point(f"{name}:written")
                state.mark(name, files, time.perf_counter() - t0, counts)
        return dist.gather_objects(counts)[0]  # (a collective: no rank runs ahead of the mark)

    # 1. Normalise: one row per sample, a content-hash id, exact duplicates dropped.
    def normalize() -> Dict:
        seen, read, skipped, tasks = set(), 0, [], {}
        with atomic_open(out / "normalized.jsonl") as f:
            for row in iter_pool(spec, cfg.pool, skipped):
                read += 1
                sid = sample_id(row.instruction, row.input, row.output)
                if sid in seen:
                    continue
                seen.add(sid)
                task = cluster_task([(question_text(row.instruction, row.input), row.output)],
                                    cfg.distill.task)  # rated in its task's shape, as MIXTURE's library
                tasks[task] = tasks.get(task, 0) + 1
                f.write(dumps_row({"id": sid, "source": row.source, "task": task,
                                   "instruction": row.instruction, "input": row.input,
                                   "output": row.output, "where": row.where}) + "\n")
            if not seen:
                raise LmmixupError(f"input: {cfg.input}: the pool is empty"
                                   + (f" ({len(skipped)} rows without text skipped)" if skipped else ""))
            if len(seen) < cfg.cluster.size_min:
                raise LmmixupError(f"input: {cfg.input}: the pool has {len(seen)} distinct "
                                   f"sample(s), fewer than one cluster (cluster.size_min="
                                   f"{cfg.cluster.size_min})")
        return {"read": read, "duplicates": read - len(seen), "skipped_empty": len(skipped),
                "samples": len(seen), "tasks": dict(sorted(tasks.items()))}

    n_samples = stage("normalize", ["normalized.jsonl"], normalize)["samples"]

    # 2. Rate every sample 0-5 (embeddings kept for clustering).
    def rate() -> Dict:
        paths = rate_sharded(parts, work / "rate", (r for _, r in iter_jsonl(out / "normalized.jsonl")),
                             n_samples, lambda r: True, "rate")
        if dist.is_main:
            concat_shards(paths, out / "rated.jsonl")
            save_npy(work / "embeddings.npy", shard_embeddings(paths))
        return {"rated": n_samples}

    stage("rate", ["rated.jsonl", ".work/embeddings.npy"], rate, sharded=True)

    # 3. Split at rate.high_threshold.
    def split() -> Dict:
        n = {"high": 0, "low": 0}
        with atomic_open(out / "high.jsonl") as high, atomic_open(out / "low.jsonl") as low:
            for _, row in iter_jsonl(out / "rated.jsonl"):
                part = "high" if row["score"] >= cfg.rate.high_threshold else "low"
                (high if part == "high" else low).write(dumps_row(row) + "\n")
                n[part] += 1
        return n

    split_counts = stage("split", ["high.jsonl", "low.jsonl"], split)
    if split_counts["low"] == 0:
        print("distill: no sample is below rate.high_threshold; nothing to distil", file=sys.stderr)

    # 4. Cluster the low-quality samples per source (capacity-limited k-means), each cluster's
    #    coherence (mean pairwise cosine) beside random clusters of the same sizes.
    def cluster() -> Dict:
        low_index, ids, sources = [], [], []
        for i, (_, row) in enumerate(iter_jsonl(out / "rated.jsonl")):
            if row["score"] < cfg.rate.high_threshold:
                low_index.append(i)
                ids.append(row["id"])
                sources.append(row["source"])
        emb = np.asarray(np.load(work / "embeddings.npy", mmap_mode="r")[low_index])  # (n_low, D)
        groups, left = cluster_by_source(sources, emb, cfg.cluster, cfg.seed)
        per_source: Dict[str, int] = {}
        rows = []
        for source, members in groups:
            per_source[source] = per_source.get(source, 0) + 1
            rows.append({"id": f"{source}-{per_source[source] - 1:05d}", "source": source,
                         "member_ids": [ids[i] for i in members],
                         "coherence": round(coherence(emb, members), 4)})
        atomic_write_jsonl(out / "clusters.jsonl", rows)
        atomic_write_jsonl(out / "unclustered.jsonl",
                           [{"id": ids[i], "source": sources[i], "reason": reason} for i, reason in left])
        sizes = [len(r["member_ids"]) for r in rows]
        reasons = [reason for _, reason in left]
        baseline = random_coherence(emb, sources, groups, cfg.seed)  # same sizes, random members
        return {"clusters": len(rows), "clustered": sum(sizes), "unclustered": len(left),
                "unclustered_reasons": {k: reasons.count(k) for k in sorted(set(reasons))},
                "sizes": {str(s): sizes.count(s) for s in sorted(set(sizes))},
                "coherence": coherence_summary([r["coherence"] for r in rows]),
                "coherence_random": coherence_summary(baseline)}

    stage("cluster", ["clusters.jsonl", "unclustered.jsonl"], cluster)

    # 5. Distil each cluster: the evaluation path's prompt in the cluster's task layout,
    #    greedy, the rollout engine, a budget from the members' lengths, stop at </answer>;
    #    a cluster whose pair fails is sampled again (distill.retries).
    def generate() -> Dict:
        clusters = [r for _, r in iter_jsonl(out / "clusters.jsonl")]
        members = {r["id"]: r for _, r in iter_jsonl(out / "low.jsonl")}
        prompts = [cluster_prompt([members[m] for m in c["member_ids"]], cfg.distill)
                   for c in clusters]
        # shards of similar prompt length: less padding; fixed by the input, so resume-safe
        order = sorted(range(len(clusters)), key=lambda i: len(json.dumps(prompts[i].messages)))
        batches = list(chunks(order, cfg.distill.batch_size))

        def work_batch(j: int, batch: List[int]) -> List[Dict]:
            seeds = [group_seed(cfg.seed, 0, i) for i in batch]  # cluster i's own retry stream
            done = distill_clusters(parts.distiller, [prompts[i] for i in batch], seeds,
                                    cfg.distill)
            rows = []
            for i, (gen, parsed, attempts, reasons) in zip(batch, done):
                c = clusters[i]
                rows.append({"cluster_id": c["id"], "source": c["source"], "task": prompts[i].task,
                             "member_ids": c["member_ids"], "ok": parsed.ok, "reason": parsed.reason,
                             "instruction": parsed.instruction, "input": "", "output": parsed.output,
                             "answer": parsed.answer, "completion": gen.completion,
                             "truncated": gen.truncated, "completion_tokens": gen.tokens,
                             "budget": gen.budget, "think_tokens": gen.think_tokens,
                             "prompt_tokens": gen.prompt_tokens, "attempts": attempts,
                             "attempt_reasons": list(reasons)})
            return rows

        paths = run_sharded(work / "generate", batches, len(clusters), work_batch, "distill",
                            cfg.progress and dist.is_main, "generate", dist.rank, dist.world_size)
        dist.barrier()  # every rank's shards are on disk
        if not dist.is_main:
            return {}
        by_id = {r["cluster_id"]: r for p in paths for _, r in iter_jsonl(p)}
        atomic_write_jsonl(out / "generated.jsonl", (by_id[c["id"]] for c in clusters))
        rows = list(by_id.values())
        reasons = [r["reason"] for r in rows if not r["ok"]]
        tasks = [r["task"] for r in rows]
        think = sorted(r["think_tokens"] for r in rows if r["completion"])
        retried = [r for r in rows if r["attempts"] > 1]
        # what each attempt of the schedule (lmmixup/distill/generate.py) passed and failed with
        by_attempt = [[r["attempt_reasons"][a] for r in rows if len(r.get("attempt_reasons", [])) > a]
                      for a in range(1 + cfg.distill.retries)]
        return {"generated": len(rows), "ok": len(rows) - len(reasons),
                "retried": len(retried), "passed_on_retry": sum(r["ok"] for r in retried),
                "attempts": [{(k or "passed"): a.count(k) for k in sorted(set(a))}
                             for a in by_attempt if a],
                "failures": {k: reasons.count(k) for k in sorted(set(reasons))},
                "tasks": {k: tasks.count(k) for k in sorted(set(tasks))},
                "think_tokens_median": think[len(think) // 2] if think else 0}

    stage("generate", ["generated.jsonl"], generate, sharded=True)

    # 6. Re-rate each distilled pair in its task's shape; keep those with no surface defect
    #    (lmmixup/distill/defects.py), >= distill.keep_threshold (and, when distill.min_gain is
    #    set, better than their cluster's best member by more than that).
    def rerate() -> Dict:
        n = sum(1 for _ in iter_jsonl(out / "generated.jsonl"))
        paths = rate_sharded(parts, work / "rerate", (r for _, r in iter_jsonl(out / "generated.jsonl")),
                             n, lambda r: r["ok"], "rerate")
        if not dist.is_main:
            return {}
        low = {r["id"]: r for _, r in iter_jsonl(out / "low.jsonl")}
        drops: Dict[str, int] = {}
        with atomic_open(out / "rerated.jsonl") as f:
            for path in paths:
                for _, row in iter_jsonl(path):
                    members = [low[m] for m in row["member_ids"]]
                    best = max(m["score"] for m in members)
                    row["best_member_score"] = best
                    row["defects"] = (pair_defects(row["task"], row["instruction"], row["output"],
                                                   member_pairs(members, cfg.distill.member_chars))
                                      if row["ok"] else [])
                    row["drop"] = keep_verdict(row, best, cfg.distill)
                    row["kept"] = not row["drop"]
                    drops[row["drop"] or "kept"] = drops.get(row["drop"] or "kept", 0) + 1
                    f.write(dumps_row(row) + "\n")
        save_npy(work / "rerated_emb.npy", shard_embeddings(paths))
        return {"kept": drops.pop("kept", 0), "dropped": dict(sorted(drops.items()))}

    stage("rerate", ["rerated.jsonl", ".work/rerated_emb.npy"], rerate, sharded=True)

    # 7. Long-tail score of the kept pairs, and their rank.
    def longtail() -> Dict:
        rows = [r for _, r in iter_jsonl(out / "rerated.jsonl")]
        emb = np.load(work / "rerated_emb.npy")  # one row per ok pair, in order
        ok = [i for i, r in enumerate(rows) if r["ok"]]
        kept = [i for i in ok if rows[i]["kept"]]
        kept_emb = emb[[ok.index(i) for i in kept]] if kept else emb[:0]
        tail = long_tail_scores(kept_emb, cfg.longtail.k, cfg.longtail.chunk_size)  # (kept,)
        order = rank_order([rows[i]["score"] for i in kept], tail.tolist(),
                           [rows[i]["cluster_id"] for i in kept])
        for r in rows:
            r.update(long_tail=None, rank=None)
        for rank, j in enumerate(order, start=1):
            rows[kept[j]].update(long_tail=round(float(tail[j]), 4), rank=rank)
        atomic_write_jsonl(out / "distilled.jsonl", rows)
        return {"ranked": len(kept)}

    stage("longtail", ["distilled.jsonl"], longtail)

    # 8. The mix: exactly mix.size rows at mix.distilled_fraction.
    def mix() -> Dict:
        originals = sorted((r for _, r in iter_jsonl(out / "high.jsonl")),
                           key=lambda r: (-r["score"], r["id"]))
        distilled = sorted((r for _, r in iter_jsonl(out / "distilled.jsonl") if r["kept"]),
                           key=lambda r: r["rank"])
        rows = build_mix(originals, distilled, cfg.mix, cfg.seed)
        atomic_write_jsonl(out / "mix.jsonl", rows)
        origins = [r["origin"] for r in rows]
        return {"rows": len(rows), "original": origins.count("original"),
                "distilled": origins.count("distilled")}

    stage("mix", ["mix.jsonl"], mix)

    # 9. The report.
    stage("report", ["report.json", "report.md", *PLOTS], lambda: write_report(out, state, cfg))
    if not dist.is_main:
        return
    mixed = state.counts("mix")
    print(f"distill: {out}/mix.jsonl: {mixed['rows']} rows ({mixed['original']} original, "
          f"{mixed['distilled']} distilled); report: {out}/report.md", file=sys.stderr)


def coherence_summary(values: Sequence[float]) -> Dict:
    """Mean, median and a histogram (bins of 0.1 over [-0.2, 1]) of cluster coherences."""
    if not values:
        return {"mean": None, "median": None, "hist": []}
    bins = np.linspace(-0.2, 1.0, 13)
    return {"mean": round(float(np.mean(values)), 4), "median": round(float(np.median(values)), 4),
            "hist": np.histogram(np.clip(values, -0.2, 1.0), bins=bins)[0].tolist()}


def keep_verdict(row: Dict, best_member: float, cfg: GenerateConfig) -> str:
    """'' when a re-rated pair is kept, else why not: its failure reason, defect:<name> (the
    first surface defect, when distill.reject_defects), below_keep_threshold, or no_gain (when
    distill.min_gain is set: it does not beat its cluster's best member by more than that)."""
    if not row["ok"]:
        return row["reason"]
    if cfg.reject_defects and row["defects"]:
        return f"defect:{row['defects'][0]}"
    if row["score"] < cfg.keep_threshold:
        return "below_keep_threshold"
    if cfg.min_gain is not None and row["score"] - best_member <= cfg.min_gain:
        return "no_gain"
    return ""


def check_model(cfg: DistillConfig) -> None:
    """A model folder that does not exist fails now, not after rating the pool."""
    name = cfg.model.name_or_path
    if name != "tiny" and not name.startswith(EMBEDDED_PREFIX):
        resolve_path(name)


@hydra.main(version_base=None, config_path="conf", config_name="distill")
def main(dcfg: DictConfig) -> None:
    try:
        report_errors(lambda: run(dcfg))
    finally:
        close_distributed()


if __name__ == "__main__":
    precheck_overrides(sys.argv[1:], Path(__file__).parent / "conf", "distill",
                       register_distill_configs)
    main()
