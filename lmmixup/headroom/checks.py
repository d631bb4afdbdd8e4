"""Checks of a completion against its reference that the training reward R does not choose by.

Best-of-n picks the sample with the highest R. If R can be won by dropping the reference's
content (issue 24: GRPO bought quality with alignment), the best-of-n sample keeps less of the
reference than an average sample. Two checks say whether it does:

    alignment_cos   cosine of the answer's and the reference's embeddings, clipped to [0, 1]:
                    the continuous alignment reward (lmmixup/rewards/alignment.py), on the
                    same texts and the same embedder as reward.alignment, whatever R's mix
    keeps_answer    the fraction of the reference answer's words that the completion's answer
                    supplies, by lmmixup/data/content.py's rule (stems; a typo of a word of
                    >= 4 letters still supplies it; a one-token answer such as "B" is compared
                    as a token), each word once

Both read the answer inside the last <answer>…</answer>; a completion without one scores 0.
A row without a reference has neither check (None). keeps_answer reads the answer part of a
pair in the row's task shape (lmmixup/data/schema.py split_pair; the reference's shape decides
when the row has no task), or the whole text when it has no such shape.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from lmmixup.data.content import unrecoverable_content
from lmmixup.data.schema import guess_task, split_pair
from lmmixup.rewards.alignment import alignment_from_embeddings
from lmmixup.rewards.answer import extract_answer, reference_text

Embed = Callable[[List[str]], torch.Tensor]  # texts (M,) -> unit vectors (M, D)


def answer_part(task: str, text: str) -> str:
    """The answer of a pair text in `task`'s shape; the whole text when it has no such shape."""
    return split_pair(task, text)[1] or text


def keeps_answer(completion: str, reference: Optional[str], task: Optional[str]) -> Optional[float]:
    """Fraction of the reference answer's distinct words the completion's answer supplies;
    None without a reference (or one with no word to keep)."""
    ref = reference_text(reference)
    if ref is None:
        return None
    task = task or guess_task(ref)
    target = ("", answer_part(task, ref))  # (question, answer): only the answer side is asked
    wanted = unrecoverable_content(target, [])  # nothing supplies them: every answer word, once
    if not wanted:
        return None
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    missing = unrecoverable_content(target, [("", answer_part(task, answer))])
    return 1.0 - len(missing) / len(wanted)


def alignment_cos(completions: Sequence[str], references: Sequence[Optional[str]],
                  embed: Embed) -> List[Optional[float]]:
    """(N,) completions and their rows' references -> (N,) clipped cosine of answer and
    reference (0 without an answer, None without a reference); one embed call for all."""
    answers = [extract_answer(c) for c in completions]
    refs = [reference_text(r) for r in references]
    out: List[Optional[float]] = [None if r is None else 0.0 for r in refs]
    rows = [i for i, (a, r) in enumerate(zip(answers, refs)) if a is not None and r is not None]
    if rows:
        emb = embed([answers[i] for i in rows] + [refs[i] for i in rows]).cpu()  # (2M, D)
        cos = alignment_from_embeddings(emb[:len(rows)], emb[len(rows):], "continuous", 0.0)  # (M,)
        for i, c in zip(rows, cos.tolist()):
            out[i] = c
    return out
