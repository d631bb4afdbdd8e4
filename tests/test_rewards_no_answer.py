"""The no-answer penalty on hand-made completions, and its place in the paper mix: a completion
that never answers must total below a formatted but wrong answer."""

from lmmixup.rewards import RewardBatch, RewardConfig, build_rewards, compute_rewards
from lmmixup.rewards.no_answer import no_answer_penalties, no_answer_penalty

CLOSED = "<think>\nPair 1 is vague.\n</think>\n\n<answer>\nIs the sky blue?\nAnswer: True\n</answer>"
NO_ANSWER = "<think>\nPair 1 is padded with filler.\nPair 2 is padded with filler.\nPair 3 is"
OPEN_ONLY = "<think>\nok\n</think>\n\n<answer>\nIs the sky blue?\nAnswer: Tr"  # cut mid-answer
EMPTY_BLOCK = "<think>\nok\n</think>\n\n<answer>\n   \n</answer>"


def test_closed_answer_is_not_penalised():
    assert no_answer_penalty(CLOSED, truncated=False) == 0.0


def test_no_answer_block_open_block_and_blank_block_are_penalised():
    assert no_answer_penalty(NO_ANSWER, truncated=False) == -1.0
    assert no_answer_penalty(OPEN_ONLY, truncated=False) == -1.0
    assert no_answer_penalty(EMPTY_BLOCK, truncated=False) == -1.0


def test_cut_off_at_the_budget_is_penalised_even_after_a_closed_answer():
    # the answer closed, then the model kept writing until the budget: it never stopped
    assert no_answer_penalty(CLOSED + "\n<think>\nmore", truncated=True) == -1.0
    # unknown truncation (None): only the answer block counts
    assert no_answer_penalties([CLOSED, NO_ANSWER], None) == [0.0, -1.0]
    assert no_answer_penalties([CLOSED, CLOSED], [False, True]) == [0.0, -1.0]


def test_in_the_mix_no_answer_scores_below_a_wrong_answer():
    cfg = RewardConfig(weights={"format": 0.1, "no_answer": 0.2})
    fns = build_rewards(cfg)
    wrong = "<think>\nno idea\n</think>\n\n<answer>\nsomething else entirely\n</answer>"
    batch = RewardBatch(prompts=["p"] * 3, completions=[CLOSED, wrong, NO_ANSWER],
                        references=[None] * 3, tasks=["tfq"] * 3, completion_tokens=[30, 20, 256],
                        truncated=[False, False, True])
    result = compute_rewards(fns, cfg, batch, group_size=3)
    assert result.components["no_answer"].tolist() == [0.0, 0.0, -1.0]
    # CLOSED: F = 0.5 layout + 0.5 tfq shape = 1 -> 0.1 * 1 = 0.1
    # wrong:  F = 0.5 layout, no "Answer: True|False" shape -> 0.1 * 0.5 = 0.05
    # NO_ANSWER: F = 0, penalty -1 -> 0.2 * -1 = -0.2
    assert [round(x, 6) for x in result.total.tolist()] == [0.1, 0.05, -0.2]
    # the sub-batch keeps its truncation flags (used to locate a failing sample)
    assert batch.select([2, 0]).truncated == [True, False]
