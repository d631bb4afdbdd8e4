"""`python -m lmmixup.rewards score`: a subprocess run on a small file, and its errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lmmixup.rewards.__main__ import main
from lmmixup.rewards.quality import write_library
from lmmixup.rewards.synthetic import synthetic_rated_rows

GOOD = "A careful cook improves the taste of a simple meal when it is planned with care."


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(args, tmp_path):
    env = dict(os.environ, LMMIXUP_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "lmmixup.rewards", "score", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_scores_a_file(tmp_path):
    lib = write_library(tmp_path / "rated.jsonl", synthetic_rated_rows(40, seed=1, scores=(5, 0)))
    rows = write_rows(tmp_path / "rows.jsonl", [
        # Q=1 A=1 F=1 -> 0.5 + 0.4 + 0.1 = 1.0
        {"completion": f"<think>t</think><answer>Q: how? A: {GOOD}</answer>",
         "reference": f"Q: how? A: {GOOD}", "task": "qa", "prompt": "How?"},
        # gibberish answer: Q=0 A=0, F = 0.5 layout + 0.5 para shape = 1 -> total 0.1
        {"completion": "<think>t</think><answer>zkqv bdfh xwrt plmq</answer>",
         "reference": GOOD, "task": "para"},
        # no answer block: all 0, and the no-answer penalty -1 (weight 0.2) -> total -0.2
        {"completion": "no tags at all", "reference": GOOD, "task": None},
    ])
    # the kNN backend: the hand-computed Q below is its on this clearly separated library
    out = run_cli(["--input", str(rows), "--library", str(lib), "quality.backend=knn",
                   "quality.k=8"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    row1 = [line for line in lines if line.startswith(f"{rows}:1 ")]
    assert row1 == [f"{rows}:1  alignment=1.000 quality=1.000 format=1.000 no_answer=0.000  "
                    "total=1.000"]
    summary = json.loads(lines[-1])
    # means over 3 rows: Q (1+0+0)/3, A (1+0+0)/3, F (1+1+0)/3, total (1+0.1-0.2)/3
    assert summary["rows"] == 3
    assert summary["quality_mean"] == pytest.approx(1 / 3, abs=1e-5)
    assert summary["alignment_mean"] == pytest.approx(1 / 3, abs=1e-5)
    assert summary["format_mean"] == pytest.approx(2 / 3, abs=1e-5)
    assert summary["no_answer_mean"] == pytest.approx(-1 / 3, abs=1e-5)
    assert summary["total_mean"] == pytest.approx(0.9 / 3, abs=1e-5)


def test_cli_bad_jsonl_is_one_line_naming_file_and_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"completion": "<answer>x</answer>"}\n\n{broken\n')
    assert main(["score", "--input", str(rows), "--weights", "format=1"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {rows}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)"]


@pytest.mark.parametrize("args,msg", [
    ([], "quality needs a rated library: pass --library"),
    (["--weights", "format=1", "quality.k=0"], "reward.quality.k: must be > 0"),
    (["--weights", "format=1", "quality.kk=3"], "config override: Key 'kk' not in"),
    (["--weights", "format"], "--weights: expected NAME=FLOAT"),
])
def test_cli_config_errors(tmp_path, capsys, args, msg):
    rows = write_rows(tmp_path / "rows.jsonl", [{"completion": "x", "reference": "y"}])
    assert main(["score", "--input", str(rows), *args]) == 1
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("row,msg", [
    ({"reference": "y"}, "rows.jsonl:1: each row needs a string \"completion\""),
    ({"completion": "x", "reference": "y", "task": "essay"}, "rows.jsonl:1: unknown task 'essay'"),
    ({"completion": "x"}, "rows.jsonl:1: no \"reference\""),  # alignment weight 0.4 here
])
def test_cli_row_errors(tmp_path, capsys, row, msg):
    lib = write_library(tmp_path / "rated.jsonl", synthetic_rated_rows(20))
    rows = write_rows(tmp_path / "rows.jsonl", [row])
    assert main(["score", "--input", str(rows), "--library", str(lib)]) == 1
    assert msg in capsys.readouterr().err


def test_bench_runs_small(tmp_path, monkeypatch, capsys):
    from benchmarks import rewards as bench

    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "entry.md"
    bench.main(["--runs", "1", "--batch", "8", "--group", "4", "--library-rows", "40",
                "--entry-out", str(entry)])
    out = capsys.readouterr().out
    assert "all three (compute_rewards):" in out and "format alone:" in out
    text = entry.read_text()
    assert "- Command: `python -m benchmarks.rewards --runs 1 --batch 8" in text


def test_cli_rows_one_line_per_input_row_in_order(tmp_path, monkeypatch, capsys):
    import random

    from lmmixup.rewards.embedder import EmbedderConfig
    from lmmixup.rewards.quality import QualityConfig, build_quality_scorer, quality_from_expected
    from lmmixup.rewards.synthetic import fluent_sentence, gibberish

    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))
    lib = write_library(tmp_path / "rated.jsonl", synthetic_rated_rows(40, seed=1, scores=(5, 0)))
    rng = random.Random(7)
    answers = [fluent_sentence(rng), gibberish(rng), None, fluent_sentence(rng), gibberish(rng)]
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"completion": "no tags at all" if a is None else f"<think>t</think><answer>{a}</answer>",
         "task": "para"} for a in answers])
    out = tmp_path / "scored.jsonl"
    # batch size 2: the file must keep input order across batches
    assert main(["score", "--input", str(rows), "--library", str(lib), "--rows", str(out),
                 "--weights", "quality=0.5,format=0.1", "--batch-size", "2"]) == 0
    assert f"wrote 5 rows to {out}" in capsys.readouterr().out
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5]
    assert all(set(r) == {"line", "quality", "format", "total", "quality_expected"} for r in got)
    # the default (learned) backend's E, computed directly on the answers that exist
    E = build_quality_scorer(QualityConfig(library=str(lib)), EmbedderConfig())(
        [a for a in answers if a is not None]).tolist()
    assert [r["quality_expected"] for r in got] == pytest.approx(
        [E[0], E[1], None, E[2], E[3]], abs=1e-5)
    assert got[2]["quality"] == 0.0  # no <answer>: Q = 0 and no E
    for r in got:
        if r["quality_expected"] is not None:  # Q is the paper's step on E
            q = quality_from_expected(torch.tensor([r["quality_expected"]]), QualityConfig())
            assert r["quality"] == pytest.approx(q.item(), abs=1e-5)
        assert r["total"] == pytest.approx(0.5 * r["quality"] + 0.1 * r["format"], abs=1e-5)
    assert [r["quality"] for r in got] == [1.0, 0.0, 0.0, 1.0, 0.0]
