"""Real subprocess runs of train.py with tiny overrides."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

REQUIRED_METRICS = [
    "reward/total_mean", "reward/total_std", "grpo/loss", "grpo/kl", "grpo/entropy",
    "grpo/clip_frac_low", "grpo/clip_frac_high", "grpo/ratio_mean", "grpo/ratio_max",
    "grpo/adv_mean", "grpo/adv_std", "grpo/frac_zero_std_groups", "grpo/grad_norm",
    "rollout/completion_len_mean", "rollout/frac_truncated", "time/rollout_s", "time/step_s",
    "rollout/tokens_per_s",
]


def train(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_smoke_run_logs_every_metric(tmp_path):
    t0 = time.time()
    out = train("experiment=smoke", f"hydra.run.dir={tmp_path}")
    elapsed = time.time() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        missing = [k for k in REQUIRED_METRICS + ["reward/tags_mean", "reward/tags_std",
                                                  "reward/length_mean", "reward/length_std"]
                   if k not in row]
        assert not missing, missing
    assert (tmp_path / "config.yaml").exists()
    assert (tmp_path / "checkpoints" / "step_000004" / "model.safetensors").exists()
    print(f"smoke run took {elapsed:.1f}s")


@pytest.mark.slow
def test_dr_grpo_without_reference_and_wandb_offline(tmp_path):
    out = train("experiment=smoke", "steps=1", "algo.beta=0", "algo.loss=dr_grpo",
                "logger=wandb", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    row = read_metrics(tmp_path)[0]
    assert row["grpo/kl"] == 0.0
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert (tmp_path / "wandb_id.txt").read_text().strip() in offline_runs[0].name


@pytest.mark.slow
def test_multirun_sweep_gets_one_folder_per_value(tmp_path):
    out = train("-m", "experiment=smoke", "steps=1", "checkpoint.every=0",
                "reward.weights.tags=0.1,0.5", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    weights = []
    for sub in ("0", "1"):
        assert read_metrics(tmp_path / sub)[0]["step"] == 1
        config = (tmp_path / sub / "config.yaml").read_text()
        weights.append([l for l in config.splitlines() if "tags:" in l][0].strip())
    assert weights == ["tags: 0.1", "tags: 0.5"]


def test_bad_override_is_one_line_and_nonzero(tmp_path):
    out = train("experiment=smoke", "algo.group_size=1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: algo.group_size: must be >= 2 (a group-relative " \
                                 "advantage needs a group), got 1"
