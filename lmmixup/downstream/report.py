"""results.json, results.md and scores.png from per-example scores: every score with its 95%
percentile-bootstrap CI, every comparison (d) mix - (a|b|c) with a paired one over the same
examples, each benchmark's power: the smallest effect its n can detect
(lmmixup/eval/stats.py), and what fine-tuning on each set cost (lmmixup/downstream/cost.py).
A benchmark where lower is better (ref_nll_alpaca) says so in its column, and every delta
names the set it favours, so no reader has to flip a sign."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from lmmixup.data.jsonl import atomic_write_bytes, atomic_write_text
from lmmixup.downstream.cost import TrainingCost
from lmmixup.eval.harness import BENCHMARKS, BenchmarkScores
from lmmixup.eval.stats import (Interval, binary_paired_floor, bootstrap_mean_ci, excludes_zero,
                                half_width, paired_bootstrap_ci, unpaired_difference_half_width)

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
    better: str  # the set the delta favours (a or b; lower is better on some benchmarks), or
    # "" when the CI includes 0


@dataclass
class Power:
    """The smallest effect one benchmark can detect at its n (`power_rows` says how)."""

    benchmark: str
    n: int
    detectable: Optional[float]  # the smallest |delta| whose 95% CI excludes 0; None: unknown
    source: str  # how it was found, printed beside it


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
            ci = paired_delta(ours, theirs, n_boot, seed) if theirs is not None else None
            if ci is None:
                continue
            deltas.append(Delta(OURS, other, bench, ci.estimate, ci.low, ci.high,
                                favoured(ci, OURS, other, BENCHMARKS[bench].higher_is_better)))
    return deltas


def paired_delta(a: BenchmarkScores, b: BenchmarkScores, n_boot: int, seed: int) -> Optional[Interval]:
    """a - b over the examples both scored, paired on lm-eval's doc ids (never on position:
    two runs may list them in different orders); None when they share none."""
    by_id = dict(zip(a.doc_ids, a.scores))
    shared = [d for d in b.doc_ids if d in by_id]
    if not shared:
        return None
    b_by_id = dict(zip(b.doc_ids, b.scores))
    return paired_bootstrap_ci([by_id[d] for d in shared],  # (n,)
                               [b_by_id[d] for d in shared],  # (n,)
                               n_boot=n_boot, seed=seed)


def favoured(ci: Interval, a: str, b: str, higher_is_better: bool) -> str:
    """The set a paired CI of a - b favours: a when a scores better (higher, or lower where
    lower is better) on the whole interval, b when b does, "" when the CI includes 0."""
    if not excludes_zero(ci):
        return ""
    return a if (ci.estimate > 0) == higher_is_better else b


def power_rows(scores: Dict[str, Dict[str, BenchmarkScores]], deltas: List[Delta], n_boot: int,
               seed: int) -> List[Power]:
    """Per benchmark, the smallest effect its n examples can detect at 95%:

    * pairs exist (the table's paired deltas, (d) minus a baseline): the widest paired CI's
      half-width, h = (ci_high - ci_low) / 2 over the shared examples; |delta| > h is what
      makes a CI exclude 0;
    * no pair yet, or every paired CI of zero width (a constant difference, which is not
      certainty): a bootstrap estimate from each set's own scores, the half-width of the 95%
      CI of the difference of two independent resamples' means, about
      1.96 * sqrt(2) * s / sqrt(n) (stats.unpaired_difference_half_width), the widest over
      sets; an upper bound on what pairing will give;
    * a benchmark scored 0/1 per example (accuracy, exact match): at least
      binary_paired_floor(n), about 4/n, since fewer than four examples flipping the same way
      never make a bootstrap CI exclude 0.
    """
    out = []
    benches = list(dict.fromkeys(b for per in scores.values() for b in per))
    for bench in benches:
        per_set = [per[bench] for per in scores.values() if bench in per]
        n = max(len(s.scores) for s in per_set)
        widths = [half_width(_interval(d)) for d in deltas if d.benchmark == bench]
        if widths and max(widths) > 0:
            value, label = max(widths), "paired CI half-width"
            why = f"widest of {len(widths)} pair{'s' if len(widths) > 1 else ''}"
        else:
            value = max(unpaired_difference_half_width(s.scores, n_boot=n_boot, seed=seed)
                        for s in per_set)
            label = "bootstrap estimate ~ 1.96 sqrt(2) s / sqrt(n)"
            why = "every paired CI of zero width" if widths else "no pair yet"
        source = f"{label} ({why})"
        if BENCHMARKS[bench].binary:
            floor = binary_paired_floor(n)
            if floor > value:
                source = (f"0/1 floor: {round(floor * n)} of {n} examples flipping one way; "
                          f"the {label} gives {value:.3f}")
                value = floor
        if value == 0:  # every example scored the same in every set: no spread to go on
            value, source = None, "unknown: every example scores the same in every set"
        out.append(Power(bench, n, value, source))
    return out


def results_json(rows: List[Row], deltas: List[Delta], power: List[Power],
                 costs: Dict[str, TrainingCost]) -> str:
    return json.dumps({"rows": [asdict(r) for r in rows], "deltas": [asdict(d) for d in deltas],
                       "power": [asdict(p) for p in power],
                       "cost": {name: asdict(c) for name, c in costs.items()}}, indent=2) + "\n"


def decimals(width: float) -> int:
    """Decimals that show a CI of this width to two significant digits, at least 3: a 0.0004
    difference in NLL per byte must not print as 0.000 beside a CI it excludes."""
    if not width > 0:
        return 3
    return int(min(6, max(3, 1 - np.floor(np.log10(width)))))


def _column(bench: str) -> str:
    return bench if BENCHMARKS[bench].higher_is_better else f"{bench} (lower is better)"


def results_markdown(rows: List[Row], deltas: List[Delta], power: List[Power], limit,
                     notes: Dict[str, str], costs: Dict[str, TrainingCost], budget: str) -> str:
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
             "| set | rows | steps | train s | target tokens | "
             + " | ".join(_column(b) for b in benches) + " |",
             "|---|---|---|---|---|" + "---|" * len(benches)]
    for s in sets:
        values = []
        for b in benches:
            r = cell.get((s, b))
            values.append(f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r else "-")
        c = costs.get(s)
        cost = f"{c.steps} | {c.seconds:.0f} | {c.target_tokens:,}" if c else "- | - | -"
        lines.append(f"| {s} | {notes.get(s + ':rows', '')} | {cost} | " + " | ".join(values) + " |")
    lines += ["", f"Fine-tuning budget: `train.budget={budget}` (the same "
              f"{'epochs' if budget == 'epochs' else 'optimizer steps'} for every set). "
              "`train s` sums train.py's optimizer-step times (not loading or saving); "
              "`target tokens` are the response tokens the loss was taken on."]
    for s in sets:
        if notes.get(s):
            lines.append(f"- `{s}`: {notes[s]}")
    if deltas:
        lines += ["", f"## Paired deltas, ({OURS}) minus each baseline, same examples", "",
                  f"On a benchmark where lower is better, a negative delta favours ({OURS}). "
                  "The last column names the set a CI that excludes 0 favours.", "",
                  "| a - b | benchmark | delta | 95% CI | CI excludes 0 | better |",
                  "|---|---|---|---|---|---|"]
        for d in deltas:
            verdict = "yes" if excludes_zero(_interval(d)) else "no (noise)"
            k = decimals(d.ci_high - d.ci_low)
            lines.append(f"| {d.a} - {d.b} | {_column(d.benchmark)} | {d.delta:+.{k}f} | "
                         f"[{d.ci_low:+.{k}f}, {d.ci_high:+.{k}f}] | {verdict} | "
                         f"{d.better or 'neither'} |")
    lines += ["", "## Power: the smallest effect each benchmark can detect at its n", "",
              "A paired delta smaller than this cannot exclude 0 at 95%, whatever the method "
              "does; an effect of this size is detected about half the time, 1.43 times it "
              "with 80% power. It shrinks like 1/sqrt(n): raise eval.limit, or pick a "
              "continuous benchmark, before running a comparison expected to move less.", "",
              "| benchmark | n | smallest detectable effect (95%) | from |", "|---|---|---|---|"]
    for p in power:
        shown = "unknown" if p.detectable is None else f"{p.detectable:.{decimals(p.detectable)}f}"
        lines.append(f"| {_column(p.benchmark)} | {p.n} | {shown} | {p.source} |")
    lines += ["", "## Settings (lm-eval 0.4.x, local task YAMLs over packaged data)", ""]
    for b in benches:
        lines.append(f"- `{b}`: {BENCHMARKS[b].setting}")
    return "\n".join(lines) + "\n"


def worst_case_note(n: int) -> str:
    """The widest 95% CI a 0/1 score can have at n examples: p = 0.5, +/-1.96 sqrt(0.25 / n)."""
    return (f"with n = {n}, an accuracy near 0.5 carries a 95% CI of about "
            f"+/-{1.96 * (0.25 / n) ** 0.5:.3f} (1.96 sqrt(0.25/n)).")


def _interval(d: Delta) -> Interval:
    return Interval(d.delta, d.ci_low, d.ci_high, 0)


def scores_png(rows: List[Row], path: Path) -> None:
    """Grouped bars: one group per benchmark, one bar per set, 95% CIs as error bars."""
    # start-up: matplotlib takes a second or more to import, and only the report's plot needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: as above, after the backend is chosen

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
    ax.set_xticks(range(len(benches)),
                  [b if BENCHMARKS[b].higher_is_better else f"{b}\n(lower is better)" for b in benches])
    ax.set_ylabel("score (95% CI)")
    # accuracies live in [0, 1]; an NLL per byte can exceed 1
    ax.set_ylim(0, max([1.0] + [r.ci_high * 1.05 for r in rows]))
    n = sorted({r.n for r in rows})
    ax.set_title(f"fine-tuned on each set; n = {', '.join(map(str, n))} per benchmark")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(out: Path, scores, n_boot: int, seed: int, limit, notes, costs, budget) -> List[Row]:
    rows = score_rows(scores, n_boot, seed)
    deltas = delta_rows(scores, n_boot, seed)
    power = power_rows(scores, deltas, n_boot, seed)
    atomic_write_text(out / "results.json", results_json(rows, deltas, power, costs))
    text = results_markdown(rows, deltas, power, limit, notes, costs, budget)
    atomic_write_text(out / "results.md", text)
    scores_png(rows, out / "scores.png")
    return rows
