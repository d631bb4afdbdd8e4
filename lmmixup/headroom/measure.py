"""The headroom arithmetic on score tables: pure tensor functions, no I/O.

Legend: P prompts, n samples per prompt (a group), V versions of one completion (the original
and its trivial variants, lmmixup/headroom/variants.py).

    best_of_n      the sample with the highest R in its group (ties: the first)
    no spread      a group whose scores are all equal: GRPO's advantage is 0 for all of it
    scorer noise   the std of R over versions of one answer that a reader would call the same,
                   set against the std of R within a group: a group spread that the noise
                   matches is a ranking the scorer could have drawn by chance

Both stds are sample stds (ddof 1): the group has n samples and the versions V, and the ratio
should not move with n or V only because a population std shrinks for small counts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def best_of_n(total: torch.Tensor) -> torch.Tensor:
    """total (P, n) -> (P,) index of each group's highest R; ties go to the first sample."""
    return total.argmax(dim=1)  # (P,) torch.argmax returns the first maximal index


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (P, n), index (P,) -> (P,) values[p, index[p]]."""
    return values.gather(1, index[:, None]).squeeze(1)  # (P,)


def no_spread(values: torch.Tensor) -> torch.Tensor:
    """values (P, n) -> (P,) bool: the group's scores are all equal (max == min)."""
    return values.amax(dim=1) == values.amin(dim=1)  # (P,)


def no_spread_fraction(values: torch.Tensor) -> float:
    """values (P, n) -> the fraction of groups with no spread."""
    return no_spread(values).float().mean().item()


def group_std(values: torch.Tensor) -> torch.Tensor:
    """values (P, k) -> (P,) sample std over each row's k entries (ddof 1; k >= 2)."""
    return values.std(dim=1, unbiased=True)  # (P,)


class Noise(NamedTuple):
    version_std: torch.Tensor  # (P,) std of R over the versions of each prompt's best answer
    group_std: torch.Tensor  # (P,) std of R over each prompt's n samples
    ratio: float  # mean(version_std) / mean(group_std); inf when no group has any spread
    above_noise: float  # fraction of prompts whose group std exceeds their version std


def noise_ratio(versions: torch.Tensor, total: torch.Tensor) -> Noise:
    """versions (P, V): R of each prompt's best answer and its variants; total (P, n): R of the
    group's samples -> the scorer's noise against the group's spread."""
    version_std = group_std(versions)  # (P,)
    spread = group_std(total)  # (P,)
    mean_spread = spread.mean().item()
    ratio = version_std.mean().item() / mean_spread if mean_spread > 0 else float("inf")
    above = (spread > version_std).float().mean().item()
    return Noise(version_std, spread, ratio, above)


def variant_shift(versions: torch.Tensor) -> torch.Tensor:
    """versions (P, V), column 0 the original -> (V - 1,) mean |R(variant) - R(original)| over
    prompts: which trivial change the scorer reacts to."""
    return (versions[:, 1:] - versions[:, :1]).abs().mean(dim=0)  # (V - 1,)
