"""Held-out evaluation: greedy completions for data.eval_file, scored by the run's rewards, with
the baselines of lmmixup/eval/baselines.py scored by the same rewards on the same rows.

Writes, atomically:
  <run dir>/eval_samples_step_<s>.jsonl   one object per row: line, completion, reference,
                                          task, every reward component, total, truncated, and
                                          "baselines": {name: {component: score, total}}
  <run dir>/eval_step_<s>.json            eval/<metric>_mean with eval/<metric>_ci_low/_ci_high
                                          (95% percentile bootstrap over rows), the same for
                                          each baseline under eval/baseline/<name>/..., rows,
                                          time/eval_s and time/eval_baselines_s
and logs the summary to metrics.jsonl (and W&B) at step s. The per-row file is what paired
comparisons (lmmixup/eval/table.py) are built from. Baselines are scored only when every row
carries its cluster's members (MIXTURE rows do; the starter prompts do not).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

import torch

from lmmixup.data.jsonl import atomic_write_text
from lmmixup.data.prompts import load_rows
from lmmixup.eval.baselines import BASELINES, has_members
from lmmixup.eval.stats import bootstrap_mean_ci
from lmmixup.rewards.embedder import get_embedder
from lmmixup.rewards.registry import RewardBatch, compute_rewards
from lmmixup.sampling.policy import Policy


def interval_metrics(prefix: str, per_row: List[Dict[str, float]]) -> Dict[str, float]:
    """prefix<metric>_mean, _ci_low, _ci_high for every metric of the per-row dicts."""
    out = {}
    for name in per_row[0]:
        ci = bootstrap_mean_ci([r[name] for r in per_row])
        out.update({f"{prefix}{name}_mean": ci.estimate, f"{prefix}{name}_ci_low": ci.low,
                    f"{prefix}{name}_ci_high": ci.high})
    return out


def score_baselines(rows, reward_fns, reward_cfg, batch_rows: int) -> Dict[str, List[Dict[str, float]]]:
    """baseline name -> one {component: score, "total": R} per row, by the run's rewards."""
    embed = get_embedder(reward_cfg.embedder).encode
    scores: Dict[str, List[Dict[str, float]]] = {}
    for name, build in BASELINES.items():
        scores[name] = []
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            completions = build(chunk, embed)
            batch = RewardBatch(prompts=[""] * len(chunk), completions=completions,
                                references=[r.reference for r in chunk],
                                tasks=[r.task for r in chunk],
                                completion_tokens=[0] * len(chunk),  # no token budget applies
                                truncated=[False] * len(chunk))
            result = compute_rewards(reward_fns, reward_cfg, batch, 1)
            scores[name] += [{**{k: float(v[i]) for k, v in result.components.items()},
                              "total": float(result.total[i])} for i in range(len(chunk))]
    return scores


@torch.no_grad()
def evaluate(policy: Policy, cfg, *, reward_fns, run_dir: Path, step: int, log=None,
             batch_rows: int = 16) -> Dict[str, float]:
    """Greedy completions of the held-out rows (`policy.greedy`: cfg.rollout's engine and budget,
    the argmax), scored by reward_fns (files in run_dir, named after `step`: the module
    docstring; the summary also goes to `log` when given). The static engine decodes in the
    sampler's precision (policy.dtype, precision.rollout resolved); `eval/decode_bf16` records
    it, since greedy tokens can differ between fp32 and bf16."""
    rows = load_rows(cfg.data.eval_file)[: cfg.eval_max_rows]
    # Group normalisation is meaningless for one completion per prompt: mix the raw scores.
    reward_cfg = dataclasses.replace(cfg.reward, normalize_per_group=False)
    samples = []
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        texts = policy.greedy(chunk, max_prompt_tokens=cfg.data.max_prompt_tokens,
                              source=cfg.data.eval_file).texts
        result = compute_rewards(reward_fns, reward_cfg, texts, 1)
        for i, row in enumerate(chunk):
            samples.append({"line": row.line, "seed_id": (row.extra or {}).get("seed_id"),
                            "completion": texts.completions[i], "reference": row.reference,
                            "task": row.task, "completion_tokens": texts.completion_tokens[i],
                            **{k: float(v[i]) for k, v in result.components.items()},
                            "total": float(result.total[i]),
                            # hit rollout.max_new_tokens before the stop token: such a
                            # completion rarely closes its <answer>, so every reward is ~0
                            "truncated": float(texts.truncated[i])})
    metric_keys = [k for k in samples[0] if k not in
                   ("line", "seed_id", "completion", "reference", "task", "completion_tokens")]
    summary = {"eval/rows": len(rows),
               **interval_metrics("eval/", [{k: s[k] for k in metric_keys} for s in samples])}
    summary["eval/frac_truncated"] = summary["eval/truncated_mean"]  # the name earlier runs used
    summary["time/eval_s"] = time.perf_counter() - t0
    summary["eval/decode_bf16"] = float(policy.dtype == torch.bfloat16)
    if all(has_members(r) for r in rows):
        t0 = time.perf_counter()
        for name, per_row in score_baselines(rows, reward_fns, reward_cfg, batch_rows).items():
            for s, scores in zip(samples, per_row):
                s.setdefault("baselines", {})[name] = scores
            summary.update(interval_metrics(f"eval/baseline/{name}/", per_row))
        summary["time/eval_baselines_s"] = time.perf_counter() - t0
    atomic_write_text(run_dir / f"eval_samples_step_{step}.jsonl",
                      "".join(json.dumps(s) + "\n" for s in samples))
    atomic_write_text(run_dir / f"eval_step_{step}.json", json.dumps({"step": step, **summary}, indent=2))
    if log is not None:
        log.log(step, summary)
    return summary
