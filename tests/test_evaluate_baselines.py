"""Baseline answers built from a hand-made MIXTURE row: exact completion text, and the
closest-member choice both with hand-made vectors and with the real packaged MiniLM."""

import torch

from lmmixup.data.prompts import PromptRow
from lmmixup.eval.baselines import (BASELINES, baseline_completion, closest_member, copy_first,
                                    has_members, member_pairs)

ROW = PromptRow(
    prompt="merge these", task="tfq", line=7,
    reference="Did kevin durant play for the seattle supersonics?\nAnswer: True",
    extra={"members": [
        {"question": "DID KEVIN DURANT PLAY FOR SEATTLE?", "answer": "False"},
        {"question": "Did kevin durant play for the seattle supersonics?", "answer": "True"},
        {"question": "Did kevin play for durant supersonics?", "answer": "True"},
    ]})


def test_copy_first_writes_the_first_member_in_the_answer_layout():
    assert member_pairs(ROW)[0] == "DID KEVIN DURANT PLAY FOR SEATTLE?\nAnswer: False"
    assert copy_first([ROW], embed=None) == [
        "<think>\n</think>\n\n<answer>\nDID KEVIN DURANT PLAY FOR SEATTLE?\nAnswer: False\n</answer>"]
    assert baseline_completion("  x \n") == "<think>\n</think>\n\n<answer>\nx\n</answer>"
    assert list(BASELINES) == ["copy_first", "closest_member"]


def test_qa_members_render_in_their_shape():
    row = PromptRow(prompt="p", task="qa", extra={"members": [{"question": "q1", "answer": "a1"}]})
    assert member_pairs(row) == ["Q: q1\nA: a1"]
    assert has_members(row) and not has_members(PromptRow(prompt="p", task="qa"))


def test_closest_member_takes_the_highest_cosine_to_the_reference():
    # hand-made unit vectors: texts in the order closest_member embeds them (3 members, then
    # the reference); cosines to the reference (0, 1): member 0 -> 0, member 1 -> 0.6, member 2 -> 0.8
    vectors = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return vectors[: len(texts)]

    (text,) = closest_member([ROW], embed)
    assert text == baseline_completion("Did kevin play for durant supersonics?\nAnswer: True")
    assert len(calls) == 1 and len(calls[0]) == 4 and calls[0][3] == ROW.reference


def test_closest_member_with_the_real_embedder_finds_the_member_equal_to_the_reference():
    from lmmixup.rewards.embedder import EmbedderConfig, get_embedder

    embed = get_embedder(EmbedderConfig()).encode
    (text,) = closest_member([ROW], embed)  # member 1's pair is the reference, cosine 1
    assert text == baseline_completion(ROW.reference)
