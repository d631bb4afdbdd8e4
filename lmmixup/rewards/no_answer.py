"""No-answer penalty: a completion that never gives its answer scores -1, every other one 0.

    P[n] = -1   if completion n has no closed, non-empty <answer>...</answer> block,
                or was cut off at the token budget (no stop token: rollout.truncated)
    P[n] =  0   otherwise

Why: every paper reward (Q, A, F) reads only the `<answer>` block, so a completion that loops
in `<think>` until the budget runs out scores 0 on all three, exactly like a formatted but wrong
answer whose content misses (A = 0, Q = 0, F = 0 without the shape). GRPO then has no reason to
prefer stopping: on held-out clusters the SFT model of `make train` never closed `</answer>`
in 26 of 60 completions (issue 10). With this penalty in the mix at weight w > 0, a
non-answer's total is -w, strictly below every answer's (>= 0), so "answer badly" beats
"never answer" in every group.

Choices:
  * "answered" is `extract_answer`'s definition, shared with the other rewards (the last
    complete, non-blank block): an opening `<answer>` without its closing tag is no answer.
  * a completion that closed its answer but then ran on to the budget is penalised too: it
    never stopped, and the engine only knows that from the missing stop token, which the
    rollout records per row (`RewardBatch.truncated`).
  * the default weight in conf/reward/paper.yaml is 0.2: twice the whole format reward
    (0.1), so a non-answer sits clearly below any answer, yet half the alignment weight (0.4),
    so a correct answer stays worth more than merely stopping (the penalty must not teach
    "write anything short").
"""

from __future__ import annotations

from typing import Optional, Sequence

from lmmixup.rewards.answer import extract_answer
from lmmixup.rewards.batch import RewardBatch
from lmmixup.rewards.config import RewardConfig


def no_answer_penalty(completion: str, truncated: bool) -> float:
    """-1.0 for a completion without a closed non-blank <answer> block or cut off at the
    budget, else 0.0."""
    return -1.0 if truncated or extract_answer(completion) is None else 0.0


def no_answer_penalties(completions: Sequence[str],
                        truncated: Optional[Sequence[bool]]) -> list:
    """(N,) completions, (N,) truncation flags or None (unknown: only the answer block
    counts) -> (N,) penalties in {-1, 0}."""
    flags = truncated if truncated is not None else [False] * len(completions)
    return [no_answer_penalty(c, bool(t)) for c, t in zip(completions, flags)]


def build_no_answer(cfg: RewardConfig):
    def score(batch: RewardBatch):
        return no_answer_penalties(batch.completions, batch.truncated)

    return score
