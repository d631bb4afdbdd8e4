"""The reward schema: which rewards are mixed with what weight, and each reward's settings.

`reward.*` in the config (conf/reward/*.yaml override it). The alignment, quality and embedder
settings live next to their code; length and overlong (lmmixup/rewards/simple.py) are two
fields each, kept here so simple.py can import RewardConfig without an import circle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict

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
