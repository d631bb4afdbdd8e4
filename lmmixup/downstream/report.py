"""results.json, results.md and scores.png from per-example scores: every score with its 95%
percentile-bootstrap CI, every comparison (d) mix - (a|b|c) with a paired one over the same
examples (lmmixup/eval/stats.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from lmmixup.data.jsonl import atomic_write_bytes, atomic_write_text
from lmmixup.eval.harness import BENCHMARKS, BenchmarkScores
from lmmixup.eval.stats import bootstrap_mean_ci, excludes_zero, paired_bootstrap_ci

OURS = "mix"  # (d): every delta is OURS minus another set


@dataclass
class Row:
    set: str
    benchmark: str
    score: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class Delta:
    a: str
    b: str
    benchmark: str
    delta: float  # mean over the shared examples of score_a - score_b
    ci_low: float
    ci_high: float


def score_rows(scores: Dict[str, Dict[str, BenchmarkScores]], n_boot: int, seed: int) -> List[Row]:
    """scores[set][benchmark] -> one row per (set, benchmark), sets and benchmarks in order."""
    rows = []
    for set_name, per_bench in scores.items():
        for bench, s in per_bench.items():
            ci = bootstrap_mean_ci(s.scores, n_boot=n_boot, seed=seed)
            rows.append(Row(set_name, bench, ci.estimate, ci.low, ci.high, ci.n))
    return rows


def delta_rows(scores: Dict[str, Dict[str, BenchmarkScores]], n_boot: int, seed: int) -> List[Delta]:
    """(d) - (a), (d) - (b), (d) - (c) per benchmark, paired on lm-eval's doc ids."""
    if OURS not in scores:
        return []
    deltas = []
    for other in scores:
        if other == OURS:
            continue
        for bench, ours in scores[OURS].items():
            theirs = scores[other].get(bench)
            if theirs is None:
                continue
            mine = dict(zip(ours.doc_ids, ours.scores))
            shared = [d for d in theirs.doc_ids if d in mine]
            if not shared:
                continue
            other_by_id = dict(zip(theirs.doc_ids, theirs.scores))
            a = [mine[d] for d in shared]  # (n,)
            b = [other_by_id[d] for d in shared]  # (n,)
            ci = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
            deltas.append(Delta(OURS, other, bench, ci.estimate, ci.low, ci.high))
    return deltas


def results_json(rows: List[Row], deltas: List[Delta]) -> str:
    return json.dumps({"rows": [asdict(r) for r in rows], "deltas": [asdict(d) for d in deltas]},
                      indent=2) + "\n"


def results_markdown(rows: List[Row], deltas: List[Delta], limit, notes: Dict[str, str],
                     steps: Dict[str, int], budget: str) -> str:
    sets = list(dict.fromkeys(r.set for r in rows))
    benches = list(dict.fromkeys(r.benchmark for r in rows))
    cell = {(r.set, r.benchmark): r for r in rows}
    half = [(r.ci_high - r.ci_low) / 2 for r in rows]
    n_values = sorted({r.n for r in rows})
    lines = ["# Does distillation pay off?", "",
             f"Score per set and benchmark with its 95% bootstrap CI; eval.limit={limit} "
             f"(n = {', '.join(map(str, n_values))} examples per benchmark).", "",
             f"**CI width at this eval.limit:** {worst_case_note(min(n_values))} Measured "
             f"here: the median 95% CI is +/-{np.median(half):.3f} (widest +/-{max(half):.3f}; "
             "a score of 0 or 1 on every example gives a zero-width bootstrap CI, which is not "
             "certainty). A difference inside that is noise: read the paired deltas below, not "
             "the gap between two rows.", "",
             "| set | rows | steps | " + " | ".join(benches) + " |",
             "|---|---|---|" + "---|" * len(benches)]
    for s in sets:
        values = []
        for b in benches:
            r = cell.get((s, b))
            values.append(f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r else "-")
        lines.append(f"| {s} | {notes.get(s + ':rows', '')} | {steps.get(s, '')} | "
                     + " | ".join(values) + " |")
    lines += ["", f"Fine-tuning budget: `train.budget={budget}` (the same "
              f"{'epochs' if budget == 'epochs' else 'optimizer steps'} for every set)."]
    for s in sets:
        if notes.get(s):
            lines.append(f"- `{s}`: {notes[s]}")
    if deltas:
        lines += ["", f"## Paired deltas, ({OURS}) minus each baseline, same examples", "",
                  "| a - b | benchmark | delta | 95% CI | CI excludes 0 |", "|---|---|---|---|---|"]
        for d in deltas:
            verdict = "yes" if excludes_zero(_interval(d)) else "no (noise)"
            lines.append(f"| {d.a} - {d.b} | {d.benchmark} | {d.delta:+.3f} | "
                         f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}] | {verdict} |")
    lines += ["", "## Settings (lm-eval 0.4.x, local task YAMLs over packaged data)", ""]
    for b in benches:
        lines.append(f"- `{b}`: {BENCHMARKS[b].setting}")
    return "\n".join(lines) + "\n"


def worst_case_note(n: int) -> str:
    """The widest 95% CI a 0/1 score can have at n examples: p = 0.5, +/-1.96 sqrt(0.25 / n)."""
    return (f"with n = {n}, an accuracy near 0.5 carries a 95% CI of about "
            f"+/-{1.96 * (0.25 / n) ** 0.5:.3f} (1.96 sqrt(0.25/n)).")


def _interval(d: Delta):
    from lmmixup.eval.stats import Interval

    return Interval(d.delta, d.ci_low, d.ci_high, 0)


def scores_png(rows: List[Row], path: Path) -> None:
    """Grouped bars: one group per benchmark, one bar per set, 95% CIs as error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r.set for r in rows))
    benches = list(dict.fromkeys(r.benchmark for r in rows))
    cell = {(r.set, r.benchmark): r for r in rows}
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(benches), 3.6))
    for i, s in enumerate(sets):
        xs, ys, err = [], [], [[], []]
        for j, b in enumerate(benches):
            r = cell.get((s, b))
            if r is None:
                continue
            xs.append(j + (i - (len(sets) - 1) / 2) * width)
            ys.append(r.score)
            err[0].append(r.score - r.ci_low)
            err[1].append(r.ci_high - r.score)
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=s)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("score (95% CI)")
    ax.set_ylim(0, 1)
    n = sorted({r.n for r in rows})
    ax.set_title(f"fine-tuned on each set; n = {', '.join(map(str, n))} per benchmark")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(out: Path, scores, n_boot: int, seed: int, limit, notes, steps, budget) -> List[Row]:
    rows = score_rows(scores, n_boot, seed)
    deltas = delta_rows(scores, n_boot, seed)
    atomic_write_text(out / "results.json", results_json(rows, deltas))
    text = results_markdown(rows, deltas, limit, notes, steps, budget)
    atomic_write_text(out / "results.md", text)
    scores_png(rows, out / "scores.png")
    return rows
