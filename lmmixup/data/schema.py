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


# task -> the rendered pair's fields (render_pair's inverse), matched on the stripped text
_PAIR_FIELDS = {
    "qa": re.compile(r"Q:\s*(?P<question>.*?)\s+A:\s*(?P<answer>.*)", re.DOTALL),
    "mcq": re.compile(r"Q:\s*(?P<question>.*?)\s+Answer:\s*(?P<answer>[A-H])\.?", re.DOTALL),
    "tfq": re.compile(r"(?P<question>.*?)\s+Answer:\s*(?P<answer>True|False)\.?", re.DOTALL),
    "cs": re.compile(r"C:\s*(?P<answer>.*?)\s+S:\s*(?P<question>.*)", re.DOTALL),
}


def split_pair(task: str, text: str) -> Tuple[str, str]:
    """A pair text in its task's shape -> (question, answer), render_pair's inverse; ('', '')
    when the shape's fields are not there. `para` splits at the first blank line (else the
    first line break), and also takes a pair written as Q:/A:."""
    text = text.strip()
    fields = _PAIR_FIELDS.get(task)
    if fields is not None:
        m = fields.fullmatch(text)
        return (m.group("question").strip(), m.group("answer").strip()) if m else ("", "")
    qa = _PAIR_FIELDS["qa"].fullmatch(text)
    if qa:
        return qa.group("question").strip(), qa.group("answer").strip()
    sep = "\n\n" if "\n\n" in text else "\n"
    question, _, answer = (part.strip() for part in text.partition(sep))
    return question, answer


def guess_task(text: str) -> str:
    """The first task whose shape a rendered pair fits (mcq, tfq, cs, qa), else para."""
    for task in ("mcq", "tfq", "cs", "qa"):
        if all(split_pair(task, text)):
            return task
    return "para"


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
