"""Reward-hacking signals: documented rules over a run's metrics history.

Each rule is a pure function `rule(rows, cfg) -> Optional[str]` over the metric dicts of
metrics.jsonl (one per step, oldest first; held-out rows carry `eval/*` keys) and returns a
message when it fires. They compare the mean of the first `window` steps with the mean of the
last `window` steps, so they stay silent until the run has 2*window steps. Thresholds live in
`HackingConfig` (`hacking.*` on the command line).

    saturation      one component's last-window mean >= saturation_level while another
                    component fell by >= saturation_drop (e.g. format -> 1 while quality drops:
                    the policy learned the cheap reward at the expense of the one that matters)
    length_drift    mean completion length changed by more than length_drift (relative) against
                    the first window (length is the classic proxy exploit of learned rewards)
    entropy_collapse  mean token entropy fell below entropy_floor x its first-window value
                    (the policy stopped exploring; group advantages then vanish)
    kl_outpaces_reward  KL to the reference grew by > kl_min_increase nats and by more than
                    kl_per_reward nats per unit of reward gained (or while the reward fell)
    heldout_divergence  between the first and the latest evaluation the held-out total fell by
                    > heldout_drop while the training total rose by > train_rise

These are alarms for a human to look at, not proofs; `lmmixup.inspect` shows the completions of
the steps they name. The trainer evaluates every rule after every step (`hacking/<rule>` = 1.0
when it holds), prints the first firing with its step, and keeps `<run>/hacking.json` up to date
with every rule's first and last firing step, so the summary at the end of a run is that file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from lmmixup.errors import require

Rows = Sequence[Dict[str, float]]


@dataclass
class HackingConfig:
    window: int = 5
    """steps averaged at the start and at the end of the history by every rule"""
    saturation_level: float = 0.95
    """saturation: a component whose recent mean reaches this counts as saturated"""
    saturation_drop: float = 0.1
    """saturation: ...while another component's mean fell by at least this much"""
    length_drift: float = 0.5
    """length_drift: relative change of the mean completion length that fires (0.5 = +-50%)"""
    entropy_floor: float = 0.5
    """entropy_collapse: fires when the recent entropy is below this fraction of the first"""
    kl_min_increase: float = 0.01
    """kl_outpaces_reward: KL growth (nats) below this is ignored"""
    kl_per_reward: float = 1.0
    """kl_outpaces_reward: fires when KL grows by more than this many nats per unit of reward"""
    heldout_drop: float = 0.02
    """heldout_divergence: held-out total drop that fires (with the training rise below)"""
    train_rise: float = 0.02
    """heldout_divergence: training total rise over the same steps"""

    def validate(self) -> None:
        require(self.window >= 1, "hacking.window", "must be >= 1")
        require(0 < self.entropy_floor < 1, "hacking.entropy_floor", "must be in (0, 1)")
        require(self.length_drift > 0, "hacking.length_drift", "must be > 0")
        require(self.kl_per_reward > 0, "hacking.kl_per_reward", "must be > 0")


def _series(rows: Rows, key: str) -> List[float]:
    return [r[key] for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]


def _ends(rows: Rows, key: str, window: int) -> Optional[tuple]:
    """(first-window mean, last-window mean) of a metric, or None with < 2*window values."""
    values = _series(rows, key)
    if len(values) < 2 * window:
        return None
    return sum(values[:window]) / window, sum(values[-window:]) / window


def _components(rows: Rows) -> List[str]:
    names = {k[len("reward/"):-len("_mean")] for r in rows for k in r
             if k.startswith("reward/") and k.endswith("_mean")}
    return sorted(names - {"total"})


def saturation(rows: Rows, cfg: HackingConfig) -> Optional[str]:
    ends = {k: _ends(rows, f"reward/{k}_mean", cfg.window) for k in _components(rows)}
    ends = {k: e for k, e in ends.items() if e is not None}
    for sat, (_, sat_last) in ends.items():
        if sat_last < cfg.saturation_level:
            continue
        for other, (first, last) in ends.items():
            if other != sat and first - last >= cfg.saturation_drop:
                return (f"{sat} saturated at {sat_last:.3f} while {other} fell "
                        f"{first:.3f} -> {last:.3f}")
    return None


