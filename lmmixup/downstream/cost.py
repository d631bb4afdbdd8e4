"""What fine-tuning on a set cost, read back from its train.py run's metrics.jsonl: the efficiency
the paper sells is a score at a fraction of the data, so each score is printed beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmmixup.data.jsonl import iter_jsonl
from lmmixup.errors import LmmixupError


@dataclass
class TrainingCost:
    steps: int
    seconds: float  # the sum of train.py's time/step_s: optimizer steps only, not model
    # loading, checkpoints or the merge, which cost every set about the same
    target_tokens: int  # tokens the loss was taken on (the responses; prompts are masked)


def training_cost(metrics: Path) -> TrainingCost:
    """Sums over the SFT steps logged in `metrics`; a step logged twice (a resumed run that
    repeated it) counts once, at its last record."""
    by_step = {}
    for line, row in iter_jsonl(metrics):
        if "sft/target_tokens" in row:
            try:
                by_step[int(row["step"])] = (float(row["time/step_s"]), int(row["sft/target_tokens"]))
            except (KeyError, TypeError, ValueError) as e:
                raise LmmixupError(f"{metrics}:{line}: an SFT step record needs step, "
                                   f"time/step_s and sft/target_tokens ({e})") from None
    if not by_step:
        raise LmmixupError(f"{metrics}: no SFT step recorded")
    return TrainingCost(steps=len(by_step), seconds=sum(s for s, _ in by_step.values()),
                        target_tokens=sum(t for _, t in by_step.values()))
