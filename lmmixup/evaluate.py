"""Held-out evaluation: greedy completions for data.eval_file, scored by the run's rewards.

Writes <run dir>/eval_step_<s>.json (per-reward means, total) and eval_samples_step_<s>.jsonl
(every prompt, completion and score), both atomically. The pipeline's base -> SFT -> GRPO
table is made of these files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional

import torch

from lmmixup.data.jsonl import atomic_write_text
from lmmixup.data.prompts import load_rows
from lmmixup.rewards.registry import compute_rewards
from lmmixup.step import reward_batch, sample


@torch.no_grad()
def evaluate(model, tokenizer, cfg, reward_fns, stop_ids, device, run_dir: Path, step: int,
             log=None, batch_rows: int = 16) -> Dict[str, float]:
    rows = load_rows(cfg.data.eval_file)[: cfg.eval_max_rows]
    greedy = dataclasses.replace(cfg.rollout, temperature=1.0, top_k=1, top_p=1.0)
    # Group normalisation is meaningless for one completion per prompt: mix the raw scores.
    reward_cfg = dataclasses.replace(cfg.reward, normalize_per_group=False)
    totals, components, samples, truncated = [], {}, [], []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        rollout = sample(model, tokenizer, chunk, greedy, 1, stop_ids, cfg.data.max_prompt_tokens,
                         cfg.data.eval_file, device)
        texts = reward_batch(tokenizer, rollout, chunk, 1)
        truncated += [bool(x) for x in rollout.truncated.tolist()]
        result = compute_rewards(reward_fns, reward_cfg, texts, 1)
        totals.append(result.total)
        for name, values in result.components.items():
            components.setdefault(name, []).append(values)
        for i, row in enumerate(chunk):
            samples.append({"line": row.line, "completion": texts.completions[i],
                            "reference": row.reference, "task": row.task,
                            "total": float(result.total[i]), "truncated": truncated[start + i],
                            **{k: float(v[i]) for k, v in result.components.items()}})
    # truncated = hit rollout.max_new_tokens before the stop token: such a completion rarely
    # closes its <answer>, so every reward is ~0; this fraction says how much the budget costs.
    summary = {"eval/total_mean": float(torch.cat(totals).mean()), "eval/rows": len(rows),
               "eval/frac_truncated": sum(truncated) / max(len(truncated), 1)}
    for name, parts in components.items():
        summary[f"eval/{name}_mean"] = float(torch.cat(parts).mean())
    atomic_write_text(run_dir / f"eval_step_{step}.json", json.dumps({"step": step, **summary}, indent=2))
    atomic_write_text(run_dir / f"eval_samples_step_{step}.jsonl",
                  "".join(json.dumps(s) + "\n" for s in samples))
    if log is not None:
        log.wandb.log(summary, step=step)
    return summary
