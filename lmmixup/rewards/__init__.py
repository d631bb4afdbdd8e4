"""Reward functions. Importing this package registers every built-in reward."""

from lmmixup.rewards import paper  # noqa: F401  (registers `quality`, `alignment`, `format`)
from lmmixup.rewards import simple  # noqa: F401  (registers `tags`, `length`)
from lmmixup.rewards import no_answer  # noqa: F401  (registers `no_answer`)
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
