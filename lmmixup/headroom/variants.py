"""Trivially different versions of one completion: what a reader would call the same answer.

The scorer's noise is R's spread over these (lmmixup/headroom/measure.py). Each variant is a
deterministic str -> str edit; "the answer" is the stripped text inside the last
`<answer>…</answer>` block (the block every paper reward reads, lmmixup/rewards/answer.py), or
the whole stripped completion when it has none:

    spaces_doubled          every space of the completion doubled
    line_break_added        the answer's first space becomes a line break
    line_break_removed      the answer's first line break becomes a space (else the completion's)
    trailing_punct_toggled  the answer's final . ! or ? dropped, or a "." added when it has none
    trailing_newline        a line break after the completion (the layout allows whitespace there)

None of them changes a word, so a scorer that reads content should give each the same R.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # as rewards/answer.py reads it
_END_PUNCT = ".!?"


def _edit_answer(text: str, edit: Callable[[str], str]) -> str:
    """`text` with edit() applied to its answer (module docstring), surrounding whitespace kept."""
    blocks = list(_ANSWER_BLOCK.finditer(text))  # the last block is the answer
    start, end = (blocks[-1].start(1), blocks[-1].end(1)) if blocks else (0, len(text))
    inner = text[start:end]
    lead = len(inner) - len(inner.lstrip())
    core = inner.strip()
    return text[:start + lead] + edit(core) + text[start + lead + len(core):]


def spaces_doubled(text: str) -> str:
    return text.replace(" ", "  ")


def line_break_added(text: str) -> str:
    return _edit_answer(text, lambda a: a.replace(" ", "\n", 1))


def line_break_removed(text: str) -> str:
    edited = _edit_answer(text, lambda a: a.replace("\n", " ", 1))
    return edited if edited != text else text.replace("\n", " ", 1)


def trailing_punct_toggled(text: str) -> str:
    return _edit_answer(text, lambda a: a[:-1] if a and a[-1] in _END_PUNCT else a + ".")


def trailing_newline(text: str) -> str:
    return text + "\n"


VARIANTS: Dict[str, Callable[[str], str]] = {
    "spaces_doubled": spaces_doubled,
    "line_break_added": line_break_added,
    "line_break_removed": line_break_removed,
    "trailing_punct_toggled": trailing_punct_toggled,
    "trailing_newline": trailing_newline,
}


def versions(text: str) -> List[str]:
    """The completion itself, then each variant in VARIANTS' order: V = 1 + len(VARIANTS)."""
    return [text] + [edit(text) for edit in VARIANTS.values()]
