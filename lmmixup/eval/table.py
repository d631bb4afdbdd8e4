"""Evaluation tables with confidence intervals, built from the per-row score files.

Every system (a model stage, or a baseline scored on the same rows) is a set of per-row scores,
one array per metric. The table shows each system's mean with its 95% percentile-bootstrap CI,
and the comparisons (e.g. GRPO - SFT) with *paired* CIs: the rows are matched by their line in
the evaluation file and resampled together (lmmixup/eval/stats.py says why that is narrower).
A comparison whose CI includes 0 is marked as such: at n = 16 a difference of 0.05 is noise.

Input: `eval_samples_step_<s>.jsonl` as evaluate.py writes it, one object per row:
    {"line", "completion", ..., "total", "truncated", <component>: score, ...,
     "baselines": {<name>: {"total", <component>: score, ...}, ...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lmmixup.errors import LmmixupError
from lmmixup.eval.stats import Interval, bootstrap_mean_ci, excludes_zero, paired_bootstrap_ci

# Columns in display order; a metric missing from every system is left out.
METRICS = ("quality", "alignment", "format", "no_answer", "total", "truncated")
LABELS = {"quality": "quality Q", "alignment": "alignment A", "format": "format F",
          "no_answer": "no-answer P", "total": "total R", "truncated": "truncated"}
NOT_A_METRIC = {"line", "completion", "reference", "task", "seed_id", "completion_tokens",
                "baselines"}


@dataclass(frozen=True)
class SystemScores:
    """Per-row scores of one system: lines (n,) and metric -> (n,) values in the same order."""

    name: str
    lines: Tuple[int, ...]
    values: Dict[str, np.ndarray]


def _row_metrics(obj: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in obj.items() if k not in NOT_A_METRIC}


def load_scores(path: Path, name: str) -> List[SystemScores]:
    """The model's per-row scores (as `name`) and every baseline's from one samples file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise LmmixupError(f"{path}: no scored rows")
    lines = tuple(int(r["line"]) for r in rows)

    def system(label: str, per_row: List[Dict[str, float]]) -> SystemScores:
        keys = [k for k in per_row[0]]
        return SystemScores(label, lines, {k: np.array([m[k] for m in per_row]) for k in keys})

    out = [system(name, [_row_metrics(r) for r in rows])]
    for baseline in rows[0].get("baselines", {}):
        # a baseline's answer is never cut off: it is the member text itself
        out.append(system(f"baseline: {baseline}",
                          [{**_row_metrics(r["baselines"][baseline]), "truncated": 0.0}
                           for r in rows]))
    return out


def metric_columns(systems: Sequence[SystemScores]) -> List[str]:
    present = {k for s in systems for k in s.values}
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def mean_cis(system: SystemScores, n_boot: int = 10_000, seed: int = 0) -> Dict[str, Interval]:
    """metric -> mean with its 95% bootstrap CI over the system's rows."""
    return {k: bootstrap_mean_ci(v, n_boot=n_boot, seed=seed) for k, v in system.values.items()}


def paired_delta_cis(a: SystemScores, b: SystemScores, n_boot: int = 10_000,
                     seed: int = 0) -> Dict[str, Interval]:
    """metric -> mean(a - b) over the rows both scored, with its paired 95% CI. The rows are
    matched by line, so two files that list the same rows in a different order still pair."""
    if set(a.lines) != set(b.lines):
        raise LmmixupError(f"{a.name} and {b.name} were scored on different rows "
                           f"({len(a.lines)} vs {len(b.lines)}); a paired delta needs the same rows")
    order_b = {line: i for i, line in enumerate(b.lines)}
    idx = np.array([order_b[line] for line in a.lines])  # (n,) b's index of each of a's rows
    return {k: paired_bootstrap_ci(a.values[k], b.values[k][idx], n_boot=n_boot, seed=seed)
            for k in a.values if k in b.values}


def _cell(interval: Optional[Interval]) -> str:
    return "-" if interval is None else str(interval)


def format_markdown(means: Dict[str, Dict[str, Interval]],
                    deltas: Dict[str, Dict[str, Interval]], columns: Sequence[str],
                    header: str) -> str:
    """The means table (one row per system), then one row per paired delta, then one line per
    delta naming the metrics whose CI includes 0."""
    head = "| system | " + " | ".join(LABELS.get(c, c) for c in columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    lines = [header, "", "Mean over rows [95% bootstrap CI]:", "", head, rule]
    for name, cis in means.items():
        lines.append(f"| {name} | " + " | ".join(_cell(cis.get(c)) for c in columns) + " |")
    if deltas:
        lines += ["", "Paired difference over the same rows [95% paired bootstrap CI]:", "",
                  head.replace("| system |", "| difference |"), rule]
        for name, cis in deltas.items():
            lines.append(f"| {name} | " + " | ".join(_cell(cis.get(c)) for c in columns) + " |")
        lines.append("")
        for name, cis in deltas.items():
            noise = [c for c in columns if c in cis and not excludes_zero(cis[c])]
            real = [c for c in columns if c in cis and excludes_zero(cis[c])]
            lines.append(f"- {name}: the CI includes 0 (no difference shown) for "
                         f"{', '.join(noise) or 'none'}; excludes 0 for {', '.join(real) or 'none'}.")
    return "\n".join(lines) + "\n"


def table_json(means: Dict[str, Dict[str, Interval]],
               deltas: Dict[str, Dict[str, Interval]]) -> dict:
    return {"means": {s: {k: v.as_dict() for k, v in cis.items()} for s, cis in means.items()},
            "deltas": {d: {k: {**v.as_dict(), "excludes_zero": excludes_zero(v)}
                           for k, v in cis.items()} for d, cis in deltas.items()}}
