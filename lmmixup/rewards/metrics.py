"""Extra reward metrics the trainer logs next to its own `reward/<name>_mean` and `_std`."""

from __future__ import annotations

from typing import Dict

import torch

# component name -> (metric key, the value that counts as "full marks")
_FULL_MARKS = {
    "quality": ("reward/frac_quality_1", 1.0),
    "alignment": ("reward/frac_alignment_1", 1.0),
    "format": ("reward/frac_format_full", 1.0),
}


def reward_extra_metrics(components: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Fraction of completions at full marks, for each paper reward present in `components`
    (name -> (N,) raw scores). Rewards that are absent are left out, not logged as 0."""
    out = {}
    for name, (key, full) in _FULL_MARKS.items():
        if name in components and components[name].numel() > 0:
            out[key] = (components[name] >= full).float().mean().item()
    return out
