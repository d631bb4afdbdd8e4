"""Cheap, real rewards that need no model: tag structure, a length target, and DAPO's soft
overlong penalty.

They make the default GRPO run meaningful before the paper's rewards (quality, alignment,
format-by-task) are switched on with `reward=paper`.
"""

from __future__ import annotations

import re

from lmmixup.rewards.batch import RewardBatch
from lmmixup.rewards.config import RewardConfig

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FULL_LAYOUT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def tag_score(text: str) -> float:
    """1.0 for the full think/answer layout, else 0.2 per tag present (partial credit)."""
    if _FULL_LAYOUT.match(text):
        return 1.0
    return 0.2 * sum(tag in text for tag in _TAGS)


def build_tags(cfg: RewardConfig):
    def score(batch: RewardBatch):
        return [tag_score(c) for c in batch.completions]

    return score


def length_score(text: str, target_chars: int) -> float:
    """1 at the target length, falling linearly to 0 at 0 and at 2x the target."""
    return max(0.0, 1.0 - abs(len(text) - target_chars) / target_chars)


def build_length(cfg: RewardConfig):
    target = cfg.length.target_chars

    def score(batch: RewardBatch):
        return [length_score(c, target) for c in batch.completions]

    return score


def overlong_penalty(num_tokens: int, max_tokens: int, buffer_tokens: int) -> float:
    """DAPO's soft overlong punishment: 0 up to L_max - L_cache, then a linear ramp down to -1
    at L_max, and -1 beyond it."""
    free = max_tokens - buffer_tokens
    if num_tokens <= free:
        return 0.0
    if num_tokens <= max_tokens:
        return (free - num_tokens) / buffer_tokens
    return -1.0


def build_overlong(cfg: RewardConfig):
    o = cfg.overlong

    def score(batch: RewardBatch):
        return [overlong_penalty(n, o.max_tokens, o.buffer_tokens) for n in batch.completion_tokens]

    return score
