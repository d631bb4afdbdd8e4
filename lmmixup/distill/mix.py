"""The training mix: original high-quality samples plus the top distilled pairs.

    n_distilled = round(mix.size * mix.distilled_fraction),  n_original = mix.size - n_distilled
Originals are the high-quality samples with the best ratings (ties by id); distilled pairs
are taken in rank order (quality, then long-tail score). The rows are shuffled with the seed.
If the pool cannot fill either part, the run stops with one line saying what is short and by
how much, or, with mix.allow_smaller=true, writes the largest mix that keeps the same ratio
(the largest size s <= mix.size whose two parts both fit).

Row layouts (`mix.format`), each with the provenance fields origin ("original" | "distilled"),
score, source, and id (originals) or cluster_id + member_ids + long_tail (distilled):
    instruction         {"instruction", "input", "output", ...}         (Alpaca)
    messages            {"messages": [{"role": "user"}, {"role": "assistant"}], ...}
    prompt_completion   {"prompt", "completion", ...}
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from lmmixup.distill.formats import question_text
from lmmixup.errors import LmmixupError, require

PROVENANCE = ("origin", "score", "source", "id", "cluster_id", "member_ids", "long_tail")


@dataclass
class MixConfig:
    size: int = 100
    """rows in mix.jsonl (the paper: 10K out of a 300K pool)"""
    distilled_fraction: float = 0.5
    """fraction of distilled rows (the paper tried 0.3, 0.5, 0.7)"""
    allow_smaller: bool = False
    """when the pool cannot fill mix.size: write the largest mix with the same ratio instead of stopping"""
    format: str = "instruction"
    """row layout: instruction | messages | prompt_completion"""

    def validate(self) -> None:
        require(self.size > 0, "mix.size", "must be > 0")
        require(0 <= self.distilled_fraction <= 1, "mix.distilled_fraction", "must be in [0, 1]")
        require(self.format in FORMATTERS, "mix.format",
                f"unknown format {self.format!r}; known: {', '.join(FORMATTERS)}")


def split_counts(size: int, fraction: float) -> Tuple[int, int]:
    """(originals, distilled) of a mix of `size` rows."""
    distilled = int(round(size * fraction))
    return size - distilled, distilled


def mix_counts(cfg: MixConfig, have_original: int, have_distilled: int) -> Tuple[int, int]:
    """(originals, distilled) to take, or a one-line error saying what is short."""
    want_o, want_d = split_counts(cfg.size, cfg.distilled_fraction)
    if want_o <= have_original and want_d <= have_distilled:
        return want_o, want_d
    if cfg.allow_smaller:
        for size in range(cfg.size - 1, 0, -1):
            o, d = split_counts(size, cfg.distilled_fraction)
            if o <= have_original and d <= have_distilled:
                return o, d
        raise LmmixupError(f"mix.size: the pool gave {have_original} original and "
                           f"{have_distilled} distilled rows: not even a 1-row mix at "
                           f"mix.distilled_fraction={cfg.distilled_fraction}")
    short = [f"{what}: need {want}, have {have} (short by {want - have})"
             for what, want, have in (("original high-quality rows", want_o, have_original),
                                      ("distilled rows", want_d, have_distilled)) if want > have]
    raise LmmixupError(f"mix.size: {cfg.size} rows at mix.distilled_fraction="
                       f"{cfg.distilled_fraction} cannot be filled; {'; '.join(short)}; lower "
                       "mix.size or set mix.allow_smaller=true")


def _instruction(row: Dict) -> Dict:
    return {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}


def _messages(row: Dict) -> Dict:
    return {"messages": [{"role": "user", "content": question_text(row["instruction"], row["input"])},
                         {"role": "assistant", "content": row["output"]}]}


def _prompt_completion(row: Dict) -> Dict:
    return {"prompt": question_text(row["instruction"], row["input"]), "completion": row["output"]}


FORMATTERS: Dict[str, Callable[[Dict], Dict]] = {
    "instruction": _instruction,
    "messages": _messages,
    "prompt_completion": _prompt_completion,
}


def build_mix(originals: List[Dict], distilled: List[Dict], cfg: MixConfig, seed: int) -> List[Dict]:
    """Ranked originals and ranked distilled rows (best first; each with instruction, input,
    output and its provenance) -> the shuffled mix rows in mix.format."""
    n_o, n_d = mix_counts(cfg, len(originals), len(distilled))
    chosen = ([dict(r, origin="original") for r in originals[:n_o]]
              + [dict(r, origin="distilled") for r in distilled[:n_d]])
    random.Random(f"{seed}|mix").shuffle(chosen)
    fmt = FORMATTERS[cfg.format]
    return [{**fmt(r), **{k: r[k] for k in PROVENANCE if k in r}} for r in chosen]
