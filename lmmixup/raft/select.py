"""RAFT's selection rule on score tables: pure tensor functions, no I/O.

Legend: P prompts, n samples per prompt (a group), V versions of one completion (the original and
its trivial variants, lmmixup/headroom/variants.py).

A group's best is worth imitating only where the reward really ranks it above its siblings. The
scorer's own noise, the std of R over versions of the best answer that a reader would call the
same, is the yardstick: the best must beat the group's mean by more than that. A group with no
spread has gain 0 and is never kept, which is also where GRPO's advantage is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lmmixup.headroom.measure import best_of_n, group_std, take


class Selection(NamedTuple):
    best: torch.Tensor  # (P,) index of each group's best sample by R (ties: the first)
    gain: torch.Tensor  # (P,) R of the best minus the group's mean R
    noise: torch.Tensor  # (P,) std of R over the best answer's versions
    keep: torch.Tensor  # (P,) bool: gain > noise


def raft_select(total: torch.Tensor, versions: torch.Tensor) -> Selection:
    """total (P, n): R of each group's samples; versions (P, V): R of each group's best answer
    (column 0) and its trivial variants -> which groups' best answers to fine-tune on."""
    best = best_of_n(total)  # (P,)
    gain = take(total, best) - total.mean(dim=1)  # (P,) >= 0
    noise = group_std(versions)  # (P,) sample std (ddof 1), as headroom reports it
    return Selection(best, gain, noise, gain > noise)
