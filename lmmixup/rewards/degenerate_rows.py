"""Score-0 rows of text that is not an answer, made from a rated library's own clean texts.

Why: the learned scorer (quality_model.py) is fitted on MIXTURE's library, clean originals and
their noisy variants. It learned clean against noisy, and nothing about nonsense: distill.py's
rerater gave 4.95 to an "answer" that repeats its question twice, and 4.58 to the think notes
written as the pair (issue 27). So each clean original (score 5) of the library lends its text
to one degenerate row, the kinds in turn, all scored 0:

    template_echo       the prompt's scaffolding: "Write the merged pair in this shape:" with a
                        task shape, a shape placeholder line before the pair, or a member
                        header ("Pair 2:") above it
    notes               think notes in the notes' own phrases ("Pair 1: misspells 'x'.",
                        "Pair 2 keeps the most content."), naming words of the text
    repeat              the pair said twice, or its answer said twice
    truncation          the pair cut at 30-70% of its words, without a mark
    question_as_answer  the question given as its own answer (qa and para shapes; other
                        shapes get a repeat)
Each row is a pure function of the text and its position (a seeded random.Random), so the
same library gives the same rows and the same model file.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Dict, List, Sequence

from lmmixup.data.layout import INSTRUCTION, SHAPES
from lmmixup.data.schema import guess_task, render_pair, split_pair

KINDS = ("template_echo", "notes", "repeat", "truncation", "question_as_answer")
CLEAN_SCORE = 5
_FINDINGS = ("has filler", "has odd casing", "no surface defect found", "is in capitals",
             "its question lacks words pair {j} has", "the answer is cut off",
             "its answer differs from most pairs")
_WORD = re.compile(r"[A-Za-z]{4,}")


def _template_echo(text: str, rng: random.Random) -> str:
    task = guess_task(text)
    pick = rng.randrange(3)
    if pick == 0:
        k = rng.randint(2, 5)
        return f"{INSTRUCTION.format(k=k)}\nWrite the merged pair in this shape:\n{SHAPES[task]}"
    if pick == 1:
        placeholder = rng.choice(["<instruction>", "<question>", "<a free-paragraph response>"])
        return f"{placeholder}\n\n{text}"
    return f"Pair {rng.randint(1, 4)}:\n{text}"


def _notes(text: str, rng: random.Random) -> str:
    k = rng.randint(2, 4)
    words = _WORD.findall(text) or ["answer"]
    lines = []
    for i in range(1, k + 1):
        finding = rng.choice(_FINDINGS + (f"misspells '{rng.choice(words).lower()}'",))
        lines.append(f"Pair {i}: {finding.format(j=rng.randint(1, k))}.")
    lines.append(f"Pair {rng.randint(1, k)} keeps the most content.")
    return "\n".join(lines)


def _repeat(text: str, rng: random.Random) -> str:
    task = guess_task(text)
    question, answer = split_pair(task, text)
    if rng.random() < 0.5 or not answer:
        return f"{text}\n{text}"
    return render_pair(task, question, f"{answer} {answer}") if task in ("qa", "para") \
        else f"{text} {answer}"


def _truncation(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    keep = max(1, int(len(words) * rng.uniform(0.3, 0.7)))
    return " ".join(words[:keep]).rstrip(" ,;:")


def _question_as_answer(text: str, rng: random.Random) -> str:
    task = guess_task(text)
    question, _ = split_pair(task, text)
    if task not in ("qa", "para") or not question:
        return _repeat(text, rng)
    return render_pair(task, question, question)


MAKERS: Dict[str, Callable[[str, random.Random], str]] = {
    "template_echo": _template_echo,
    "notes": _notes,
    "repeat": _repeat,
    "truncation": _truncation,
    "question_as_answer": _question_as_answer,
}


def degenerate_texts(texts: Sequence[str], scores: Sequence[int]) -> List[str]:
    """One degenerate text per clean (score-5) library text, KINDS in turn (module docstring)."""
    clean = [t for t, s in zip(texts, scores) if int(s) == CLEAN_SCORE]
    return [MAKERS[KINDS[i % len(KINDS)]](t, random.Random(f"degenerate|{i}"))
            for i, t in enumerate(clean)]
