"""Score tables -> headroom.json's numbers and headroom.md's table, each mean with its 95%
bootstrap CI over prompts (lmmixup/eval/stats.py) and each best-minus-mean paired over prompts.

A prompt is the unit of every interval: its n samples are averaged first, so a CI says how much
the numbers would move with other prompts, not with other samples of the same ones.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from lmmixup.eval.stats import Interval, bootstrap_mean_ci, excludes_zero, paired_bootstrap_ci
from lmmixup.headroom.measure import (best_of_n, no_spread_fraction, noise_ratio, take,
                                      variant_shift)
from lmmixup.headroom.variants import VARIANTS

TOTAL = "R"  # the training reward, sum_i w_i * r_i


def _interval(ci: Interval, paired: bool = False) -> dict:
    out = ci.as_dict()
    if paired:
        out["excludes_zero"] = excludes_zero(ci)
    return out


def compare(values: torch.Tensor, best: torch.Tensor, n_boot: int, seed: int) -> Optional[dict]:
    """values (P, n) with NaN rows for prompts the score does not apply to, best (P,) ->
    the mean over samples, the R-best sample's value and their paired difference; None when no
    prompt has a value."""
    rows = ~values[:, 0].isnan()  # (P,)
    if not rows.any():
        return None
    mean = values[rows].mean(dim=1)  # (P',) each prompt's mean over its n samples
    chosen = take(values, best)[rows]  # (P',) the value of the sample R chose
    return {"mean": _interval(bootstrap_mean_ci(mean.tolist(), n_boot, seed=seed)),
            "best_of_n": _interval(bootstrap_mean_ci(chosen.tolist(), n_boot, seed=seed)),
            "best_minus_mean": _interval(paired_bootstrap_ci(chosen.tolist(), mean.tolist(),
                                                             n_boot, seed=seed), paired=True)}


def summarize(scores: Dict[str, torch.Tensor], checks: Dict[str, torch.Tensor],
              versions: torch.Tensor, n_boot: int, seed: int) -> dict:
    """scores: R and each reward, (P, n); checks: the independent checks, (P, n), NaN rows where
    a check does not apply; versions (P, V): R of each best answer and its variants."""
    best = best_of_n(scores[TOTAL])  # (P,)
    noise = noise_ratio(versions, scores[TOTAL])
    rewards = {name: {**compare(values, best, n_boot, seed),
                      "no_spread": no_spread_fraction(values)}
               for name, values in scores.items()}
    shift = variant_shift(versions).tolist()  # (V - 1,)

    def mean_ci(values: torch.Tensor) -> dict:  # (P,)
        return _interval(bootstrap_mean_ci(values.tolist(), n_boot, seed=seed))

    return {
        "rewards": rewards,
        "checks": {name: compare(values, best, n_boot, seed) for name, values in checks.items()},
        "noise": {
            "variants": list(VARIANTS),
            "version_std": mean_ci(noise.version_std),
            "group_std": mean_ci(noise.group_std),
            "ratio": None if math.isinf(noise.ratio) else noise.ratio,
            "groups_above_noise": noise.above_noise,
            "shift_by_variant": dict(zip(VARIANTS, shift)),
        },
    }


def _cell(d: Optional[dict], signed: bool = False) -> str:
    if d is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(d['estimate'])} [{d['low']:.3f}, {d['high']:.3f}]"


def verdict(summary: dict) -> str:
    """One line: is best-of-n above the mean on R beyond the CI?"""
    delta = summary["rewards"][TOTAL]["best_minus_mean"]
    if delta["excludes_zero"] and delta["estimate"] > 0:
        return (f"best-of-n beats the mean on R by {_cell(delta, True)}: the groups hold a "
                f"ranking to learn from")
    return (f"best-of-n is not clearly above the mean on R ({_cell(delta, True)}): no policy "
            f"optimisation can win on this reward; fix the reward or the SFT model first")


def markdown(summary: dict, header: str) -> str:
    """headroom.md: the rewards table, the independent checks, the scorer's noise."""
    lines: List[str] = [f"# Headroom\n\n{header}\n",
                        "| score | mean over samples | best of n (by R) | best - mean (paired) "
                        "| groups with no spread |", "|---|---|---|---|---|"]
    for name, row in summary["rewards"].items():
        lines.append(f"| {name} | {_cell(row['mean'])} | {_cell(row['best_of_n'])} | "
                     f"{_cell(row['best_minus_mean'], True)} | {row['no_spread']:.2f} |")
    for name, row in summary["checks"].items():
        lines.append(f"| check: {name} | {_cell(row and row['mean'])} | "
                     f"{_cell(row and row['best_of_n'])} | "
                     f"{_cell(row and row['best_minus_mean'], True)} | - |")
    noise = summary["noise"]
    ratio = "-" if noise["ratio"] is None else f"{noise['ratio']:.2f}"
    shifts = ", ".join(f"{k} {v:.3f}" for k, v in noise["shift_by_variant"].items())
    lines += ["", "| scorer noise | value |", "|---|---|",
              f"| std of R over trivial variants of the best answer "
              f"| {_cell(noise['version_std'])} |",
              f"| std of R within a group | {_cell(noise['group_std'])} |",
              f"| ratio (variants / group) | {ratio} |",
              f"| groups whose std exceeds their best answer's variant std | "
              f"{noise['groups_above_noise']:.2f} |",
              f"| mean abs R shift by variant | {shifts} |",
              "", verdict(summary), ""]
    return "\n".join(lines)
