"""report.json, report.md and three PNG plots of a distill run.

    counts       per stage (read from .work/state.json)
    scores       histogram of the pool's ratings (rated.jsonl) and of the distilled pairs'
                 re-ratings (distilled.jsonl): scores.png
    cluster sizes                                                   cluster_sizes.png
    coherence    each cluster's mean pairwise cosine, beside random clusters of the same
                 sizes from the same samples                        coherence.png
    tasks        the layout each cluster was rendered in (qa, mcq, tfq, cs, para)
    failures     generation failures by reason, degenerate pairs included   failures.png
    kept         why re-rated pairs were not kept (a failure, below_keep_threshold, no_gain)
    think        the median think-block length in tokens
    seconds      wall time of each stage (of the process that finished it)
    examples     the best-ranked distilled pairs with the cluster they came from
The plots carry no timestamps, so the same run draws the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from lmmixup.data.jsonl import atomic_open, atomic_write_text, iter_jsonl

BINS = np.linspace(0.0, 5.0, 11)  # score bins of width 0.5
PLOTS = ("scores.png", "cluster_sizes.png", "coherence.png", "failures.png")
N_EXAMPLES = 3


def _hist(scores: List[float]) -> List[int]:
    return np.histogram(np.asarray(scores, dtype=float), bins=BINS)[0].tolist()


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, metadata={"Software": None})


def _two_histograms(plt, path: Path, edges: np.ndarray, series, xlabel: str, title: str,
                    vline=None) -> None:
    """Two histograms over the same bins, side by side, each as fractions of its total."""
    mids, width = (edges[:-1] + edges[1:]) / 2, 0.44 * (edges[1] - edges[0])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for shift, (label, counts) in zip((-width / 2, width / 2), series):
        hist = np.asarray(counts or [0] * len(mids), dtype=float)
        ax.bar(mids + shift, hist / max(hist.sum(), 1), width=width, label=label)
    if vline is not None:
        ax.axvline(vline, color="k", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plots(out: Path, report: Dict) -> None:
    # lazy: matplotlib loads only when the report is drawn, not with distill.py's checks
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, after the backend is chosen

    before, after = report["scores"]["pool"], report["scores"]["distilled"]
    _two_histograms(plt, out / "scores.png", BINS, (("pool (rated.jsonl)", before),
                    ("distilled (re-rated)", after)), "quality score (0-5)",
                    "Ratings before and after distillation", vline=report["thresholds"]["high"])
    coh = report["coherence"]
    _two_histograms(plt, out / "coherence.png", np.linspace(-0.2, 1.0, 13),
                    (("clusters", coh["clusters"]["hist"]), ("random, same sizes", coh["random"]["hist"])),
                    "mean pairwise cosine within a cluster", "Cluster coherence")

    for name, data, title, xlabel in (
            ("cluster_sizes.png", report["cluster_sizes"], "Cluster sizes", "members"),
            ("failures.png", report["failures"] or {"none": 0}, "Generation failures", "reason")):
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.bar(list(data), list(data.values()), color="tab:gray")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        fig.tight_layout()
        _save(fig, out / name)
        plt.close(fig)


def _examples(out: Path) -> List[Dict]:
    best = sorted((r for _, r in iter_jsonl(out / "distilled.jsonl") if r["kept"]),
                  key=lambda r: r["rank"])[:N_EXAMPLES]
    wanted = {m for r in best for m in r["member_ids"]}
    members = {r["id"]: r for _, r in iter_jsonl(out / "low.jsonl") if r["id"] in wanted}
    return [{"cluster_id": r["cluster_id"], "score": r["score"], "long_tail": r["long_tail"],
             "members": [{"instruction": members[m]["instruction"][:300],
                          "output": members[m]["output"][:300], "score": members[m]["score"]}
                         for m in r["member_ids"]],
             "distilled": {"instruction": r["instruction"], "output": r["output"]}}
            for r in best]


def build_report(out: Path, state, cfg) -> Dict:
    counts = {s: state.counts(s) for s in state.records}
    pool = [r["score"] for _, r in iter_jsonl(out / "rated.jsonl")]
    distilled = [r["score"] for _, r in iter_jsonl(out / "distilled.jsonl") if r["ok"]]
    return {
        "input": cfg.input,
        "model": cfg.model.name_or_path,
        "counts": counts,
        "thresholds": {"high": cfg.rate.high_threshold, "keep": cfg.distill.keep_threshold},
        "scores": {"bins": BINS.tolist(), "pool": _hist(pool), "distilled": _hist(distilled),
                   "pool_mean": round(float(np.mean(pool)), 4) if pool else None,
                   "distilled_mean": round(float(np.mean(distilled)), 4) if distilled else None},
        "cluster_sizes": counts["cluster"]["sizes"],
        "coherence": {"clusters": counts["cluster"]["coherence"],
                      "random": counts["cluster"]["coherence_random"]},
        "unclustered": counts["cluster"]["unclustered_reasons"],
        "tasks": counts["generate"]["tasks"],
        "failures": counts["generate"]["failures"],
        "not_kept": counts["rerate"]["dropped"],
        "think_tokens_median": counts["generate"]["think_tokens_median"],
        "seconds": state.seconds(),
        "examples": _examples(out),
    }


def _markdown(report: Dict) -> str:
    c = report["counts"]
    lines = [f"# Distillation report: {report['input']}", "",
             f"Model: `{report['model']}`. High-quality threshold {report['thresholds']['high']}, "
             f"keep threshold {report['thresholds']['keep']}.", "",
             "| stage | counts | seconds |", "|---|---|---|"]
    for stage, numbers in c.items():
        shown = ", ".join(f"{k} {v}" for k, v in numbers.items())
        lines.append(f"| {stage} | {shown} | {report['seconds'].get(stage, '')} |")
    s, coh = report["scores"], report["coherence"]
    shown = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
    lines += ["", f"Mean score: pool {s['pool_mean']}, distilled pairs {s['distilled_mean']}.", "",
              f"Cluster coherence (mean pairwise cosine): mean {coh['clusters']['mean']}, median "
              f"{coh['clusters']['median']}; random clusters of the same sizes: mean "
              f"{coh['random']['mean']}, median {coh['random']['median']}.", "",
              f"Unclustered: {shown(report['unclustered'])}. Tasks: {shown(report['tasks'])}. "
              f"Median think block: {report['think_tokens_median']} tokens.", "",
              f"Failures: {shown(report['failures'])} (after retries: {c['generate']['retried']} "
              f"clusters sampled again, {c['generate']['passed_on_retry']} passed). "
              f"Not kept: {shown(report['not_kept'])}.", "",
              "![scores](scores.png) ![cluster sizes](cluster_sizes.png) "
              "![coherence](coherence.png) ![failures](failures.png)",
              "", "## Examples (best-ranked distilled pairs)"]
    for ex in report["examples"]:
        lines += ["", f"### {ex['cluster_id']} (score {ex['score']}, long tail {ex['long_tail']})", ""]
        for i, m in enumerate(ex["members"], start=1):
            lines.append(f"- member {i} (score {m['score']}): **{m['instruction'][:160]!r}** -> "
                         f"{m['output'][:160]!r}")
        lines += ["", f"Distilled: **{ex['distilled']['instruction']!r}** -> "
                      f"{ex['distilled']['output'][:400]!r}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, state, cfg) -> Dict:
    """Write report.json, report.md and the plots; returns the counts for the state record."""
    report = build_report(out, state, cfg)
    _plots(out, report)
    atomic_write_text(out / "report.md", _markdown(report))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return {"examples": len(report["examples"])}
