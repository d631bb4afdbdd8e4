"""distill.py as a user runs it: real subprocesses on real ShareGPT rows with the tiny model.

The rater is the real kNN quality scorer over a small rated library written from real ShareGPT
pairs (originals 5, word-shuffled 1, cut to a third 3), with the hashing embedder so that no
process has to load MiniLM. The tiny random model writes no <answer> block, so every
distillation fails (and is kept with its reason) and the mix is made of originals: what these
tests check is the plumbing, the files and their bytes, not the quality.

Cost: the kill-in-every-stage test runs 11 processes (user CPU ~10 s each at most); on the
shared machine of 2026-12-02 (load average ~18 on 2 cores) it took 14 minutes wall.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmmixup.errors import LmmixupError

ROOT = Path(__file__).resolve().parent.parent
STAGE_FILES = ("normalized.jsonl", "rated.jsonl", "high.jsonl", "low.jsonl", "clusters.jsonl",
               "unclustered.jsonl", "generated.jsonl", "rerated.jsonl", "distilled.jsonl",
               "mix.jsonl", "scores.png", "cluster_sizes.png", "coherence.png", "failures.png")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from lmmixup.distill.formats import pair_text, sharegpt_rows

    rng = random.Random(0)
    rows = []
    for _, r in zip(range(30), sharegpt_rows(30)):
        text = pair_text({"instruction": r.instruction, "input": "", "output": r.output,
                          "task": "para"})[:600]
        words = text.split()
        rng.shuffle(words)
        rows += [{"text": text, "score": 5}, {"text": " ".join(words[:40]), "score": 1},
                 {"text": text[: len(text) // 3], "score": 3}]
    path = tmp_path_factory.mktemp("lib") / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_args(library, out):
    return [f"out={out}", "input=sharegpt:24", "model=tiny", f"rate.quality.library={library}",
            "rate.embedder.name=hash", "rate.quality.backend=knn", "rate.high_threshold=3.0", "rate.shard_size=10",
            "distill.batch_size=3", "distill.max_new_tokens=6", "distill.member_chars=60",
            "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32",
            "mix.size=6", "mix.distilled_fraction=0", "progress=false"]


def distill(args, kill=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LMMIXUP_DISTILL_KILL", None)
    if kill:
        env["LMMIXUP_DISTILL_KILL"] = kill
    return subprocess.run([sys.executable, str(ROOT / "distill.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def digests(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in STAGE_FILES if (folder / name).exists()}


def tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(library, tmp_path_factory):
    """One uninterrupted run: the reference every other run is compared with."""
    out = tmp_path_factory.mktemp("run") / "out"
    proc = distill(base_args(library, out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow  # real distill.py subprocesses
def test_end_to_end_on_real_sharegpt_rows_writes_every_stage_file(finished):
    assert set(digests(finished)) == set(STAGE_FILES)
    rated = [json.loads(line) for line in (finished / "rated.jsonl").read_text().splitlines()]
    assert len(rated) == 24 and {"id", "source", "instruction", "input", "output", "score",
                                 "rater"} <= set(rated[0])
    assert all(0 <= r["score"] <= 5 and len(r["rater"]["posterior"]) == 6 for r in rated)
    low = [r for r in rated if r["score"] < 3.0]
    clusters = [json.loads(line) for line in (finished / "clusters.jsonl").read_text().splitlines()]
    left = [json.loads(line) for line in (finished / "unclustered.jsonl").read_text().splitlines()]
    members = [m for c in clusters for m in c["member_ids"]] + [r["id"] for r in left]
    assert sorted(members) == sorted(r["id"] for r in low)  # each low sample exactly once
    assert all(2 <= len(c["member_ids"]) <= 5 and set(c) == {"id", "source", "member_ids", "coherence"}
               for c in clusters)
    assert all(-1 <= c["coherence"] <= 1 for c in clusters)
    distilled = [json.loads(line) for line in (finished / "distilled.jsonl").read_text().splitlines()]
    assert [d["cluster_id"] for d in distilled] == [c["id"] for c in clusters]
    assert all(not d["ok"] and d["reason"] in ("no_answer", "truncated") and d["score"] is None
               and d["long_tail"] is None for d in distilled)  # the random model: kept, with reasons
    # no pair of the random model ever passes: each cluster took 1 greedy + distill.retries (4)
    # rollouts; the resume test below checks that they rewrite the same bytes
    assert all(d["attempts"] == 5 for d in distilled)
    mix = [json.loads(line) for line in (finished / "mix.jsonl").read_text().splitlines()]
    assert len(mix) == 6 and all(m["origin"] == "original" and m["score"] >= 3.0 for m in mix)
    report = json.loads((finished / "report.json").read_text())
    assert report["counts"]["normalize"]["samples"] == 24
    # ShareGPT's first 24 rows: long replies are para, a few short ones qa; the clusters' layouts
    assert set(report["counts"]["normalize"]["tasks"]) <= {"para", "qa", "tfq", "cs", "mcq"}
    assert sum(report["tasks"].values()) == len(clusters)
    assert report["coherence"]["clusters"]["mean"] is not None
    assert sum(report["failures"].values()) == len(clusters)
    assert report["counts"]["generate"]["retried"] == len(clusters)
    assert report["counts"]["generate"]["passed_on_retry"] == 0
    # every cluster failed each of the 5 attempts of the schedule
    assert [sum(a.values()) for a in report["counts"]["generate"]["attempts"]] == [len(clusters)] * 5
    assert all("passed" not in a for a in report["counts"]["generate"]["attempts"])
    assert set(report["seconds"]) >= {"normalize", "rate", "generate", "mix"}


KILLS = ["normalize:written", "rate:shard0", "split:written", "cluster:written",
         "generate:shard0", "rerate:written", "longtail:written", "mix:written", "report:written"]


@pytest.mark.slow  # real distill.py subprocesses
def test_a_run_killed_in_every_stage_resumes_to_the_same_bytes(library, finished, tmp_path):
    out = tmp_path / "out"
    args = base_args(library, out)
    for point in KILLS:  # each run resumes the one before and is killed one stage further on
        proc = distill(args, kill=point)
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        if point == "longtail:written":
            # the pool cannot fill a bigger mix: one line, exit 2, no mix.jsonl; then the
            # mix key may change, since the mix stage never completed
            big = distill([a if not a.startswith("mix.size=") else "mix.size=1000" for a in args])
            assert big.returncode == 2 and not (out / "mix.jsonl").exists()
            assert big.stderr.startswith("error: mix.size: 1000 rows at mix.distilled_fraction=0.0 "
                                         "cannot be filled; original high-quality rows: need 1000,")
            assert len(big.stderr.strip().splitlines()) == 1
    proc = distill(args)
    assert proc.returncode == 0, proc.stderr
    assert digests(out) == digests(finished)
    for name in ("report.json", "report.md"):  # identical apart from the seconds per stage
        a, b = ((d / name).read_text() for d in (out, finished))
        if name == "report.json":
            a, b = (dict(json.loads(t), seconds=None) for t in (a, b))
        else:
            a, b = ("\n".join(l for l in t.splitlines() if not l.startswith("| ")) for t in (a, b))
        assert a == b, name


@pytest.mark.slow  # real distill.py subprocesses
def test_an_out_folder_with_a_different_config_is_refused_and_left_alone(library, finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = tree(out)
    with pytest.raises(LmmixupError) as e:
        run_in_process(library, out, ["cluster.size_max=4", "seed=3"])
    assert str(e.value) == (f"out: {out} holds a run made with a different config: "
                            "cluster.size_max (5 -> 4), seed (0 -> 3); use another out folder")
    assert tree(out) == before


@pytest.mark.slow  # real distill.py subprocesses
def test_a_later_key_reruns_in_place_and_a_sweep_distils_once(library, finished, tmp_path):
    """A changed mix key reruns only the mix (and report) in the same folder; a `-m` sweep with
    reuse= copies every stage before the mix from the finished run. With LMMIXUP_DISTILL_KILL
    at generate:shard0 any job that generated would die (exit -9): none may."""
    inplace = tmp_path / "inplace"
    shutil.copytree(finished, inplace)
    args = base_args(library, inplace)
    proc = distill([a if not a.startswith("mix.size=") else "mix.size=4" for a in args],
                   kill="generate:shard0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = distill(["-m", *[a for a in base_args(library, tmp_path / "x")
                             if not a.startswith(("out=", "mix.size="))],
                     "mix.size=4,5", f"out={tmp_path}/sweep/s${{mix.size}}", f"reuse={finished}"],
                    kill="generate:shard0")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert sweep.stderr.count("distill: reused normalize, rate, split, cluster, generate, rerate, "
                              "longtail from") == 2
    for size in (4, 5):  # each equals a separate full run, byte for byte
        alone = tmp_path / f"alone{size}"
        proc = distill([a if not a.startswith("mix.size=") else f"mix.size={size}"
                        for a in base_args(library, alone)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = tmp_path / "sweep" / f"s{size}"
        assert digests(got) == digests(alone)
        assert (got / "mix.jsonl").read_bytes() == (alone / "mix.jsonl").read_bytes()
        assert len((got / "mix.jsonl").read_text().splitlines()) == size
        if size == 4:
            assert digests(inplace) == digests(alone)


@pytest.mark.slow  # real distill.py subprocesses
def test_min_similarity_leaves_every_sample_accounted_for(library, finished, tmp_path):
    """cluster.min_similarity=0.3 on hash embeddings: samples with no neighbour that close are
    unclustered with reason no_similar_sample; every low sample is still in exactly one place."""
    out = tmp_path / "sim"
    proc = distill(base_args(library, out) + ["cluster.min_similarity=0.3"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()]  # noqa: E731
    low = [r["id"] for r in rows("rated.jsonl") if r["score"] < 3.0]
    clusters, left = rows("clusters.jsonl"), rows("unclustered.jsonl")
    placed = [m for c in clusters for m in c["member_ids"]] + [r["id"] for r in left]
    assert sorted(placed) == sorted(low)
    reasons = {r["reason"] for r in left}
    assert "no_similar_sample" in reasons  # 0.3 is above some samples' best cosine here
    n_sim = sum(r["reason"] == "no_similar_sample" for r in left)
    report = json.loads((out / "report.json").read_text())
    assert report["unclustered"]["no_similar_sample"] == n_sim
    # every generated row is accounted for in rerated.jsonl: kept, or dropped with a reason
    rerated = rows("rerated.jsonl")
    assert len(rerated) == len(clusters) and all(r["kept"] != bool(r["drop"]) for r in rerated)


def test_keep_verdict_by_hand():
    """The re-rating gate: failures keep their reason; then a surface defect; then the keep
    threshold; then the gain over the cluster's best member must exceed distill.min_gain."""
    import dataclasses

    import distill as script
    from lmmixup.distill.generate import GenerateConfig

    cfg = GenerateConfig(keep_threshold=4.0, min_gain=0.25)
    ok = {"ok": True, "reason": "", "defects": []}
    typo = dict(ok, score=4.9, defects=["misspelled", "filler"])
    assert script.keep_verdict(typo, 1.0, cfg) == "defect:misspelled"  # the first one named
    assert script.keep_verdict(typo, 1.0, dataclasses.replace(cfg, reject_defects=False)) == ""
    assert script.keep_verdict({"ok": False, "reason": "template_echo", "score": None}, 3.0, cfg) == "template_echo"
    assert script.keep_verdict(dict(ok, score=3.9), 1.0, cfg) == "below_keep_threshold"
    # 4.2 - 3.9 = 0.3 > 0.25: kept; 4.2 - 3.95 = 0.25, not more than 0.25: no_gain
    assert script.keep_verdict(dict(ok, score=4.2), 3.9, cfg) == ""
    assert script.keep_verdict(dict(ok, score=4.2), 3.95, cfg) == "no_gain"
    # min_gain unset (the default): the best member's score is not consulted
    assert script.keep_verdict(dict(ok, score=4.2), 4.9, dataclasses.replace(cfg, min_gain=None)) == ""


