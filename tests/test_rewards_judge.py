"""The LLM-judge quality backend on the real embedded SmolLM2-135M-Instruct."""

import pytest

from lmmixup.rewards import RewardBatch, RewardConfig, build_rewards
from lmmixup.rewards.judge import JudgeConfig, load_judge
from lmmixup.rewards.quality import QualityConfig

GOOD = ["Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make glucose and release oxygen.",
        "A triangle has three sides, and the sum of its interior angles is always 180 degrees."]
BAD = ["xq zzv plok ffrt mnb qwe asdfgh jkl", "asdf lkj qwpoe zmxn vbq"]


@pytest.fixture(scope="module")
def judge():
    return load_judge(JudgeConfig())


@pytest.fixture(scope="module")
def scores(judge):
    return judge.judge_scores(GOOD + BAD)


@pytest.mark.slow
def test_good_answers_outscore_gibberish(judge, scores):
    # measured: good about 2.1 and 2.4, gibberish about 1.5 and 1.35 (docs/LOG.md)
    assert all(0.0 <= s <= 5.0 for s in scores)
    assert min(scores[:2]) > max(scores[2:]), scores
    # the prefix-KV-cached path equals the plain left-padded forward over full prompts
    plain = judge.judge_scores_uncached([GOOD[0], BAD[0]])
    assert [scores[0], scores[2]] == pytest.approx(plain, abs=1e-4)
    assert judge.prefix_text.startswith("<|im_start|>system")  # rubric went through the template


@pytest.mark.slow
def test_prompt_split_keeps_tokenization(judge):
    # the shared prefix ends where the last user turn begins; tokenizing prefix and suffix apart
    # must give the same ids as tokenizing the whole prompt
    for text in GOOD + BAD:
        whole = judge.tok.encode(judge.prefix_text + judge.suffix_template.replace(
            judge._SENTINEL, text), add_special_tokens=False)
        assert whole == judge.prefix_ids[0].tolist() + judge._suffix_ids(text)


@pytest.mark.slow
def test_judge_backend_as_quality_reward(judge, scores):
    cfg = RewardConfig(weights={"quality": 1.0},
                       quality=QualityConfig(backend="judge", mode="expected"))
    cfg.validate()
    fn = build_rewards(cfg)["quality"]
    completions = [f"<think>t</think><answer>{GOOD[0]}</answer>",
                   f"<think>t</think><answer>{BAD[0]}</answer>", "no answer block"]
    b = RewardBatch(prompts=[""] * 3, completions=completions, references=[None] * 3,
                    tasks=[None] * 3, completion_tokens=[1] * 3)
    q = fn(b)
    # expected mode: Q = E / 5; no answer -> 0. E does not depend on the batch it was scored
    # in (right padding after the cached prefix never reaches a real token)
    assert q == pytest.approx([scores[0] / 5, scores[2] / 5, 0.0], abs=1e-5)
