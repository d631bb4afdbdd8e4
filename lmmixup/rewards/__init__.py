"""Reward functions: the built-ins are listed by name in registry.REWARDS; this package
re-exports what the scripts use."""

from lmmixup.rewards.judge import JudgeConfig, LLMJudge, judge_scores, load_judge  # noqa: F401
from lmmixup.rewards.metrics import reward_extra_metrics  # noqa: F401
from lmmixup.rewards.registry import (  # noqa: F401
    REWARDS,
    RewardBatch,
    RewardConfig,
    RewardResult,
    build_rewards,
    compute_rewards,
    register_reward,
)
