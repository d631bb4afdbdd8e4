"""What the trainer calls once per GRPO step to make the step inspectable afterwards.

`StepInspector.after_step` takes the step's scored batch and advantages and returns extra
metrics for metrics.jsonl / W&B:
    attr/*        the per-reward advantage attribution (lmmixup/attribution.py), plus
                  attr/split_error = max_i |sum_k A_ik - A_i| against the advantages the update
                  used (a live check that the split is exact)
    hacking/*     1.0 while a reward-hacking rule holds (lmmixup/hacking.py)
    time/dump_s   seconds spent writing this step's rollout dump (0 when none is due)
    time/inspect_s  seconds of this whole hook, dump included
and, on dump steps, writes <run>/rollouts/step_NNNNNN.parquet plus a W&B sample table.
It never changes what training does. On resume it rebuilds the hacking history from the
metrics.jsonl lines the logger kept, so a resumed run reports what an uninterrupted one would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lmmixup.attribution import advantage_split, attribution_metrics
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.dumps import TokenTensors, build_rows, should_dump, summarise_tokens, write_dump
from lmmixup.hacking import HackingReport, evaluate_rules, record, replay

TABLE_COLUMNS = ("step", "group", "member", "task", "completion", "reward_total", "advantage")


class StepInspector:
    def __init__(self, cfg, run_dir: Path, log, resume_step: int = 0):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        metrics_file = self.run_dir / "metrics.jsonl"
        self.history: List[Dict] = []
        if resume_step and metrics_file.exists():  # the logger already cut it to resume_step
            self.history = [json.loads(l) for l in metrics_file.read_text().splitlines() if l]
        self.evals_seen: set = set()
        self._read_evals(before=resume_step + 1)
        self.report: HackingReport = replay(self.history, cfg.hacking)

    def _read_evals(self, before: int) -> None:
        """Held-out summaries (eval_step_<s>.json, written by lmmixup/evaluate.py after step s)
        join the history as rows of their own, so heldout_divergence sees them. Only steps
        before `before`: a resumed run must not read an evaluation its killed predecessor wrote
        for a step it is about to redo."""
        for path in sorted(self.run_dir.glob("eval_step_*.json")):
            if path.name in self.evals_seen or int(path.stem.rsplit("_", 1)[1]) >= before:
                continue
            self.evals_seen.add(path.name)
            self.history.append(json.loads(path.read_text()))
        self.history.sort(key=lambda r: (r["step"], "eval/total_mean" in r))

    def after_step(self, step: int, batch, advantages: torch.Tensor,
                   old_logp: Optional[torch.Tensor], ref_logp: Optional[torch.Tensor],
                   metrics: Dict[str, float]) -> Dict[str, float]:
        t0 = time.perf_counter()
        cfg, G = self.cfg, self.cfg.algo.group_size
        split = advantage_split(batch.components, batch.total, weights=cfg.reward.weights,
                                group_size=G, adv_scale=cfg.algo.adv_scale,
                                adv_eps=cfg.algo.adv_eps,
                                normalize_per_group=cfg.reward.normalize_per_group,
                                group_norm_eps=cfg.reward.group_norm_eps)
        out = attribution_metrics(split, G)
        summed = torch.stack(list(split.terms.values())).sum(dim=0)  # (N,)
        out["attr/split_error"] = float((summed - advantages).abs().max())

        dump_s = 0.0
        if should_dump(step, cfg.steps, cfg.logger.dump_every):
            t_dump = time.perf_counter()
            self._dump(step, batch, advantages, split.terms, old_logp, ref_logp)
            dump_s = time.perf_counter() - t_dump
        out["time/dump_s"] = dump_s

        self._read_evals(before=step)
        self.history.append({"step": step, **metrics, **out})
        for rule, message in evaluate_rules(self.history, cfg.hacking).items():
            out[f"hacking/{rule}"] = float(message is not None)
            if record(self.report, rule, step, message):
                print(f"step {step}: reward-hacking signal {rule}: {message}", file=sys.stderr)
        atomic_write_text(self.run_dir / "hacking.json",
                          json.dumps({"last_step": step, "firings": self.report.as_dict()}, indent=2))
        out["time/inspect_s"] = time.perf_counter() - t0
        return out

    def _dump(self, step, batch, advantages, terms, old_logp, ref_logp) -> None:
        cfg, rollout, texts = self.cfg, batch.rollout, batch.texts
        tokens = TokenTensors(token_ids=rollout.completion_ids, mask=rollout.completion_mask,
                              logprobs=rollout.rollout_logp, old_logprobs=old_logp,
                              ref_logprobs=ref_logp)
        summary = summarise_tokens(tokens, cfg.algo.kl_estimator, cfg.algo.kl_clamp,
                                   cfg.algo.eps_low, cfg.algo.eps_high)
        rows = build_rows(step=step, group_size=cfg.algo.group_size,
                          prompt_ids=[r.line for r in batch.rows], prompts=texts.prompts,
                          completions=texts.completions, references=texts.references,
                          tasks=texts.tasks, components=batch.components, total=batch.total,
                          advantages=advantages, terms=terms, truncated=rollout.truncated,
                          tokens=tokens, summary=summary, with_tokens=cfg.logger.dump_tokens)
        names = list(batch.components)
        write_dump(self.run_dir, step, rows, names, with_tokens=cfg.logger.dump_tokens)
        if cfg.logger.dump_table_rows:
            columns = list(TABLE_COLUMNS) + [f"reward_{k}" for k in names] + [f"adv_{k}" for k in names]
            table = [[r[c] for c in columns] for r in rows[: cfg.logger.dump_table_rows]]
            self.log.wandb.table("rollouts/samples", columns, table, step=step)
