"""The seed pair and the paper's five pair shapes.

A seed is one high-quality instruction-output pair. Every member of a cluster, degraded or
not, is held the same way, as (question, answer) strings, and `render_pair` writes it in its
task's shape (PAPER.md):

    qa    Q: {question}\\nA: {answer}
    mcq   Q: {stem}\\nA) ..\\nB) ..\\nC) ..\\nD) ..\\nAnswer: {letter}   (question = stem + option lines)
    tfq   {question}\\nAnswer: {True|False}
    cs    C: {category}\\nS: {statement}                              (question = statement, answer = category)
    para  {question}\\n\\n{answer}                                     (an instruction and its free-text response)
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Sequence, Tuple

from lmmixup.data.prompts import TASKS

LETTERS = "ABCDEFGH"
_OPTION_LINE = re.compile(r"\n(?=A\) )")


def render_pair(task: str, question: str, answer: str) -> str:
    """The pair text in the task's shape (the reference / answer content the rewards see)."""
    if task == "qa":
        return f"Q: {question}\nA: {answer}"
    if task == "mcq":
        return f"Q: {question}\nAnswer: {answer}"
    if task == "tfq":
        return f"{question}\nAnswer: {answer}"
    if task == "cs":
        return f"C: {answer}\nS: {question}"
    if task == "para":
        return f"{question}\n\n{answer}"
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def mcq_question(stem: str, options: Sequence[str]) -> str:
    """Stem followed by one `X) option` line per option (A, B, C, ...)."""
    return stem + "".join(f"\n{LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def split_mcq(question: str) -> Tuple[str, str]:
    """(stem, option block starting with '\\n'); the block is '' when there are no options."""
    parts = _OPTION_LINE.split(question, maxsplit=1)
    return (parts[0], "\n" + parts[1]) if len(parts) == 2 else (question, "")


def rng_for(seed: int, *keys: str) -> random.Random:
    """An independent, reproducible RNG per (global seed, purpose, item). A string seed is
    hashed with SHA-512 by `random.Random`, so this does not depend on PYTHONHASHSEED, and one
    item's draws never depend on which other items were processed before it (resume-safe)."""
    return random.Random("|".join([str(seed), *keys]))


@dataclass(frozen=True)
class Seed:
    """One high-quality pair taken from a source."""

    seed_id: str
    """stable unique id, '<source>:<row key>'"""
    source: str
    """source name: sciq, trivia_qa, ..., or hf:<id> / jsonl:<path>"""
    task: str
    """qa | mcq | tfq | cs | para"""
    question: str
    """the member's Q text (mcq: stem + option lines; cs: the statement)"""
    answer: str
    """the member's A text (mcq: the letter; tfq: True/False; cs: the category)"""
    reasoning: str = ""
    """evidence usable as <think> reasoning (SciQ support, BoolQ passage); may be empty"""
    distractors: Tuple[str, ...] = field(default=())
    """wrong answers for the wrong-answer degradation (SciQ distractors, other mcq letters, ...)"""

    @property
    def pair(self) -> str:
        return render_pair(self.task, self.question, self.answer)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["distractors"] = list(self.distractors)
        d["pair"] = self.pair
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Seed":
        return cls(seed_id=d["seed_id"], source=d["source"], task=d["task"],
                   question=d["question"], answer=d["answer"], reasoning=d.get("reasoning", ""),
                   distractors=tuple(d.get("distractors", ())))
