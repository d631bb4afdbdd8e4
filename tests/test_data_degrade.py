"""Degradation operators: each changes text as documented, and is deterministic under a seed."""

import random
import re

import pytest

from lmmixup.data.degrade import (OPERATORS, DegradeConfig, DegradeContext, Variant, apply_operators,
                                  degrade_seed, severity_to_score)
from lmmixup.data.schema import Seed, mcq_question, split_mcq
from lmmixup.errors import ConfigError

QA = Seed("t:qa", "t", "qa", "Which planet in the Solar System has the largest number of moons in 2023?",
          "Saturn has the most confirmed moons", distractors=("Jupiter", "Mars"))
MCQ = Seed("t:mcq", "t", "mcq",
           mcq_question("Which gas do green plants absorb from the air during photosynthesis?",
                        ["oxygen", "carbon dioxide", "nitrogen", "helium"]),
           "B", distractors=("A", "C", "D"))
TFQ = Seed("t:tfq", "t", "tfq", "Is the Pacific Ocean larger than the Atlantic Ocean?", "True",
           distractors=("False",))
SEEDS = [QA, MCQ, TFQ]


def run(name, seed, rng_seed=0, **ctx):
    ctx.setdefault("wrong_answers", seed.distractors)
    return OPERATORS[name].fn(seed.question, seed.answer, random.Random(rng_seed),
                              DegradeContext(seed.task, **ctx))


def stem(seed_or_q):
    q = seed_or_q.question if isinstance(seed_or_q, Seed) else seed_or_q
    return split_mcq(q)[0]


@pytest.mark.parametrize("name", [n for n in OPERATORS if n != "llm_paraphrase"])
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.task)
def test_every_operator_is_deterministic_and_changes_the_pair(name, seed):
    for rng_seed in range(5):
        first = run(name, seed, rng_seed)
        assert first == run(name, seed, rng_seed)  # same rng seed -> same output
        if first is not None:
            assert first != (seed.question, seed.answer)
            if seed.task == "mcq":  # question-side damage never touches the option lines
                assert split_mcq(first[0])[1] == split_mcq(seed.question)[1]
    # different rng seeds give different damage for the randomised operators
    outs = {run(name, QA, s) for s in range(20)}
    if name not in ("wrong_answer",):
        assert len(outs) > 1


def test_typos_only_touch_letters():
    for s in range(10):
        q, a = run("typos", QA, s)
        # letters are swapped/dropped/doubled/replaced; every non-letter stays, in order
        assert re.sub(r"[A-Za-z]", "", q) == re.sub(r"[A-Za-z]", "", QA.question)
        assert q != QA.question


def test_drop_words_removes_15_to_30_percent():
    words = QA.question.split()  # 14 words: round(14*0.15)=2 .. round(14*0.30)=4 dropped
    for s in range(10):
        q, a = run("drop_words", QA, s)
        kept = q.split()
        assert 14 - 4 <= len(kept) <= 14 - 2
        it = iter(words)  # kept words are a subsequence of the original
        assert all(w in it for w in kept)
        assert a == QA.answer
    assert run("drop_words", Seed("x", "t", "qa", "Two words", "y")) is None  # needs >= 3 words


def test_shuffle_words_permutes_a_window_of_at_most_6():
    for s in range(10):
        q, _ = run("shuffle_words", QA, s)
        new, old = q.split(), QA.question.split()
        assert sorted(new) == sorted(old) and new != old
        moved = [i for i, (x, y) in enumerate(zip(new, old)) if x != y]
        assert moved[-1] - moved[0] < 6


def test_truncate_question_keeps_40_to_70_percent_of_words():
    for s in range(10):
        q, _ = run("truncate_question", QA, s)
        assert q.endswith("...")
        kept = q[:-3].split()
        # 14 words: int(14*0.4)=5 .. int(14*0.7)=9 kept
        assert 5 <= len(kept) <= 9 and kept == QA.question.split()[:len(kept)]


def test_vague_question_replaces_one_to_three_specific_words():
    for s in range(10):
        q, _ = run("vague_question", QA, s)
        assert q != QA.question
        # candidates: numbers, capitalised non-initial words, words of >= 7 letters
        assert 1 <= len(re.findall(r"something|this|that thing|some stuff|whatever", q)) <= 3
        assert q.split()[:2] == ["Which", "planet"]  # not candidates: never replaced
    assert run("vague_question", Seed("x", "t", "qa", "is it hot", "yes")) is None


