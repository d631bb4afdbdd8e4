"""python -m lmmixup.headroom: the arithmetic by hand, the checks on hand-built answers, one run
of the command on the tiny random model, and its one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from lmmixup.headroom.checks import alignment_cos, keeps_answer
from lmmixup.headroom.measure import (best_of_n, no_spread_fraction, noise_ratio, take,
                                      variant_shift)
from lmmixup.headroom.report import compare
from lmmixup.headroom.run import main
from lmmixup.headroom.variants import VARIANTS, versions

STARTER = ROOT / "lmmixup" / "data" / "starter_prompts.jsonl"
# the smoke preset's tiny random Llama, made smaller and shorter: seconds on one core
FAST = ["experiment=smoke", f"data.eval_file={STARTER}", "rollout.max_new_tokens=8",
        "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "prompts_per_call=2"]


# ----------------------------------------------------------------------------- arithmetic

def test_best_of_n_and_best_minus_mean_by_hand():
    total = torch.tensor([[0.1, 0.5, 0.3],
                          [0.2, 0.2, 0.0]])  # (P=2, n=3)
    best = best_of_n(total)
    assert best.tolist() == [1, 0]  # row 0: 0.5 at 1; row 1: a tie 0.2/0.2 goes to the first
    assert take(total, best).tolist() == pytest.approx([0.5, 0.2])
    quality = torch.tensor([[1.0, 0.0, 1.0],
                            [0.0, 1.0, 1.0]])  # another reward, read at R's choice
    assert take(quality, best).tolist() == [0.0, 0.0]
    row = compare(total, best, n_boot=200, seed=0)
    # group means: (0.1 + 0.5 + 0.3) / 3 = 0.3 and (0.2 + 0.2 + 0.0) / 3 = 0.1333
    assert row["mean"]["estimate"] == pytest.approx((0.3 + 0.4 / 3) / 2)
    # best: 0.5 and 0.2 -> mean 0.35; best - mean: 0.2 and 0.0667 -> mean 0.1333
    assert row["best_of_n"]["estimate"] == pytest.approx(0.35)
    assert row["best_minus_mean"]["estimate"] == pytest.approx((0.2 + 0.2 / 3) / 2)
    assert row["best_minus_mean"]["n"] == 2
    # quality at R's choice: 0 in both rows against means 2/3 and 2/3: R's best lost quality
    assert compare(quality, best, 200, 0)["best_minus_mean"]["estimate"] == pytest.approx(-2 / 3)


def test_compare_leaves_out_prompts_a_check_does_not_apply_to():
    keeps = torch.tensor([[1.0, 0.5],
                          [math.nan, math.nan],  # a row without a reference
                          [0.0, 0.0]])
    row = compare(keeps, torch.tensor([0, 0, 1]), n_boot=200, seed=0)
    assert row["mean"]["n"] == 2
    assert row["mean"]["estimate"] == pytest.approx((0.75 + 0.0) / 2)
    assert row["best_of_n"]["estimate"] == pytest.approx((1.0 + 0.0) / 2)
    assert compare(torch.full((2, 2), math.nan), torch.tensor([0, 1]), 200, 0) is None


def test_no_spread_fraction_by_hand():
    values = torch.tensor([[1.0, 1.0, 1.0],  # no spread
                           [0.0, 1.0, 0.0],
                           [0.5, 0.5, 0.5],  # no spread
                           [0.0, 0.0, 1e-6]])  # a spread, however small
    assert no_spread_fraction(values) == pytest.approx(2 / 4)


def test_noise_ratio_by_hand():
    versions_R = torch.tensor([[1.0, 1.0, 1.0, 1.0],  # the scorer ignores every variant: std 0
                               [0.0, 0.0, 0.0, 2.0]])  # (P=2, V=4)
    # row 1: mean 0.5, squared deviations 3 * 0.25 + 2.25 = 3, / (V - 1 = 3) = 1 -> std 1
    total = torch.tensor([[0.0, 2.0],  # mean 1, squared deviations 1 + 1 = 2, / 1 -> std sqrt(2)
                          [3.0, 3.0]])  # std 0
    noise = noise_ratio(versions_R, total)
    assert noise.version_std.tolist() == pytest.approx([0.0, 1.0])
    assert noise.group_std.tolist() == pytest.approx([math.sqrt(2), 0.0])
    assert noise.ratio == pytest.approx(0.5 / (math.sqrt(2) / 2))  # mean 0.5 over mean 0.7071
    assert noise.above_noise == pytest.approx(0.5)  # row 0: sqrt(2) > 0; row 1: 0 > 1 is not
    assert variant_shift(versions_R).tolist() == pytest.approx([0.0, 0.0, 1.0])  # |2 - 0| / 2
    assert noise_ratio(versions_R, torch.ones(2, 2)).ratio == math.inf  # no group has a spread


# ----------------------------------------------------------------------------- the versions

def test_variants_change_whitespace_and_punctuation_only():
    text = ("<think>\nplan it\n</think>\n\n<answer>\nQ: Why is the sky blue? "
            "A: Rayleigh scattering.\n</answer>")
    got = dict(zip(["original", *VARIANTS], versions(text)))
    assert got["original"] == text
    assert got["spaces_doubled"] == text.replace(" ", "  ")
    assert "<answer>\nQ:\nWhy is the sky" in got["line_break_added"]  # the answer's first space
    assert got["line_break_removed"].startswith("<think> plan it\n")  # the answer has none
    assert got["trailing_punct_toggled"].endswith("A: Rayleigh scattering\n</answer>")
    assert versions(got["trailing_punct_toggled"])[4].endswith("scattering.\n</answer>")
    assert got["trailing_newline"] == text + "\n"
    for version in got.values():  # no word changed: only whitespace and a final "."
        assert [w.strip(".") for w in version.split()] == [w.strip(".") for w in text.split()]


# ----------------------------------------------------------------------------- the checks

def test_keeps_answer_counts_the_reference_answers_words():
    ref = "Q: What gas do plants take in for photosynthesis? A: Carbon dioxide."
    layout = "<think>\nok\n</think>\n\n<answer>\n{}\n</answer>"
    # the answer words are {carbon, dioxide}; a one-letter typo still supplies a word
    assert keeps_answer(layout.format("Q: What gas? A: Carbon dioxyde"), ref, "qa") == 1.0
    assert keeps_answer(layout.format("Q: What gas? A: Oxygen and carbon."), ref, "qa") == 0.5
    # the question's words do not count: "carbon" only in the question keeps nothing
    assert keeps_answer(layout.format("Q: Is carbon a gas? A: Oxygen."), ref, "qa") == 0.0
    assert keeps_answer("no answer block", ref, "qa") == 0.0
    assert keeps_answer(layout.format("A"), None, None) is None
    # mcq: a one-token answer is compared as a token
    mcq = "Q: Which is a planet?\nA) Mars\nB) Moon\nAnswer: A"
    assert keeps_answer(layout.format(mcq), mcq, "mcq") == 1.0
    assert keeps_answer(layout.format(mcq.replace("Answer: A", "Answer: B")), mcq, "mcq") == 0.0


def test_alignment_cos_embeds_answers_and_references_once():
    vectors = {"a": [1.0, 0.0], "b": [0.6, 0.8], "r": [1.0, 0.0], "s": [-1.0, 0.0]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return torch.tensor([vectors[t] for t in texts])

    completions = ["<think>x</think><answer>a</answer>", "<think>x</think><answer>b</answer>",
                   "no answer", "<think>x</think><answer>a</answer>",
                   "<think>x</think><answer>a</answer>"]
    references = ["r", "r", "r", None, "s"]
    got = alignment_cos(completions, references, embed)
    # cos(a, r) = 1; cos(b, r) = 0.6; no answer: 0; no reference: None; cos(a, s) = -1 -> 0
    assert got == pytest.approx([1.0, 0.6, 0.0, None, 0.0])
    assert calls == [["a", "b", "a", "r", "r", "s"]]


# ----------------------------------------------------------------------------- the command

def test_headroom_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "out"
    main([*FAST, "rows=3", "n=3", f"out={out}"])
    report = json.loads((out / "headroom.json").read_text())
    assert (report["rows"], report["n"], report["model"]) == (3, 3, "tiny")
    assert set(report["rewards"]) == {"R", "tags", "length"}  # the smoke preset's reward=simple
    assert set(report["checks"]) == {"alignment_cos", "keeps_answer"}
    R = report["rewards"]["R"]
    assert R["best_of_n"]["estimate"] >= R["mean"]["estimate"]
    assert R["best_minus_mean"]["estimate"] == pytest.approx(
        R["best_of_n"]["estimate"] - R["mean"]["estimate"], abs=1e-6)
    for row in report["rewards"].values():
        assert 0.0 <= row["no_spread"] <= 1.0
        assert row["mean"]["low"] <= row["mean"]["estimate"] <= row["mean"]["high"]
    for row in report["checks"].values():  # random tokens write no answer: both checks are 0
        assert 0.0 <= row["best_of_n"]["estimate"] <= 1.0
    noise = report["noise"]
    assert noise["variants"] == list(VARIANTS)
    assert noise["ratio"] is None or noise["ratio"] >= 0.0
    assert 0.0 <= noise["groups_above_noise"] <= 1.0
    # samples.jsonl agrees with the summary: one best per prompt, the group's highest R
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 3
    groups = [samples[i:i + 3] for i in range(0, 9, 3)]
    for group in groups:
        (best,) = [s for s in group if s["best"]]
        assert best["R"] == max(s["R"] for s in group)
    assert R["mean"]["estimate"] == pytest.approx(sum(s["R"] for s in samples) / 9, abs=1e-5)
    table = (out / "headroom.md").read_text()
    assert "| R |" in table and "| check: keeps_answer |" in table and "ratio" in table
    assert table.strip() in capsys.readouterr().out  # printed too


@pytest.mark.parametrize("args,error", [
    (["n=1"], "n: must be >= 2 (a best of n and a group's spread need two samples), got 1"),
    (["rows=0"], "rows: must be >= 1, got 0"),
    (["n=abc"], "n: Value 'abc' of type 'str' could not be converted to Integer"),
    (["data.eval_file=<tmp>/missing.jsonl"], "<tmp>/missing.jsonl: no such file"),
    (["data.eval_file="], "data.eval_file: name the held-out prompt rows to sample (a JSONL "
                          "file), e.g. data=mixture"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, error):
    # the rows of docs/BAD_INPUTS.md's `python -m lmmixup.headroom` table
    out = tmp_path / "out"
    args = [a.replace("<tmp>", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main([*FAST, *args, f"out={out}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: " + error.replace("<tmp>", str(tmp_path))
    assert not out.exists()


def test_the_module_entry_point_prints_the_same_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmmixup.headroom", *FAST, "n=1",
                           f"out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: n: must be >= 2 (a best of n and a group's spread "
                                   "need two samples), got 1")
