"""Splitting a response into its `<think>` and `<answer>` parts.

Every paper reward (quality, alignment, format) scores the text inside `<answer>…</answer>`.
Choices, so that the rewards agree on what "the answer" is:
  * the answer is the LAST complete `<answer>…</answer>` block (a model that drafts an answer
    inside its reasoning and then gives the final one is scored on the final one);
  * an opening `<answer>` without a closing tag (a truncated completion) is no answer;
  * a block that is empty or only whitespace is no answer;
  * the answer text is stripped of surrounding whitespace.
No answer means quality 0 and alignment 0; format can still earn its shape half only when an
answer exists, so a response without one scores 0 on all three.
"""

from __future__ import annotations

import re
from typing import Optional

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# The whole response is one <think> block then one <answer> block, whitespace around and
# between allowed, and no stray tag inside either block (so "<think>a</think><answer>b</answer>
# <answer>c</answer>" is not the layout even though a lazy .*? could stretch over it).
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_LAYOUT = re.compile(rf"\s*<think>({_NO_TAG})</think>\s*<answer>({_NO_TAG})</answer>\s*", re.DOTALL)


def extract_answer(text: str) -> Optional[str]:
    """The stripped text of the last complete `<answer>…</answer>` block, or None."""
    blocks = _ANSWER_BLOCK.findall(text)
    if not blocks:
        return None
    answer = blocks[-1].strip()
    return answer or None


def has_full_layout(text: str) -> bool:
    """True when the response is exactly `<think>…</think>` then `<answer>…</answer>`, both
    blocks non-blank (an empty think block is the cheapest format hack, so it earns nothing)."""
    m = _LAYOUT.fullmatch(text)
    return bool(m) and bool(m.group(1).strip()) and bool(m.group(2).strip())


def reference_text(reference: Optional[str]) -> Optional[str]:
    """The text a reference is compared on: its answer block if it has one (references written
    in the think/answer layout), else the whole stripped reference; None when missing/blank."""
    if reference is None:
        return None
    return extract_answer(reference) or (reference.strip() or None)
