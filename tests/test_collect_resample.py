"""`collect` with DAPO's dynamic sampling: flat groups are dropped and refilled by resample
rounds, kept groups stay in the order sampled, and the sampled (pre-filter) totals are kept."""

import torch

from lmmixup.dist.shard import StepPrompts
from lmmixup.grpo import AlgoConfig
from lmmixup.rewards.registry import RewardBatch, RewardResult
from lmmixup.rollout import Rollout
from lmmixup.sampling.rounds import collect
from lmmixup.step import frac_zero_std_groups


def _fake_round(totals, t=3):
    """A rollout whose completion ids encode the reward (row n has ids == 10 * totals[n])."""
    n = len(totals)
    ids = torch.tensor([[int(10 * r)] * t for r in totals])
    return Rollout(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long), ids,
                   torch.ones(n, t), torch.zeros(n, dtype=torch.bool), rollout_logp=-torch.ones(n, t))


class _ScriptedPolicy:
    """Stands in for a Policy: round k samples script[k]; a completion's text is its reward."""

    def __init__(self, script):
        self.script, self.rounds = script, 0

    def sample(self, rows, group_size, **kwargs):
        self.rounds += 1
        return _fake_round(self.script[self.rounds - 1])

    def decode(self, rollout, rows, group_size):
        total = rollout.completion_ids[:, 0].float() / 10  # (n,)
        n = len(total)
        return RewardBatch([r for r in rows for _ in range(group_size)],
                           [str(float(x)) for x in total], [None] * n, [None] * n, [3] * n)


def _score(texts, group_size):
    total = torch.tensor([float(c) for c in texts.completions])  # (n,)
    return RewardResult(total=total, components={"r": total * 2})


def test_collect_refills_dropped_groups_with_resample_rounds():
    # G = 2, B = 3. Round 1 (3 prompts): groups [1,1] flat, [0,1], [2,2] flat -> keep 1, drop 2.
    # Round 2 (2 prompts): [3,4], [5,5] flat -> keep 1. Round 3 (1 prompt): [6,7] -> full.
    script = [[1, 1, 0, 1, 2, 2], [3, 4, 5, 5], [6, 7]]
    asked = []

    def next_batch(k):
        asked.append(k)
        return [f"p{len(asked)}.{i}" for i in range(k)]

    def run(algo):  # one process: the step's stream is the sampler's, in order
        prompts = StepPrompts(next_batch, 0, 1, block=3, world_size=1, rank=0)
        return collect(prompts, _ScriptedPolicy(script), _score, batch_prompts=3, algo=algo,
                       max_prompt_tokens=64, pad_id=0)

    algo = AlgoConfig(group_size=2, filter_zero_std_groups=True, max_resample_rounds=2)
    out = run(algo)
    assert asked == [3, 2, 1] and out.rounds == 3 and out.dropped_groups == 3
    assert out.positions == [0, 1, 2]  # kept groups numbered in the order kept (mini-batches)
    assert out.total.tolist() == [0, 1, 3, 4, 6, 7]  # kept groups, in the order sampled
    assert out.components["r"].tolist() == [0, 2, 6, 8, 12, 14]
    assert out.texts.completions == ["0.0", "1.0", "3.0", "4.0", "6.0", "7.0"]
    assert out.texts.prompts == ["p1.1", "p1.1", "p2.0", "p2.0", "p3.0", "p3.0"]
    assert out.rollout.completion_ids[:, 0].tolist() == [0, 10, 30, 40, 60, 70]
    assert out.sampled_total.tolist() == [1, 1, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7]  # before filtering
    assert frac_zero_std_groups(out.sampled_total, 2) == 3 / 6
    assert frac_zero_std_groups(out.total, 2) == 0.0

    # With one extra round only, the batch stays smaller than B.
    asked.clear()
    out = run(AlgoConfig(group_size=2, filter_zero_std_groups=True, max_resample_rounds=1))
    assert asked == [3, 2] and out.total.tolist() == [0, 1, 3, 4] and out.rounds == 2
