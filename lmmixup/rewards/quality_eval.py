"""Does a quality scorer see quality? Clean targets against their own degraded members, on a
MIXTURE split that the rated library does not contain.

    python -m lmmixup.rewards.quality_eval --mixture data/mixture [--split grpo_test]
        [--backend learned] [--backend knn] [--backend knn:k=4] [--backend learned:embedding=true]

A backend SPEC is NAME[:KEY=VALUE,...] with the keys of `reward.quality` (quality.py). The
library is the mixture's rated.jsonl, which holds the sft and grpo_train seeds only
(build_mixture splits by seed), so no text of the evaluated split, and no variant of its seeds,
is ever trained on.

For every row of the split: its reference (the clean pair, score 5) and each member made from
the same seed (a foreign member, from the nearest seed, is another text's variant and left
out), rendered as the pair text the rewards see. Per cluster c with members m:
    win_c = mean_m ( [E(clean) > E(m)] + 0.5 [E(clean) == E(m)] )
    paired AUC = mean_c win_c,  95% CI by bootstrap over clusters (lmmixup/eval/stats.py)
Also reported: the pooled AUC (Mann-Whitney over every clean and every member text, ties
half), the clean targets' E (median, and the share with E >= 4, i.e. Q = 1 under the paper's
step mapping), start-up time (load/fit) and scoring time per 64 texts. A paired CI compares
each backend's win_c with the first backend's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

import torch

from lmmixup.cli import parse_key_values
from lmmixup.data.jsonl import atomic_write_text, iter_jsonl
from lmmixup.data.layout import SHAPES
from lmmixup.data.schema import render_pair, split_pair
from lmmixup.errors import LmmixupError
from lmmixup.eval.stats import bootstrap_mean_ci, paired_bootstrap_ci
from lmmixup.rewards.embedder import EmbedderConfig, get_embedder
from lmmixup.rewards.quality import QualityConfig, build_quality_scorer


@dataclass
class HeldOutPairs:
    """Texts of a held-out split: each cluster's clean reference and its own members."""

    texts: List[str]  # P texts
    scores: torch.Tensor  # (P,) long: 5 for a reference, the member's rated score otherwise
    cluster: torch.Tensor  # (P,) long: which row of the split the text comes from
    clean: torch.Tensor  # (P,) bool: the reference of its cluster


Items = List[tuple]  # (text, score, is_clean) of one row


def _split_texts(split_file: Path, items: Callable[[dict], Items]) -> HeldOutPairs:
    """A split JSONL -> HeldOutPairs with items(row)'s texts, cluster = the row's position; a
    row that is not a MIXTURE row is one error naming the file and line."""
    if not split_file.is_file():
        raise LmmixupError(f"--mixture: no split file at {str(split_file)!r}")
    texts, scores, cluster, clean = [], [], [], []
    for c, (lineno, row) in enumerate(iter_jsonl(split_file)):
        try:
            rows = items(row)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise LmmixupError(f"{split_file}:{lineno}: not a MIXTURE row ({e})") from e
        for text, score, is_clean in rows:
            texts.append(text)
            scores.append(score)
            cluster.append(c)
            clean.append(is_clean)
    if not texts:
        raise LmmixupError(f"{split_file}: no rows")
    return HeldOutPairs(texts=texts, scores=torch.tensor(scores), cluster=torch.tensor(cluster),
                        clean=torch.tensor(clean))


def _clean_and_own(row: dict) -> Items:
    own = [(render_pair(row["task"], m["question"], m["answer"]), m["score"])
           for m in row["members"] if m["seed_id"] == row["seed_id"]]
    return [(row["reference"], 5, True)] + [(t, s, False) for t, s in own]


