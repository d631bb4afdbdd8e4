"""Distilled pairs that parse but are not pairs: each a failure with a reason, never kept.

The learned rater ranks clean text above noisy text; it was never shown text that is not an
answer at all, and it kept such pairs: the top three of one report scored 4.95 (an answer
that repeats the question twice), 4.58 and 4.50 (the think notes written as the pair; issue 27).
These checks run on the parsed pair before any rating, first match wins:

    notes_in_answer          the answer block holds the think notes' own phrases
                             ("Pair 2 keeps the most content.", "Pair 1: misspells 'x'",
                             "no surface defect found"; lmmixup/data/notes.py), or their
                             findings without the "Pair i:" head: two or more in a comma list
                             ("The question is cut off, has filler."), or one as a line of its
                             own ("The answer is all lower case.")
    template_echo            the answer block copies the prompt's scaffolding: its instruction
                             ("Merge the following", "Write the merged pair in this shape"), a
                             shape placeholder ("<instruction>", "<question>", "<letter>", ...),
                             the `para` shape's wording ("the instruction on its first line"),
                             or a member header line ("Pair 3:" alone on its line)
    answer_repeats_question  after case and punctuation are folded, the output is most of the
                             question (>= 60% of its words, >= 10 characters), or the question
                             is at least half of the output's words (said again, or twice)
    repetition               a sentence of >= 5 words said twice, or any 10-word run said twice
    copied_member            instruction and output equal one member's, noise included (only
                             whitespace folded): selection, not distillation

A clean pair that merely mentions "Q:" or "pair" passes: every pattern needs the template's
exact shape (a header alone on its line, a placeholder in angle brackets).
"""

from __future__ import annotations

import re
from typing import Sequence, Tuple

from lmmixup.data.layout import INSTRUCTION, SHAPES

DEGENERATE_REASONS = ("notes_in_answer", "template_echo", "answer_repeats_question",
                      "repetition", "copied_member")
REPEAT_SENTENCE_WORDS = 5
REPEAT_RUN_WORDS = 10
MIN_REPEATED_CHARS = 10

# The notes' fixed phrases (lmmixup/data/notes.py: member_line, visible_notes and the findings
# of DETECTORS); a member line is "Pair i: <finding>, <finding>."
_NOTES = re.compile(
    r"Pair \d+ keeps the most content|Most pairs answer:|no surface defect found"
    r"|^\s*Pair \d+:\s*(?:misspells|has filler|has odd casing|is in capitals|is all lower case"
    r"|has tripled punctuation|about a different question|its answer differs|its question lacks"
    r"|the (?:question|answer)(?: and answer)? (?:is|are) cut off)",
    re.MULTILINE | re.IGNORECASE)
# One finding as the model writes it outside a member line, its subject optional ("the question
# is cut off", "The answer is all lower case", "has filler"). A finding alone inside prose is
# ordinary English ("the power is cut off"), so it counts only in a comma list of two or more,
# or as a whole line: the shapes the SFT model wrote into 1 in 7 ShareGPT answers (docs/LOG.md,
# 2026-12-06, fourth session).
_SUBJECT = r"(?:(?:the|its) (?:question|answer|instructions?|pair)(?: and answer)? )?"
_FINDING = (_SUBJECT + r"(?:(?:is|are) cut off|has filler|has odd casing|(?:is|are) in capitals"
            r"|(?:is|are) all lower case|has tripled punctuation|is about a different question"
            r"|differs from most pairs|lacks words pair \d+ has|misspells '[^'\n]*')")
_FINDINGS = re.compile(
    rf"\b{_FINDING}\s*,\s*(?:and\s+)?{_FINDING}"  # a list: "..., has filler"
    rf"|^\W*(?:no,?\s+)?{_FINDING}\W*$",  # a line of one finding
    re.MULTILINE | re.IGNORECASE)
# the placeholders of today's shapes, and of the `para` shape that models trained before
# 2026-12-06 saw ("<instruction>\n\n<a free-paragraph response>")
_PLACEHOLDERS = sorted({p for shape in SHAPES.values() for p in re.findall(r"<[^<>\n]+>", shape)}
                       | {"<instruction>", "<a free-paragraph response>"})
_SCAFFOLD = [INSTRUCTION.split("{k}")[0].strip(), "Write the merged pair in this shape"]
# the para shape's wording up to its first comma, in any case ("The instruction on its first line")
_PARA_SHAPE = SHAPES["para"].split(",")[0].lower()
_HEADER = re.compile(r"^\s*Pair \d+:\s*$", re.MULTILINE)
_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE = re.compile(r"[^.!?\n]+")


def _fold(text: str) -> str:
    """Lower case, words only, single spaces: what "the same text" means for repeats."""
    return " ".join(_WORD.findall(text.lower()))


def is_template_echo(answer: str) -> bool:
    return (any(p in answer for p in _PLACEHOLDERS) or any(s in answer for s in _SCAFFOLD)
            or _PARA_SHAPE in answer.lower()
            or bool(_HEADER.search(answer)))


def repeats_question(instruction: str, output: str) -> bool:
    q, a = _fold(instruction), _fold(output)
    qw, aw = len(q.split()), len(a.split())
    if len(a) >= MIN_REPEATED_CHARS and a in q and aw >= 0.6 * qw:
        return True  # "Which is larger, X or Y?" -> "X" stays an answer: it is a small part
    return len(q) >= MIN_REPEATED_CHARS and q in a and qw >= 0.5 * aw


def has_repetition(text: str) -> bool:
    sentences = [_fold(s) for s in _SENTENCE.findall(text)]
    long = [s for s in sentences if len(s.split()) >= REPEAT_SENTENCE_WORDS]
    if len(long) != len(set(long)):
        return True
    words = _fold(text).split()
    runs = [tuple(words[i:i + REPEAT_RUN_WORDS]) for i in range(len(words) - REPEAT_RUN_WORDS + 1)]
    return len(runs) != len(set(runs))


def _squash(text: str) -> str:
    return " ".join(text.split())


def copies_member(instruction: str, output: str, members: Sequence[Tuple[str, str]]) -> bool:
    pair = (_squash(instruction), _squash(output))
    return any((_squash(q), _squash(a)) == pair for q, a in members)


def degenerate_reason(answer: str, instruction: str, output: str,
                      members: Sequence[Tuple[str, str]]) -> str:
    """The first reason (module docstring) the parsed pair is degenerate, or '' when none.
    answer: the whole <answer> block; instruction, output: the pair parsed from it;
    members: the cluster's (question, answer) as the prompt showed them."""
    if _NOTES.search(answer) or _FINDINGS.search(answer):
        return "notes_in_answer"
    if is_template_echo(answer):
        return "template_echo"
    if repeats_question(instruction, output):
        return "answer_repeats_question"
    if has_repetition(answer):
        return "repetition"
    if copies_member(instruction, output, members):
        return "copied_member"
    return ""