@pytest.mark.parametrize("extra,message", [
    (["distill.task=essay"], "distill.task: unknown task 'essay'; known: auto, qa, mcq, tfq, cs, para"),
    (["distill.retries=-1"], "distill.retries: must be >= 0"),
    (["cluster.min_similarity=1.5"], "cluster.min_similarity: must be a cosine in [-1, 1], got 1.5"),
    (["input=sharegpt:20000"], "input: 'sharegpt:20000': the packaged sharegpt pool has 17,330 "
     "samples (17,671 complete conversations, 17,330 with a question and a reply); ask for at "
     "most sharegpt:17330"),
    (["reuse=/nonexistent"], "reuse: no run folder at '/nonexistent'"),
])
def test_bad_distill_values_give_one_line_before_anything_is_written(library, tmp_path, extra, message):
    with pytest.raises(LmmixupError) as e:
        run_in_process(library, tmp_path / "new", extra)
    assert str(e.value) == message
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("extra,message", [
    (["mix.sise=3"], "error: mix.sise: Key 'sise' not in 'MixConfig'"),
    (["mix.size=many"], "error: mix.size: Value 'many' of type 'str' could not be converted to Integer"),
])
def test_config_typos_and_wrong_types_give_one_line(library, tmp_path, capsys, extra, message):
    from lmmixup.cli import precheck_overrides
    from lmmixup.distill.config import register_distill_configs

    with pytest.raises(SystemExit) as e:
        precheck_overrides(base_args(library, tmp_path / "new") + extra, ROOT / "conf", "distill",
                           register_distill_configs)
    assert (e.value.code, capsys.readouterr().err) == (2, message + "\n")
    assert not (tmp_path / "new").exists()


