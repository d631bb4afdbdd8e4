"""What every reward sees: one rollout batch of decoded completions, and a reward's signature.

A leaf module: the reward modules (paper.py, simple.py, no_answer.py) and the registry that
lists them all import it, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence


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

    @staticmethod
    def concat(parts: Sequence["RewardBatch"]) -> "RewardBatch":
        """Parts, in order, as one batch (truncation flags kept only when every part has them):
        GRPO's rollout rounds and every rank's share (sampling/rounds.py), headroom's calls."""
        known = all(p.truncated is not None for p in parts)
        return RewardBatch(prompts=[x for p in parts for x in p.prompts],
                           completions=[x for p in parts for x in p.completions],
                           references=[x for p in parts for x in p.references],
                           tasks=[x for p in parts for x in p.tasks],
                           completion_tokens=[x for p in parts for x in p.completion_tokens],
                           truncated=[x for p in parts for x in p.truncated] if known else None)


RewardFn = Callable[[RewardBatch], Sequence[float]]
