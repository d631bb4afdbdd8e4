"""Baseline answers for the evaluation table: what a distiller must beat without learning.

Each baseline picks one member of the row's cluster and answers with it verbatim, in the
completion layout the rewards read:

    <think>\\n</think>\\n\\n<answer>\\n{pair}\\n</answer>       pair = render_pair(task, q, a)

  copy_first      the first member, as listed in the prompt;
  closest_member  the member whose pair is closest to the reference (cosine of the alignment
                  reward's embedder, the same texts that reward compares). It peeks at the
                  reference, so it is an oracle for "pick one member": alignment is as high
                  as any single member can make it.

Both are scored by the same reward functions on the same rows as the models (evaluate.py), so
the gap between "copy" and "distil" stays visible in every table (issue 10: copying the first
member kept the answer 90% of the time against the SFT distiller's 52%).
The think block is empty, so the format reward's layout half (which needs a non-blank think
block) is 0 for both baselines: they are judged on their answer, not on reasoning they do not
have.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch

from lmmixup.data.prompts import PromptRow
from lmmixup.data.schema import render_pair
from lmmixup.rewards.answer import reference_text


def baseline_completion(pair: str) -> str:
    """The completion text a baseline answers with: an empty think block, then the pair."""
    return f"<think>\n</think>\n\n<answer>\n{pair.strip()}\n</answer>"


def member_pairs(row: PromptRow) -> List[str]:
    """The row's members rendered in its task's shape, in prompt order."""
    members = (row.extra or {}).get("members") or []
    return [render_pair(row.task, m["question"], m["answer"]) for m in members]


def has_members(row: PromptRow) -> bool:
    return bool(member_pairs(row)) and row.task is not None


def copy_first(rows: Sequence[PromptRow], embed: Callable) -> List[str]:
    """(B,) rows -> (B,) completions answering with each row's first member."""
    return [baseline_completion(member_pairs(r)[0]) for r in rows]


def closest_member(rows: Sequence[PromptRow], embed: Callable) -> List[str]:
    """(B,) rows -> (B,) completions answering with the member of highest cosine to the
    reference. `embed(texts) -> (n, D)` unit vectors (the alignment embedder's encode); one
    call for every member and reference of the batch."""
    pairs = [member_pairs(r) for r in rows]  # B lists of M_b pairs
    refs = [reference_text(r.reference) or "" for r in rows]  # (B,)
    flat = [p for ps in pairs for p in ps]  # (sum M_b,)
    emb = embed(flat + refs)  # (sum M_b + B, D)
    member_emb, ref_emb = emb[: len(flat)], emb[len(flat):]  # (sum M_b, D), (B, D)
    out, start = [], 0
    for b, ps in enumerate(pairs):
        cos = member_emb[start : start + len(ps)] @ ref_emb[b]  # (M_b,)
        out.append(baseline_completion(ps[int(torch.argmax(cos))]))  # first of ties wins
        start += len(ps)
    return out


# name -> builder of one completion per row; the order is the order of the table's rows
BASELINES: Dict[str, Callable[[Sequence[PromptRow], Callable], List[str]]] = {
    "copy_first": copy_first,
    "closest_member": closest_member,
}
