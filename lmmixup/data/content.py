"""Content words, and the recoverability of a cluster's target from its members.

A distiller can only be asked to write what its members support. A target pair is
*recoverable* when every content word of it appears in some member:

    content word   an alphanumeric token, case-folded, not in STOPWORDS, lightly stemmed
                   (a trailing -ing, -ed, -es or -s dropped when >= 3 letters remain), so
                   "Planets" matches "planet"
    a typo         still supplies its word: a member token within edit distance 1 (2 for words
                   of >= 7 letters; only words of >= 4 letters) matches, since a distiller can
                   correct spelling ("titanc" -> "titanic") but cannot restore a dropped word
    question side  each content word of the target's question must appear anywhere in some
                   member (its question or its answer)
    answer side    each content word of the target's answer must appear in some member's
                   *answer*: a word that survives only in a question does not make a wrong or
                   cut answer right. A one-token answer ("A", "True") is compared as a token
                   even when it is a stop word, so an mcq letter or a tfq label is checked too.

`unrecoverable_content` returns the target's words that fail, in target order; an empty list
means the target is recoverable. The builder (build_mixture.py) repairs or drops clusters whose
list is not empty and reports the fraction in manifest.json.
"""

from __future__ import annotations

import re
from typing import FrozenSet, List, Sequence, Set, Tuple

Pair = Tuple[str, str]  # (question, answer) as a member shows them

_TOKEN = re.compile(r"[a-z0-9]+")

# A short English function-word list (articles, pronouns, auxiliaries, prepositions,
# conjunctions, question words): words that carry no content of their own.
STOPWORDS: FrozenSet[str] = frozenset("""
a an the and or but nor so yet if then than that this these those there here
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
is am are was were be been being do does did done doing have has had having
will would shall should can could may might must
of in on at to for from by with without about into onto over under above below between among
through during before after up down out off again further once
what which who whom whose when where why how
not no all any both each few more most other some such only own same too very just also
as s t d ll m o re ve y
""".split())

_SUFFIXES = ("ing", "ed", "es", "s")


def stem(word: str) -> str:
    """Drop one trailing -ing, -ed, -es or -s when >= 3 letters remain ('planets' -> 'planet').
    Crude, but applied to both sides of every comparison, so it only has to be consistent."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def tokens(text: str) -> List[str]:
    """Case-folded alphanumeric tokens, in order."""
    return _TOKEN.findall(text.casefold())


def content_words(text: str) -> List[str]:
    """The content tokens of `text` (case-folded, stop words removed), in order, unstemmed."""
    return [t for t in tokens(text) if t not in STOPWORDS]


def content_stems(text: str) -> Set[str]:
    return {stem(t) for t in content_words(text)}


def _answer_words(answer: str) -> List[str]:
    words = content_words(answer)
    return words if words else tokens(answer)[:1]  # "A", "It": the token itself


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, or limit + 1 once it must exceed `limit` (row minimum)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    row = list(range(len(b) + 1))
    for x, ca in enumerate(a, start=1):
        prev, row[0] = row[0], x
        for y, cb in enumerate(b, start=1):
            prev, row[y] = row[y], min(row[y] + 1, row[y - 1] + 1, prev + (ca != cb))
        if min(row) > limit:
            return limit + 1
    return row[-1]


def _supplied(word: str, stems: Set[str], words: Set[str]) -> bool:
    if stem(word) in stems:
        return True
    if len(word) < 4 or not word.isalpha():
        return False
    limit = 2 if len(word) >= 7 else 1
    return any(edit_distance(word, w, limit) <= limit for w in words if len(w) >= 4)


def unrecoverable_content(target: Pair, members: Sequence[Pair]) -> List[str]:
    """The content words of `target` = (question, answer) that no member supplies (see the
    module docstring), each once, in target order; [] when the target is recoverable."""
    anywhere = set().union(*(tokens(f"{q} {a}") for q, a in members))
    in_answers = set().union(*(tokens(a) for _, a in members))
    anywhere_stems, answer_stems = {stem(t) for t in anywhere}, {stem(t) for t in in_answers}
    missing: List[str] = []
    for word in content_words(target[0]):
        if word not in missing and not _supplied(word, anywhere_stems, anywhere):
            missing.append(word)
    for word in _answer_words(target[1]):
        if word not in missing and not _supplied(word, answer_stems, in_answers):
            missing.append(word)
    return missing
