"""Answer extraction and the format reward F: a positive and a negative example per pattern."""

import pytest

from lmmixup.errors import LmmixupError
from lmmixup.rewards.answer import extract_answer, has_full_layout, reference_text
from lmmixup.rewards.task_format import TASK_SHAPES, answer_matches_task, format_score


def wrap(answer: str, think: str = "Let me think.") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# ---- answer extraction -------------------------------------------------------------------

def test_extract_answer_takes_last_complete_block_stripped():
    text = "<think>draft <answer>no</answer></think> <answer>  yes \n</answer>"
    assert extract_answer(text) == "yes"


@pytest.mark.parametrize("text", [
    "just text",
    "<think>x</think><answer>cut off by max_new_tokens",  # no closing tag
    "<think>x</think><answer>  \n </answer>",  # blank block
])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_reference_text_uses_answer_block_if_present():
    assert reference_text("<think>t</think><answer> Paris </answer>") == "Paris"
    assert reference_text("  Paris is the capital. ") == "Paris is the capital."
    assert reference_text(None) is None
    assert reference_text("   ") is None


# ---- layout half ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "<think>a</think><answer>b</answer>",
    "  \n<think>\nreasoning\n</think>\n\n<answer>\nfinal\n</answer>\n ",  # whitespace allowed
])
def test_layout_positive(text):
    assert has_full_layout(text)


@pytest.mark.parametrize("text", [
    "<answer>b</answer>",  # no think
    "<think>a</think>",  # no answer
    "<answer>b</answer><think>a</think>",  # wrong order
    "preamble <think>a</think><answer>b</answer>",  # text before
    "<think>a</think><answer>b</answer> trailing",  # text after
    "<think>a</think><answer>b</answer><answer>c</answer>",  # two answers
    "<think>a</think>middle<answer>b</answer>",  # text between
    "<think>  </think><answer>b</answer>",  # empty think earns nothing
    "<think>a</think><answer> </answer>",  # empty answer
])
def test_layout_negative(text):
    assert not has_full_layout(text)


# ---- shape half: one table, positive and negative examples per task -------------------------

SHAPES = {
    "qa": (["Q: What is the capital of France? A: Paris.",
            "Q: Why is the sky blue?\nA: Rayleigh scattering of sunlight."],
           ["Paris.", "Q: What is it?", "A: Paris. Q: capital?", "Q: capital?A: Paris",
            "Q: A: Paris"]),
    "mcq": (["Q: Which planet is largest? A) Mars B) Jupiter C) Venus D) Earth Answer: B",
             "Q: 2+2?\nA) 3\nB) 4\nC) 5\nD) 6\nAnswer: B.",
             "Q: Where do fish live? A) sea B) sky C) desert Answer: A",  # 3 options (SocialIQA)
             "Q: Pick one. A) a B) b C) c D) d E) e Answer: E"],  # 5 (CommonsenseQA)
            ["Q: Which planet? A) Mars B) Jupiter C) Venus D) Earth",  # no Answer line
             "Q: Which planet? A) Mars B) Jupiter C) Venus D) Earth Answer: E",  # not an option
             "Q: Which planet? A) Mars B) Jupiter D) Earth Answer: B",  # letters skip C
             "Q: Which planet? B) Mars C) Jupiter Answer: B",  # does not start at A
             "Q: Which planet? A) Mars Answer: A",  # one option is not a choice
             "Q: Which planet? A) Mars B) Jupiter C) Venus D) Earth Answer: b",  # case-sensitive
             "Answer: B"]),
    "tfq": (["Water boils at 100 C at sea level. Answer: True",
             "The Sun orbits the Earth.\nAnswer: False"],
            ["Water boils at 100 C. Answer: Maybe", "Answer: True",
             "Water boils at 100 C. Answer: true",  # case-sensitive contract
             "Water boils at 100 C. True"]),
    "cs": (["C: Ann has 3 apples and buys 2 more. S: She has 5 apples.",
            "C: The meeting moved to Friday.\nS: Friday."],
           ["S: She has 5 apples. C: Ann has 3 apples.", "C: context only", "She has 5."]),
    "para": (["Any non-empty rewording counts."], []),
}


def test_table_covers_every_task():
    assert set(SHAPES) == set(TASK_SHAPES)


@pytest.mark.parametrize("task,answer", [(t, a) for t, (pos, _) in SHAPES.items() for a in pos])
def test_shape_positive(task, answer):
    assert answer_matches_task(answer, task)
    # layout 0.5 + shape 0.5
    assert format_score(wrap(answer), task) == 1.0


@pytest.mark.parametrize("task,answer", [(t, a) for t, (_, neg) in SHAPES.items() for a in neg])
def test_shape_negative(task, answer):
    assert not answer_matches_task(answer, task)
    # layout 0.5 + shape 0
    assert format_score(wrap(answer), task) == 0.5


def test_format_half_credits():
    qa = "Q: capital of France? A: Paris"
    assert format_score(f"<answer>{qa}</answer>", "qa") == 0.5  # shape only, no think
    assert format_score(wrap("Paris"), "para") == 1.0  # para: shape half is automatic
    assert format_score(wrap("Paris"), None) == 1.0  # no task label: free-form like para
    # no answer block: nothing, even for para
    assert format_score("<think>x</think> Paris", "para") == 0.0
    assert format_score("<think>x</think><answer>Paris", "para") == 0.0


def test_unknown_task_is_an_error():
    with pytest.raises(LmmixupError, match="unknown task 'QA'"):
        format_score(wrap("Q: a A: b"), "QA")


@pytest.mark.parametrize("task,question,answer", [
    ("qa", "What is the capital of France?", "Paris."),
    ("mcq", "Which gas do plants absorb?\nA) Oxygen\nB) Carbon dioxide\nC) Helium", "B"),
    ("mcq", "Pick one.\nA) a\nB) b\nC) c\nD) d\nE) e", "E"),
    ("tfq", "Water boils at 100 C at sea level.", "True"),
    ("cs", "The striker scored twice in the final.", "sports"),
    ("para", "Describe a sunset.", "The sky turns orange and pink as the sun sinks."),
])
def test_pairs_rendered_by_the_data_pipeline_earn_the_shape_half(task, question, answer):
    # contract with lmmixup/data/schema.py: a reference written in its task's shape passes
    from lmmixup.data.schema import render_pair

    assert answer_matches_task(render_pair(task, question, answer), task)
