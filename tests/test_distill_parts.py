"""distill.py's parts, in process: clustering, long-tail score, mix, formats, parsing, state."""

import json
import math

import numpy as np
import pytest

from lmmixup.distill.cluster import PoolClusterConfig, capacity_kmeans, cluster_by_source, draw_sizes
from lmmixup.distill.formats import (PoolConfig, iter_pool, parse_input, sample_id,
                                     selfinstruct_rows, sharegpt_rows)
from lmmixup.distill.generate import clip, parse_distilled
from lmmixup.distill.longtail import long_tail_scores, rank_order
from lmmixup.distill.mix import MixConfig, build_mix, mix_counts
from lmmixup.distill.state import RunState, check_out_folder, stage_of
from lmmixup.errors import LmmixupError


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def assert_partition(result, n, cfg):
    """Every point in exactly one cluster (or left over), every size in size_min..size_max."""
    placed = [i for c in result.clusters for i in c] + result.leftover
    assert sorted(placed) == list(range(n))
    assert all(cfg.size_min <= len(c) <= cfg.size_max for c in result.clusters)


RNG = np.random.default_rng(7)
ADVERSARIAL = {
    # 3 texts repeated 40 times each: identical embeddings, ties everywhere
    "many_exact_duplicates": unit(np.repeat(RNG.normal(size=(3, 16)), 40, axis=0)),
    # 200 points within 0.01 of one direction plus 20 others: one huge near-duplicate group
    "huge_near_duplicate_group": unit(np.concatenate([np.ones((200, 16)) + 0.01 * RNG.normal(size=(200, 16)),
                                                      RNG.normal(size=(20, 16))])),
    "n_2": unit(RNG.normal(size=(2, 16))),
    "n_7": unit(RNG.normal(size=(7, 16))),
    "n_50": unit(RNG.normal(size=(50, 16))),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_capacity_kmeans_on_adversarial_inputs_keeps_sizes_and_covers_every_point(name):
    cfg = PoolClusterConfig()
    emb = ADVERSARIAL[name]
    result = capacity_kmeans(emb, cfg, np.random.default_rng(0))
    assert_partition(result, len(emb), cfg)
    assert result.leftover == []  # with sizes 2..5 every n >= 2 splits exactly
    again = capacity_kmeans(emb, cfg, np.random.default_rng(0))
    assert again.clusters == result.clusters  # seeded: the same clusters


def test_a_source_smaller_than_size_min_goes_to_unclustered_with_its_reason():
    emb = unit(RNG.normal(size=(6, 8)))
    sources = ["big"] * 5 + ["lonely"]
    clusters, left = cluster_by_source(sources, emb, PoolClusterConfig(), seed=0)
    assert left == [(5, "the source has 1 low-quality sample(s), fewer than cluster.size_min=2")]
    assert sorted(i for _, ms in clusters for i in ms) == [0, 1, 2, 3, 4]
    assert {s for s, _ in clusters} == {"big"}


def test_sizes_that_cannot_fit_leave_the_rest_unclustered_not_in_a_bad_cluster():
    # 7 points in clusters of 4..5: one cluster of 5, two points cannot be placed
    cfg = PoolClusterConfig(size_min=4, size_max=5, mean_size=4.5)
    result = capacity_kmeans(unit(RNG.normal(size=(7, 8))), cfg, np.random.default_rng(0))
    assert_partition(result, 7, cfg)
    assert [len(c) for c in result.clusters] == [5] and len(result.leftover) == 2
    assert result.reason == "7 samples cannot be split into clusters of 4..5"


def test_drawn_sizes_sum_to_n_and_average_near_three():
    cfg = PoolClusterConfig()
    sizes = draw_sizes(3000, cfg, np.random.default_rng(0))
    assert sizes.sum() == 3000 and sizes.min() >= 2 and sizes.max() <= 5
    assert len(sizes) == 1000  # k = round(3000 / 3), so the mean is exactly 3
    assert len(set(sizes.tolist())) == 4  # drawn, not all equal


def test_clusters_group_similar_points():
    # two tight, far-apart groups of 3: the greedy assignment must not mix them
    a, b = np.eye(8)[0], np.eye(8)[1]
    emb = unit(np.stack([a, b, a + 0.01, b + 0.01, a - 0.01, b - 0.01]))
    result = capacity_kmeans(emb, PoolClusterConfig(), np.random.default_rng(0))
    assert sorted(result.clusters) == [[0, 2, 4], [1, 3, 5]]


def test_long_tail_score_matches_a_hand_computed_four_point_case():
    # unit vectors at 0, 90, 180 and 45 degrees; k = 2. Cosine distances 1 - cos:
    #   p0: p1 1, p2 2, p3 1 - 1/sqrt2      -> two nearest p3, p1: d0 = 1 - 1/(2 sqrt2) = 0.6464
    #   p1: p0 1, p2 1, p3 1 - 1/sqrt2      -> d1 = d0
    #   p2: p0 2, p1 1, p3 1 + 1/sqrt2      -> nearest p1, p3: d2 = 1 + 1/(2 sqrt2) = 1.3536
    #   p3: p0, p1 both 1 - 1/sqrt2         -> d3 = 1 - 1/sqrt2 = 0.2929
    # min-max: (d - d3) / (d2 - d3), with d2 - d3 = 3/(2 sqrt2) and d0 - d3 = 1/(2 sqrt2)
    r = 1 / math.sqrt(2)
    emb = np.array([[1, 0], [0, 1], [-1, 0], [r, r]], dtype=np.float32)
    assert long_tail_scores(emb, k=2) == pytest.approx([1 / 3, 1 / 3, 1.0, 0.0], abs=1e-6)
    assert long_tail_scores(emb[:1], k=15).tolist() == [0.0]  # nothing to compare with


def test_rank_is_quality_then_long_tail_then_id():
    order = rank_order([4.0, 5.0, 4.0, 4.0], [0.2, 0.0, 0.9, 0.2], ["d", "c", "b", "a"])
    assert order == [1, 2, 3, 0]  # 5.0 first; then tail 0.9; then tail 0.2 by id a < d


def rows(prefix, n):
    return [{"instruction": f"{prefix}{i}", "input": "", "output": "o", "score": 4.5,
             "id": f"{prefix}{i}", "source": "s"} for i in range(n)]


def test_mix_has_exactly_the_requested_size_and_ratio():
    cfg = MixConfig(size=8, distilled_fraction=0.25)
    mix = build_mix(rows("o", 10), rows("d", 10), cfg, seed=0)
    origins = [r["origin"] for r in mix]
    assert len(mix) == 8 and origins.count("distilled") == 2 and origins.count("original") == 6
    # the best-ranked rows of each part, shuffled with the seed (same seed, same order)
    assert sorted(r["instruction"] for r in mix) == ["d0", "d1", "o0", "o1", "o2", "o3", "o4", "o5"]
    assert build_mix(rows("o", 10), rows("d", 10), cfg, seed=0) == mix
    assert [r["instruction"] for r in build_mix(rows("o", 10), rows("d", 10), cfg, seed=1)] != \
        [r["instruction"] for r in mix]


def test_mix_formats_write_the_layouts_fine_tuning_tools_read():
    one = [{"instruction": "Sum", "input": "2+2", "output": "4", "score": 5.0, "id": "x", "source": "s"}]
    msg = build_mix(one, [], MixConfig(size=1, distilled_fraction=0, format="messages"), 0)[0]
    assert msg["messages"] == [{"role": "user", "content": "Sum\n\n2+2"},
                               {"role": "assistant", "content": "4"}]
    pc = build_mix(one, [], MixConfig(size=1, distilled_fraction=0, format="prompt_completion"), 0)[0]
    assert (pc["prompt"], pc["completion"], pc["origin"], pc["id"]) == ("Sum\n\n2+2", "4", "original", "x")


def test_mix_that_cannot_be_filled_says_what_is_short_or_shrinks_at_the_same_ratio():
    with pytest.raises(LmmixupError) as e:
        mix_counts(MixConfig(size=30, distilled_fraction=0.5), 10, 12)
    assert str(e.value) == (
        "mix.size: 30 rows at mix.distilled_fraction=0.5 cannot be filled; original high-quality "
        "rows: need 15, have 10 (short by 5); distilled rows: need 15, have 12 (short by 3); "
        "lower mix.size or set mix.allow_smaller=true")
    # largest s <= 30 with s - round(s/2) <= 10 and round(s/2) <= 12: s = 20 -> (10, 10)
    assert mix_counts(MixConfig(size=30, distilled_fraction=0.5, allow_smaller=True), 10, 12) == (10, 10)


# ----------------------------------------------------------------------------- formats

def real_samples():
    """A few real rows from the packaged pools, written in every supported format."""
    share = [r for _, r in zip(range(3), sharegpt_rows(3))]
    seed = [r for _, r in zip(range(3), selfinstruct_rows(3))]
    return share, seed


def test_every_input_format_parses_a_small_real_sample(tmp_path):
    share, seed = real_samples()
    files = {
        "instruction.jsonl": [{"instruction": r.instruction, "input": r.input, "output": r.output}
                              for r in seed],
        "prompt.jsonl": [{"prompt": r.instruction, "completion": r.output} for r in share],
        "messages.jsonl": [{"messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": r.instruction},
                                         {"role": "assistant", "content": r.output}]} for r in share],
        "conversations.jsonl": [{"conversations": [{"from": "human", "value": r.instruction},
                                                   {"from": "gpt", "value": r.output}],
                                 "source": "sg"} for r in share],
    }
    for name, objs in files.items():
        (tmp_path / name).write_text("".join(json.dumps(o) + "\n" for o in objs))
    (tmp_path / "array.json").write_text(json.dumps(files["instruction.jsonl"]))
    for name in list(files) + ["array.json"]:
        got = list(iter_pool(parse_input(str(tmp_path / name)), PoolConfig()))
        want = seed if name in ("instruction.jsonl", "array.json") else share
        assert [(g.instruction, g.input, g.output) for g in got] == \
            [(w.instruction, w.input if name in ("instruction.jsonl", "array.json") else "", w.output)
             for w in want], name
    conv = list(iter_pool(parse_input(str(tmp_path / "conversations.jsonl")), PoolConfig()))
    assert {r.source for r in conv} == {"sg"}  # a row's own source wins over the file stem
    assert {r.source for r in iter_pool(parse_input(str(tmp_path / "prompt.jsonl")), PoolConfig())} == {"prompt"}
    built_in = list(iter_pool(parse_input("sharegpt:5"), PoolConfig()))
    assert len(built_in) == 5 and all(r.instruction and r.output for r in built_in)
    assert len(list(iter_pool(parse_input("selfinstruct:4"), PoolConfig()))) == 4


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("content,message", [
    ('{"a": 1, "b": 2}\n', "{p}:1: not a known pool format (keys: a, b); expected one of "
     "instruction: instruction/output; prompt: prompt/completion; messages: messages; "
     "conversations: conversations"),
    ('{"instruction": "x", "output": "y"}\n{"instruction": "  ", "output": "y"}\n',
     "{p}:2: row has no text (empty instruction); fix the row or set pool.skip_empty=true"),
    ('{"instruction": "x", "output": "y"}\n{"instruction": "z", "outp',
     "{p}:2: truncated final line (invalid JSON at column 22 and no closing newline); was the "
     "file cut off?"),
    ('{"instruction": "x", "output": "y"}\n{"prompt": "z", "completion": "w"}\n',
     "{p}:2: missing field 'instruction' of the pool's format 'instruction' (detected at {p}:1)"),
])
def test_bad_pool_files_give_one_line_naming_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "pool.jsonl", content)
    with pytest.raises(LmmixupError) as e:
        list(iter_pool(parse_input(path), PoolConfig()))
    assert str(e.value) == message.format(p=path)


