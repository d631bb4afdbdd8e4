"""The four training sets of the paper's downstream comparison, built from a distill.py folder.

    (a) full    every row of normalized.jsonl (the whole de-duplicated pool)
    (b) random  a seeded random subset of the pool, of the size of (d)
    (c) high    high-quality originals only (rated.jsonl score >= high_threshold, by default
                the distill run's own rate.high_threshold from its config.json), of the size
                of (d); all of them if there are fewer, and the table says so
    (d) mix     distill.py's mix.jsonl as it is (originals plus distilled pairs), the paper's set

Rows follow distill.py's file interfaces (issue 11): instruction / input / output, plus `score`
in rated.jsonl and `origin` in mix.jsonl. Each set is written in the row schema train.py's SFT
reads (lmmixup/data/prompts.py): `prompt` = the instruction, with the input after a blank line
when there is one, and `target` = the output; the SFT code applies the chat template and puts
the loss on the target tokens only. Sampling uses numpy's seeded generator, so a rebuild writes
the same bytes and a resumed run trains on the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from lmmixup.data.jsonl import atomic_write_jsonl, dumps_row, iter_jsonl
from lmmixup.errors import LmmixupError

SETS = ("full", "random", "high", "mix")
NEEDS = {"full": "normalized.jsonl", "random": "normalized.jsonl", "high": "rated.jsonl",
         "mix": "mix.jsonl"}


@dataclass
class TrainingSet:
    """One set as SFT rows, with what the table needs to say about it."""

    name: str
    rows: List[dict]  # {"prompt", "target"} rows for train.py stage=sft
    note: str = ""  # e.g. "all 12 high-quality rows (fewer than |mix| = 40)"


def sft_row(row: dict, where: str) -> dict:
    """instruction/input/output -> the prompt/target row train.py's SFT reads."""
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise LmmixupError(f"{where}: field {key!r} must be a non-empty string")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise LmmixupError(f"{where}: field 'input' must be a string")
    prompt = row["instruction"] if not extra.strip() else f"{row['instruction']}\n\n{extra}"
    return {"prompt": prompt, "target": row["output"]}


def read_rows(path: Path) -> List[dict]:
    rows = [dict(obj, _where=f"{path}:{line}") for line, obj in iter_jsonl(path)]
    if not rows:
        raise LmmixupError(f"{path}: no rows")
    return rows


def _subset(rows: List[dict], size: int, seed: int) -> List[dict]:
    """`size` rows drawn without replacement, kept in file order (seeded)."""
    if size >= len(rows):
        return list(rows)
    pick = np.random.default_rng(seed).choice(len(rows), size=size, replace=False)
    return [rows[i] for i in sorted(pick.tolist())]


def check_folder(distilled: Path, names: List[str]) -> None:
    """The folder holds mix.jsonl (every set's size comes from it) and what each set reads."""
    if not distilled.is_dir():
        raise LmmixupError(f"distilled={distilled}: no such folder (a distill.py output folder)")
    for file in ["mix.jsonl"] + [NEEDS[n] for n in names]:
        if not (distilled / file).exists():
            raise LmmixupError(f"distilled={distilled}: no {file} in the folder "
                               "(is distill.py's run complete?)")


DEFAULT_HIGH_THRESHOLD = 4.0  # distill.py's rate.high_threshold default


def distill_high_threshold(distilled: Path) -> float:
    """The rate.high_threshold the distill run split its pool with (its config.json)."""
    config = distilled / "config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("rate", {}).get("high_threshold")
        if isinstance(value, (int, float)):
            return float(value)
    return DEFAULT_HIGH_THRESHOLD


def build_sets(distilled: Path, names: List[str], high_threshold: Optional[float],
               seed: int) -> Dict[str, TrainingSet]:
    """The requested sets, in SETS order, as SFT rows (high_threshold None: the distill
    run's own)."""
    check_folder(distilled, names)
    if high_threshold is None:
        high_threshold = distill_high_threshold(distilled)
    mix = read_rows(distilled / "mix.jsonl")
    size = len(mix)

    def full() -> TrainingSet:
        return TrainingSet("full", _rows(read_rows(distilled / "normalized.jsonl")))

    def random() -> TrainingSet:
        pool = read_rows(distilled / "normalized.jsonl")
        note = "" if len(pool) >= size else f"the whole pool ({len(pool)} < |mix| = {size})"
        return TrainingSet("random", _rows(_subset(pool, size, seed)), note)

    def high() -> TrainingSet:
        rated = read_rows(distilled / "rated.jsonl")
        good = []
        for r in rated:
            if not isinstance(r.get("score"), (int, float)):
                raise LmmixupError(f"{r['_where']}: field 'score' must be a number")
            if r["score"] >= high_threshold:
                good.append(r)
        if not good:
            raise LmmixupError(f"{distilled / 'rated.jsonl'}: no row has score >= "
                               f"high_threshold={high_threshold}, so set 'high' is empty")
        note = (f"score >= {high_threshold:g}" if len(good) >= size else
                f"all {len(good)} high-quality rows, score >= {high_threshold:g} "
                f"(fewer than |mix| = {size})")
        return TrainingSet("high", _rows(_subset(good, size, seed)), note)

    def mixed() -> TrainingSet:
        origins = [r.get("origin") for r in mix]
        n_dist = sum(o == "distilled" for o in origins)
        return TrainingSet("mix", _rows(mix), f"{size - n_dist} original + {n_dist} distilled")

    builders: Dict[str, Callable[[], TrainingSet]] = {
        "full": full, "random": random, "high": high, "mix": mixed}
    return {name: builders[name]() for name in SETS if name in names}


def _rows(rows: List[dict]) -> List[dict]:
    return [sft_row(r, r["_where"]) for r in rows]


def write_set(ts: TrainingSet, path: Path) -> None:
    """Atomically, and only when the bytes change: a rerun leaves a finished set's file (and so
    the fingerprint train.py checks on resume) untouched."""
    text = "".join(dumps_row(r) + "\n" for r in ts.rows)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_jsonl(path, ts.rows)
