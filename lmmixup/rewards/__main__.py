"""Standalone reward scorer.

    python -m lmmixup.rewards score --input rows.jsonl --library rated.jsonl \
        [--weights alignment=0.4,quality=0.5,format=0.1] [--embedder NAME] [--rows OUT.jsonl] \
        [alignment.mode=continuous quality.backend=knn quality.k=8 ...]

Input rows: {"completion": str, "reference": str|null, "task": str|null, "prompt": str}
(only "completion" is required; "reference" is required while alignment has a weight).
The reward config starts from conf/reward/paper.yaml; trailing KEY=VALUE arguments override it
with the same dotted keys as `reward.*` in training (the `reward.` prefix is optional).
Prints one line per row, a summary, and as its LAST line a JSON object with quality_mean,
alignment_mean, format_mean and total_mean (null for a reward that is not computed).
Group normalisation does not apply here (rows are not groups): totals are sum_i w_i * r_i.
The quality backend is paper.yaml's (`learned`); `quality.backend=knn` is the paper's scorer.

--rows OUT.jsonl writes one JSON object per input row, in input order (written atomically):
    {"line": input line number, "<reward>": score for every computed reward, "total": ...,
     "quality_expected": the quality backend's continuous E in [0, 5], or null when the
     completion has no <answer> (Q = 0 then) or quality is not computed}
so anyone can compute an AUC, or read the failures, from E rather than the stepped Q.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmmixup.data.jsonl import atomic_write_text, iter_jsonl
from lmmixup.errors import LmmixupError
from lmmixup.rewards import (RewardBatch, RewardConfig, build_rewards, compute_rewards,
                             reward_extra_metrics)
from lmmixup.rewards.answer import extract_answer
from lmmixup.rewards.quality import build_quality_scorer
from lmmixup.rewards.task_format import check_task

PAPER_YAML = Path(__file__).resolve().parents[2] / "conf" / "reward" / "paper.yaml"
REPORTED = ("quality", "alignment", "format")


def _parse_weights(text: str):
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise LmmixupError(f"--weights: expected NAME=FLOAT[,NAME=FLOAT...], got {part!r}")
    if not weights:
        raise LmmixupError("--weights: name at least one reward")
    return weights


def load_config(args):
    """paper.yaml + flags + KEY=VALUE overrides -> a validated RewardConfig."""
    try:
        paper = OmegaConf.load(PAPER_YAML)
        paper.quality.library = ""  # paper.yaml points at ${data.rated_file}; here --library sets it
        merged = OmegaConf.merge(OmegaConf.structured(RewardConfig), paper)
        if args.weights is not None:
            merged.weights = _parse_weights(args.weights)  # replaces the whole mix
        if args.library is not None:
            merged.quality.library = args.library
        if args.embedder is not None:
            merged.embedder.name = args.embedder
        overrides = [o[len("reward."):] if o.startswith("reward.") else o for o in args.overrides]
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise LmmixupError(f"config override: {str(e).splitlines()[0]}") from e
    if "quality" in cfg.weights and cfg.quality.needs_library and not cfg.quality.library:
        raise LmmixupError("quality needs a rated library: pass --library FILE.jsonl, or leave "
                           "quality out with --weights alignment=0.4,format=0.1")
    cfg.normalize_per_group = False  # rows are not groups here
    cfg.validate()
    return cfg


def read_rows(path: Path, need_reference: bool):
    """Rows of the input JSONL, each checked; errors name FILE:LINE."""
    if not path.is_file():
        raise LmmixupError(f"--input: no file at {str(path)!r}")
    rows = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row.get("completion"), str):
            raise LmmixupError(f"{where}: each row needs a string \"completion\"")
        for key in ("reference", "task", "prompt"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise LmmixupError(f"{where}: \"{key}\" must be a string or null")
        if need_reference and not (row.get("reference") or "").strip():
            raise LmmixupError(f"{where}: no \"reference\", which alignment compares "
                               f"against (or leave alignment out with --weights)")
        try:
            check_task(row.get("task"))
        except LmmixupError as e:
            raise LmmixupError(f"{where}: {e}") from e
        rows.append((lineno, row))
    if not rows:
        raise LmmixupError(f"{path}: no rows to score")
    return rows


def quality_expected(cfg, completions: List[str]) -> List[Optional[float]]:
    """The quality backend's E (0-5) of each completion's answer; None without an answer."""
    answers = [extract_answer(c) for c in completions]
    rows = [i for i, a in enumerate(answers) if a is not None]
    out: List[Optional[float]] = [None] * len(completions)
    if rows:  # the scorer the quality reward built: same process, same fitted model
        expected = build_quality_scorer(cfg.quality, cfg.embedder)([answers[i] for i in rows])
        for i, e in zip(rows, expected.tolist()):
            out[i] = round(float(e), 6)
    return out


def score(args) -> dict:
    cfg = load_config(args)
    need_reference = "alignment" in cfg.weights and cfg.weights["alignment"] > 0
    rows = read_rows(Path(args.input), need_reference)
    fns = build_rewards(cfg)
    names = list(fns)
    totals: List[torch.Tensor] = []
    components = {name: [] for name in names}
    per_row: List[dict] = []  # --rows: one record per input row, in input order
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start:start + args.batch_size]
        batch = RewardBatch(
            prompts=[r.get("prompt") or "" for _, r in chunk],
            completions=[r["completion"] for _, r in chunk],
            references=[r.get("reference") for _, r in chunk],
            tasks=[r.get("task") for _, r in chunk],
            completion_tokens=[0] * len(chunk),  # unknown here; no paper reward reads it
        )
        result = compute_rewards(fns, cfg, batch, group_size=len(chunk))
        totals.append(result.total)
        for name in names:
            components[name].append(result.components[name])
        if args.rows:
            expected = (quality_expected(cfg, batch.completions) if "quality" in fns
                        else [None] * len(chunk))
        for i, (lineno, _) in enumerate(chunk):
            parts = " ".join(f"{n}={result.components[n][i].item():.3f}" for n in names)
            print(f"{args.input}:{lineno}  {parts}  total={result.total[i].item():.3f}")
            if args.rows:
                per_row.append({"line": lineno,
                                **{n: round(result.components[n][i].item(), 6) for n in names},
                                "total": round(result.total[i].item(), 6),
                                "quality_expected": expected[i]})
    if args.rows:
        atomic_write_text(args.rows, "".join(json.dumps(r) + "\n" for r in per_row))
    total = torch.cat(totals)
    comps = {name: torch.cat(v) for name, v in components.items()}
    weights = " + ".join(f"{w}*{n}" for n, w in cfg.weights.items())
    print(f"scored {len(total)} rows; total = {weights}")
    for name, values in comps.items():
        print(f"  {name:10s} mean {values.mean().item():.4f}  std {values.std(unbiased=False).item():.4f}")
    print(f"  {'total':10s} mean {total.mean().item():.4f}")
    if args.rows:
        print(f"wrote {len(per_row)} rows to {args.rows}")
    summary = {"rows": len(total)}
    for name in REPORTED:
        summary[f"{name}_mean"] = round(comps[name].mean().item(), 6) if name in comps else None
    for name in comps:
        if name not in REPORTED:
            summary[f"{name}_mean"] = round(comps[name].mean().item(), 6)
    summary["total_mean"] = round(total.mean().item(), 6)
    summary.update({k.split("/")[-1]: round(v, 6) for k, v in reward_extra_metrics(comps).items()})
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmmixup.rewards",
                                     description="Score completions with the reward functions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a JSONL of completions (see the module docstring)")
    p.add_argument("--input", required=True, help="JSONL rows: completion, reference, task, prompt")
    p.add_argument("--library", help="rated library JSONL for the quality reward")
    p.add_argument("--embedder", help="sentence embedder (default embedded:all-minilm-l6-v2)")
    p.add_argument("--weights", help="replace the mix, e.g. alignment=0.4,format=0.1")
    p.add_argument("--batch-size", type=int, default=64, help="rows per reward batch")
    p.add_argument("--rows", help="write one JSON line per input row (every score, and the "
                   "quality backend's E as quality_expected) to this file")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE reward config overrides")
    args = parser.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise LmmixupError("--batch-size: must be > 0")
        summary = score(args)
    except LmmixupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
