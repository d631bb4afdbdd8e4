"""`python -m lmmixup.raft`: sample n completions of each training prompt, keep each group's best
where it clears the scorer's noise (select.py), and write them as SFT rows.

    python -m lmmixup.raft model.name_or_path=M data.train_file=F prompts=160 n=4 out=DIR
        [any train.py override: reward=paper, reward.combine=gate, rollout.max_new_tokens=256, ...]

The command line holds two kinds of key, as lmmixup.headroom's does: RAFT's own (`RaftConfig`
below) and train.py's, composed from conf/config.yaml, so the reward and the sampler are the ones
a GRPO run with the same overrides trains with. The prompts are the first `prompts` rows in
GRPO's own order (PromptSampler with data.shuffle_seed), so RAFT and GRPO start from the same
prompts. Any problem is one `error:` line, before anything is written.

Writes, atomically, into `out`:
  rows.jsonl     the kept rows: each prompt's source object with `target` = its best completion
                 (train.py stage=sft data.train_file=<out>/rows.jsonl fine-tunes on them)
  samples.jsonl  every completion with its scores, `best` and `kept`
  raft.json      counts: prompts, completions sampled, kept, mean gain and noise
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from lmmixup.cli import report_errors
from lmmixup.config import TrainConfig
from lmmixup.data.jsonl import atomic_write_jsonl, atomic_write_text, iter_jsonl
from lmmixup.data.prompts import PromptSampler, load_rows
from lmmixup.errors import require
from lmmixup.headroom.report import TOTAL
from lmmixup.headroom.run import (build_policy, load_configs, raw_reward, sample_groups,
                                  sample_rows, score_groups)
from lmmixup.raft.select import raft_select


@dataclass
class RaftConfig:
    prompts: int = 160
    """training prompts sampled: the first `prompts` in GRPO's order (all when the file has fewer)"""
    n: int = 4
    """completions sampled per prompt at the rollout's temperature"""
    out: str = "runs/raft"
    """output folder"""
    prompts_per_call: int = 4
    """prompts sampled in one batch (times n sequences): the sampler's memory grows with it"""

    def validate(self) -> None:
        require(self.prompts >= 1, "prompts", f"must be >= 1, got {self.prompts}")
        require(self.n >= 2, "n", f"must be >= 2 (a best of one is no choice), got {self.n}")
        require(self.prompts_per_call >= 1, "prompts_per_call", "must be >= 1")


def run(cfg: TrainConfig, rcfg: RaftConfig) -> Path:
    source = cfg.data.train_file
    rows = load_rows(source)  # a bad file fails before the model loads
    objects = dict(iter_jsonl(source))  # 1-based line -> the row's object, as PromptRow.line
    rows = PromptSampler(rows, cfg.data.shuffle_seed).next_batch(min(rcfg.prompts, len(rows)))
    policy, precision = build_policy(cfg, rows, source)
    reward_cfg, reward_fns = raw_reward(cfg)
    out = Path(rcfg.out)

    n, P = rcfg.n, len(rows)
    texts = sample_groups(policy, rows, n, rcfg.prompts_per_call, cfg.data.max_prompt_tokens,
                          source)  # N = P * n
    scores, _, versions_R = score_groups(reward_fns, reward_cfg, texts, n)
    sel = raft_select(scores[TOTAL], versions_R)  # best and keep: (P,), the same best of n

    kept_rows = [{**objects[row.line], "target": texts.completions[p * n + int(sel.best[p])]}
                 for p, row in enumerate(rows) if sel.keep[p]]
    samples = sample_rows(rows, texts, scores, {}, sel.best)  # headroom's samples.jsonl rows
    for i, sample in enumerate(samples):  # group order: sample i is of prompt i // n
        sample["kept"] = sample["best"] and bool(sel.keep[i // n])
    kept = int(sel.keep.sum())
    summary = {"model": cfg.model.name_or_path, "train_file": source, "prompts": P, "n": n,
               "completions_sampled": P * n, "kept": kept, "kept_frac": kept / P,
               "rollout_precision": precision, "weights": dict(reward_cfg.weights),
               "combine": reward_cfg.combine,
               "mean_R": scores[TOTAL].mean().item(),
               "mean_R_kept_best": (scores[TOTAL].amax(dim=1)[sel.keep].mean().item()
                                    if kept else None),
               "mean_gain": sel.gain.mean().item(), "mean_noise": sel.noise.mean().item()}
    atomic_write_jsonl(out / "samples.jsonl", samples)
    atomic_write_text(out / "raft.json", json.dumps(summary, indent=2) + "\n")
    # rows.jsonl last: the pipeline takes its presence as "RAFT's sampling is done"
    require(kept > 0, "prompts", f"no group's best cleared the scorer's noise among {P} prompts "
                                 f"x {n} samples; sample more prompts or a larger n")
    atomic_write_jsonl(out / "rows.jsonl", kept_rows)
    print(f"RAFT: kept {kept} of {P} prompts (mean gain {summary['mean_gain']:.3f}, mean noise "
          f"{summary['mean_noise']:.3f}); wrote {out / 'rows.jsonl'}", file=sys.stderr)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    report_errors(lambda: run(*load_configs(args, RaftConfig, needs="data.train_file",
                                                what="the training prompt rows")))
