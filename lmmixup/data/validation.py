"""A validation split carved from GRPO's training rows, for choosing a checkpoint without ever
looking at the test rows.

MIXTURE splits by seed (lmmixup/data/build_mixture.py `assign_splits`): every cluster built from
one seed pair lands in one split, so sft, grpo_train and grpo_test share no seed. The validation
split keeps that property inside grpo_train: it takes whole seeds, so no validation cluster is a
degraded twin of a cluster GRPO trains on, and since it comes out of grpo_train it shares no
seed with grpo_test either (tests/test_validation_split.py checks both on the real build).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from lmmixup.data.jsonl import atomic_write_jsonl, read_jsonl
from lmmixup.data.schema import rng_for
from lmmixup.errors import LmmixupError


def carve_validation(rows: List[dict], n_rows: int, seed: int,
                     source: str = "rows") -> Tuple[List[dict], List[dict]]:
    """rows -> (fit, val): whole seeds (`seed_id`) move to val in an order drawn from `seed`
    until val holds at least n_rows rows; both keep the input's row order. Every row needs a
    seed_id (a MIXTURE row has one), else one error naming the row."""
    by_seed: Dict[str, List[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        sid = row.get("seed_id")
        if not isinstance(sid, str) or not sid:
            raise LmmixupError(f"{source}: row {i + 1} has no seed_id; a validation split takes "
                               "whole seeds, so every row must name its seed (MIXTURE rows do)")
        by_seed[sid].append(i)
    order = sorted(by_seed)  # sorted first: the draw must not depend on the file's row order
    rng_for(seed, "validation").shuffle(order)
    taken = set()
    for sid in order:
        if len(taken) >= n_rows:
            break
        taken.update(by_seed[sid])
    if len(taken) >= len(rows):
        raise LmmixupError(f"{source}: {len(rows)} rows cannot spare {n_rows} for validation "
                           "and still leave rows to train on")
    fit = [r for i, r in enumerate(rows) if i not in taken]
    val = [r for i, r in enumerate(rows) if i in taken]
    return fit, val


def write_validation_split(train_file: Path, out_dir: Path, n_rows: int,
                           seed: int) -> Tuple[Path, Path]:
    """train_file -> out_dir/fit.jsonl and out_dir/val.jsonl (atomic; rewritten identically on a
    re-run, so a resumed pipeline trains on the same rows)."""
    fit, val = carve_validation(read_jsonl(train_file), n_rows, seed, str(train_file))
    fit_path, val_path = Path(out_dir) / "fit.jsonl", Path(out_dir) / "val.jsonl"
    atomic_write_jsonl(fit_path, fit)
    atomic_write_jsonl(val_path, val)
    return fit_path, val_path