def test_skip_empty_counts_rows_without_text(tmp_path):
    path = write(tmp_path / "pool.jsonl", '{"instruction": "x", "output": "y"}\n'
                 '{"instruction": "z", "output": ""}\n')
    skipped = []
    got = list(iter_pool(parse_input(path), PoolConfig(skip_empty=True), skipped))
    assert [g.instruction for g in got] == ["x"] and skipped == [f"{path}:2"]


def test_input_specs_are_checked():
    assert parse_input("hf:org/set:validation").split == "validation"
    with pytest.raises(LmmixupError, match=r"^input: 'sharegpt:0': the built-in pool needs a size"):
        parse_input("sharegpt:0")
    assert sample_id("a", "", "b") == sample_id("a", "", "b") != sample_id("a", "b", "")


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("completion,truncated,task,expected", [
    ("<think>\nx\n</think>\n\n<answer>\nName a fruit.\n\nAn apple.\n</answer>", False, "para",
     (True, "", "Name a fruit.", "An apple.")),
    ("<think>x</think><answer>Q: What is 2+2?\nA: 4</answer>", False, "qa", (True, "", "What is 2+2?", "4")),
    # a para pair written as Q:/A: is still a pair
    ("<think>x</think><answer>Q: What is 2+2?\nA: 4</answer>", False, "para", (True, "", "What is 2+2?", "4")),
    # each task's shape parses into the pool's (question, answer) convention
    ("<think>x</think><answer>Q: Pick one.\nA) red\nB) blue\nAnswer: B</answer>", False, "mcq",
     (True, "", "Pick one.\nA) red\nB) blue", "B")),
    ("<think>x</think><answer>Water boils at 100 C at sea level.\nAnswer: True</answer>", False, "tfq",
     (True, "", "Water boils at 100 C at sea level.", "True")),
    ("<think>x</think><answer>C: Movie review sentiment: negative\nS: A dull film.</answer>", False, "cs",
     (True, "", "A dull film.", "Movie review sentiment: negative")),
    ("<think>a draft</think> and then it stops", False, "qa", (False, "no_answer", "", "")),
    ("<think>a long draft that never ends", True, "qa", (False, "truncated", "", "")),
    ("<think>x</think><answer>  \n </answer>", False, "qa", (False, "empty", "", "")),
    ("<think>x</think><answer>Only an instruction</answer>", False, "para",
     (False, "no_output", "Only an instruction", "")),
    # the format reward's shape check decides: a qa task answered without "A:" is not a pair
    ("<think>x</think><answer>What is 2+2? It is 4.</answer>", False, "qa", (False, "wrong_shape", "", "")),
    ("<think>x</think><answer>Q: Pick one.\nA) red\nAnswer: B</answer>", False, "mcq",
     (False, "wrong_shape", "", "")),
])
def test_parse_distilled_keeps_the_failure_reason(completion, truncated, task, expected):
    assert tuple(parse_distilled(completion, truncated, task, [])[:4]) == expected


