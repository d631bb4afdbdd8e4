"""Format reward F: half for the think/answer layout, half for an answer in its task's shape.

    F = 0.5 * [response is <think>…</think> <answer>…</answer>]
      + 0.5 * [answer matches TASK_SHAPES[task]]

The shapes below are the whole specification; tests/test_rewards_format.py has a positive and a
negative example for each. They are matched against the stripped answer text with `fullmatch`,
so nothing may precede the first marker or follow the last field. Markers must start a line or
follow whitespace (`Q: x A: y` and `Q: x\\nA: y` both pass, `Q: xA: y` does not), and every
field must contain something.

Decisions the paper leaves open:
  * `para` (paraphrase/free text) earns the shape half for any non-empty answer, as the paper
    says; a task of None (data without task labels) is treated the same way, so unlabelled data
    is scored on layout only, uniformly within a group.
  * an unknown task string is an error (LmmixupError naming it), not a silent 0: it is almost
    always a typo or a new task the data pipeline forgot to register here.
  * no answer block means no shape credit, whatever the task.
  * `True`/`False` and the option letters are case-sensitive: the shape is an exact contract.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Pattern

from lmmixup.errors import LmmixupError
from lmmixup.rewards.answer import extract_answer, has_full_layout

_FIELD = r"\S.*?"  # a non-empty field (lazy, may span lines)
_GAP = r"\s+"  # markers after the first must follow whitespace or a newline

# task -> pattern the stripped answer must fullmatch (None: any non-empty answer)
TASK_SHAPES: Dict[str, Optional[Pattern[str]]] = {
    # Q: <question> A: <answer>
    "qa": re.compile(rf"Q:\s*{_FIELD}{_GAP}A:\s*{_FIELD}", re.DOTALL),
    # Q: <question> A) … B) … C) … D) … Answer: <letter>
    "mcq": re.compile(
        rf"Q:\s*{_FIELD}{_GAP}A\)\s*{_FIELD}{_GAP}B\)\s*{_FIELD}{_GAP}C\)\s*{_FIELD}"
        rf"{_GAP}D\)\s*{_FIELD}{_GAP}Answer:\s*[ABCD]\.?", re.DOTALL),
    # <statement> Answer: True|False
    "tfq": re.compile(rf"{_FIELD}{_GAP}Answer:\s*(?:True|False)\.?", re.DOTALL),
    # C: <context> S: <summary/solution>
    "cs": re.compile(rf"C:\s*{_FIELD}{_GAP}S:\s*{_FIELD}", re.DOTALL),
    # free text: any non-empty answer
    "para": None,
}
FREE_FORM = None  # task value meaning "no task label": scored like `para`


def check_task(task: Optional[str]) -> None:
    """Raise LmmixupError for a task the format table does not know (data pipelines can call
    this at load time instead of failing in the middle of training)."""
    if task is not FREE_FORM and task not in TASK_SHAPES:
        raise LmmixupError(f"unknown task {task!r}; known tasks: {', '.join(TASK_SHAPES)} "
                           f"(or null for free-form)")


def answer_matches_task(answer: Optional[str], task: Optional[str]) -> bool:
    """True when the (already extracted, stripped) answer has its task's shape."""
    check_task(task)
    if not answer:
        return False
    pattern = TASK_SHAPES.get(task) if task is not FREE_FORM else None
    return pattern is None or pattern.fullmatch(answer) is not None


def format_score(response: str, task: Optional[str]) -> float:
    """F in {0, 0.5, 1}: layout half plus shape half (see the module docstring)."""
    layout = 0.5 if has_full_layout(response) else 0.0
    shape = 0.5 if answer_matches_task(extract_answer(response), task) else 0.0
    return layout + shape
