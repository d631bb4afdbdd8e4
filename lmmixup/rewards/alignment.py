"""Alignment reward A: cosine similarity of the answer's and the reference's embeddings.

    cos[n] = <e(answer_n), e(reference_n)>          (embeddings are unit vectors)
    binary (paper):   A = 1 if cos >= threshold (0.8) else 0
    continuous:       A = clip(cos, 0, 1)           (the ablation the paper suggests)
A response without an answer block scores 0. A missing reference is an error while alignment
has a non-zero weight (the reward would silently be 0 for that prompt); with weight 0 it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmmixup.errors import require

ALIGNMENT_MODES = ("binary", "continuous")


@dataclass
class AlignmentConfig:
    mode: str = "binary"
    """binary: 1 if cosine >= threshold else 0 (paper) | continuous: cosine clipped to [0, 1]"""
    threshold: float = 0.8
    """cosine similarity at or above which binary alignment is 1"""

    def validate(self) -> None:
        require(self.mode in ALIGNMENT_MODES, "reward.alignment.mode",
                f"unknown mode {self.mode!r}; known: {', '.join(ALIGNMENT_MODES)}")
        require(-1.0 <= self.threshold <= 1.0, "reward.alignment.threshold",
                f"a cosine threshold must be in [-1, 1], got {self.threshold}")


def alignment_from_embeddings(answers: torch.Tensor, references: torch.Tensor,
                              mode: str, threshold: float) -> torch.Tensor:
    """Unit vectors (M, D), (M, D) -> A (M,) for the M rows that have an answer."""
    cos = (answers * references).sum(dim=-1)  # (M,)
    if mode == "binary":
        return (cos >= threshold).float()  # (M,)
    return cos.clamp(0.0, 1.0)  # (M,)
