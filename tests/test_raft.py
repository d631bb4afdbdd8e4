"""RAFT (lmmixup/raft): the selection rule by hand, and the command on the tiny random model,
whose rows the one SFT code path (train.py stage=sft) then trains on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from lmmixup.raft.run import main
from lmmixup.raft.select import raft_select

STARTER = ROOT / "lmmixup" / "data" / "starter_prompts.jsonl"
# the smoke preset's tiny random Llama, smaller; reward=simple's length term gives every group
# of random texts a spread, so some group's best clears the noise
FAST = ["experiment=smoke", f"data.train_file={STARTER}", "rollout.max_new_tokens=12",
        "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "prompts_per_call=2"]


def test_raft_keeps_a_best_that_beats_its_group_by_more_than_the_noise():
    total = torch.tensor([[0.2, 0.8, 0.5, 0.5],    # best 1: 0.8 - mean 0.5 = gain 0.3
                          [0.4, 0.4, 0.4, 0.4],    # flat: gain 0, never kept
                          [0.6, 0.7, 0.6, 0.6]])   # best 1: 0.7 - mean 0.625 = gain 0.075
    versions = torch.tensor([[0.8, 0.8, 0.8, 0.8, 0.8, 0.8],   # std 0: 0.3 > 0, kept
                             [0.4, 0.4, 0.4, 0.4, 0.4, 0.4],   # std 0, but gain 0 is not > 0
                             # mean 2/3; squares 5 x (1/30)^2 + (1/6)^2 = 1/30; / (V-1 = 5)
                             # = 1/150; std = 0.0816 > gain 0.075: a scorer this noisy does not
                             # rank the best above its group, not kept
                             [0.7, 0.5, 0.7, 0.7, 0.7, 0.7]])
    sel = raft_select(total, versions)
    assert sel.best.tolist() == [1, 0, 1]  # ties go to the first sample
    assert sel.gain.tolist() == pytest.approx([0.3, 0.0, 0.075], abs=1e-6)
    assert sel.noise.tolist() == pytest.approx([0.0, 0.0, (1 / 150) ** 0.5], abs=1e-6)
    assert sel.keep.tolist() == [True, False, False]


def test_raft_on_the_tiny_model_writes_rows_that_stage_sft_trains_on(tmp_path):
    out = tmp_path / "raft"
    main([*FAST, "reward=simple", "prompts=6", "n=3", f"out={out}"])
    summary = json.loads((out / "raft.json").read_text())
    assert (summary["prompts"], summary["n"], summary["completions_sampled"]) == (6, 3, 18)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(samples) == 18 and summary["kept"] == len(rows) >= 1
    groups = [samples[i:i + 3] for i in range(0, 18, 3)]
    starter = {i + 1: json.loads(line) for i, line in enumerate(STARTER.read_text().splitlines())}
    kept = [s for g in groups for s in g if s["kept"]]
    assert len(kept) == len(rows)
    for group in groups:
        (best,) = [s for s in group if s["best"]]
        assert best["R"] == max(s["R"] for s in group)
        assert sum(s["kept"] for s in group) <= 1 and all(s["best"] for s in group if s["kept"])
        if best["kept"]:  # the rule: best beats the group's mean (the noise is >= 0)
            assert best["R"] > sum(s["R"] for s in group) / 3
    for row, sample in zip(rows, kept):  # the source row, with the best completion as target
        assert row["target"] == sample["completion"]
        assert row["prompt"] == starter[sample["line"]]["prompt"]
    # the one SFT code path trains on them
    done = subprocess.run([sys.executable, "train.py", "experiment=smoke", "stage=sft", "steps=1",
                           f"data.train_file={out / 'rows.jsonl'}", "sft.examples_per_step=2",
                           "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32",
                           f"hydra.run.dir={tmp_path / 'sft'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "sft" / "model").is_dir()


@pytest.mark.parametrize("args,error", [
    (["n=1"], "n: must be >= 2 (a best of one is no choice), got 1"),
    (["prompts=0"], "prompts: must be >= 1, got 0"),
    (["data.train_file="], "data.train_file: must name a JSONL file"),  # train.py's own check
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, error):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([*FAST, *args, f"out={out}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: " + error
    assert not out.exists()


def test_a_sample_with_no_group_above_the_noise_is_refused_before_rows_exist(tmp_path, capsys):
    # the length reward weighted 0, so R is the tags reward alone: random tokens never write the think/answer tags, so every sample
    # scores 0, no group has a spread and nothing can be kept. rows.jsonl (the pipeline's
    # "done") is not written.
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main([*FAST, "reward=simple", "prompts=2", "n=2", f"out={out}",
              "reward.weights.length=0.0"])
    assert "no group's best cleared the scorer's noise among 2 prompts x 2 samples" in \
        capsys.readouterr().err
    assert not (out / "rows.jsonl").exists() and (out / "samples.jsonl").exists()
