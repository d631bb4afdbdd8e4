"""Two cheap, real rewards that need no model: tag structure and a length target.

They make the default GRPO run meaningful before the paper's rewards (quality, alignment,
format-by-task) are switched on with `reward=paper`.
"""

from __future__ import annotations

import re

from lmmixup.rewards.registry import RewardBatch, RewardConfig, register_reward

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FULL_LAYOUT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def tag_score(text: str) -> float:
    """1.0 for the full think/answer layout, else 0.2 per tag present (partial credit)."""
    if _FULL_LAYOUT.match(text):
        return 1.0
    return 0.2 * sum(tag in text for tag in _TAGS)


@register_reward("tags")
def build_tags(cfg: RewardConfig):
    def score(batch: RewardBatch):
        return [tag_score(c) for c in batch.completions]

    return score


def length_score(text: str, target_chars: int) -> float:
    """1 at the target length, falling linearly to 0 at 0 and at 2x the target."""
    return max(0.0, 1.0 - abs(len(text) - target_chars) / target_chars)


@register_reward("length")
def build_length(cfg: RewardConfig):
    target = cfg.length.target_chars

    def score(batch: RewardBatch):
        return [length_score(c, target) for c in batch.completions]

    return score
