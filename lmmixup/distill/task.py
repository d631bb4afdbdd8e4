"""Which of the paper's five tasks a pool sample is, so that distill.py renders each cluster in
the layout its task was trained in (lmmixup.data.layout.SHAPES).

Why: the distiller is trained and evaluated with each cluster in its own task's layout. A pool
rendered as `para` whatever it holds asks the model for a free paragraph with the shape hint
`<instruction>`; on held-out QA clusters most parsed pairs then echoed that hint or the think
notes (issue 27). So the product path detects the task and uses the evaluation path's prompt.

A sample is (question, answer) as the prompt shows it: question = instruction (+ input), answer
= output. Rules, first match wins, each a property a reader can check on the text:
    mcq   the question lists >= 2 options lettered in order from A, one per line ("A) ...",
          "B) ...")
    tfq   the answer's first word is True or False (any case)
    cs    the answer's first line is "<category>: <label>" in at most 8 words (MIXTURE's
          category-statement rows: "Movie review sentiment: negative"), the question one line
    qa    the answer is one line of at most 15 words
    para  anything else: a free-text response
mcq, tfq and cs are positive evidence; qa and para are what is left. A cluster's task is the
specific task (mcq, tfq, cs) most of its members show if at least half of them show it (noise
can hide one member's marker: "Yrue", "Movie..."), else qa or para by majority, a tie going
to para, the general layout: a free paragraph can hold a short answer, not the reverse.
On MIXTURE's own clusters the rule recovers the cluster's task for 94-96% of them
(tests/test_distill_task.py). `distill.task` other than auto forces one task for every cluster.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence, Tuple

from lmmixup.data.prompts import TASKS

TASK_CHOICES = ("auto",) + TASKS
SPECIFIC = ("mcq", "tfq", "cs")
"""tasks a member shows by a marker; ties between them go in this order"""
QA_MAX_WORDS = 15
CS_MAX_WORDS = 8

_OPTION = re.compile(r"^\s*\(?([A-H])\)\s*\S", re.MULTILINE)
_FIRST_WORD = re.compile(r"^\W*([A-Za-z]+)")
_CATEGORY = re.compile(r"^[A-Za-z][A-Za-z ,'&/-]{1,60}:\s*\S.*$")


def has_options(question: str) -> bool:
    """>= 2 option lines lettered A, B, ... in order."""
    letters = "".join(_OPTION.findall(question))
    return len(letters) >= 2 and "ABCDEFGH".startswith(letters)


def member_task(question: str, answer: str) -> str:
    """One sample's task (module docstring, first matching rule)."""
    answer = answer.strip()
    first_line = answer.splitlines()[0] if answer else ""
    if has_options(question):
        return "mcq"
    word = _FIRST_WORD.match(answer)
    if word and word.group(1).lower() in ("true", "false"):
        return "tfq"
    if (_CATEGORY.match(first_line) and len(first_line.split()) <= CS_MAX_WORDS
            and "\n" not in question.strip()):
        return "cs"
    if "\n" not in answer and len(answer.split()) <= QA_MAX_WORDS:
        return "qa"
    return "para"


def cluster_task(members: Sequence[Tuple[str, str]], forced: str = "auto") -> str:
    """The task a cluster of (question, answer) members is rendered as (module docstring)."""
    if forced != "auto":
        return forced
    votes = Counter(member_task(q, a) for q, a in members)
    specific = max(SPECIFIC, key=lambda t: votes[t])  # first of SPECIFIC on a tie
    if 2 * votes[specific] >= len(members):
        return specific
    return "qa" if votes["qa"] > votes["para"] else "para"