def test_wrong_answer_by_task():
    for s in range(10):
        assert run("wrong_answer", MCQ, s)[1] in ("A", "C", "D")  # never the correct B
        assert run("wrong_answer", TFQ, s)[1] == "False"
        assert run("wrong_answer", QA, s)[1] in ("Jupiter", "Mars")
    assert run("wrong_answer", QA, wrong_answers=()) is None  # nothing wrong to say


def test_partial_answer_keeps_a_prefix():
    for s in range(10):
        _, a = run("partial_answer", QA, s)
        # 6 words: int(6*0.3)=1 .. int(6*0.6)=3 kept
        kept = a[:-3].split()
        assert a.endswith("...") and 1 <= len(kept) <= 3
        assert kept == QA.answer.split()[:len(kept)]
    assert run("partial_answer", Seed("x", "t", "qa", "q?", "Paris"))[1] == "Pa..."  # 5 chars -> 2
    assert run("partial_answer", MCQ) is None and run("partial_answer", TFQ) is None


def test_verbose_filler_only_adds_text():
    for s in range(10):
        q, a = run("verbose_filler", QA, s)
        assert len(q) + len(a) > len(QA.question) + len(QA.answer)
        assert QA.answer in a
        assert QA.question[1:] in q  # the question survives (first letter may be lowered)


def test_casing_punct_keeps_the_letters():
    def core(text):
        return re.sub(r"[^a-z0-9]", "", text.lower())

    for s in range(10):
        q, a = run("casing_punct", QA, s)
        assert q != QA.question and core(q) == core(QA.question) and core(a) == core(QA.answer)


def test_reword_prefixes_a_template():
    q, a = run("reword", QA)
    assert q.endswith(QA.question[1:]) and q != QA.question and a == QA.answer


def test_llm_paraphrase_uses_the_teacher_only_when_given():
    assert run("llm_paraphrase", QA) is None
    q, _ = run("llm_paraphrase", MCQ, paraphrase=lambda s: "Rewritten: " + s)
    assert stem(q) == "Rewritten: " + stem(MCQ)
    # a teacher that answers instead of paraphrasing is ignored
    assert run("llm_paraphrase", QA, paraphrase=lambda s: "Saturn has the most moons.") is None
    assert run("llm_paraphrase", QA, paraphrase=lambda s: "Why? " * 100) is None  # far too long


def test_severity_to_score_table():
    # score = max(0, 4 - floor(severity))
    assert [severity_to_score(x) for x in (0.5, 1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 6.5)] == \
        [4, 3, 3, 2, 1, 1, 0, 0]


def test_apply_operators_records_only_what_changed():
    v = apply_operators(TFQ, ["partial_answer", "typos"], random.Random(0), DegradeContext("tfq"))
    assert v.operators == ("typos",)  # partial_answer does not apply to tfq
    assert v.severity == 1.0 and v.score == 3


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.task)
def test_degrade_seed(seed):
    cfg = DegradeConfig(variants_min=4, variants_max=6)
    variants = degrade_seed(seed, cfg, random.Random(7))
    assert variants == degrade_seed(seed, cfg, random.Random(7))  # deterministic
    assert 4 <= len(variants) <= 6
    texts = [v.text for v in variants]
    assert len(set(texts)) == len(texts) and seed.pair not in texts
    for v in variants:
        assert isinstance(v, Variant) and 1 <= len(v.operators) <= cfg.max_ops
        assert v.severity == sum(OPERATORS[o].severity for o in v.operators)
        assert v.score == severity_to_score(v.severity) and 0 <= v.score <= 4


@pytest.mark.parametrize("kwargs, key", [
    (dict(variants_min=1), "degrade.variants_min"),
    (dict(variants_max=21), "degrade.variants_min"),
    (dict(operators="typos,bogus"), "degrade.operators"),
    (dict(operators="llm_paraphrase"), "degrade.operators"),
])
def test_degrade_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
        DegradeConfig(**kwargs).validate()


def test_teacher_paraphraser_is_greedy_and_memoised():
    from lmmixup.data.degrade import TeacherParaphraser

    teacher = TeacherParaphraser("tiny", max_new_tokens=6)  # random weights: text is noise
    out = teacher("What is the boiling point of water?")
    assert isinstance(out, str)
    assert teacher("What is the boiling point of water?") == out  # memoised
    teacher._memo.clear()
    assert teacher("What is the boiling point of water?") == out  # greedy: deterministic
