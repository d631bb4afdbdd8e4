"""Every rank's rows -> the global batch, in rank order (the order of the global prompt batch).
(A rank's whole ScoredBatch is joined by lmmixup/sampling/rounds.py's `gather_batch`, with these
collectives: this module knows tensors, not batches, so it imports nothing above lmmixup/dist.)

The step's metrics (reward means and stds, lengths, the mismatch statistics), the attribution
and reward-hacking signals and the rollout dumps are computed by the code that computes them in
one process, on the gathered global batch: exact, with no per-rank means to average. Rewards and
per-token arrays are small next to the model (N x T floats), and rank 0 is the only writer.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from lmmixup.dist.context import DistContext


def gather_padded_rows(x: torch.Tensor, dist: DistContext, value: float = 0.0) -> torch.Tensor:
    """(n_r, T_r) on each rank -> (sum n_r, max T_r), right-padded with `value` (0 = masked)."""
    if not dist.distributed:
        return x
    parts: List[torch.Tensor] = dist.gather_objects(x.detach().cpu())
    width = max(p.shape[1] for p in parts)
    padded = [torch.cat([p, p.new_full((p.shape[0], width - p.shape[1]), value)], dim=1)
              for p in parts]
    return torch.cat(padded).to(x.device)


def gather_optional_rows(x: Optional[torch.Tensor], dist: DistContext) -> Optional[torch.Tensor]:
    return None if x is None else gather_padded_rows(x, dist)