def test_a_model_path_that_does_not_exist_fails_before_anything_is_written(library, tmp_path):
    with pytest.raises(LmmixupError) as e:
        run_in_process(library, tmp_path / "new", ["model.name_or_path=/nonexistent/model"])
    assert str(e.value) == "model.name_or_path: no model folder at '/nonexistent/model'"
    assert not (tmp_path / "new").exists()


def run_in_process(library, out, extra):
    """distill.run on a composed config, as the CLI calls it (for the bad pools: no subprocess)."""
    from hydra import compose, initialize_config_dir

    import distill as script

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("distill", overrides=base_args(library, out) + extra)
    script.run(cfg)


@pytest.mark.parametrize("content,message", [
    ("", "input: {p}: the pool is empty"),
    ('{"text": "a"}\n', "{p}:1: not a known pool format (keys: text); expected one of "
     "instruction: instruction/output; prompt: prompt/completion; messages: messages; "
     "conversations: conversations"),
    ('{"prompt": "Hi", "completion": ""}\n',
     "{p}:1: row has no text (empty output); fix the row or set pool.skip_empty=true"),
    ('{"prompt": "Hi", "completion": "Hello"}\n',
     "input: {p}: the pool has 1 distinct sample(s), fewer than one cluster (cluster.size_min=2)"),
    ('{"prompt": "Hi", "completion": "Hello"}\n{"prompt": "Bye", "compl',
     "{p}:2: truncated final line (invalid JSON at column 19 and no closing newline); was the "
     "file cut off?"),
])
def test_bad_pools_give_one_line_and_leave_no_stage_file(library, tmp_path, content, message):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(LmmixupError) as e:
        run_in_process(library, out, [f"input={pool}"])
    assert str(e.value) == message.format(p=pool)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no stage file, no temp file


@pytest.mark.slow  # real distill.py subprocesses, under torchrun
def test_two_ranks_write_the_bytes_of_one(library, finished, tmp_path):
    """torchrun --nproc_per_node=2 distill.py: rating, generation and re-rating shards split
    over the ranks (lmmixup/dist/), every file byte-identical to the one-process run."""
    out = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LMMIXUP_DISTILL_KILL", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(ROOT / "distill.py"), *base_args(library, out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digests(out) == digests(finished) and set(digests(out)) == set(STAGE_FILES)
    assert (out / ".work" / "rate" / "shard_00001.jsonl").is_file()  # rank 1's shard