def length_drift(rows: Rows, cfg: HackingConfig) -> Optional[str]:
    ends = _ends(rows, "rollout/completion_len_mean", cfg.window)
    if ends is None or ends[0] <= 0:
        return None
    change = ends[1] / ends[0] - 1
    if abs(change) > cfg.length_drift:
        return f"completion length {ends[0]:.1f} -> {ends[1]:.1f} tokens ({change:+.0%})"
    return None


def entropy_collapse(rows: Rows, cfg: HackingConfig) -> Optional[str]:
    ends = _ends(rows, "grpo/entropy", cfg.window)
    if ends is None or ends[0] <= 0:
        return None
    if ends[1] < cfg.entropy_floor * ends[0]:
        return f"entropy {ends[0]:.3f} -> {ends[1]:.3f} (below {cfg.entropy_floor:.0%} of the start)"
    return None


def kl_outpaces_reward(rows: Rows, cfg: HackingConfig) -> Optional[str]:
    kl, reward = _ends(rows, "grpo/kl", cfg.window), _ends(rows, "reward/total_mean", cfg.window)
    if kl is None or reward is None:
        return None
    d_kl, d_reward = kl[1] - kl[0], reward[1] - reward[0]
    if d_kl <= cfg.kl_min_increase:
        return None
    if d_reward <= 0 or d_kl / d_reward > cfg.kl_per_reward:
        return f"KL +{d_kl:.4f} nats while the reward moved {d_reward:+.4f}"
    return None


def heldout_divergence(rows: Rows, cfg: HackingConfig) -> Optional[str]:
    evals = [r for r in rows if "eval/total_mean" in r]
    if len(evals) < 2:
        return None
    first, last = evals[0], evals[-1]
    train = [r for r in rows if "reward/total_mean" in r]

    def train_near(step: int) -> Optional[float]:
        # the training reward of the `window` steps up to this evaluation
        near = [r["reward/total_mean"] for r in train if r["step"] <= step][-cfg.window:]
        return sum(near) / len(near) if near else None

    t0, t1 = train_near(first["step"]), train_near(last["step"])
    if t0 is None or t1 is None:
        return None
    d_eval = last["eval/total_mean"] - first["eval/total_mean"]
    if d_eval < -cfg.heldout_drop and t1 - t0 > cfg.train_rise:
        return (f"held-out total {first['eval/total_mean']:.3f} -> {last['eval/total_mean']:.3f} "
                f"(steps {first['step']}->{last['step']}) while training rose {t0:.3f} -> {t1:.3f}")
    return None


RULES: Dict[str, Callable[[Rows, HackingConfig], Optional[str]]] = {
    "saturation": saturation,
    "length_drift": length_drift,
    "entropy_collapse": entropy_collapse,
    "kl_outpaces_reward": kl_outpaces_reward,
    "heldout_divergence": heldout_divergence,
}


@dataclass
class Firing:
    """One rule's record over a run."""

    rule: str
    first_step: int
    last_step: int
    steps_fired: int
    message: str  # at the first firing


@dataclass
class HackingReport:
    """Every rule evaluated at every step of a history."""

    firings: Dict[str, Firing] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Dict]:
        return {name: vars(f) for name, f in self.firings.items()}


def evaluate_rules(rows: Rows, cfg: HackingConfig) -> Dict[str, Optional[str]]:
    """rule name -> message if it fires on this history (its last row is 'now'), else None."""
    return {name: rule(rows, cfg) for name, rule in RULES.items()}


def replay(rows: Rows, cfg: HackingConfig) -> HackingReport:
    """Evaluate every rule after each training step of a finished history, as the trainer
    does live: the report a run would have written."""
    report = HackingReport()
    steps = [r for r in rows if "reward/total_mean" in r]
    for i, row in enumerate(steps):
        history = [r for r in rows if r["step"] <= row["step"]]
        for name, message in evaluate_rules(history, cfg).items():
            record(report, name, row["step"], message)
    return report


def record(report: HackingReport, rule: str, step: int, message: Optional[str]) -> bool:
    """Add one evaluation; True when this is the rule's first firing."""
    if message is None:
        return False
    f = report.firings.get(rule)
    if f is None:
        report.firings[rule] = Firing(rule, step, step, 1, message)
        return True
    f.last_step, f.steps_fired = step, f.steps_fired + 1
    return False
