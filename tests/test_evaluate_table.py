"""The evaluation table's numbers against hand-computed cases: means and CIs per system,
paired deltas matched by row line, and the "CI includes 0" statement."""

import json

import numpy as np

from lmmixup.eval.table import (format_markdown, load_scores, mean_cis, metric_columns,
                                paired_delta_cis, table_json, SystemScores)


def system(name, lines, **values):
    return SystemScores(name, tuple(lines), {k: np.array(v, dtype=float) for k, v in values.items()})


def test_paired_delta_matches_rows_by_line_not_by_position():
    # GRPO beats SFT by exactly 0.1 on every row, but the two files list the rows in a
    # different order: paired by line, every resample's mean difference is 0.1, so the CI is
    # [0.1, 0.1]; paired by position it would be (0.2-0.8, 0.6-0.1, 0.9-0.4) -> a wide CI.
    sft = system("sft", [1, 2, 3], total=[0.1, 0.5, 0.8])
    grpo = system("grpo", [3, 1, 2], total=[0.9, 0.2, 0.6])
    d = paired_delta_cis(grpo, sft)["total"]
    assert (round(d.estimate, 9), round(d.low, 9), round(d.high, 9)) == (0.1, 0.1, 0.1)


def test_two_row_case_by_hand():
    # differences (1, 0) on n = 2 rows: a resample's mean is 0 (both draws row 2, p = 1/4),
    # 0.5 (p = 1/2) or 1 (p = 1/4); the 2.5% and 97.5% quantiles are 0 and 1, so the paired
    # CI is [0, 1], which includes 0, around the estimate 0.5.
    a = system("grpo", [1, 2], total=[1.0, 0.0])
    b = system("sft", [1, 2], total=[0.0, 0.0])
    d = paired_delta_cis(a, b)["total"]
    assert (d.estimate, d.low, d.high, d.n) == (0.5, 0.0, 1.0, 2)
    m = mean_cis(a)["total"]
    assert (m.estimate, m.low, m.high) == (0.5, 0.0, 1.0)
    text = format_markdown({"grpo": mean_cis(a), "sft": mean_cis(b)}, {"grpo - sft": {"total": d}},
                           ["total"], "header")
    assert "| grpo - sft | 0.500 [0.000, 1.000] |" in text
    assert "- grpo - sft: the CI includes 0 (no difference shown) for total; excludes 0 for none." in text
    assert table_json({}, {"grpo - sft": {"total": d}})["deltas"]["grpo - sft"]["total"] == \
        {"estimate": 0.5, "low": 0.0, "high": 1.0, "n": 2, "excludes_zero": False}


def test_load_scores_reads_the_model_and_every_baseline(tmp_path):
    rows = [{"line": 4, "completion": "c", "task": "qa", "quality": 0.0, "alignment": 1.0,
             "total": 0.4, "truncated": 0.0,
             "baselines": {"copy_first": {"quality": 0.3, "alignment": 0.0, "total": 0.15}}},
            {"line": 9, "completion": "d", "task": "qa", "quality": 1.0, "alignment": 0.0,
             "total": 0.5, "truncated": 1.0,
             "baselines": {"copy_first": {"quality": 0.0, "alignment": 1.0, "total": 0.4}}}]
    path = tmp_path / "eval_samples_step_2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, copy = load_scores(path, "sft")
    assert (model.name, copy.name) == ("sft", "baseline: copy_first")
    assert model.lines == copy.lines == (4, 9)
    assert model.values["truncated"].tolist() == [0.0, 1.0]
    assert copy.values["total"].tolist() == [0.15, 0.4] and copy.values["truncated"].tolist() == [0, 0]
    assert metric_columns([model, copy]) == ["quality", "alignment", "total", "truncated"]
    # copy_first - sft on total: (0.15 - 0.4, 0.4 - 0.5) -> mean -0.175
    assert round(paired_delta_cis(copy, model)["total"].estimate, 9) == -0.175
