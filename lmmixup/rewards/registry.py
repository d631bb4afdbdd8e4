"""Reward functions by name, and how their scores are mixed into one scalar per completion.

A reward is a *builder*: `builder(cfg: RewardConfig) -> RewardFn`, listed by name in `REWARDS`
below, the one table of built-in rewards (importing a reward module registers nothing). The
builder runs once at start-up (load an embedder, read a library); the returned function scores
a whole rollout batch at a time, so expensive work (embedding) is batched.

    total[n] = sum_i  w_i * r_i[n]                       (N,)   reward.combine=sum (the paper)
    total[n] = sum_i  w_i * r_i[n] * (g[n] if i gated else 1)    reward.combine=gate,
               g[n] = 1[raw r_gate[n] >= threshold]               (GateConfig says why)
    with r_i optionally normalised within its group first: (r_i - mean_g) / (std_g + eps)
The group normalisation (lmmixup.grpo.group_normalize) is the multi-reward imbalance fix: a
reward with a large spread would otherwise drown the others in the group-relative advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from lmmixup.errors import LmmixupError
from lmmixup.grpo import group_normalize
from lmmixup.rewards.batch import RewardBatch, RewardFn
from lmmixup.rewards.config import RewardConfig
from lmmixup.rewards.no_answer import build_no_answer
from lmmixup.rewards.paper import build_alignment, build_format, build_quality
from lmmixup.rewards.simple import build_length, build_overlong, build_tags

RewardBuilder = Callable[[RewardConfig], RewardFn]

# Every built-in reward, by the name `reward.weights.<name>` gives it: the one place a reward is
# registered. The order is irrelevant; build_rewards follows reward.weights' order.
REWARDS: Dict[str, RewardBuilder] = {
    "tags": build_tags,  # simple.py: the think/answer layout
    "length": build_length,  # simple.py: a length target in characters
    "overlong": build_overlong,  # simple.py: DAPO's soft overlong penalty
    "format": build_format,  # paper.py: the task's answer format
    "alignment": build_alignment,  # paper.py: answer vs reference cosine
    "quality": build_quality,  # paper.py: the rated-library quality score
    "no_answer": build_no_answer,  # no_answer.py: -1 for no closed <answer>
}


def register_reward(name: str) -> Callable[[RewardBuilder], RewardBuilder]:
    """Decorator: add `builder` to REWARDS as `reward.weights.<name>`, for a reward defined
    outside this package (a test's probe, an experiment's script). It registers when called."""

    def wrap(builder: RewardBuilder) -> RewardBuilder:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = builder
        return builder

    return wrap


def build_rewards(cfg: RewardConfig) -> Dict[str, RewardFn]:
    """Instantiate every reward with a weight entry; unknown names are a config error."""
    fns = {}
    for name in cfg.weights:
        if name not in REWARDS:
            raise LmmixupError(
                f"reward.weights.{name}: unknown reward; known: {', '.join(sorted(REWARDS))}"
            )
        fns[name] = REWARDS[name](cfg)
    return fns


def _score_one_reward(name: str, fn: RewardFn, batch: RewardBatch) -> torch.Tensor:
    """Run one reward on the batch; on failure, name the reward and the first failing sample."""
    try:
        scores = torch.as_tensor(list(fn(batch)), dtype=torch.float32)  # (N,)
    except Exception as batch_error:
        for i in range(len(batch)):  # re-run sample by sample to point at the culprit
            try:
                fn(batch.select([i]))
            except Exception as sample_error:
                raise LmmixupError(
                    f"reward {name!r} failed on sample {i}: "
                    f"{type(sample_error).__name__}: {sample_error}"
                ) from sample_error
        raise LmmixupError(
            f"reward {name!r} failed on the batch: {type(batch_error).__name__}: {batch_error}"
        ) from batch_error
    if scores.shape != (len(batch),):
        raise LmmixupError(
            f"reward {name!r} returned {tuple(scores.shape)} scores for {len(batch)} samples"
        )
    return scores


@dataclass
class RewardResult:
    total: torch.Tensor  # (N,) mixed reward that feeds the advantage
    components: Dict[str, torch.Tensor]  # name -> (N,) raw score, before any normalisation


def compute_rewards(
    fns: Dict[str, RewardFn], cfg: RewardConfig, batch: RewardBatch, group_size: int
) -> RewardResult:
    """Score the batch with every reward and mix them (module docstring: `mix_rewards`)."""
    components = {name: _score_one_reward(name, fn, batch) for name, fn in fns.items()}
    return RewardResult(total=mix_rewards(components, cfg, group_size), components=components)


def mix_rewards(components: Dict[str, torch.Tensor], cfg: RewardConfig,
                group_size: int) -> torch.Tensor:
    """name -> raw r_i (N,) -> total (N,): the weighted sum, gated when cfg.combine == "gate"
    (the gate reads the raw score, before any group normalisation)."""
    n = len(next(iter(components.values())))
    gate = torch.ones(n)  # (N,) combine=sum: every reward always counts
    if cfg.combine == "gate":
        gate = (components[cfg.gate.reward] >= cfg.gate.threshold).float()  # (N,)
    total = torch.zeros(n)  # (N,)
    for name, raw in components.items():
        mixed = group_normalize(raw, group_size, cfg.group_norm_eps) if cfg.normalize_per_group else raw
        paid = gate if cfg.combine == "gate" and name in cfg.gate.gated else 1.0
        total += cfg.weights[name] * mixed * paid
    return total
