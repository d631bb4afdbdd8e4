"""Reward-hacking rules (lmmixup/hacking.py) on synthetic metrics files: each fires on a history
built to trigger it, at the step the arithmetic says, and stays silent on a benign one."""

import json

import pytest

from lmmixup.hacking import HackingConfig, replay
from lmmixup.inspect.__main__ import main
from lmmixup.inspect.load import load_run

CFG = HackingConfig(window=3)  # first window = steps 1-3, last = the 3 latest steps


def rows_from(series, evals=()):
    """{metric: [v_step1, v_step2, ...]} -> metrics rows; evals: [(step, total)]."""
    n = len(next(iter(series.values())))
    rows = [{"step": s + 1, **{k: v[s] for k, v in series.items()}} for s in range(n)]
    rows += [{"step": s, "eval/total_mean": v} for s, v in evals]
    return rows


def write_run(tmp_path, rows):
    metrics = [r for r in rows if "eval/total_mean" not in r]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    for r in rows:
        if "eval/total_mean" in r:
            (tmp_path / f"eval_step_{r['step']}.json").write_text(json.dumps(r))
    (tmp_path / "config.yaml").write_text("hacking:\n  window: 3\n")
    return load_run(tmp_path)


FLAT = [0.3] * 8
CASES = {
    # format's last-3 mean reaches 0.95 at step 7: (0.96 + 0.97 + 0.98) / 3 = 0.97 (step 6 has
    # (0.9 + 0.96 + 0.97) / 3 = 0.943); quality then fell 0.5 -> (0.4 + 0.35 + 0.3) / 3 = 0.35,
    # a drop of 0.15 >= 0.1.
    "saturation": (
        {"reward/total_mean": FLAT,
         "reward/format_mean": [0.6, 0.7, 0.8, 0.9, 0.96, 0.97, 0.98, 0.99],
         "reward/quality_mean": [0.5, 0.5, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3]},
        {"reward/total_mean": FLAT,
         "reward/format_mean": [0.6, 0.7, 0.8, 0.9, 0.96, 0.97, 0.98, 0.99],
         "reward/quality_mean": [0.5, 0.5, 0.5, 0.55, 0.6, 0.6, 0.6, 0.6]},
        7),
    # mean length 100 -> last 3 at step 8: (150 + 170 + 190) / 3 = 170, +70% > 50%
    # (step 7: (130 + 150 + 170) / 3 = 150, exactly +50%, not more).
    "length_drift": (
        {"reward/total_mean": FLAT,
         "rollout/completion_len_mean": [100, 100, 100, 110, 130, 150, 170, 190]},
        {"reward/total_mean": FLAT,
         "rollout/completion_len_mean": [100, 104, 96, 101, 99, 105, 95, 100]},
        8),
    # entropy 2.0 -> step 7: (1.0 + 0.8 + 0.5) / 3 = 0.767 < 0.5 * 2.0 (step 6: 1.1, not below)
    "entropy_collapse": (
        {"reward/total_mean": FLAT, "grpo/entropy": [2.0, 2.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.5]},
        {"reward/total_mean": FLAT, "grpo/entropy": [2.0, 2.0, 2.0, 1.9, 1.8, 1.8, 1.7, 1.7]},
        7),
    # KL first 3: 0.001; at step 6 the last 3: (0.01 + 0.02 + 0.04) / 3 = 0.0233, +0.0223 nats
    # (> 0.01) while the reward did not move. The benign run gains 0.1 reward for +0.02 nats.
    "kl_outpaces_reward": (
        {"reward/total_mean": FLAT, "grpo/kl": [0.0, 0.001, 0.002, 0.01, 0.02, 0.04, 0.06, 0.08]},
        {"reward/total_mean": [0.3, 0.3, 0.3, 0.35, 0.4, 0.4, 0.4, 0.4],
         "grpo/kl": [0.0, 0.001, 0.002, 0.01, 0.02, 0.025, 0.025, 0.025]},
        6),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_rule_fires_on_trigger_and_not_on_benign(tmp_path, rule):
    trigger, benign, step = CASES[rule]
    (tmp_path / "t").mkdir()
    (tmp_path / "b").mkdir()
    fired = replay(write_run(tmp_path / "t", rows_from(trigger)).metrics, CFG).firings
    assert list(fired) == [rule] and fired[rule].first_step == step
    assert replay(write_run(tmp_path / "b", rows_from(benign)).metrics, CFG).firings == {}


def test_heldout_divergence(tmp_path):
    train = {"reward/total_mean": [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55]}
    # held-out 0.40 at step 2 -> 0.30 at step 8 (-0.10 < -0.02) while training, averaged over
    # the 3 steps up to each evaluation, rose (0.2 + 0.25) / 2 = 0.225 -> 0.5 (+0.275 > 0.02)
    rows = rows_from(train, evals=[(2, 0.40), (8, 0.30)])
    firings = replay(rows, CFG).firings
    assert list(firings) == ["heldout_divergence"] and firings["heldout_divergence"].first_step == 8
    assert replay(rows_from(train, evals=[(2, 0.40), (8, 0.45)]), CFG).firings == {}


def test_cli_names_the_rule_and_the_step(tmp_path, capsys):
    trigger, _, step = CASES["entropy_collapse"]
    write_run(tmp_path, rows_from(trigger))
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "entropy_collapse" in out and f"first at step {step}" in out