def test_clip_cuts_at_a_word_boundary():
    assert clip("one two three four", 12) == "one two…"
    assert clip("short", 12) == "short"


# ----------------------------------------------------------------------------- out folder

def test_a_folder_with_a_different_config_is_refused_naming_the_keys(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    old = {"input": "sharegpt:10", "cluster": {"size_max": 5}, "mix": {"size": 10}, "out": "a"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    state = RunState(tmp_path)
    state.mark("normalize", ["a.txt"], 1.0)
    state.mark("cluster", ["a.txt"], 1.0)
    new = {"input": "sharegpt:10", "cluster": {"size_max": 4}, "mix": {"size": 20}, "out": "b"}
    with pytest.raises(LmmixupError) as e:
        check_out_folder(tmp_path, new, state)
    assert str(e.value) == (f"out: {tmp_path} holds a run made with a different config: "
                            "cluster.size_max (5 -> 4); use another out folder")
    # a change that only touches stages not yet done is accepted, and forgets those stages
    check_out_folder(tmp_path, dict(old, mix={"size": 20}, out="b"), state)
    assert set(state.records) == {"normalize", "cluster"}
    assert stage_of("rate.high_threshold") == "split" and stage_of("rate.quality.k") == "rate"
    assert stage_of("distill.keep_threshold") == "rerate" and stage_of("model.name_or_path") == "generate"


def test_a_stage_whose_file_changed_is_not_complete(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    state = RunState(tmp_path)
    state.mark("normalize", ["a.txt"], 1.0)
    assert RunState(tmp_path).done("normalize")
    (tmp_path / "a.txt").write_text("y")
    assert not RunState(tmp_path).done("normalize")
