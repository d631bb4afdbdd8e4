"""The reward schema: which rewards are mixed with what weight, and each reward's settings.

`reward.*` in the config (conf/reward/*.yaml override it). The alignment, quality and embedder
settings live next to their code; length and overlong (lmmixup/rewards/simple.py) are two
fields each, kept here so simple.py can import RewardConfig without an import circle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List

from lmmixup.errors import require
from lmmixup.rewards.alignment import AlignmentConfig
from lmmixup.rewards.embedder import EmbedderConfig
from lmmixup.rewards.quality import QualityConfig


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


COMBINES = ("sum", "gate")


@dataclass
class GateConfig:
    """reward.combine=gate: some rewards pay only when another shows the content was kept.

    The paper's sum 0.5 Q + 0.4 A + 0.1 F lets a policy trade the reference's content (A) for
    the learned quality score (Q): in the distill_small preset GRPO raised Q by 0.034 and lost
    0.094 of A (docs/LOG.md 2026-12-03, issue 24). Gated, a clean answer that drops the content
    earns only what the gate reward gives it."""

    reward: str = "alignment"
    """the reward whose raw score decides the gate (it always counts itself)"""
    threshold: float = 0.5
    """the gated rewards count where the gate reward's raw score is >= this (binary alignment: 1)"""
    gated: List[str] = field(default_factory=lambda: ["quality", "format"])
    """the rewards that pay only through the gate; every other one (penalties too) always counts"""


@dataclass
class RewardConfig:
    weights: Dict[str, float] = field(default_factory=dict)
    """reward name -> mixing weight w_i; only names listed here are computed"""
    combine: str = "sum"
    """sum: total = sum_i w_i r_i (the paper) | gate: the rewards in gate.gated count only where
    gate.reward passes (GateConfig)"""
    gate: GateConfig = field(default_factory=GateConfig)
    """settings of combine=gate"""
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
        require(self.combine in COMBINES, "reward.combine",
                f"unknown combination {self.combine!r}; known: {', '.join(COMBINES)}")
        if self.combine == "gate":
            require(self.gate.reward in self.weights, "reward.gate.reward",
                    f"{self.gate.reward!r} is not in reward.weights, so it is never computed")
            require(self.gate.reward not in self.gate.gated, "reward.gate.gated",
                    f"{self.gate.reward!r} cannot gate itself")
            unknown = [name for name in self.gate.gated if name not in self.weights]
            require(not unknown, "reward.gate.gated",
                    f"{', '.join(map(repr, unknown))} not in reward.weights")
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