def _clean_and_degenerate(row: dict) -> Items:
    ref, task = row["reference"], row["task"]
    notes = row["target"].split("<think>")[1].split("</think>")[0].strip()
    first = row["members"][0]
    member = render_pair(task, first["question"], first["answer"])
    question, _ = split_pair(task, ref)
    words = ref.split(" ")
    bad = [notes, f"Write the merged pair in this shape:\n{SHAPES[task]}", f"Pair 1:\n{member}",
           f"{ref}\n{ref}", " ".join(words[: max(1, len(words) // 2)])]
    if task in ("qa", "para") and question:
        bad.append(render_pair(task, question, question))
    return [(ref, 5, True)] + [(t, 0, False) for t in bad]


def held_out_pairs(split_file: Path) -> HeldOutPairs:
    """A split JSONL (rows with reference, task, seed_id, members) -> each row's clean
    reference (score 5) and its own members (their rated scores)."""
    return _split_texts(split_file, _clean_and_own)


def held_out_degenerate(split_file: Path) -> HeldOutPairs:
    """Each row's clean reference against degenerate answers made from that row's own held-out
    material (clean = the reference; scores 5 and 0): its target's real think notes as the
    pair; the prompt's shape line; a member header over a member; the question as its own
    answer (qa, para); the reference said twice; the reference cut at half its words.
    No text of the split is in the library, and the notes come from lmmixup/data/notes.py,
    not from the generator the scorer's score-0 rows come from (rewards/degenerate_rows.py)."""
    return _split_texts(split_file, _clean_and_degenerate)


def cluster_win_rates(expected: torch.Tensor, pairs: HeldOutPairs) -> torch.Tensor:
    """E (P,) -> win_c (C,): per cluster with >= 1 own member, the share of its members that the
    clean reference out-scores (ties count half). Clusters without a member are left out."""
    wins = []
    for c in pairs.cluster.unique(sorted=True).tolist():
        rows = pairs.cluster == c  # (P,)
        e_clean = expected[rows & pairs.clean]  # (1,)
        e_members = expected[rows & ~pairs.clean]  # (m,)
        if e_members.numel() == 0:
            continue
        above = (e_clean > e_members).float() + 0.5 * (e_clean == e_members).float()  # (m,)
        wins.append(above.mean())
    return torch.stack(wins)  # (C,)


def pooled_auc(expected: torch.Tensor, positive: torch.Tensor) -> float:
    """Mann-Whitney AUC: P(E of a random positive > E of a random negative), ties half."""
    pos, neg = expected[positive], expected[~positive]  # (p,), (q,)
    diff = pos[:, None] - neg[None, :]  # (p, q)
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def parse_spec(spec: str, library: str):
    """NAME[:KEY=VALUE,...] -> a validated QualityConfig on `library`."""
    name, _, rest = spec.partition(":")
    overrides = [o.strip() for o in rest.split(",") if o.strip()]
    return parse_key_values(QualityConfig, [f"backend={name}", f"library={library}", *overrides])


def evaluate_backend(spec: str, library: str, pairs: HeldOutPairs, embedder_cfg) -> dict:
    """Fit/load one backend, score every text, and summarise (see the module docstring)."""
    cfg = parse_spec(spec, library)
    embedder = get_embedder(embedder_cfg)
    t0 = time.perf_counter()
    expected_fn = build_quality_scorer(cfg, embedder_cfg)
    startup_s = time.perf_counter() - t0
    chunks, per64 = [], []
    for start in range(0, len(pairs.texts), 64):  # batches the size of a rollout batch
        embedder.clear_memo()  # each batch pays for its own embedding, as in training
        t0 = time.perf_counter()
        chunks.append(expected_fn(pairs.texts[start:start + 64]).float().cpu())
        per64.append((time.perf_counter() - t0) * 64 / len(pairs.texts[start:start + 64]))
    expected = torch.cat(chunks)  # (P,)
    wins = cluster_win_rates(expected, pairs)  # (C,)
    e_clean = expected[pairs.clean]
    return {"backend": spec, "paired_auc": bootstrap_mean_ci(wins.tolist()),
            "pooled_auc": pooled_auc(expected, pairs.clean),
            "clean_median_E": e_clean.median().item(),
            "clean_E_ge_4": (e_clean >= 4).float().mean().item(),
            "member_median_E": expected[~pairs.clean].median().item(),
            "startup_s": startup_s, "ms_per_64": 1000 * statistics.median(per64),
            "wins": wins, "expected": expected}


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmmixup.rewards.quality_eval",
                                description="AUC of quality backends on a held-out MIXTURE split")
    p.add_argument("--mixture", required=True, help="a build_mixture output folder")
    p.add_argument("--split", default="grpo_test", help="split scored (not in rated.jsonl)")
    p.add_argument("--backend", action="append", help="NAME[:KEY=VALUE,...]; repeatable "
                   "(default: learned, then knn)")
    p.add_argument("--embedder", default=EmbedderConfig().name, help="reward embedder")
    p.add_argument("--json-out", help="also write the summary rows as JSON here")
    args = p.parse_args(argv)
    try:
        mix = Path(args.mixture)
        library = mix / "rated.jsonl"
        pairs = held_out_pairs(mix / f"{args.split}.jsonl")
        results = [evaluate_backend(spec, str(library), pairs, EmbedderConfig(name=args.embedder))
                   for spec in (args.backend or ["learned", "knn"])]
    except LmmixupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_clusters = results[0]["paired_auc"].n
    print(f"{mix / args.split}.jsonl: {int(pairs.clean.sum())} clean references, "
          f"{int((~pairs.clean).sum())} own members, {n_clusters} clusters with a member; "
          f"library {library}")
    print("| backend | paired AUC [95% CI] | pooled AUC | clean E median | clean E>=4 | "
          "member E median | start-up s | ms / 64 texts | vs first: paired diff [95% CI] |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        diff = paired_bootstrap_ci(r["wins"].tolist(), results[0]["wins"].tolist())
        print(f"| {r['backend']} | {r['paired_auc']} | {r['pooled_auc']:.3f} | "
              f"{r['clean_median_E']:.2f} | {r['clean_E_ge_4']:.2f} | {r['member_median_E']:.2f} | "
              f"{r['startup_s']:.1f} | {r['ms_per_64']:.0f} | {diff} |")
        rows.append({k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in r.items()
                     if k not in ("wins", "expected")} | {"paired_diff_vs_first": diff.as_dict()})
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
