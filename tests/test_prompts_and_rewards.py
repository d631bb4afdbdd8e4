"""Prompt files fail line by line with clear errors; the reward registry mixes and reports."""

import json

import pytest
import torch

from lmmixup.data.prompts import PromptSampler, load_rows
from lmmixup.errors import LmmixupError
from lmmixup.grpo import group_normalize
from lmmixup.rewards.registry import (RewardBatch, RewardConfig, compute_rewards, register_reward,
                                      REWARDS)


def write(tmp_path, lines):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"".join(l if isinstance(l, bytes) else (l + "\n").encode() for l in lines))
    return str(path)


GOOD = json.dumps({"prompt": "hello", "reference": "r", "task": "qa"})


@pytest.mark.parametrize("bad,message", [
    ("{not json", ":2: invalid JSON"),
    (json.dumps({"reference": "x"}), ":2: missing field 'prompt'"),
    (json.dumps({"prompt": "   "}), ":2: field 'prompt' is empty"),
    (json.dumps({"prompt": 3}), ":2: field 'prompt' must be a string or a message list"),
    (json.dumps({"prompt": "x", "task": "essay"}), ":2: field 'task' is 'essay'"),
    (json.dumps({"prompt": "x", "reference": 5}), ":2: field 'reference' must be a string"),
    (json.dumps([1, 2]), ":2: expected a JSON object"),
    (b"\xff\xfe{}\n", ":2: not valid UTF-8"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, [GOOD, bad])
    with pytest.raises(LmmixupError) as info:
        load_rows(path)
    assert str(info.value) == path + message or str(info.value).startswith(path + message)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LmmixupError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(LmmixupError, match="no rows"):
        load_rows(write(tmp_path, ["", ""]))


def test_sampler_epochs_are_seeded_and_resumable(tmp_path):
    rows = load_rows(write(tmp_path, [json.dumps({"prompt": f"p{i}"}) for i in range(5)]))
    a = PromptSampler(rows, seed=3)
    first = [r.prompt for r in a.next_batch(7)]  # crosses into epoch 1
    assert sorted(first[:5]) == [f"p{i}" for i in range(5)]  # epoch 0 is a permutation
    state = a.state_dict()
    rest = [r.prompt for r in a.next_batch(6)]
    b = PromptSampler(rows, seed=3)
    b.load_state_dict(state)
    assert [r.prompt for r in b.next_batch(6)] == rest


def batch(completions):
    n = len(completions)
    return RewardBatch(["p"] * n, completions, ["ref"] * n, ["qa"] * n, [1] * n)


def test_weighted_mix_by_hand():
    cfg = RewardConfig(weights={"tags": 0.5, "length": 0.5})
    cfg.length.target_chars = 10
    fns = {name: REWARDS[name](cfg) for name in cfg.weights}
    # "<think>a</think><answer>b</answer>" is 33 chars: tags = 1, length = max(0, 1 - 23/10) = 0
    # "xxxxxxxxxx" is 10 chars: tags = 0, length = 1
    out = compute_rewards(fns, cfg, batch(["<think>a</think><answer>b</answer>", "x" * 10]), 2)
    assert out.components["tags"].tolist() == [1.0, 0.0]
    assert out.components["length"].tolist() == [0.0, 1.0]
    assert out.total.tolist() == [0.5, 0.5]


def test_group_normalisation_by_hand():
    # group (1, 3): mean 2, Bessel std sqrt((1 + 1) / 1) = sqrt(2) -> (-1, 1) / (sqrt(2) + eps);
    # flat group (5, 5) -> (0, 0)
    out = group_normalize(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, eps=1e-4)
    s = 2**0.5 + 1e-4
    assert torch.allclose(out, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]))


def test_a_failing_reward_names_itself_and_the_sample():
    if "explodes_on_b" not in REWARDS:
        @register_reward("explodes_on_b")
        def build(cfg):
            def score(b):
                return [1 / 0 if c == "b" else 1.0 for c in b.completions]
            return score
    cfg = RewardConfig(weights={"explodes_on_b": 1.0})
    fns = {"explodes_on_b": REWARDS["explodes_on_b"](cfg)}
    with pytest.raises(LmmixupError) as info:
        compute_rewards(fns, cfg, batch(["a", "a", "b", "a"]), 2)
    assert str(info.value).startswith("reward 'explodes_on_b' failed on sample 2: ZeroDivisionError")


def test_overlong_penalty_by_hand():
    from lmmixup.rewards.simple import overlong_penalty

    # L_max 128, L_cache 32: free up to 96 tokens; 112 is halfway down the ramp: (96-112)/32 = -0.5
    assert overlong_penalty(96, 128, 32) == 0.0
    assert overlong_penalty(112, 128, 32) == -0.5
    assert overlong_penalty(128, 128, 32) == -1.0
    assert overlong_penalty(129, 128, 32) == -1.0
