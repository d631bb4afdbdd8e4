"""Reward functions by name, and how their scores are mixed into one scalar per completion.

A reward is registered as a *builder*: `builder(cfg: RewardConfig) -> RewardFn`. The builder runs
once at start-up (load an embedder, read a library); the returned function scores a whole
rollout batch at a time, so expensive work (embedding) is batched.

    total[n] = sum_i  w_i * r_i[n]                       (N,)
    with r_i optionally normalised within its group first: (r_i - mean_g) / (std_g + eps)
The group normalisation is the multi-reward imbalance fix: a reward with a large spread
would otherwise drown the others in the group-relative advantage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from lmmixup.errors import LmmixupError, require
from lmmixup.rewards.alignment import AlignmentConfig
from lmmixup.rewards.embedder import EmbedderConfig
from lmmixup.rewards.quality import QualityConfig


@dataclass
class RewardBatch:
    """What every reward sees: N = B*G completions, in group order (G consecutive per prompt)."""

    prompts: List[str]  # N decoded prompts (chat-formatted text)
    completions: List[str]  # N decoded completions, special tokens stripped
    references: List[Optional[str]]  # N reference outputs (the high-quality pair), or None
    tasks: List[Optional[str]]  # N task types: qa | mcq | tfq | cs | para, or None
    completion_tokens: List[int]  # N completion lengths in tokens (EOS included)
    truncated: Optional[List[bool]] = None  # N: no stop token within the budget; None = unknown

    def __len__(self) -> int:
        return len(self.completions)

    def select(self, indices: Sequence[int]) -> "RewardBatch":
        """A sub-batch with the given rows (used to locate a failing sample)."""
        return RewardBatch(
            prompts=[self.prompts[i] for i in indices],
            completions=[self.completions[i] for i in indices],
            references=[self.references[i] for i in indices],
            tasks=[self.tasks[i] for i in indices],
            completion_tokens=[self.completion_tokens[i] for i in indices],
            truncated=None if self.truncated is None else [self.truncated[i] for i in indices],
        )


RewardFn = Callable[[RewardBatch], Sequence[float]]
RewardBuilder = Callable[["RewardConfig"], RewardFn]

REWARDS: Dict[str, RewardBuilder] = {}


def register_reward(name: str) -> Callable[[RewardBuilder], RewardBuilder]:
    """Decorator: make `builder` available as `reward.weights.<name>`."""

    def wrap(builder: RewardBuilder) -> RewardBuilder:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = builder
        return builder

    return wrap


@dataclass
class LengthRewardConfig:
    target_chars: int = 300
    """completion length (characters) that earns the full length reward"""


@dataclass
class OverlongRewardConfig:
    max_tokens: int = 128
    """L_max: completions longer than this get the full -1 penalty (conf/config.yaml ties it to
    rollout.max_new_tokens)"""
    buffer_tokens: int = 32
    """L_cache: the penalty ramps linearly from 0 to -1 over the last buffer_tokens before L_max"""

    def validate(self) -> None:
        require(self.buffer_tokens > 0, "reward.overlong.buffer_tokens", "must be > 0")


@dataclass
class RewardConfig:
    weights: Dict[str, float] = field(default_factory=dict)
    """reward name -> mixing weight w_i; only names listed here are computed"""
    normalize_per_group: bool = False
    """standardise each reward within its group before mixing (multi-reward imbalance fix)"""
    group_norm_eps: float = 1e-4
    """added to the group std when normalize_per_group is on; a constant group maps to 0"""
    length: LengthRewardConfig = field(default_factory=LengthRewardConfig)
    """settings of the `length` reward"""
    overlong: OverlongRewardConfig = field(default_factory=OverlongRewardConfig)
    """settings of the `overlong` reward (DAPO's soft length penalty)"""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """sentence embedder shared by the `alignment` and `quality` rewards"""
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    """settings of the `alignment` reward (answer vs reference cosine)"""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """settings of the `quality` reward (a model learned from a rated library, kNN, or a judge)"""

    def validate(self) -> None:
        require(len(self.weights) > 0, "reward.weights", "name at least one reward")
        for name, w in self.weights.items():
            require(w >= 0 and math.isfinite(w), f"reward.weights.{name}",
                    f"weights must be finite and >= 0, got {w}")
        require(self.group_norm_eps > 0, "reward.group_norm_eps", "must be > 0")
        if "overlong" in self.weights:  # max_tokens follows rollout.max_new_tokens, may be small
            require(self.overlong.buffer_tokens <= self.overlong.max_tokens,
                    "reward.overlong.buffer_tokens", "must be in (0, reward.overlong.max_tokens]")
        self.embedder.validate()
        self.alignment.validate()
        self.quality.validate()
        if "quality" in self.weights and self.quality.needs_library:
            require(bool(self.quality.library), "reward.quality.library",
                    f"the {self.quality.backend} quality reward needs a rated library JSONL "
                    "({\"text\", \"score\"} rows); set reward.quality.library=PATH")


def build_rewards(cfg: RewardConfig) -> Dict[str, RewardFn]:
    """Instantiate every reward with a weight entry; unknown names are a config error."""
    import lmmixup.rewards  # noqa: F401  (registers the built-in rewards)

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


def group_normalize(scores: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(N,) -> (N,): standardise within each group of G consecutive completions, with the same
    std as the advantages (lmmixup.grpo.group_std)."""
    from lmmixup.grpo import group_std

    grouped = scores.view(-1, group_size)  # (B, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (B, 1)
    std = group_std(grouped)  # (B, 1), Bessel-corrected: the advantages' convention
    return ((grouped - mean) / (std + eps)).view(-1)  # (N,)


@dataclass
class RewardResult:
    total: torch.Tensor  # (N,) mixed reward that feeds the advantage
    components: Dict[str, torch.Tensor]  # name -> (N,) raw score, before any normalisation


def compute_rewards(
    fns: Dict[str, RewardFn], cfg: RewardConfig, batch: RewardBatch, group_size: int
) -> RewardResult:
    """Score the batch with every reward and mix: total = sum_i w_i * r_i (optionally group-normed)."""
    components = {name: _score_one_reward(name, fn, batch) for name, fn in fns.items()}
    total = torch.zeros(len(batch))  # (N,)
    for name, raw in components.items():
        mixed = group_normalize(raw, group_size, cfg.group_norm_eps) if cfg.normalize_per_group else raw
        total += cfg.weights[name] * mixed
    return RewardResult(total=total, components=components)
