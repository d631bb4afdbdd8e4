"""Surface defects a distilled pair still carries, found by the think notes' own detectors.

The distiller's notes name each member's defects with detectors that read only the prompt's
text (lmmixup/data/notes.py). A merged pair is the cluster's repair, so the same detectors,
run on the pair as one more member beside the cluster, must find nothing. The learned rater
cannot see these: on MIXTURE's test pool it scored pairs that kept a member's typo, filler or
minority answer as high as clean repairs (docs/LOG.md, 2026-12-06), so at no keep threshold
were 90% of the kept pairs repaired. A pair with any defect is not kept (distill.reject_defects):
the gate trades recall for precision, since a kept pair goes into a training set.

    answer_differs      a strict majority of the members agree on one answer (up to filler and
                        a typo) and the pair gives another
    answer_unsupported  no strict majority of the members gives the pair's answer (up to filler
                        and a typo; for qa also when one side's answer words are all in the
                        other): an answer from nowhere, or one side of a split the pair cannot
                        settle. A tie counts as a split: on MIXTURE's test pool with the 1-epoch
                        SFT model, half support kept 5 wrong answers among 31 kept pairs, and a
                        strict majority kept 2 among 27 (docs/LOG.md, 2026-12-06, fourth session).
                        A member whose answer is cut ('...') votes by what it shows: for the
                        pair when its visible content words are all in the pair's answer,
                        against it otherwise, and not at all when it shows none ("the..." is no
                        vote for "the epicenter"). Not checked for para, whose free-text
                        answers a merge rewrites
    cut_off             the question or the answer ends in '...', or holds '…' (the prompt's
                        own mark for a member it clipped)
    misspelled          a word that is not English, found in no member spelled that way, but a
                        typo away from an English word a member has (notes: misspelled)
    filler              a known filler phrase (notes: filler)
    casing              all capitals, all lower case where members have capitals, random word
                        casing, tripled end punctuation (notes: casing)
    different_question  the pair's question shares < 1/3 of its content with every member's
    answer_elsewhere    (para only) no member whose question shares >= 1/3 of the pair's
                        question's content words also has an answer sharing >= 1/3 of the
                        pair's answer's: a question taken from one member and an answer from an
                        unrelated one, or from nowhere. On ShareGPT's k-means clusters (mean
                        coherence 0.39-0.43) most kept para pairs read by eye were such merges
                        (docs/LOG.md, 2026-12-06); answer_unsupported does this job for the
                        short-answer tasks

All are reference-free: distill.py knows the members, never the answer.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from lmmixup.data.content import content_stems, content_words, tokens
from lmmixup.data.notes import DETECTORS, answers_agree, majority_answer, overlap

PAIR_DEFECTS = ("answer_differs", "answer_unsupported", "cut_off", "misspelled", "filler", "casing",
                "different_question", "answer_elsewhere")
SAME_CONTENT = 1 / 3  # the notes' own bar for "about the same question" (notes.is_different_question)
CLIP_MARK = "\u2026"  # lmmixup/distill/generate.py `clip` ends a cut member with it


def _answer_words(text: str) -> set:
    return set(content_words(text)) or set(tokens(text))  # "It", "A": the token itself


def supports(member_answer: str, answer: str, task: str) -> bool:
    """Does a member give this answer? Labels (mcq, tfq, cs) up to filler and a typo; qa also
    when one side's answer words are all in the other ("1998" and "In 1998.")."""
    if answers_agree(member_answer, answer):
        return True
    if task != "qa":
        return False
    ours, theirs = _answer_words(answer), _answer_words(member_answer)
    return bool(ours and theirs) and (ours <= set(tokens(member_answer))
                                      or theirs <= set(tokens(answer)))


def vote(member_answer: str, answer: str, task: str) -> Optional[bool]:
    """A member's vote on the pair's answer: `supports`, except that an answer cut off at '...'
    (or the prompt's clip mark) votes only by its visible content words; None: no vote."""
    shown = member_answer.rstrip()
    if not shown.endswith(("...", CLIP_MARK)):
        return supports(member_answer, answer, task)
    visible = content_words(shown.rstrip("." + CLIP_MARK))
    if not visible:
        return None  # "the...": every answer that starts with "the" would otherwise have its vote
    return set(visible) <= set(tokens(answer))


def pair_defects(task: str, instruction: str, output: str,
                 members: Sequence[Tuple[str, str]]) -> List[str]:
    """The PAIR_DEFECTS (module docstring) the parsed pair has, in that order; [] when clean.
    members: the cluster's (question, answer) as the prompt showed them."""
    k = len(members)
    both = list(members) + [(instruction, output)]  # the pair is member k
    found = []
    major = majority_answer(members)  # the members' vote, without the pair's
    if major is not None and not answers_agree(output, members[major][1]):
        found.append("answer_differs")
    votes = [v for v in (vote(a, output, task) for _, a in members) if v is not None]
    # a tie is a split the pair cannot settle; no vote at all: an answer from nowhere
    if task != "para" and 2 * sum(votes) <= len(votes):
        found.append("answer_unsupported")
    if CLIP_MARK in instruction + output or DETECTORS["cut_off"](k, both):
        found.append("cut_off")
    for name in ("misspelled", "filler", "casing", "different_question"):
        if DETECTORS[name](k, both):
            found.append(name)
    if task == "para" and answer_elsewhere(instruction, output, members):
        found.append("answer_elsewhere")
    return found


def answer_elsewhere(instruction: str, output: str, members: Sequence[Tuple[str, str]]) -> bool:
    """No member both asks the pair's question and gives (part of) its answer (module
    docstring). Overlap is |shared| / min(sizes), so a member clipped in the prompt or a pair
    that rewrites only part of a long answer still matches its source."""
    q, a = content_stems(instruction), content_stems(output)
    return not any(overlap(q, content_stems(mq)) >= SAME_CONTENT
                   and overlap(a, content_stems(ma)) >= SAME_CONTENT for mq, ma in members)
