"""A batch of sampled completions (`Rollout`), how to sample it (`RolloutConfig`), and the mask
and layout helpers every engine uses.

A leaf module (it imports only torch and lmmixup.errors), so the engines (lmmixup/engine.py,
the `hf` engine in lmmixup/rollout.py), the sampling layer (lmmixup/sampling/) and the trainer
share these types without importing each other. Conventions: see lmmixup/rollout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lmmixup.errors import require

ENGINE_NAMES = ("hf", "static", "vllm")
"""the rollout engines, bound to their functions in lmmixup/rollout.py (ENGINES)"""


@dataclass
class RolloutConfig:
    engine: str = "static"
    """rollout engine: static (preallocated KV cache, ours) | hf (transformers generate) |
    vllm (EXPERIMENTAL, GPU, optional extra; lmmixup/vllm_rollout)"""
    max_new_tokens: int = 128
    """maximum completion length T; longer completions are cut and counted as truncated"""
    temperature: float = 1.0
    """sampling temperature tau; log-probs everywhere use logits / tau"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0 = off)"""
    top_k: int = 0
    """keep only the k most likely tokens (0 = off)"""

    def validate(self) -> None:
        require(self.engine in ENGINE_NAMES, "rollout.engine",
                f"unknown engine {self.engine!r}; known: {', '.join(ENGINE_NAMES)}")
        require(self.max_new_tokens > 0, "rollout.max_new_tokens", "must be > 0")
        require(self.temperature > 0, "rollout.temperature", "must be > 0")
        require(0 < self.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
        require(self.top_k >= 0, "rollout.top_k", "must be >= 0")


@dataclass
class Rollout:
    """One batch of N = B*G sampled completions, in group order."""

    prompt_ids: torch.Tensor  # (N, P) long, left-padded
    prompt_mask: torch.Tensor  # (N, P) long, 1 on real prompt tokens
    completion_ids: torch.Tensor  # (N, T) long, pad after the first stop token
    completion_mask: torch.Tensor  # (N, T) float, 1 up to and including the first stop token
    truncated: torch.Tensor  # (N,) bool, True when no stop token was produced
    rollout_logp: Optional[torch.Tensor] = None  # (N, T) float, the sampler's log pi(token), 0 on pad

    @property
    def num_sequences(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)  # (N,)


def completion_mask_from_stops(completion_ids: torch.Tensor, stop_ids: Sequence[int]):
    """(N, T) token ids -> mask (N, T) covering up to and including the first stop token,
    and truncated (N,) for rows with no stop token at all."""
    is_stop = torch.isin(completion_ids, torch.as_tensor(list(stop_ids), device=completion_ids.device))
    # number of stop tokens strictly before position t: 0 means "t is at or before the first stop"
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # (N, T)
    mask = (stops_before == 0).float()  # (N, T)
    truncated = ~is_stop.any(dim=1)  # (N,)
    return mask, truncated


def repeat_for_group(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, ...) -> (B*G, ...): each row repeated G times consecutively (group order)."""
    return x.repeat_interleave(group_size, dim=0)


def _pad_to(x: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    missing = width - x.shape[1]
    if missing == 0:
        return x
    pad = torch.full((x.shape[0], missing), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different widths: prompts re-left-padded, completions right-padded."""
    p = max(r.prompt_ids.shape[1] for r in parts)
    t = max(r.completion_ids.shape[1] for r in parts)
    have_logp = all(r.rollout_logp is not None for r in parts)
    return Rollout(
        prompt_ids=torch.cat([_pad_to(r.prompt_ids, p, pad_id, True) for r in parts]),
        prompt_mask=torch.cat([_pad_to(r.prompt_mask, p, 0, True) for r in parts]),
        completion_ids=torch.cat([_pad_to(r.completion_ids, t, pad_id, False) for r in parts]),
        completion_mask=torch.cat([_pad_to(r.completion_mask, t, 0, False) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
        rollout_logp=(torch.cat([_pad_to(r.rollout_logp, t, 0.0, False) for r in parts])
                      if have_logp else None),
    )


def select_rows(rollout: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout restricted to the given row indices (N',)."""
    return Rollout(
        prompt_ids=rollout.prompt_ids[rows],
        prompt_mask=rollout.prompt_mask[rows],
        completion_ids=rollout.completion_ids[rows],
        completion_mask=rollout.completion_mask[rows],
        truncated=rollout.truncated[rows],
        rollout_logp=None if rollout.rollout_logp is None else rollout.rollout_logp[rows],
    )
