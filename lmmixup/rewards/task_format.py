"""Format reward F: half for the think/answer layout, half for an answer in its task's shape.

    F = 0.5 * [response is <think>…</think> <answer>…</answer>]
      + 0.5 * [answer matches TASK_SHAPES[task]]

The shapes below are the whole specification; tests/test_rewards_format.py has a positive and a
negative example for each. They are matched against the stripped answer text with `fullmatch`,
so nothing may precede the first marker or follow the last field. Markers must start a line or
follow whitespace (`Q: x A: y` and `Q: x\\nA: y` both pass, `Q: xA: y` does not), and every
field must contain something.

Decisions the paper leaves open:
  * `para` (free paragraph) earns the shape half for any non-empty answer, as the paper
    says; a task of None (data without task labels) is treated the same way, so unlabelled data
    is scored on layout only, uniformly within a group.
  * an unknown task string is an error (LmmixupError naming it), not a silent 0: it is almost
    always a typo or a new task the data pipeline forgot to register here.
  * no answer block means no shape credit, whatever the task.
  * `True`/`False` and the option letters are case-sensitive: the shape is an exact contract.
  * `mcq` accepts 2-8 options lettered A, B, C, ... in order (the paper's shape shows four; the
    mixture's sources have 3-5), and the answer letter must be one of them.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional, Pattern, Tuple

from lmmixup.errors import LmmixupError
from lmmixup.rewards.answer import extract_answer, has_full_layout

_FIELD = r"\S.*?"  # a non-empty field (lazy, may span lines)
_GAP = r"\s+"  # markers after the first must follow whitespace or a newline
_OPTION_MARKER = re.compile(r"(?:^|\s)([A-H])\)")


def _mcq_options_ok(m: "re.Match[str]") -> bool:
    """Options are lettered A, B, C, ... in order (2 to 8 of them) and the answer is one of them."""
    letters = "".join(_OPTION_MARKER.findall(m.group("options")))
    return len(letters) >= 2 and "ABCDEFGH".startswith(letters) and m.group("letter") in letters


# task -> (pattern the stripped answer must fullmatch, extra check on the match or None);
# None instead of a pair: any non-empty answer
TASK_SHAPES: Dict[str, Optional[Tuple[Pattern[str], Optional[Callable]]]] = {
    # Q: <question> A: <answer>
    "qa": (re.compile(rf"Q:\s*{_FIELD}{_GAP}A:\s*{_FIELD}", re.DOTALL), None),
    # Q: <question> A) … B) … [C) … D) …] Answer: <letter>. The paper's shape has four options;
    # we accept 2-8 consecutive ones because the mixture's sources have 3 (SocialIQA),
    # 4 (SciQ, OpenBookQA) and 5 (CommonsenseQA) and lmmixup/data renders them all.
    "mcq": (re.compile(rf"Q:\s*{_FIELD}(?P<options>(?:{_GAP}[A-H]\)\s*{_FIELD})+)"
                       rf"{_GAP}Answer:\s*(?P<letter>[A-H])\.?", re.DOTALL), _mcq_options_ok),
    # <statement> Answer: True|False
    "tfq": (re.compile(rf"{_FIELD}{_GAP}Answer:\s*(?:True|False)\.?", re.DOTALL), None),
    # C: <category> S: <statement>
    "cs": (re.compile(rf"C:\s*{_FIELD}{_GAP}S:\s*{_FIELD}", re.DOTALL), None),
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
    shape = TASK_SHAPES[task] if task is not FREE_FORM else None
    if shape is None:
        return True
    pattern, extra_check = shape
    m = pattern.fullmatch(answer)
    return m is not None and (extra_check is None or extra_check(m))


def format_score(response: str, task: Optional[str]) -> float:
    """F in {0, 0.5, 1}: layout half plus shape half (see the module docstring)."""
    layout = 0.5 if has_full_layout(response) else 0.0
    shape = 0.5 if answer_matches_task(extract_answer(response), task) else 0.0
    return layout + shape
